"""Anomaly labels kept by the explorer: :class:`LabelSet`, one per store, saved at every change.

The file is the published format (int64 ``.npy``, shape (K, 3), rows ``[image, x (column), y (row)]``
of each 2x2 patch's upper-left token); a sidecar JSON next to it (:func:`sidecar_path`) records the
layer and grid the rows refer to. Without a sidecar, an existing file is read the published way: on
:data:`~sdaudit.constants.PAPER_ANOMALY_LAYER`.

Concurrency: every edit holds the set's lock; files are written to a temporary name and renamed, so
a reader never sees half a file.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
import threading
from pathlib import Path
from typing import Any

import numpy as np

from ..analyses import LabelFileError, load_labels, validate_labels
from ..analyses.anomalies import best_patch
from ..constants import PAPER_ANOMALY_LAYER
from ..layer_names import normalize_name
from ..store import RepresentationStore
from .errors import ExplorerError

LABEL_SIDECAR_FORMAT = "sdaudit-anomaly-labels"

Row = tuple[int, int, int]


def sidecar_path(npy_path: Path) -> Path:
    """``labels.npy`` -> ``labels.json``: the sidecar that says which layer / grid the rows refer to."""
    return npy_path.with_suffix(".json")


def _atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path``, sync it and rename it into place."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=str(path.parent))
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _grid(store: RepresentationStore, layer: str) -> tuple[int, int]:
    return tuple(int(v) for v in store.layer_shape(layer)[1:])


def _sorted_rows(rows) -> list[Row]:
    """Rows as int triples, by image, then row (y), then column (x)."""
    return sorted((tuple(int(v) for v in r) for r in rows), key=lambda r: (r[0], r[2], r[1]))


def _sidecar_layer(side: Path, store: RepresentationStore) -> str:
    """The layer a label sidecar names, checked against the store (layer present, same grid)."""
    try:
        meta = json.loads(side.read_text(encoding="utf-8"))
        layer = normalize_name(str(meta["layer"]))
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise LabelFileError(f"{side}: unreadable label sidecar ({type(e).__name__}: {e})") from e
    if layer not in store.layers:
        raise LabelFileError(f"{side}: labels are on layer '{layer}', which store '{store.path}' lacks")
    if "grid" in meta and list(meta["grid"]) != list(_grid(store, layer)):
        raise LabelFileError(f"{side}: labels are on a {meta['grid']} grid, but layer '{layer}' of store "
                             f"'{store.path}' has {list(_grid(store, layer))}")
    return layer


class LabelSet:
    """The anomaly labels of one store: rows [image, x, y] on the grid of one layer, kept in a file."""

    def __init__(self, path: Path, store: RepresentationStore):
        self.path = Path(path)
        self.lock = threading.Lock()
        self.layer: str | None = None
        self.grid: tuple[int, int] | None = None
        self.rows: list[Row] = []
        self.saved = False
        if self.path.exists():
            self._load_existing(store)

    def _load_existing(self, store: RepresentationStore) -> None:
        side = sidecar_path(self.path)
        if side.exists():
            layer = _sidecar_layer(side, store)
        elif PAPER_ANOMALY_LAYER in store.layers:
            layer = PAPER_ANOMALY_LAYER  # the published convention
        else:
            raise LabelFileError(f"{self.path}: no sidecar {side.name} says which layer the labels are on, and "
                                 f"store '{store.path}' has no {PAPER_ANOMALY_LAYER} (the published labels' layer)")
        grid = _grid(store, layer)
        rows = load_labels(self.path, grid=grid, n_images=store.num_images)
        self.layer, self.grid = layer, grid
        self.rows = [tuple(int(v) for v in r) for r in rows]
        self.saved = True

    def to_json(self) -> dict:
        return {"path": str(self.path), "layer": self.layer, "grid": list(self.grid) if self.grid else None,
                "rows": [list(r) for r in self.rows], "saved": self.saved}

    def _sidecar(self, store: RepresentationStore) -> dict:
        return {"format": LABEL_SIDECAR_FORMAT, "version": 1, "layer": self.layer,
                "grid": list(self.grid) if self.grid else None,
                "rows": "[image, x (column), y (row)] of each 2x2 patch's upper-left token on this grid",
                "store": str(store.path), "model": store.config.get("model", {}).get("name"),
                "num_images": store.num_images, "count": len(self.rows)}

    def _save(self, store: RepresentationStore) -> None:
        """Write the .npy and its sidecar (caller holds the lock); a write that fails is a 409."""
        arr = validate_labels(np.array(self.rows, np.int64).reshape(-1, 3), grid=self.grid,
                              n_images=store.num_images, source=str(self.path))
        buf = io.BytesIO()
        np.save(buf, arr)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            _atomic_write(self.path, buf.getvalue())
            _atomic_write(sidecar_path(self.path), (json.dumps(self._sidecar(store), indent=1) + "\n").encode())
        except OSError as e:
            self.saved = False
            raise ExplorerError(409, f"cannot write labels to '{self.path}': {e.strerror or e}") from e
        self.saved = True

    def toggle(self, store: RepresentationStore, layer: str, token: tuple[int, int, int],
               norms: np.ndarray | None) -> dict:
        """Remove the label whose 2x2 patch covers ``token`` = (image, x, y), or add one there.

        A new label's patch is the 2x2 window containing the token with the largest summed norm
        (``norms``: the image's (h, w) norm map; the detector's rule, :func:`best_patch`); with
        ``norms=None`` the token is the patch's upper-left corner (clipped to the grid).
        """
        image, x, y = token
        with self.lock:
            self._check_layer(layer)
            if not self.rows:
                self.layer, self.grid = layer, _grid(store, layer)
            hits = [r for r in self.rows if r[0] == image and r[1] <= x <= r[1] + 1 and r[2] <= y <= r[2] + 1]
            if hits:
                row = min(hits, key=lambda r: abs(r[1] - x) + abs(r[2] - y))
                self.rows.remove(row)
                action = "removed"
            else:
                row = (int(image), *self._patch_at(x, y, norms))
                self.rows = _sorted_rows([*self.rows, row])
                action = "added"
            self._save(store)
            return {"action": action, "row": list(row), **self.to_json()}

    def _check_layer(self, layer: str) -> None:
        """Labels are edited on one layer at a time (caller holds the lock)."""
        if self.rows and self.layer != layer:
            raise ExplorerError(409, f"the labels of this store are on layer '{self.layer}' "
                                     f"({self.grid[0]}x{self.grid[1]}); switch to that layer to edit them, "
                                     "or clear them to label on another layer")

    def _patch_at(self, x: int, y: int, norms: np.ndarray | None) -> tuple[int, int]:
        """(x, y) of the upper-left token of a new label's patch at token (x, y)."""
        h, w = self.grid
        if norms is not None:
            y0, x0 = best_patch(norms, y, x)
        else:
            y0, x0 = min(y, max(h - 2, 0)), min(x, max(w - 2, 0))
        return int(x0), int(y0)

    def replace(self, store: RepresentationStore, layer: str, rows: Any) -> dict:
        """Replace every label by ``rows`` (validated on ``layer``'s grid; duplicates dropped) and save."""
        grid = _grid(store, layer)
        arr = validate_labels(rows, grid=grid, n_images=store.num_images, source="labels")
        with self.lock:
            self.layer, self.grid = layer, grid
            self.rows = _sorted_rows(set(tuple(int(v) for v in r) for r in arr))
            self._save(store)
            return self.to_json()

    def npy_bytes(self) -> bytes:
        """The labels in the published ``.npy`` format."""
        with self.lock:
            buf = io.BytesIO()
            np.save(buf, np.array(self.rows, np.int64).reshape(-1, 3))
            return buf.getvalue()
