"""Adding uploaded pictures to a store (:class:`ImageAdder`), and shrinking huge ones first
(:func:`shrink_upload`).

An upload is checked like any input (:func:`sdaudit.images.load_image`), kept beside the store under
``uploads/<sha256 prefix>/`` and extracted with the store's own settings by the explorer's model
(loaded on first use, and only if it is the store's model). A picture already in the store (same
pixels) is not added again.

Why shrink: the pipeline (validate, hash, convert, centre-crop, resize) keeps several full-size copies of
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

import os
import shutil
import threading
import warnings
from pathlib import Path
from typing import Any, Sequence

from PIL import Image

from ..errors import SdauditError
from ..images import IMAGE_EXTENSIONS, BadImageError, load_image, to_rgb
from .errors import ExplorerError
from .stores import StoreHandle, image_summary

#: The shrunk centre square keeps at least this many times the store's input size per side.
KEEP = 2
#: Decompression-bomb guard for uploads, in pixels (about 8000 x 8000).
UPLOAD_MAX_PIXELS = 64_000_000
#: Uploads decoded at the same time (each may hold one full-size picture for a moment).
DECODE_SLOTS = 2
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


def _model_name(model: Any) -> str | None:
    """The model's name; a spec string is parsed here, so a bad one fails at start-up."""
    if isinstance(model, str):
        from ..models import parse_model_spec  # lazily: the models package imports torch

        return parse_model_spec(model).name
    return None if model is None else model.name


def _kept_name(name: str, shrunk: bool) -> str:
    """A safe file name for a kept upload: its stem's letters, digits, '-' and '_', a known extension."""
    stem, ext = os.path.splitext(name)
    ext = ext.lower() if ext.lower() in IMAGE_EXTENSIONS else ".img"
    if shrunk:
        ext = ".png"  # the shrunk picture
    safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in stem)[:60] or "upload"
    return safe + ext


class ImageAdder:
    """Adds uploaded pictures to the explorer's stores with its model.

    ``model``: a spec string (loaded on first use), a loaded model, or None (adding is off). Each
    store's ``upload_error`` says why uploads are refused for it, if they are.
    """

    def __init__(self, model: Any, handles: Sequence[StoreHandle], *, max_pixels: int = UPLOAD_MAX_PIXELS):
        self.spec = model
        self.handles = list(handles)
        self.max_pixels = int(max_pixels)
        self.name = _model_name(model)
        self._model = None if isinstance(model, (str, type(None))) else model
        self._lock = threading.Lock()
        # at most this many uploads are decoded at once: each may briefly hold one full-size picture
        self._decode_slots = threading.BoundedSemaphore(DECODE_SLOTS)
        for h in self.handles:
            if model is None:
                h.upload_error = ("adding images is off: this explorer was started without --model; restart it "
                                  "with 'sdaudit explore STORE --model MODEL' (the store's own model)")
            elif self._model is not None:
                h.upload_error = self._mismatch(h)

    @property
    def enabled(self) -> bool:
        return self.spec is not None

    def _mismatch(self, h: StoreHandle) -> str | None:
        ident = self._model.identity()
        if ident != h.store.config.get("model"):
            return (f"the explorer's model ({ident.get('name')}) is not the model of store '{h.path}' "
                    f"({(h.store.config.get('model') or {}).get('name')}); images can only be added with the "
                    "store's own model")
        return None

    def model(self):
        """The loaded model (loaded now if it is not yet); each store's ``upload_error`` is updated."""
        with self._lock:
            if self._model is None:
                from ..models import load_model  # lazily: the models package imports torch

                self._model = load_model(self.spec)
                for h in self.handles:
                    h.upload_error = self._mismatch(h)
            return self._model

    def add(self, h: StoreHandle, tmp_path: Path, name: str) -> dict:
        """Validate an uploaded file, keep it next to the store and extract it with the store's settings."""
        if not self.enabled:
            raise ExplorerError(400, h.upload_error or "adding images is off (no --model)")
        sha256, note = self._check_picture(h, tmp_path, name)
        for entry in h.store.images:
            if entry.sha256 == sha256:
                return {"added": False, "image": image_summary(entry), "store": h.summary(),
                        "message": f"'{name}' is already in the store as image {entry.index}"}
        model = self._model_for(h)
        with h.write_lock:
            self._extract(h, model, self._keep(h, tmp_path, _kept_name(name, bool(note)), sha256), name)
        entry = next((e for e in h.store.images if e.sha256 == sha256), None)
        if entry is None:  # pragma: no cover - extract_like adds it or raises
            raise ExplorerError(409, f"'{name}' was not added")
        return {"added": True, "image": image_summary(entry), "store": h.summary(),
                "message": f"added '{name}' as image {entry.index}" + (f"; {note}" if note else "")}

    def _check_picture(self, h: StoreHandle, tmp_path: Path, name: str) -> tuple[str, str | None]:
        """(sha256 of its pixels, a note if it was shrunk) of an accepted picture; 400/413 if refused."""
        # a picture far larger than the model's input is shrunk first (memory), then checked as usual
        with self._decode_slots:
            note = shrink_upload(tmp_path, size=int(h.store.config.get("size") or 512), max_pixels=self.max_pixels)
            try:
                record = load_image(tmp_path, max_pixels=self.max_pixels)
            except BadImageError as e:
                raise ExplorerError(413 if e.code == "too_large" else 400, f"'{name}' was refused: {e.reason}") from e
        return record.sha256, note  # extraction reads the file again; no decoded copy is kept meanwhile

    def _model_for(self, h: StoreHandle):
        """The model, if it loads and is the store's own; 409 otherwise."""
        try:
            model = self.model()
        except Exception as e:  # noqa: BLE001 - e.g. weights not on this machine
            raise ExplorerError(409, f"model '{self.spec}' could not be loaded: {e}") from e
        if h.upload_error:
            raise ExplorerError(409, h.upload_error)
        return model

    @staticmethod
    def _keep(h: StoreHandle, tmp_path: Path, file_name: str, sha256: str) -> Path:
        """Copy the upload beside the store (caller holds the write lock); one folder per picture."""
        folder = h.path / "uploads" / sha256[:16]  # names never collide
        folder.mkdir(parents=True, exist_ok=True)
        final = folder / file_name
        if not final.exists():
            shutil.copyfile(tmp_path, final)
        return final

    @staticmethod
    def _extract(h: StoreHandle, model, path: Path, name: str) -> None:
        """Extract one kept picture into the store (caller holds the write lock), then reopen the store."""
        from ..extraction import extract_like  # lazily: extraction imports torch

        try:
            report = extract_like(h.path, model, [str(path)], progress=False)
        except (SdauditError, ValueError, RuntimeError) as e:  # StoreError, a model that does not fit, OOM
            raise ExplorerError(409, f"cannot add '{name}' to store {h.index}: {e}") from e
        finally:
            h.reopen()
        if report.errors:
            raise ExplorerError(400, f"'{name}' was refused: {report.errors[0][1]}")
