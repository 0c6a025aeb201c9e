"""Conversion of a decoded image of any Pillow mode to 8-bit RGB, and the content hash of the result.

Conversions to 8-bit RGB (:func:`to_rgb`)
-----------------------------------------
* any transparency (``RGBA``, ``LA``, ``PA``, ``RGBa``, ``P``/``L``/``RGB`` with a
  ``transparency`` entry): composited over white,
  ``out = round((c * a + 255 * (255 - a)) / 255)`` per channel, with a in 0..255.
* ``L``, ``1``, ``P``: replicated/looked up to RGB (``1`` gives 0 or 255).
* ``CMYK``: Pillow's built-in CMYK -> RGB formula, without ICC colour management (Adobe
  inverted CMYK JPEGs are handled by Pillow's JPEG reader).
* ``YCbCr``, ``HSV``, ``RGBX``: Pillow's ``convert("RGB")``. ``LAB`` and ``La``: error.
* integer modes (``I;16``, ``I;16L``, ``I;16B``, ``I;16N``, ``I``): scaled to 8 bit by the
  bit depth of the container, keeping its top 8 bits: ``out = v >> (depth - 8)``. This is what
  Pillow itself does when it reads 16-bit RGB/RGBA/LA PNGs (they arrive as 8-bit ``RGB``/
  ``RGBA``), so every 16-bit source is treated alike, and 8-bit values replicated to 16 bit
  (``v * 257``) come back exactly. depth is 16 for ``I;16*``; for ``I`` (32-bit signed) it is
  the TIFF ``BitsPerSample`` when present, 16 for PNG, else 16 if all values fit in 16 bits and
  31 otherwise. Negative values: error. The grey result is replicated to RGB.
* ``F`` (32-bit float): accepted only if every value is finite and in [0, 1], mapped by
  ``round(v * 255)``; anything else is an error (no guessing of the value range).
* ICC profiles and gamma chunks are ignored: the stored 8-bit values are used as they are,
  as Pillow (and the published pipeline) reads them.

Content hash
------------
``ImageRecord.sha256`` is :func:`pixel_sha256` of the converted image: SHA-256 over the ASCII
header ``"sdaudit-rgb8 {width}x{height}\\n"`` followed by the raw 8-bit RGB bytes, row-major.
The same picture therefore hashes the same whatever the container (PNG, lossless WebP,
``datasets`` bytes); a lossy JPEG re-encode changes the pixels and the hash.
"""

from __future__ import annotations

import hashlib

import numpy as np
from PIL import Image

from .records import BadImageError


def pixel_sha256(img: Image.Image) -> str:
    """SHA-256 hex digest of an RGB image's pixels (see module docstring for the definition)."""
    if img.mode != "RGB":
        raise ValueError(f"pixel_sha256 needs an RGB image, got mode {img.mode!r}")
    h = hashlib.sha256(f"sdaudit-rgb8 {img.width}x{img.height}\n".encode("ascii"))
    h.update(img.tobytes())
    return h.hexdigest()


def has_transparency(img: Image.Image) -> bool:
    """True if the image carries an alpha channel or a ``transparency`` palette/colour key."""
    return img.mode in ("RGBA", "LA", "PA", "RGBa") or (
        img.mode in ("P", "L", "RGB") and "transparency" in img.info
    )


def _over_white(img: Image.Image) -> Image.Image:
    """Composite any image with transparency over opaque white; returns RGB."""
    rgba = np.asarray(img.convert("RGBA"), dtype=np.uint32)
    a = rgba[..., 3:4]
    out = (rgba[..., :3] * a + 255 * (255 - a) + 127) // 255
    return Image.fromarray(out.astype(np.uint8), "RGB")


def _int_bit_depth(img: Image.Image, values: np.ndarray) -> int:
    """Bit depth of an integer-mode image's container (see module docstring)."""
    if img.mode.startswith("I;16"):
        return 16
    tags = getattr(img, "tag_v2", None)
    bits = tags.get(258) if tags is not None else None
    if isinstance(bits, tuple):
        bits = bits[0] if bits else None
    if isinstance(bits, int) and 8 <= bits <= 32:
        return min(int(bits), 31)
    if img.format == "PNG":
        return 16
    return 16 if values.size == 0 or int(values.max()) <= 0xFFFF else 31


def _int_to_rgb(img: Image.Image, source: str) -> Image.Image:
    """Scale an integer-mode (16/32-bit) grey image to 8 bit by its bit depth, then to RGB."""
    values = np.asarray(img).astype(np.int64)
    if values.size and int(values.min()) < 0:
        raise BadImageError(source, f"{img.mode} image has negative values "
                            f"(min {int(values.min())}); cannot map to 8 bit", "unsupported")
    depth = _int_bit_depth(img, values)
    grey = np.clip(values >> (depth - 8), 0, 255).astype(np.uint8)
    return Image.fromarray(grey, "L").convert("RGB")


def _float_to_rgb(img: Image.Image, source: str) -> Image.Image:
    """Map an ``F`` image with values in [0, 1] to 8 bit (``round(v*255)``); else error."""
    values = np.asarray(img, dtype=np.float64)
    if not np.all(np.isfinite(values)):
        raise BadImageError(source, "float (mode F) image contains NaN or infinite values",
                            "unsupported")
    lo, hi = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if lo < 0.0 or hi > 1.0:
        raise BadImageError(source, f"float (mode F) image has values in [{lo:g}, {hi:g}]; "
                            "only [0, 1] is accepted", "unsupported")
    grey = np.rint(values * 255.0).astype(np.uint8)
    return Image.fromarray(grey, "L").convert("RGB")


def to_rgb(img: Image.Image, source: str = "<image>") -> Image.Image:
    """Convert a decoded image of any Pillow mode to 8-bit RGB by the documented rules.

    Returns ``img`` itself if it is already RGB without transparency, else a new image.
    Raises :class:`BadImageError` (naming ``source``) for modes that have no safe conversion.
    """
    mode = img.mode
    if mode == "RGB" and "transparency" not in img.info:
        return img
    if has_transparency(img):
        return _over_white(img)
    if mode == "1":
        return img.convert("L").convert("RGB")
    if mode in ("L", "P", "CMYK", "YCbCr", "HSV", "RGBX"):
        return img.convert("RGB")
    if mode == "I" or mode.startswith("I;"):
        return _int_to_rgb(img, source)
    if mode == "F":
        return _float_to_rgb(img, source)
    raise BadImageError(source, f"unsupported image mode {mode!r} (no safe conversion to RGB)",
                        "unsupported")

