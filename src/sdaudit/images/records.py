"""What every image source yields: the validated :class:`ImageRecord`, the :class:`BadImageError` that names a
rejected source and why, the file name endings a folder scan reads, and the validation defaults."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from ..errors import SdauditError
from ..image_ref import ImageRef

#: File name endings (lower case) that a folder scan treats as images.
IMAGE_EXTENSIONS = frozenset(
    {".png", ".jpg", ".jpeg", ".jpe", ".jfif", ".bmp", ".gif", ".tif", ".tiff", ".webp",
     ".ppm", ".pgm", ".pbm", ".pnm", ".tga"}
)
#: Default decompression-bomb guard in pixels (Pillow's error threshold at its defaults).
DEFAULT_MAX_PIXELS = 178_956_970
#: Default minimum short side in pixels: one latent token of the SD VAE (downsampling 8).
DEFAULT_MIN_SIDE = 8
#: Image formats a folder scan does not take as they are: read when Pillow here can (a plugin such as
#: pillow-heif, or Pillow's own AVIF support), else listed as skipped (never dropped silently).
OTHER_IMAGE_EXTENSIONS = frozenset(
    {".avif", ".avifs", ".heic", ".heif", ".jxl", ".jp2", ".j2k", ".jpx", ".jpf", ".apng", ".qoi", ".psd", ".ico",
     ".svg", ".exr", ".hdr", ".dng", ".cr2", ".cr3", ".nef", ".arw", ".orf", ".rw2", ".raw"}
)


class BadImageError(SdauditError, ValueError):
    """An input image that cannot be used (the user's to fix). ``str()`` names the source and the reason.

    Also a ``ValueError``, so that callers catching that still catch it.

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


class ImageSourceError(SdauditError, ValueError):
    """An image source that cannot be read as a whole: a folder without images, a malformed ``hf:`` name,
    a dataset split or image column that does not exist."""


@dataclass(frozen=True)
class ImageRecord:
    """One validated image: 8-bit RGB at original (upright) size, plus provenance.

    ``notes`` lists the conversions applied (e.g. ``"alpha composited over white"``). ``source`` is
    always printable UTF-8 (see :func:`printable_path`); for a file whose name is not valid UTF-8,
    ``source_bytes`` holds the hex of the path's exact bytes (else None) and ``path`` the path to reopen.
    A record has no index until a run places it: :meth:`ref` gives its :class:`~sdaudit.image_ref.ImageRef`.
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

    def ref(self, index: int) -> ImageRef:
        """This image's reference as image ``index`` of a run (a store row, an audit image)."""
        return ImageRef(index, self.source, self.sha256, self.width, self.height, self.original_mode,
                        self.source_bytes)


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


