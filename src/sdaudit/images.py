"""Image sources for sdaudit: loading, validation, conversion to 8-bit RGB, and the demo set.

Every image that enters sdaudit goes through :func:`load_image` (files) or
:func:`decode_dataset_value` (``datasets`` items), which either return an :class:`ImageRecord`
holding an 8-bit RGB ``PIL.Image`` at its original size, or raise :class:`BadImageError`
naming the source and the reason. Cropping and resizing happen later, in :func:`prepare_image`.

Validation, in the order it is applied
--------------------------------------
* missing path, a directory, a FIFO/socket/device, no read permission, an empty (0-byte) file: error.
* not an image Pillow can identify (e.g. text renamed ``.png``): error.
* decompression-bomb guard: width * height is read from the header, before any pixel is
  decoded, and must not exceed ``max_pixels`` (default 178,956,970 = Pillow's own hard
  limit, ``2 * Image.MAX_IMAGE_PIXELS`` at its default). Pillow's global
  ``MAX_IMAGE_PIXELS`` is never modified; Pillow itself still refuses images above twice its
  global limit, so a ``max_pixels`` above that is capped by Pillow (also reported as an error).
* smaller than one latent token: the short side must be >= ``min_side`` pixels (default 8, the
  downsampling factor of the SD VAE, so one token).
* truncated or corrupt pixel data: the image is decoded fully (``img.load()``) and any decoder
  error is reported. ``ImageFile.LOAD_TRUNCATED_IMAGES`` is never set by sdaudit; if another
  library set it to True, truncated files cannot be detected and a warning is emitted once.

Conversions to 8-bit RGB (:func:`to_rgb`)
-----------------------------------------
* EXIF orientation (files only): applied with ``ImageOps.exif_transpose`` before anything else,
  so width/height are those of the upright picture. Unreadable EXIF data: the image is used
  as stored, with a note in ``ImageRecord.notes``.
* multi-frame files (animated GIF/PNG/WebP, multi-page TIFF): the first frame is used.
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

import dataclasses
import hashlib
import io
import os
import stat
import warnings
from dataclasses import dataclass, field
from functools import partial
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from .errors import SdauditError, UsageError

__all__ = [
    "BadImageError",
    "ImageRecord",
    "DatasetSource",
    "IMAGE_EXTENSIONS",
    "DEFAULT_MAX_PIXELS",
    "DEFAULT_MIN_SIDE",
    "DEMO_IMAGE_NAMES",
    "load_image",
    "decode_dataset_value",
    "to_rgb",
    "pixel_sha256",
    "printable_path",
    "iter_images",
    "count_images",
    "scan_folder",
    "is_sdaudit_output",
    "OTHER_IMAGE_EXTENSIONS",
    "open_dataset_source",
    "is_saved_dataset",
    "center_crop_square",
    "prepare_image",
    "demo_image_paths",
]

#: File name endings (lower case) that a folder scan treats as images.
IMAGE_EXTENSIONS = frozenset(
    {".png", ".jpg", ".jpeg", ".jpe", ".jfif", ".bmp", ".gif", ".tif", ".tiff", ".webp",
     ".ppm", ".pgm", ".pbm", ".pnm", ".tga"}
)
#: Default decompression-bomb guard in pixels (Pillow's error threshold at its defaults).
DEFAULT_MAX_PIXELS = 178_956_970
#: Default minimum short side in pixels: one latent token of the SD VAE (downsampling 8).
DEFAULT_MIN_SIDE = 8
#: The bundled demo set: colour photographs shipped inside scikit-image's package data.
DEMO_IMAGE_NAMES = (
    "astronaut.png", "chelsea.png", "coffee.png", "hubble_deep_field.jpg", "ihc.png",
    "motorcycle_left.png", "motorcycle_right.png", "retina.jpg", "rocket.jpg",
)
#: Image formats a folder scan does not take as they are: read when Pillow here can (a plugin such as
#: pillow-heif, or Pillow's own AVIF support), else listed as skipped (never dropped silently).
OTHER_IMAGE_EXTENSIONS = frozenset(
    {".avif", ".avifs", ".heic", ".heif", ".jxl", ".jp2", ".j2k", ".jpx", ".jpf", ".apng", ".qoi", ".psd", ".ico",
     ".svg", ".exr", ".hdr", ".dng", ".cr2", ".cr3", ".nef", ".arw", ".orf", ".rw2", ".raw"}
)
_LIST_FILE_EXTENSIONS = frozenset({".txt", ".lst"})
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError,
                  KeyError, ZeroDivisionError, MemoryError, Image.DecompressionBombError)
_warned_truncated = False


class BadImageError(SdauditError, ValueError):
    """An input image that cannot be used. ``str()`` names the source and the reason.

    Attributes: ``source`` (path or ``hf:`` item name), ``reason`` (human-readable), ``code``
    (machine-readable category: ``missing``, ``unreadable``, ``empty``, ``not_image``,
    ``too_large``, ``too_small``, ``corrupt``, ``unsupported``; for what a folder scan leaves out:
    ``unreadable_folder``, ``unsupported_format``, ``sdaudit_output``).
    """

    def __init__(self, source: Any, reason: str, code: str = "corrupt"):
        self.source = str(source)
        self.reason = reason
        self.code = code
        super().__init__(f"{self.source}: {reason}")

    def __reduce__(self):
        return (type(self), (self.source, self.reason, self.code))


@dataclass(frozen=True)
class ImageRecord:
    """One validated image: 8-bit RGB at original (upright) size, plus provenance.

    ``notes`` lists the conversions applied (e.g. ``"alpha composited over white"``). ``source`` is
    always printable UTF-8 (see :func:`printable_path`); for a file whose name is not valid UTF-8,
    ``source_bytes`` holds the hex of the path's exact bytes (else None) and ``path`` the path to reopen.
    """

    source: str
    sha256: str
    image: Image.Image
    original_mode: str
    width: int
    height: int
    notes: tuple[str, ...] = field(default=())
    source_bytes: str | None = None
    path: str | None = None


def printable_path(path: str | os.PathLike | bytes) -> tuple[str, str | None]:
    """(printable UTF-8 text, hex of the exact bytes or None) of any path the OS allows.

    A name that is not valid UTF-8 (e.g. Latin-1 ``caf\\xe9.png``) cannot be written to JSON/UTF-8 files
    as it is: its undecodable bytes are shown as backslash escapes (``caf\\xe9.png``), and the hex of
    the whole path is returned so that it can be recovered exactly (``os.fsdecode(bytes.fromhex(hex))``).
    """
    raw = os.fsencode(path)
    try:
        return raw.decode("utf-8"), None
    except UnicodeDecodeError:
        return raw.decode("utf-8", "backslashreplace"), raw.hex()


# --------------------------------------------------------------------------- conversion


def pixel_sha256(img: Image.Image) -> str:
    """SHA-256 hex digest of an RGB image's pixels (see module docstring for the definition)."""
    if img.mode != "RGB":
        raise ValueError(f"pixel_sha256 needs an RGB image, got mode {img.mode!r}")
    h = hashlib.sha256(f"sdaudit-rgb8 {img.width}x{img.height}\n".encode("ascii"))
    h.update(img.tobytes())
    return h.hexdigest()


