"""Uploaded pictures far larger than the store's input size are shrunk before the normal image
pipeline sees them (:func:`shrink_upload`).

Why: the pipeline (validate, hash, convert, centre-crop, resize) keeps several full-size copies of
a picture (about 57 bytes per pixel at peak, 877 MiB for one 4000x4000 PNG). The model only ever
sees the centre square resized to the store's ``size``, so a picture is first cut to that square
and reduced, while decoding where the format allows it (JPEG: libjpeg's DCT scaling via
``draft``; others: one decode, then ``Image.reduce`` over the square, then the decode is freed),
to at least ``KEEP`` times ``size``, so the final resize still has detail to work from. The peak
extra memory of an upload is then one decoded picture (3-4 bytes per pixel, within the pixel
limit) plus a pipeline run over at most ``(2 * KEEP * size)^2`` pixels.

The shrunk picture (PNG, RGB, EXIF orientation applied) replaces the upload: it is the file kept
beside the store and the one whose pixels the store's hash and sizes describe.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from PIL import Image

#: The shrunk centre square keeps at least this many times the store's input size per side.
KEEP = 2
# EXIF orientation -> the transpose that makes the picture upright (as ImageOps.exif_transpose).
_UPRIGHT = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
            5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
            8: Image.Transpose.ROTATE_90}


def shrink_upload(path: Path, *, size: int, max_pixels: int) -> str | None:
    """Replace the picture at ``path`` by its centre square shrunk to about ``KEEP * size`` px per side
    (a PNG), when it is at least twice that large; returns a note saying what was done, or None when
    the file is left as it is (small enough, or not a picture the normal pipeline would accept: that
    pipeline then refuses it with its own message)."""
    target = KEEP * size
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(path)  # lazy: reads the header only
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None
    with img:
        w, h = img.size
        if w * h > max_pixels or (min(w, h) < 2 * target and w * h <= (2 * target) ** 2):
            return None  # refused from the header later, or small enough for the pipeline
        orientation = _orientation(img)
        try:
            small = _decode_square(img, target)  # closing img (below) frees the decoded picture
        except (OSError, ValueError, SyntaxError, EOFError, MemoryError, Image.DecompressionBombError):
            return None  # a corrupt file: the pipeline says why
    from ..images import to_rgb

    if orientation in _UPRIGHT:
        small = small.transpose(_UPRIGHT[orientation])
    small = to_rgb(small, str(path))
    small.save(path, format="PNG", compress_level=1)
    return (f"downscaled from {w}x{h} to its centre square at {small.width}x{small.height} px before extraction "
            f"(the model sees the centre square at {size}x{size})")


def _orientation(img: Image.Image) -> int:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return int(img.getexif().get(0x0112, 1))
    except Exception:  # noqa: BLE001 - unreadable EXIF: used as stored, like the pipeline does
        return 1


def _decode_square(img: Image.Image, target: int) -> Image.Image:
    """Decode ``img`` (JPEG: at a reduced scale) and reduce its centre square to >= ``target`` px per side."""
    w, h = img.size
    if img.format == "JPEG" and img.mode in ("RGB", "L", "YCbCr", "CMYK"):
        short = min(w, h)
        img.draft(img.mode, (-(-w * target // short), -(-h * target // short)))  # libjpeg scales by 1/2..1/8
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        img.load()
    full = img
    if full.mode in ("P", "PA") or "transparency" in full.info:
        full = full.convert("RGBA")  # palette indices and colour keys cannot be averaged
    elif full.mode == "1":
        full = full.convert("L")
    elif full.mode.startswith("I;"):
        full = full.convert("I")
    w, h = full.size
    s = min(w, h)
    left, top = (w - s) // 2, (h - s) // 2  # as images.center_crop_square
    factor = max(1, s // target)
    return full.reduce(factor, box=(left, top, left + s, top + s))
