"""Loading and validating one image: a file (:func:`load_image`) or a ``datasets`` cell
(:func:`decode_dataset_value`), giving an :class:`~sdaudit.images.records.ImageRecord` holding an 8-bit RGB
``PIL.Image`` at its original size, or raising :class:`~sdaudit.images.records.BadImageError` naming the
source and the reason. Cropping and resizing happen later (:mod:`sdaudit.images.prepare`).

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

Before conversion (:mod:`sdaudit.images.convert`): EXIF orientation (files and encoded bytes) is
applied with ``ImageOps.exif_transpose``, so width/height are those of the upright picture
(unreadable EXIF data: the image is used as stored, with a note in ``ImageRecord.notes``); of a
multi-frame file (animated GIF/PNG/WebP, multi-page TIFF) the first frame is used.
"""

from __future__ import annotations

import dataclasses
import io
import os
import stat
import warnings
from pathlib import Path
from typing import Any

from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from .convert import has_transparency, pixel_sha256, to_rgb
from .records import DEFAULT_MAX_PIXELS, DEFAULT_MIN_SIDE, BadImageError, ImageRecord, printable_path

_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError,
                  KeyError, ZeroDivisionError, MemoryError, Image.DecompressionBombError)
_warned_truncated = False


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
    if has_transparency(upright):
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