def _has_transparency(img: Image.Image) -> bool:
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
    if _has_transparency(img):
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


# --------------------------------------------------------------------------- decoding


def _warn_if_truncation_undetectable() -> None:
    """Warn once if another library enabled Pillow's LOAD_TRUNCATED_IMAGES."""
    global _warned_truncated
    if ImageFile.LOAD_TRUNCATED_IMAGES and not _warned_truncated:
        _warned_truncated = True
        warnings.warn("PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True (set outside sdaudit): "
                      "truncated image files cannot be detected", RuntimeWarning, stacklevel=3)


def _open(fp: Any, source: str) -> Image.Image:
    """``Image.open`` with Pillow's bomb warning silenced and its errors as BadImageError."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(fp)
    except Image.DecompressionBombError as e:
        raise BadImageError(source, f"decompression bomb guard (Pillow): {e}", "too_large") from e
    except UnidentifiedImageError as e:
        raise BadImageError(source, "not an image file Pillow can identify", "not_image") from e
    except _DECODE_ERRORS as e:
        raise BadImageError(source, f"cannot read image header ({type(e).__name__}: {e})",
                            "corrupt") from e


def _check_header_size(img: Image.Image, source: str, min_side: int, max_pixels: int) -> None:
    """Reject bombs and too-small images from the header size, before decoding."""
    w, h = img.size
    if w * h > max_pixels:
        raise BadImageError(source, f"decompression bomb guard: {w}x{h} = {w * h} pixels "
                            f"exceeds the limit of {max_pixels} pixels", "too_large")
    if min(w, h) < min_side:
        raise BadImageError(source, f"image is too small: {w}x{h} px, short side {min(w, h)} "
                            f"< min_side {min_side} px (one latent token is 8 px)", "too_small")


def _load_pixels(img: Image.Image, source: str) -> list[str]:
    """Select the first frame and decode it fully; returns notes. Decoder errors: BadImageError."""
    notes = []
    _warn_if_truncation_undetectable()
    try:
        if getattr(img, "is_animated", False):
            notes.append(f"first of {img.n_frames} frames used")
            img.seek(0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img.load()
    except _DECODE_ERRORS as e:
        text = str(e)
        kind = "truncated file" if "truncated" in text.lower() else "corrupt pixel data"
        raise BadImageError(source, f"{kind} ({type(e).__name__}: {text})", "corrupt") from e
    return notes


def _exif_upright(img: Image.Image, notes: list[str]) -> Image.Image:
    """Apply the EXIF orientation tag; returns a new image, detached from the file.

    Unreadable EXIF data does not reject the image: it is used as stored, with a note.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            orientation = img.getexif().get(0x0112, 1)
            upright = ImageOps.exif_transpose(img)
    except Exception as e:  # noqa: BLE001 - Pillow's EXIF parser raises many kinds
        notes.append(f"EXIF unreadable ({type(e).__name__}), orientation not applied")
        return img.copy()
    if orientation in range(2, 9):
        notes.append(f"EXIF orientation {orientation} applied")
    return upright


