"""The explorer's server-side state (:class:`ExplorerState`): the open stores, caches of what was read
from them, and the image adder.

Everything here is plain Python (no web framework), so it can be tested on its own; the routers map it
onto HTTP. Errors a client can cause are raised as
:class:`~sdaudit.explorer.errors.ExplorerError` with an HTTP status and a message.

Concurrency: store *reads* run concurrently (zarr reads are thread-safe, and committed images
never change). Store *writes* (uploads) hold one lock per store; afterwards the store is reopened
and swapped in atomically. Label edits hold one lock per label set (:mod:`sdaudit.explorer.labels`).
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from .. import __version__
from ..analyses import MEASURES, NonFiniteInputError, detect_anomalies
from ..constants import PAPER_ANOMALY_LAYER
from ..errors import UsageError
from ..store import StoreError
from .cache import ByteLRU
from .errors import ExplorerError
from .limits import MAX_UPLOAD_BYTES
from .presets import compute_presets, finite_or_none
from .stores import StoreHandle
from .uploads import UPLOAD_MAX_PIXELS, ImageAdder

PathLike = str | os.PathLike


def _label_paths(labels_path: PathLike | Sequence[PathLike] | None, n_stores: int) -> list:
    """One label file per store at most, in the stores' order (None: each store's default)."""
    if labels_path is None:
        return []
    paths = [labels_path] if isinstance(labels_path, (str, os.PathLike)) else list(labels_path)
    if len(paths) > n_stores:
        raise UsageError(f"{len(paths)} label files for {n_stores} stores; give at most one per store "
                         "(in the stores' order)")
    return paths


def _detection(norms: np.ndarray, row: tuple, score: float, rel: float) -> dict:
    """One detector finding as the API lists it, with its peak token and its patch's size."""
    img, x, y = row
    gh, gw = norms.shape
    patch = norms[y:y + 2, x:x + 2]
    py, px = np.unravel_index(int(np.argmax(patch)), patch.shape)
    return {"image": int(img), "x": int(x), "y": int(y), "score": finite_or_none(score),
            "relative_norm": finite_or_none(rel), "peak": [int(y + py), int(x + px)],
            "patch": [min(2, gh - y), min(2, gw - x)]}


class ExplorerState:
    """All open stores, their caches, labels and the optional model for uploads."""

    def __init__(self, stores: Sequence[PathLike], model: Any = None,
                 labels_path: PathLike | Sequence[PathLike] | None = None, *,
                 max_upload_bytes: int = MAX_UPLOAD_BYTES, upload_max_pixels: int = UPLOAD_MAX_PIXELS,
                 cache_bytes: int = 256 * 2**20):
        if not stores:
            raise StoreError("no store given; pass at least one store folder")
        labels = _label_paths(labels_path, len(stores))
        self.handles = [StoreHandle(i, Path(p), labels[i] if i < len(labels) else None)
                        for i, p in enumerate(stores)]
        self.max_upload_bytes = int(max_upload_bytes)
        self.adder = ImageAdder(model, self.handles, max_pixels=upload_max_pixels)
        self._features = ByteLRU(cache_bytes)
        self._thumbs = ByteLRU(64 * 2**20)
        self._detections = ByteLRU(16 * 2**20)

    def handle(self, s: int) -> StoreHandle:
        """The store with index ``s``; 404 naming the open indices otherwise."""
        if not isinstance(s, int) or not 0 <= s < len(self.handles):
            raise ExplorerError(404, f"unknown store index {s}: {len(self.handles)} store(s) are open "
                                     f"(indices 0..{len(self.handles) - 1})")
        return self.handles[s]

    def info(self) -> dict:
        return {"version": __version__, "measures": list(MEASURES), "stores": [h.summary() for h in self.handles],
                "model": self.adder.name, "max_upload_bytes": self.max_upload_bytes,
                "reference_layer": PAPER_ANOMALY_LAYER}

    def features(self, h: StoreHandle, layer: str, i: int) -> tuple[np.ndarray, tuple[int, int, int]]:
        """Token-major (h*w, C) little-endian array of one image at one layer (store dtype) and (C, h, w)."""
        key = (h.index, str(h.path), layer, i)
        hit = self._features.get(key)
        if hit is None:
            x = h.store.read(layer, i)  # (C, h, w)
            dt = np.dtype("<f2") if x.dtype == np.float16 else np.dtype("<f4")
            tm = np.ascontiguousarray(x.reshape(x.shape[0], -1).T.astype(dt, copy=False))
            hit = (tm, tuple(int(v) for v in x.shape))
            self._features.put(key, hit, tm.nbytes)
        return hit

    def feature_stack(self, h: StoreHandle, layer: str, images: list[int]) -> np.ndarray:
        """(N, C, h, w) float32 of some images."""
        parts = []
        for i in images:
            tm, (c, gh, gw) = self.features(h, layer, i)
            parts.append(tm.astype(np.float32).T.reshape(c, gh, gw))
        return np.stack(parts)

    def norms(self, h: StoreHandle, layer: str, i: int) -> np.ndarray:
        """The (h, w) token norm map; NonFiniteInputError (409) if the layer holds NaN/Inf for the image
        (a NaN cannot be sent as JSON, and a norm map over it would mislead)."""
        tm, (c, gh, gw) = self.features(h, layer, i)
        t = tm.astype(np.float32)
        out = np.sqrt(np.einsum("pc,pc->p", t, t)).reshape(gh, gw)
        bad = int(np.count_nonzero(~np.isfinite(out)))
        if bad:
            raise NonFiniteInputError(layer, bad, [i], name="token norms")
        return out

    def thumbnail(self, h: StoreHandle, i: int, size: int | None) -> bytes:
        """The prepared model input of image ``i`` as PNG, shrunk to ``size`` px if that is smaller."""
        key = (h.index, str(h.path), i, size)
        hit = self._thumbs.get(key)
        if hit is None:
            img = Image.fromarray(h.store.read_inputs(i), "RGB")
            if size and size < img.width:
                img = img.resize((size, size), Image.Resampling.LANCZOS)
            buf = io.BytesIO()
            img.save(buf, format="PNG", optimize=False, compress_level=3)
            hit = buf.getvalue()
            self._thumbs.put(key, hit, len(hit))
        return hit

    def detections(self, h: StoreHandle, layer: str, i: int) -> list[dict]:
        """The detector's findings on image ``i`` at ``layer`` (cached)."""
        key = (h.index, str(h.path), layer, i)
        hit = self._detections.get(key)
        if hit is None:
            res = detect_anomalies(self.feature_stack(h, layer, [i]), image_indices=[i], layer=layer)
            norms = self.norms(h, layer, i)
            hit = [_detection(norms, tuple(row), score, rel)
                   for row, score, rel in zip(res.rows.tolist(), res.scores.tolist(), res.relative_norms.tolist())]
            self._detections.put(key, hit, 200 * (len(hit) + 1))
        return hit

    def presets(self, h: StoreHandle) -> dict:
        """The store's presets, recomputed when images were added since."""
        with h.presets_lock:
            n = h.store.num_images
            if h.presets is None or h.presets[0] != n:
                h.presets = (n, compute_presets(h.store, lambda layer, i: self.detections(h, layer, i)))
            return h.presets[1]
