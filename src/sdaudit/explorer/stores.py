"""One open store of the explorer (:class:`StoreHandle`) and the checked lookups on it.

A request names a store by index, a layer by name, images by index and a token by (row, col); each
lookup here refuses a bad value with an :class:`~sdaudit.explorer.errors.ExplorerError` whose message
names the parameter at fault (the FastAPI dependencies in :mod:`sdaudit.explorer.deps` call them).
"""

from __future__ import annotations

import threading
from pathlib import Path

from ..constants import PAPER_ANOMALY_LAYER
from ..layer_names import block_of, kind_of, normalize_name
from ..settings import EXTRACTION_FIELDS
from ..store import ImageEntry, open_store
from .errors import ExplorerError
from .labels import LabelSet

#: At most this many images in one request.
MAX_IMAGES_PER_REQUEST = 64
#: Longer layer names are refused without looking them up.
MAX_LAYER_NAME = 200


class StoreHandle:
    """One open store, addressed by its index in the explorer; reopened after an upload commits."""

    def __init__(self, index: int, path: Path, labels_path: Path | None):
        self.index = index
        self.path = Path(path)
        self.store = open_store(self.path)
        self.write_lock = threading.Lock()
        self.labels = LabelSet(Path(labels_path) if labels_path else self.path / "anomaly_labels.npy", self.store)
        self.presets: tuple[int, dict] | None = None
        self.presets_lock = threading.Lock()
        self.upload_error: str | None = None  # why uploads are refused for this store, if they are

    def reopen(self) -> None:
        self.store = open_store(self.path)

    @property
    def reference_layer(self) -> str | None:
        """The paper's anomaly layer, if this store has it."""
        return PAPER_ANOMALY_LAYER if PAPER_ANOMALY_LAYER in self.store.layers else None

    def summary(self) -> dict:
        """The store as ``/api/info`` lists it: model, extraction settings, layers with their grids."""
        s = self.store
        cfg = s.config
        model = cfg.get("model") or {}
        layers = []
        for name in s.layers:
            c, h, w = s.layer_shape(name)
            layers.append({"name": name, "block": block_of(name), "kind": kind_of(name), "channels": c,
                           "rows": h, "cols": w})
        return {"index": self.index, "path": str(self.path), "name": self.path.name,
                "model": model.get("name"), "model_identity": model,
                **{name: cfg.get(name) for name in EXTRACTION_FIELDS}, "dtype": cfg.get("dtype"), "num_images": s.num_images, "layers": layers,
                "reference_layer": self.reference_layer,
                "can_upload": self.upload_error is None, "upload_error": self.upload_error}

    # ----- checked lookups ------------------------------------------------------------------------
    def layer(self, layer: str | None) -> str:
        """The store's name of ``layer`` (any accepted spelling); 400 if missing, 404 if unknown."""
        if not layer:
            raise ExplorerError(400, "missing 'layer'")
        if len(layer) > MAX_LAYER_NAME:
            raise ExplorerError(404, "unknown layer (name too long)")
        name = normalize_name(layer)
        if name not in self.store.layers:
            raise ExplorerError(404, f"unknown layer '{layer[:100]}' for store {self.index}; "
                                     "see /api/info for its layers")
        return name

    def image(self, i: int) -> int:
        """``i`` if it is a committed image of this store, else 404."""
        n = self.store.num_images
        if not isinstance(i, int) or not 0 <= i < n:
            raise ExplorerError(404, f"image index {i} out of range: store {self.index} has {n} images")
        return i

    def images(self, spec: str | None) -> list[int]:
        """Image indices from a comma-separated list (plain ASCII digits), in order, without repeats."""
        if spec is None or not spec.strip():
            raise ExplorerError(400, "missing 'images' (comma-separated image indices, e.g. images=0,1)")
        out: list[int] = []
        for part in (p.strip() for p in spec.split(",")):
            if not part:
                continue
            # plain ASCII digits only: int() would also take '+1', '1_0' and other scripts' digits
            if not (part.isascii() and part.isdigit() and len(part) <= 12):
                raise ExplorerError(400, f"bad image index '{part[:20]}' (expected integers separated by commas)")
            i = self.image(int(part))
            if i not in out:
                out.append(i)
        if not out:
            raise ExplorerError(400, "no image indices given")
        if len(out) > MAX_IMAGES_PER_REQUEST:
            raise ExplorerError(400, f"too many images in one request ({len(out)} > {MAX_IMAGES_PER_REQUEST})")
        return out

    def grid(self, layer: str) -> tuple[int, int]:
        """(rows, cols) of a layer's token grid."""
        _, h, w = self.store.layer_shape(layer)
        return int(h), int(w)

    def token(self, layer: str, row: int, col: int) -> tuple[int, int]:
        """(row, col) if it lies on the layer's grid, else 404."""
        gh, gw = self.grid(layer)
        if not (0 <= row < gh and 0 <= col < gw):
            raise ExplorerError(404, f"token (row {row}, col {col}) outside the {gh}x{gw} grid of '{layer}'")
        return row, col


def image_summary(entry: ImageEntry) -> dict:
    """One committed image as the API lists it (``name``: the last part of its source)."""
    source = entry.source
    # POSIX paths only: a backslash is part of a name (e.g. the escape of a non-UTF-8 byte, caf\xe9.png)
    name = source.rstrip("/").split("/")[-1] or source
    return {"index": entry.index, "name": name, "source": source, "width": entry.width, "height": entry.height,
            "mode": entry.mode, "sha256": entry.sha256}