def _decode(fp: Any, source: str, min_side: int, max_pixels: int, exif: bool) -> ImageRecord:
    """Open, validate, decode and convert one image from a path or binary file object."""
    with _open(fp, source) as img:
        _check_header_size(img, source, min_side, max_pixels)
        notes = _load_pixels(img, source)
        original_mode = img.mode
        upright = _exif_upright(img, notes) if exif else img.copy()
    if _has_transparency(upright):
        notes.append("alpha composited over white")
    elif original_mode != "RGB":
        notes.append(f"converted from mode {original_mode}")
    rgb = to_rgb(upright, source)
    if rgb.mode != "RGB":  # defensive: to_rgb must always give RGB
        raise BadImageError(source, f"conversion gave mode {rgb.mode}", "unsupported")
    return ImageRecord(source=source, sha256=pixel_sha256(rgb), image=rgb,
                       original_mode=original_mode, width=rgb.width, height=rgb.height,
                       notes=tuple(notes))


_SPECIAL_FILES = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
                  (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


def _check_file(path: Path, source: str) -> None:
    """Errors for a path that cannot be an image file: missing, directory, special file, unreadable, empty.

    Checked on ``stat`` before anything opens it: opening a FIFO would block, and a special file's
    size of 0 does not mean it is empty.
    """
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise BadImageError(source, "file not found", "missing") from None
    except OSError as e:
        raise BadImageError(source, f"cannot read file status ({e.strerror or e})", "unreadable") from e
    if stat.S_ISDIR(mode):
        raise BadImageError(source, "is a directory, not an image file", "unreadable")
    for test, kind in _SPECIAL_FILES:
        if test(mode):
            raise BadImageError(source, f"is {kind}, not a regular file", "unreadable")
    if not os.access(path, os.R_OK):
        raise BadImageError(source, "permission denied (file is not readable)", "unreadable")
    if path.stat().st_size == 0:
        raise BadImageError(source, "empty file (0 bytes)", "empty")


def load_image(path: str | os.PathLike, *, min_side: int = DEFAULT_MIN_SIDE,
               max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageRecord:
    """Load one image file as an :class:`ImageRecord` (8-bit RGB, original upright size).

    ``min_side``: minimum short side in pixels; ``max_pixels``: bomb guard in pixels.
    Raises :class:`BadImageError` naming the file and the reason.
    """
    p = Path(os.fsdecode(path))
    source, source_bytes = printable_path(os.path.abspath(p))
    _check_file(p, source)
    try:
        fh = open(p, "rb")
    except OSError as e:
        raise BadImageError(source, f"cannot open file ({e.strerror or e})", "unreadable") from e
    with fh:
        record = _decode(fh, source, min_side, max_pixels, exif=True)
    return dataclasses.replace(record, source_bytes=source_bytes, path=os.path.abspath(p))


def decode_dataset_value(value: Any, source: str, *, min_side: int = DEFAULT_MIN_SIDE,
                         max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageRecord:
    """Decode one ``datasets`` cell: ``{"bytes", "path"}`` dict, raw bytes, a path, or a PIL image.

    Encoded bytes and paths go through the same validation as files (EXIF applied for both);
    an already-decoded PIL image is size-checked and converted.
    """
    if value is None:
        raise BadImageError(source, "missing image (value is None)", "missing")
    if isinstance(value, dict):
        data, path = value.get("bytes"), value.get("path")
        if data:
            return decode_dataset_value(bytes(data), source, min_side=min_side,
                                        max_pixels=max_pixels)
        if path:
            return _decode_path_for(path, source, min_side, max_pixels)
        raise BadImageError(source, "image cell has neither bytes nor path", "missing")
    if isinstance(value, (bytes, bytearray, memoryview)):
        if len(value) == 0:
            raise BadImageError(source, "empty image bytes (0 bytes)", "empty")
        return _decode(io.BytesIO(bytes(value)), source, min_side, max_pixels, exif=True)
    if isinstance(value, (str, os.PathLike)):
        return _decode_path_for(value, source, min_side, max_pixels)
    if isinstance(value, Image.Image):
        return _record_from_pil(value, source, min_side, max_pixels)
    raise BadImageError(source, f"unsupported image cell type {type(value).__name__}",
                        "unsupported")


def _decode_path_for(path: Any, source: str, min_side: int, max_pixels: int) -> ImageRecord:
    """Load a file referenced by a dataset cell, reporting errors under the dataset item name."""
    try:
        rec = load_image(path, min_side=min_side, max_pixels=max_pixels)
    except BadImageError as e:
        raise BadImageError(source, f"{e.reason} (file {e.source})", e.code) from e
    return ImageRecord(source, rec.sha256, rec.image, rec.original_mode, rec.width, rec.height,
                       rec.notes)


def _record_from_pil(img: Image.Image, source: str, min_side: int,
                     max_pixels: int) -> ImageRecord:
    """Validate and convert an already-decoded PIL image (no EXIF handling)."""
    _check_header_size(img, source, min_side, max_pixels)
    notes = _load_pixels(img, source)
    rgb = to_rgb(img, source)
    rgb = rgb.copy() if rgb is img else rgb
    return ImageRecord(source, pixel_sha256(rgb), rgb, img.mode, rgb.width, rgb.height,
                       tuple(notes))


# --------------------------------------------------------------------------- sources


def _hidden(name: str) -> bool:
    return name.startswith(".")


def scan_folder(root: str | os.PathLike, *, skipped: list | None = None) -> list[Path]:
    """Image files under ``root`` (recursive), hidden files/folders skipped, image extensions
    only (case-insensitive), sorted by relative path (component-wise) for determinism.

    Left out, and appended to ``skipped`` as :class:`BadImageError` (code in parentheses): sub-folders
    that hold an sdaudit audit's outputs (``sdaudit_output``, see :func:`is_sdaudit_output`), files of
    an image format Pillow cannot read here (``unsupported_format``, see :data:`OTHER_IMAGE_EXTENSIONS`)
    and folders that cannot be listed (``unreadable_folder``). Without ``skipped``, an unreadable
    folder raises that error; the rest is left out silently. Other files (.txt, .json...) are ignored.
    """
    root = Path(root)
    readable = IMAGE_EXTENSIONS | (OTHER_IMAGE_EXTENSIONS & frozenset(Image.registered_extensions()))
    notes: list = []

    def note(path: Any, reason: str, code: str) -> None:
        notes.append(BadImageError(printable_path(path)[0], reason, code))

    def unreadable(err: OSError) -> None:
        note(err.filename, f"cannot list this folder ({err.strerror or err}); its images are not read",
             "unreadable_folder")
        if skipped is None:
            raise notes[-1] from err

    found = []
    for dirpath, dirnames, filenames in os.walk(root, onerror=unreadable):
        kept = []
        for d in dirnames:
            if _hidden(d):
                continue
            if is_sdaudit_output(Path(dirpath, d)):
                note(Path(dirpath, d), "folder of an sdaudit audit's outputs (its figures are not inputs)",
                     "sdaudit_output")
            else:
                kept.append(d)
        dirnames[:] = kept
        for name in filenames:
            ext = os.path.splitext(name)[1].lower()
            if _hidden(name):
                continue
            if ext in readable:
                found.append(Path(dirpath, name))
            elif ext in OTHER_IMAGE_EXTENSIONS:
                note(Path(dirpath, name), f"'{ext}' is not a supported image format here; convert it to PNG "
                     "or JPEG", "unsupported_format")
    found.sort(key=lambda p: p.relative_to(root).parts)
    if skipped is not None:
        skipped.extend(sorted(notes, key=lambda e: e.source))
    return found


def is_sdaudit_output(folder: str | os.PathLike) -> bool:
    """True for a folder an sdaudit audit wrote (its ``results.json``), or the ``figures`` folder in one,
    so that an audit whose output lies inside its image folder never audits its own figures."""
    folder = Path(folder)
    return _has_audit_results(folder) or (folder.name == "figures" and _has_audit_results(folder.parent))


def _has_audit_results(folder: Path) -> bool:
    try:
        with open(folder / "results.json", "rb") as f:
            head = f.read(256)  # results.json starts with its format; the rest can be megabytes
    except OSError:
        return False
    return b'"format": "sdaudit-audit/' in head


def is_saved_dataset(path: str | os.PathLike) -> bool:
    """True if ``path`` is a folder written by ``save_to_disk`` (Dataset or DatasetDict)."""
    p = Path(path)
    return p.is_dir() and ((p / "dataset_dict.json").is_file() or (
        (p / "state.json").is_file() and (p / "dataset_info.json").is_file()))


def _read_list_file(path: Path) -> list[Path]:
    """Paths listed one per line (blank lines and '#' comments skipped), relative to the file."""
    out = []
    # bytes decoded as the OS decodes file names, so that a listed non-UTF-8 name still opens
    for line in os.fsdecode(path.read_bytes()).splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            p = Path(line).expanduser()
            out.append(p if p.is_absolute() else path.parent / p)
    return out


@dataclass
class _Candidates:
    """Resolved source: a count (None if unknown) and a factory of (name, loader) pairs."""

    count: int | None
    items: Callable[[], Iterator[tuple[str, Callable[[int, int], ImageRecord]]]]
    skipped: list = field(default_factory=list)  # BadImageError of what a folder scan left out


def _file_candidates(paths: list[Path], skipped: list | None = None) -> _Candidates:
    def items():
        for p in paths:
            yield printable_path(os.path.abspath(p))[0], partial(_load_file, p)
    return _Candidates(len(paths), items, skipped or [])


def _load_file(path: Path, min_side: int, max_pixels: int) -> ImageRecord:
    return load_image(path, min_side=min_side, max_pixels=max_pixels)


def _expand_paths(entries: Iterable[Any], skipped: list) -> list[Path]:
    """Expand a list of paths: folders are scanned, everything else is taken as an image file."""
    out: list[Path] = []
    for entry in entries:
        p = Path(entry).expanduser()
        out.extend(scan_folder(p, skipped=skipped) if p.is_dir() else [p])
    return out


def _is_datasets_object(obj: Any) -> bool:
    return type(obj).__module__.split(".")[0] == "datasets"


def _resolve(source: Any) -> _Candidates:
    """Turn any supported source into candidates (eager: checks paths and datasets columns)."""
    if _is_datasets_object(source):
        return _dataset_candidates(open_dataset_source(source))
    if isinstance(source, str) and source.startswith("hf:"):
        return _dataset_candidates(open_dataset_source(source))
    if isinstance(source, (list, tuple)):
        skipped: list = []
        return _file_candidates(_expand_paths(source, skipped), skipped)
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"unsupported image source of type {type(source).__name__}")
    p = Path(source).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"image source not found: {printable_path(os.path.abspath(p))[0]}")
    if is_saved_dataset(p):
        return _dataset_candidates(open_dataset_source(p))
    if p.is_dir():
        skipped = []
        files = scan_folder(p, skipped=skipped)
        if not files:
            unreadable = [e for e in skipped if e.code == "unreadable_folder"]
            if unreadable:
                raise unreadable[0]
            left_out = f"; left out: {'; '.join(str(e) for e in skipped[:3])}" if skipped else ""
            raise UsageError(f"no image files found in folder {printable_path(os.path.abspath(p))[0]} "
                             f"(extensions: {', '.join(sorted(IMAGE_EXTENSIONS))}){left_out}")
        return _file_candidates(files, skipped)
    if p.suffix.lower() in _LIST_FILE_EXTENSIONS:
        return _file_candidates(_read_list_file(p))
    return _file_candidates([p])


def iter_images(source: Any, *, skip_bad: bool = False, errors: list | None = None,
                min_side: int = DEFAULT_MIN_SIDE,
                max_pixels: int = DEFAULT_MAX_PIXELS) -> Iterator[ImageRecord]:
    """Yield validated RGB :class:`ImageRecord` objects from any supported source, lazily.

    ``source``: a folder (recursive, see :func:`scan_folder`), one image file, a ``.txt``/``.lst``
    file listing paths (relative to it), a list/tuple of paths (folders expanded), a
    ``datasets.Dataset``/``DatasetDict``/``IterableDataset``, a ``save_to_disk`` folder, or
    ``"hf:NAME[:SPLIT[:IMAGE_COLUMN]]"`` (see :func:`open_dataset_source`). Record sources are
    absolute paths (printable: see :func:`printable_path`), or ``"hf:NAME[SPLIT]#INDEX"`` for
    dataset items (SPLIT is ``all`` for a dataset without a split; NAME is the dataset name, the
    absolute ``save_to_disk`` path, or ``dataset-<fingerprint>`` for an unnamed in-memory dataset).
    A missing top-level path or an unusable dataset raises at once (not a bad image). With
    ``skip_bad=False`` the first bad image raises :class:`BadImageError`; with ``skip_bad=True``
    it is skipped and ``(source, reason)`` is appended to ``errors``. What a folder scan left out
    (see :func:`scan_folder`) is appended to ``errors`` first; a folder that cannot be listed raises
    unless ``skip_bad``. One image is decoded at a time.
    """
    candidates = _resolve(source)
    return _generate(candidates, skip_bad, errors, min_side, max_pixels)


def _generate(candidates: _Candidates, skip_bad: bool, errors: list | None, min_side: int,
              max_pixels: int) -> Iterator[ImageRecord]:
    # what the scan left out is listed first; a folder that cannot be listed stops the run without skip_bad
    for e in candidates.skipped:
        if e.code == "unreadable_folder" and not skip_bad:
            raise BadImageError(e.source, f"{e.reason} (skip_bad / --skip-bad lists it and goes on)", e.code)
        if errors is not None:
            errors.append((e.source, e.reason))
    for _name, loader in candidates.items():
        try:
            record = loader(min_side, max_pixels)
        except BadImageError as e:
            if not skip_bad:
                raise
            if errors is not None:
                errors.append((e.source, e.reason))
            continue
        yield record


def count_images(source: Any) -> int | None:
    """Number of candidate items in ``source`` without decoding any image (for progress bars).

    ``None`` when unknown: streaming datasets, and ``"hf:NAME"`` hub names (counting them would
    need a download); a local ``save_to_disk`` folder named after ``hf:`` is counted.
    """
    if isinstance(source, str) and source.startswith("hf:"):
        name = _parse_hf_spec(source)[0]
        if not is_saved_dataset(Path(name).expanduser()):
            return None
    return _resolve(source).count


# --------------------------------------------------------------------------- datasets


@dataclass
class DatasetSource:
    """A ``datasets`` dataset ready to read: one split, the image column found, a display name."""

    dataset: Any
    name: str
    split: str
    image_column: str


def _parse_hf_spec(spec: str) -> tuple[str, str | None, str | None]:
    """``"hf:NAME[:SPLIT[:IMAGE_COLUMN]]"`` -> (name, split or None, column or None)."""
    parts = spec[len("hf:"):].split(":")
    if not parts[0] or len(parts) > 3:
        raise UsageError(f"bad dataset source {spec!r}; expected hf:NAME[:SPLIT[:IMAGE_COLUMN]]")
    parts += [""] * (3 - len(parts))
    return parts[0], parts[1] or None, parts[2] or None


def _pick_split(dsdict: Any, split: str | None, name: str) -> tuple[Any, str]:
    """Select a split of a DatasetDict: the given one, else 'train', else the only one."""
    names = list(dsdict.keys())
    if split is None:
        if "train" in names:
            split = "train"
        elif len(names) == 1:
            split = names[0]
        else:
            raise UsageError(f"dataset {name} has splits {names}; name one (hf:NAME:SPLIT)")
    if split not in names:
        raise UsageError(f"dataset {name} has no split {split!r}; available: {names}")
    return dsdict[split], split


def _detect_image_column(features: Any, name: str) -> str:
    """The first column whose feature type is ``datasets.Image``; else a ValueError."""
    import datasets

    if features is None:
        raise UsageError(f"dataset {name} has unknown features; name the image column "
                         "(hf:NAME:SPLIT:IMAGE_COLUMN)")
    for col, feat in features.items():
        if isinstance(feat, datasets.Image):
            return col
    described = ", ".join(f"{c} ({type(f).__name__})" for c, f in features.items())
    raise UsageError(f"dataset {name} has no column of type datasets.Image; columns: "
                     f"{described}. Name the image column (hf:NAME:SPLIT:IMAGE_COLUMN)")


def open_dataset_source(source: Any, *, split: str | None = None,
                        image_column: str | None = None) -> DatasetSource:
    """Open a ``datasets`` source: object, ``save_to_disk`` folder, or ``"hf:NAME[:SPLIT[:COL]]"``.

    ``hf:`` names that are ``save_to_disk`` folders use ``load_from_disk``, others
    ``datasets.load_dataset(NAME, split=SPLIT)`` (SPLIT defaults to ``"train"``). The image
    column must exist; if not given, the first ``datasets.Image`` column is used.
    """
    import datasets

    if isinstance(source, str) and source.startswith("hf:"):
        name, spec_split, spec_col = _parse_hf_spec(source)
        split, image_column = split or spec_split, image_column or spec_col
        local = Path(name).expanduser()
        if is_saved_dataset(local):
            ds, name = datasets.load_from_disk(str(local)), os.path.abspath(local)
        else:
            split = split or "train"
            try:
                ds = datasets.load_dataset(name, split=split)
            except ConnectionError as error:  # offline, or the Hub unreachable: datasets found no local copy
                from .errors import SdauditError

                raise SdauditError(f"dataset '{source}' is not in the local Hugging Face cache and the Hub cannot "
                                   f"be reached ({error}); load it once with internet access or pass a "
                                   "save_to_disk folder") from None
    elif _is_datasets_object(source):
        ds = source
        name = getattr(getattr(ds, "info", None), "dataset_name", None) or (
            f"dataset-{str(getattr(ds, '_fingerprint', 'memory'))[:16]}")
    else:
        local = Path(source).expanduser()
        if not is_saved_dataset(local):
            raise UsageError(f"{os.path.abspath(local)} is not a datasets save_to_disk folder")
        ds, name = datasets.load_from_disk(str(local)), os.path.abspath(local)
    return _finish_dataset_source(ds, name, split, image_column)


def _finish_dataset_source(ds: Any, name: str, split: str | None,
                           image_column: str | None) -> DatasetSource:
    """Pick the split, check/detect the image column, and switch off automatic decoding."""
    import datasets

    if isinstance(ds, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        ds, split = _pick_split(ds, split, name)
    split = split or (str(ds.split) if getattr(ds, "split", None) is not None else "all")
    features = ds.features
    if image_column is None:
        image_column = _detect_image_column(features, name)
    elif features is not None and image_column not in features:
        raise UsageError(f"dataset {name} has no column {image_column!r}; columns: "
                         f"{list(features)}")
    if features is not None and isinstance(features[image_column], datasets.Image):
        ds = ds.cast_column(image_column, datasets.Image(decode=False))
    if isinstance(ds, datasets.Dataset):
        ds = ds.with_format(None)
    return DatasetSource(ds, name, split, image_column)


def _dataset_candidates(src: DatasetSource) -> _Candidates:
    """Candidates over one image column; map-style datasets are read by index, one at a time."""
    import datasets

    ds = src.dataset.select_columns([src.image_column])
    count = len(ds) if isinstance(ds, datasets.Dataset) else None

    def items():
        rows = (ds[i] for i in range(count)) if count is not None else iter(ds)
        for i, row in enumerate(rows):
            name = f"hf:{src.name}[{src.split}]#{i}"
            yield name, partial(_load_cell, row[src.image_column], name)
    return _Candidates(count, items)


def _load_cell(value: Any, name: str, min_side: int, max_pixels: int) -> ImageRecord:
    return decode_dataset_value(value, name, min_side=min_side, max_pixels=max_pixels)


# --------------------------------------------------------------------------- geometry


def center_crop_square(img: Image.Image) -> Image.Image:
    """Centre crop to a square with the short side's length (offset ``floor((long-short)/2)``)."""
    w, h = img.size
    s = min(w, h)
    left, top = (w - s) // 2, (h - s) // 2
    return img.crop((left, top, left + s, top + s))


def prepare_image(img: Image.Image, size: int) -> Image.Image:
    """Centre crop to square, then resize to ``size`` x ``size`` pixels with PIL BICUBIC; RGB out.

    Non-RGB input is first converted by :func:`to_rgb`. No resize if already the right size.
    """
    if size < 1:
        raise UsageError(f"size must be >= 1 pixel, got {size}")
    rgb = to_rgb(img, "<in-memory image>")
    square = center_crop_square(rgb)
    if square.size == (size, size):
        return square
    return square.resize((size, size), Image.Resampling.BICUBIC)


# --------------------------------------------------------------------------- demo set


def _skimage_data_dir() -> Path:
    """scikit-image's bundled data folder (via importlib.resources, else skimage.data.data_dir)."""
    try:
        return Path(str(resources.files("skimage.data")))
    except (ModuleNotFoundError, TypeError):  # pragma: no cover - unusual installs
        import skimage.data

        return Path(skimage.data.data_dir)


def demo_image_paths() -> list[Path]:
    """Paths of the bundled demo set (:data:`DEMO_IMAGE_NAMES`, all RGB photos), sorted by name.

    Raises FileNotFoundError naming any image missing from the scikit-image installation.
    """
    root = _skimage_data_dir()
    paths = [root / name for name in DEMO_IMAGE_NAMES]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"demo images missing from scikit-image's data folder {root}: "
                                f"{', '.join(missing)} (reinstall scikit-image)")
    return sorted(paths, key=lambda p: p.name)
