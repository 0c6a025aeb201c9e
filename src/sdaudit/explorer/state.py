"""The explorer's server-side state: open stores, caches, anomaly labels, presets, uploads.

Everything here is plain Python (no web framework), so it can be tested on its own; ``app.py``
maps it onto HTTP. Errors a client can cause are raised as :class:`ExplorerError` with an HTTP
status and a message.

Concurrency: store *reads* run concurrently (zarr reads are thread-safe, and committed images
never change). Store *writes* (uploads) hold one lock per store; afterwards the store is reopened
and swapped in atomically. Label edits and label files hold one lock per label set; files are
written to a temporary name and renamed, so a reader never sees half a file.
"""

from __future__ import annotations

import io
import json
import math
import os
import shutil
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..analyses import LabelFileError, NonFiniteInputError, detect_anomalies, load_labels, validate_labels
from ..errors import SdauditError, UsageError
from ..layers import block_of, kind_of, normalize_name
from ..store import RepresentationStore, StoreError, open_store
from .uploads import shrink_upload

#: The layer the published labels were made on (32x32 for SD at 512 px).
REFERENCE_LAYER = "up_blocks[1].upsamplers[0]"
#: Largest accepted upload (image or label file), in bytes.
MAX_UPLOAD_BYTES = 20 * 1024 * 1024
#: Decompression-bomb guard for uploads, in pixels (about 8000 x 8000).
UPLOAD_MAX_PIXELS = 64_000_000
#: Uploads decoded at the same time (each may hold one full-size picture for a moment).
DECODE_SLOTS = 2
#: At most this many images in one request.
MAX_IMAGES_PER_REQUEST = 64
#: Images scanned for presets: positional/corner statistics, anomaly search.
PRESET_IMAGES = 4
PRESET_ANOMALY_IMAGES = 64
LABEL_SIDECAR_FORMAT = "sdaudit-anomaly-labels"


class ExplorerError(SdauditError):
    """A request the explorer refuses; ``status`` is the HTTP status, ``detail`` the message."""

    def __init__(self, status: int, detail: str):
        super().__init__(detail)
        self.status = status
        self.detail = detail


class _LRU:
    """A thread-safe LRU cache bounded by the total size (``nbytes``) of its values."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._items: OrderedDict = OrderedDict()
        self._sizes: dict = {}
        self._total = 0
        self._lock = threading.Lock()

    def get(self, key):
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        return None

    def put(self, key, value, size: int) -> None:
        with self._lock:
            if key in self._items:
                self._total -= self._sizes.pop(key)
                del self._items[key]
            if size > self.max_bytes:
                return
            self._items[key] = value
            self._sizes[key] = size
            self._total += size
            while self._total > self.max_bytes:
                old, _ = self._items.popitem(last=False)
                self._total -= self._sizes.pop(old)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._sizes.clear()
            self._total = 0


# ----------------------------------------------------------------------------------------- labels
def sidecar_path(npy_path: Path) -> Path:
    """``labels.npy`` -> ``labels.json``: the sidecar that says which layer / grid the rows refer to."""
    return npy_path.with_suffix(".json")


def _atomic_write(path: Path, data: bytes) -> None:
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


class LabelSet:
    """The anomaly labels of one store: rows [image, x, y] on the grid of one layer, kept in a file.

    The file is the published format (int64 ``.npy``, shape (K, 3)); a sidecar JSON next to it
    records the layer and grid. Every change is saved at once.
    """

    def __init__(self, path: Path, store: RepresentationStore):
        self.path = Path(path)
        self.lock = threading.Lock()
        self.layer: str | None = None
        self.grid: tuple[int, int] | None = None
        self.rows: list[tuple[int, int, int]] = []
        self.saved = False
        if self.path.exists():
            self._load_existing(store)

    def _load_existing(self, store: RepresentationStore) -> None:
        side = sidecar_path(self.path)
        layer = None
        if side.exists():
            try:
                meta = json.loads(side.read_text(encoding="utf-8"))
                layer = normalize_name(str(meta["layer"]))
            except (OSError, ValueError, KeyError, TypeError) as e:
                raise LabelFileError(f"{side}: unreadable label sidecar ({type(e).__name__}: {e})") from e
            if layer not in store.layers:
                raise LabelFileError(f"{side}: labels are on layer '{layer}', which store '{store.path}' lacks")
            if "grid" in meta and list(meta["grid"]) != list(store.layer_shape(layer)[1:]):
                raise LabelFileError(f"{side}: labels are on a {meta['grid']} grid, but layer '{layer}' of store "
                                     f"'{store.path}' has {list(store.layer_shape(layer)[1:])}")
        elif REFERENCE_LAYER in store.layers:
            layer = REFERENCE_LAYER  # the published convention
        else:
            raise LabelFileError(f"{self.path}: no sidecar {side.name} says which layer the labels are on, and "
                                 f"store '{store.path}' has no {REFERENCE_LAYER} (the published labels' layer)")
        grid = tuple(store.layer_shape(layer)[1:])
        rows = load_labels(self.path, grid=grid, n_images=store.num_images)
        self.layer, self.grid = layer, grid
        self.rows = [tuple(int(v) for v in r) for r in rows]
        self.saved = True

    def to_json(self) -> dict:
        return {"path": str(self.path), "layer": self.layer, "grid": list(self.grid) if self.grid else None,
                "rows": [list(r) for r in self.rows], "saved": self.saved}

    def _save(self, store: RepresentationStore) -> None:
        """Write the .npy and its sidecar (caller holds the lock)."""
        arr = validate_labels(np.array(self.rows, np.int64).reshape(-1, 3), grid=self.grid,
                              n_images=store.num_images, source=str(self.path))
        buf = io.BytesIO()
        np.save(buf, arr)
        meta = {"format": LABEL_SIDECAR_FORMAT, "version": 1, "layer": self.layer,
                "grid": list(self.grid) if self.grid else None,
                "rows": "[image, x (column), y (row)] of each 2x2 patch's upper-left token on this grid",
                "store": str(store.path), "model": store.config.get("model", {}).get("name"),
                "num_images": store.num_images, "count": len(self.rows)}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            _atomic_write(self.path, buf.getvalue())
            _atomic_write(sidecar_path(self.path), (json.dumps(meta, indent=1) + "\n").encode("utf-8"))
        except OSError as e:
            self.saved = False
            raise ExplorerError(409, f"cannot write labels to '{self.path}': {e.strerror or e}") from e
        self.saved = True

    def toggle(self, store: RepresentationStore, layer: str, image: int, x: int, y: int,
               norms: np.ndarray | None, snap: bool = True) -> dict:
        """Remove the label whose 2x2 patch covers token (x, y) of ``image``, or add one there.

        A new label's patch is the 2x2 window containing the token with the largest summed norm
        (``norms``: the image's (h, w) norm map), like the detector; without ``snap`` the token is
        the patch's upper-left corner (clipped to the grid).
        """
        h, w = store.layer_shape(layer)[1:]
        with self.lock:
            if self.rows and self.layer != layer:
                raise ExplorerError(409, f"the labels of this store are on layer '{self.layer}' "
                                         f"({self.grid[0]}x{self.grid[1]}); switch to that layer to edit them, "
                                         "or clear them to label on another layer")
            if not self.rows:
                self.layer, self.grid = layer, (h, w)
            hits = [r for r in self.rows if r[0] == image and r[1] <= x <= r[1] + 1 and r[2] <= y <= r[2] + 1]
            if hits:
                hit = min(hits, key=lambda r: abs(r[1] - x) + abs(r[2] - y))
                self.rows.remove(hit)
                action, row = "removed", hit
            else:
                xs = sorted({min(max(x - 1, 0), max(w - 2, 0)), min(x, max(w - 2, 0))})
                ys = sorted({min(max(y - 1, 0), max(h - 2, 0)), min(y, max(h - 2, 0))})
                if snap and norms is not None:
                    best = max(((float(norms[y0:y0 + 2, x0:x0 + 2].sum()), -y0, -x0) for y0 in ys for x0 in xs))
                    y0, x0 = -best[1], -best[2]
                else:
                    y0, x0 = min(y, max(h - 2, 0)), min(x, max(w - 2, 0))
                row = (int(image), int(x0), int(y0))
                self.rows.append(row)
                self.rows.sort(key=lambda r: (r[0], r[2], r[1]))
                action = "added"
            self._save(store)
            return {"action": action, "row": list(row), **self.to_json()}

    def replace(self, store: RepresentationStore, layer: str, rows: Any) -> dict:
        grid = tuple(store.layer_shape(layer)[1:])
        arr = validate_labels(rows, grid=grid, n_images=store.num_images, source="labels")
        with self.lock:
            self.layer, self.grid = layer, grid
            self.rows = sorted({tuple(int(v) for v in r) for r in arr}, key=lambda r: (r[0], r[2], r[1]))
            self._save(store)
            return self.to_json()

    def npy_bytes(self) -> bytes:
        with self.lock:
            buf = io.BytesIO()
            np.save(buf, np.array(self.rows, np.int64).reshape(-1, 3))
            return buf.getvalue()


# ----------------------------------------------------------------------------------------- stores
class StoreHandle:
    """One open store, addressed by its index in the explorer."""

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

    def summary(self) -> dict:
        s = self.store
        cfg = s.config
        model = cfg.get("model") or {}
        layers = []
        for name in s.layers:
            c, h, w = s.layer_shape(name)
            layers.append({"name": name, "block": block_of(name), "kind": kind_of(name), "channels": c,
                           "rows": h, "cols": w})
        return {"index": self.index, "path": str(self.path), "name": self.path.name,
                "model": model.get("name"), "model_identity": model, "timestep": cfg.get("timestep"),
                "protocol": cfg.get("protocol"), "size": cfg.get("size"), "prompt": cfg.get("prompt"),
                "seed": cfg.get("seed"), "latent": cfg.get("latent"), "noise_samples": cfg.get("noise_samples"),
                "dtype": cfg.get("dtype"), "num_images": s.num_images, "layers": layers,
                "reference_layer": REFERENCE_LAYER if REFERENCE_LAYER in s.layers else None,
                "can_upload": self.upload_error is None, "upload_error": self.upload_error}


def image_summary(entry) -> dict:
    source = entry.source
    # POSIX paths only: a backslash is part of a name (e.g. the escape of a non-UTF-8 byte, caf\xe9.png)
    name = source.rstrip("/").split("/")[-1] or source
    return {"index": entry.index, "name": name, "source": source, "width": entry.width, "height": entry.height,
            "mode": entry.mode, "sha256": entry.sha256}


# ----------------------------------------------------------------------------------------- presets
def _units(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, C, h, w) -> unit tokens (N, P, C) and their squared norms (1, or 0 for a zero token)."""
    n, c, h, w = x.shape
    t = x.reshape(n, c, h * w).transpose(0, 2, 1).astype(np.float64)
    norms = np.linalg.norm(t, axis=2, keepdims=True)
    u = np.divide(t, norms, out=np.zeros_like(t), where=norms > 0)
    return u, (norms[..., 0] > 0).astype(np.float64)


def position_score(x: np.ndarray) -> float:
    """How much more alike tokens at the same position of different images are than tokens at any
    positions of different images: mean cosine (same position) - mean cosine (any position), after
    subtracting the mean token. Needs at least 2 images."""
    n, c, h, w = x.shape
    p = h * w
    if n < 2 or p < 2:
        return float("nan")
    x = x - x.mean(axis=(0, 2, 3), keepdims=True)
    u, sq = _units(x)
    per_pos = u.sum(axis=0)  # (P, C)
    same = (float((per_pos ** 2).sum()) - float(sq.sum())) / (p * n * (n - 1))
    per_img = u.sum(axis=1)  # (N, C)
    total = u.sum(axis=(0, 1))
    cross = (float(total @ total) - float((per_img ** 2).sum())) / (n * (n - 1) * p * p)
    return same - cross


def _mean_pair_cos(u: np.ndarray, sq: np.ndarray, idx: np.ndarray) -> float:
    """Mean cosine over ordered pairs of distinct tokens ``idx`` within each image, pooled."""
    k = len(idx)
    if k < 2:
        return float("nan")
    s = u[:, idx].sum(axis=1)
    return float(((s ** 2).sum(axis=1) - sq[:, idx].sum(axis=1)).sum()) / (u.shape[0] * k * (k - 1))


def corner_score(x: np.ndarray) -> tuple[float, tuple[int, int]]:
    """Mean pairwise cosine of the 4 corner tokens minus that of the interior tokens (within each
    image), and the corner most alike the other corners. Needs a grid of at least 4x4."""
    n, c, h, w = x.shape
    if h < 4 or w < 4:
        return float("nan"), (0, 0)
    u, sq = _units(x)
    corners = [(0, 0), (0, w - 1), (h - 1, 0), (h - 1, w - 1)]
    cidx = np.array([r * w + q for r, q in corners])
    inner = np.array([r * w + q for r in range(1, h - 1) for q in range(1, w - 1)])
    score = _mean_pair_cos(u, sq, cidx) - _mean_pair_cos(u, sq, inner)
    cu = u[:, cidx]  # (N, 4, C)
    sims = np.einsum("nac,nbc->ab", cu, cu) / n
    np.fill_diagonal(sims, 0)
    best = int(np.argmax(sims.sum(axis=1)))
    return score, corners[best]


def _finite(v: float) -> float | None:
    return float(v) if v is not None and math.isfinite(v) else None


def compute_presets(store: RepresentationStore, detections) -> dict:
    """Automatic examples of the three phenomena on the open data (see docs/explorer.md)."""
    n = store.num_images
    out: dict[str, Any] = {}
    if n == 0:
        reason = "the store has no images"
        return {k: {"name": k, "unavailable": reason} for k in ("positional", "corner", "anomaly")}
    imgs = list(range(min(PRESET_IMAGES, n)))
    layers = store.layers
    grids = {name: store.layer_shape(name)[1:] for name in layers}
    max_grid = max(min(g) for g in grids.values())
    pos_min = min(8, max_grid)
    pos_scores: dict[str, float] = {}
    corner: dict[str, tuple[float, tuple[int, int]]] = {}
    corner_pool = [l for l in layers if block_of(l).startswith(("down_blocks", "mid_block")) and min(grids[l]) >= 4]
    if not corner_pool:
        corner_pool = [l for l in layers if min(grids[l]) >= 4]
    for name in layers:
        want_pos = len(imgs) >= 2 and min(grids[name]) >= pos_min
        want_corner = name in corner_pool
        if not (want_pos or want_corner):
            continue
        x = store.read(name, imgs).astype(np.float32)
        if not np.isfinite(x).all():
            continue
        if want_pos:
            pos_scores[name] = position_score(x)
        if want_corner:
            corner[name] = corner_score(x)

    # positional
    finite_pos = {k: v for k, v in pos_scores.items() if math.isfinite(v)}
    if finite_pos:
        layer = max(finite_pos, key=finite_pos.get)
        h, w = grids[layer]
        out["positional"] = {
            "name": "positional", "layer": layer, "image": imgs[0], "row": h // 2, "col": w // 2,
            "measure": "cosine", "view": "similarity", "images": imgs, "score": _finite(finite_pos[layer]),
            "description": f"Grid-centre token at {layer}, the layer whose tokens at the same position of "
                           f"different images are most alike (same- minus any-position cosine "
                           f"{finite_pos[layer]:.3f} over {len(imgs)} images): the map lights up the same "
                           "position in every image."}
    else:
        ups = [l for l in layers if block_of(l).startswith("up_blocks")]
        if ups:
            layer = "up_blocks[1].resnets[1]" if "up_blocks[1].resnets[1]" in ups else max(ups, key=lambda l: min(grids[l]))
            h, w = grids[layer]
            out["positional"] = {
                "name": "positional", "layer": layer, "image": imgs[0], "row": h // 2, "col": w // 2,
                "measure": "cosine", "view": "similarity", "images": imgs, "score": None,
                "description": f"Grid-centre token at {layer} (the paper's best position-probe layer family; "
                               "add a second image to rank the layers)."}
        else:
            out["positional"] = {"name": "positional", "unavailable": "needs 2 images and a grid of 8x8 or more"}

    # corner
    finite_corner = {k: v for k, v in corner.items() if math.isfinite(v[0])}
    if finite_corner:
        layer = max(finite_corner, key=lambda k: finite_corner[k][0])
        score, (r, c) = finite_corner[layer]
        out["corner"] = {
            "name": "corner", "layer": layer, "image": imgs[0], "row": r, "col": c, "measure": "cosine",
            "view": "similarity", "images": imgs, "score": _finite(score),
            "description": f"Corner token at {layer}, the down/mid layer whose four corners are most alike "
                           f"relative to the interior (corner minus interior mean cosine {score:.3f}): the other "
                           "corners and border light up."}
    else:
        out["corner"] = {"name": "corner", "unavailable": "no down/mid layer with a grid of 4x4 or more"}

    # anomaly: the highest-scoring detection at the reference layer, else over all layers
    best = None
    search = [REFERENCE_LAYER] if REFERENCE_LAYER in layers else []
    # fallback: the U-Net blocks' layers (not conv_in / conv_out, whose 4 channels are latents), up_blocks first
    blocks = [l for l in layers if block_of(l) not in ("conv_in", "conv_out") and min(grids[l]) >= min(8, max_grid)]
    blocks.sort(key=lambda l: not block_of(l).startswith("up_blocks"))
    for phase, names, count in (("reference", search, PRESET_ANOMALY_IMAGES), ("blocks", blocks, 8)):
        for name in names:
            for i in range(min(count, n)):
                try:
                    found = detections(name, i)
                except (ExplorerError, ValueError):  # e.g. non-finite values at this layer
                    break
                for d in found:
                    key = (math.inf if d["score"] is None else d["score"], d["relative_norm"] or 0.0)
                    if best is None or key > best[0]:
                        best = (key, name, d)
        if best is not None:
            break
    if best is not None:
        _, layer, d = best
        others = [i for i in range(n) if i != d["image"]][: PRESET_IMAGES - 1]
        score_text = "inf" if d["score"] is None else f"{d['score']:.1f}"
        out["anomaly"] = {
            "name": "anomaly", "layer": layer, "image": d["image"], "row": d["peak"][0], "col": d["peak"][1],
            "measure": "cosine", "view": "similarity", "images": [d["image"], *others],
            "score": d["score"], "detection": d,
            "description": f"Peak token of the strongest detected high-norm anomaly at {layer} (image "
                           f"{d['image']}, robust z {score_text}, {d['relative_norm']:.2f}x the mean norm): "
                           "other anomalies light up, in this image and others."}
    else:
        out["anomaly"] = {"name": "anomaly", "unavailable": "the detector found no high-norm anomaly "
                          f"(searched {REFERENCE_LAYER if search else 'no reference layer'}, then the U-Net blocks' "
                          "layers on the first 8 images)"}
    return out


# ----------------------------------------------------------------------------------------- state
class ExplorerState:
    """All open stores, their caches, labels and the optional model for uploads."""

    def __init__(self, stores: Sequence[str | os.PathLike], model: Any = None,
                 labels_path: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
                 max_upload_bytes: int = MAX_UPLOAD_BYTES, upload_max_pixels: int = UPLOAD_MAX_PIXELS,
                 cache_bytes: int = 256 * 2**20):
        if not stores:
            raise StoreError("no store given; pass at least one store folder")
        if labels_path is None:
            label_paths: list = []
        elif isinstance(labels_path, (str, os.PathLike)):
            label_paths = [labels_path]
        else:
            label_paths = list(labels_path)
        if len(label_paths) > len(stores):
            raise UsageError(f"{len(label_paths)} label files for {len(stores)} stores; give at most one per store "
                             "(in the stores' order)")
        self.handles = [StoreHandle(i, Path(p), label_paths[i] if i < len(label_paths) else None)
                        for i, p in enumerate(stores)]
        self.max_upload_bytes = int(max_upload_bytes)
        self.upload_max_pixels = int(upload_max_pixels)
        self._features = _LRU(cache_bytes)
        self._thumbs = _LRU(64 * 2**20)
        self._detections = _LRU(16 * 2**20)
        self._model_spec = model
        self._model = None if isinstance(model, (str, type(None))) else model
        self._model_lock = threading.Lock()
        # at most this many uploads are decoded at once: each may briefly hold one full-size picture
        self._decode_slots = threading.BoundedSemaphore(DECODE_SLOTS)
        self.model_name: str | None = None
        if isinstance(model, str):
            from ..models import parse_model_spec

            self.model_name = parse_model_spec(model).name  # a bad spec fails here, at start-up
        elif model is not None:
            self.model_name = model.name
        for h in self.handles:
            if model is None:
                h.upload_error = ("adding images is off: this explorer was started without --model; restart it "
                                  "with 'sdaudit explore STORE --model MODEL' (the store's own model)")
            elif self._model is not None:
                h.upload_error = self._mismatch(h)

    # ----- lookups --------------------------------------------------------------------------------
    def handle(self, s: int) -> StoreHandle:
        if not isinstance(s, int) or not 0 <= s < len(self.handles):
            raise ExplorerError(404, f"unknown store index {s}: {len(self.handles)} store(s) are open "
                                     f"(indices 0..{len(self.handles) - 1})")
        return self.handles[s]

    @staticmethod
    def layer(h: StoreHandle, layer: str | None) -> str:
        if not layer:
            raise ExplorerError(400, "missing 'layer'")
        if len(layer) > 200:
            raise ExplorerError(404, "unknown layer (name too long)")
        name = normalize_name(layer)
        if name not in h.store.layers:
            raise ExplorerError(404, f"unknown layer '{layer[:100]}' for store {h.index}; see /api/info for its layers")
        return name

    @staticmethod
    def image(h: StoreHandle, i: int) -> int:
        n = h.store.num_images
        if not isinstance(i, int) or not 0 <= i < n:
            raise ExplorerError(404, f"image index {i} out of range: store {h.index} has {n} images")
        return i

    def images(self, h: StoreHandle, spec: str | None) -> list[int]:
        if spec is None or not spec.strip():
            raise ExplorerError(400, "missing 'images' (comma-separated image indices, e.g. images=0,1)")
        out: list[int] = []
        for part in spec.split(","):
            part = part.strip()
            if not part:
                continue
            # plain ASCII digits only: int() would also take '+1', '1_0' and other scripts' digits
            if not (part.isascii() and part.isdigit() and len(part) <= 12):
                raise ExplorerError(400, f"bad image index '{part[:20]}' (expected integers separated by commas)")
            i = int(part)
            self.image(h, i)
            if i not in out:
                out.append(i)
        if not out:
            raise ExplorerError(400, "no image indices given")
        if len(out) > MAX_IMAGES_PER_REQUEST:
            raise ExplorerError(400, f"too many images in one request ({len(out)} > {MAX_IMAGES_PER_REQUEST})")
        return out

    @staticmethod
    def token(h: StoreHandle, layer: str, row: int, col: int) -> None:
        _, gh, gw = h.store.layer_shape(layer)
        if not (0 <= row < gh and 0 <= col < gw):
            raise ExplorerError(404, f"token (row {row}, col {col}) outside the {gh}x{gw} grid of '{layer}'")

    # ----- data -------------------------------------------------------------------------------------
    def info(self) -> dict:
        from .. import __version__
        from ..analyses import MEASURES

        return {"version": __version__, "measures": list(MEASURES), "stores": [h.summary() for h in self.handles],
                "model": self.model_name, "max_upload_bytes": self.max_upload_bytes,
                "reference_layer": REFERENCE_LAYER}

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
        from PIL import Image

        key = (h.index, str(h.path), i, size)
        hit = self._thumbs.get(key)
        if hit is None:
            arr = h.store.read_inputs(i)
            img = Image.fromarray(arr, "RGB")
            if size and size < img.width:
                img = img.resize((size, size), Image.Resampling.LANCZOS)
            buf = io.BytesIO()
            img.save(buf, format="PNG", optimize=False, compress_level=3)
            hit = buf.getvalue()
            self._thumbs.put(key, hit, len(hit))
        return hit

    def detections(self, h: StoreHandle, layer: str, i: int) -> list[dict]:
        key = (h.index, str(h.path), layer, i)
        hit = self._detections.get(key)
        if hit is None:
            x = self.feature_stack(h, layer, [i])
            res = detect_anomalies(x, image_indices=[i], layer=layer)
            norms = self.norms(h, layer, i)
            gh, gw = norms.shape
            hit = []
            for (img, xx, yy), score, rel in zip(res.rows.tolist(), res.scores.tolist(), res.relative_norms.tolist()):
                patch = norms[yy:yy + 2, xx:xx + 2]
                py, px = np.unravel_index(int(np.argmax(patch)), patch.shape)
                hit.append({"image": int(img), "x": int(xx), "y": int(yy), "score": _finite(score),
                            "relative_norm": _finite(rel), "peak": [int(yy + py), int(xx + px)],
                            "patch": [min(2, gh - yy), min(2, gw - xx)]})
            self._detections.put(key, hit, 200 * (len(hit) + 1))
        return hit

    def presets(self, h: StoreHandle) -> dict:
        with h.presets_lock:
            n = h.store.num_images
            if h.presets is None or h.presets[0] != n:
                h.presets = (n, compute_presets(h.store, lambda layer, i: self.detections(h, layer, i)))
            return h.presets[1]

    # ----- uploads ----------------------------------------------------------------------------------
    def _mismatch(self, h: StoreHandle) -> str | None:
        ident = self._model.identity()
        if ident != h.store.config.get("model"):
            return (f"the explorer's model ({ident.get('name')}) is not the model of store '{h.path}' "
                    f"({(h.store.config.get('model') or {}).get('name')}); images can only be added with the "
                    "store's own model")
        return None

    def model(self):
        with self._model_lock:
            if self._model is None:
                from ..models import load_model

                self._model = load_model(self._model_spec)
                for h in self.handles:
                    h.upload_error = self._mismatch(h)
            return self._model

    def add_image(self, h: StoreHandle, tmp_path: Path, name: str) -> dict:
        """Validate an uploaded file, keep it next to the store and extract it with the store's settings."""
        from ..extraction import extract_like
        from ..images import BadImageError, IMAGE_EXTENSIONS, load_image

        if self._model_spec is None:
            raise ExplorerError(400, h.upload_error or "adding images is off (no --model)")
        # a picture far larger than the model's input is shrunk first (memory), then checked as usual
        with self._decode_slots:
            note = shrink_upload(tmp_path, size=int(h.store.config.get("size") or 512),
                                 max_pixels=self.upload_max_pixels)
            try:
                record = load_image(tmp_path, max_pixels=self.upload_max_pixels)
            except BadImageError as e:
                status = 413 if e.code == "too_large" else 400
                raise ExplorerError(status, f"'{name}' was refused: {e.reason}") from e
        sha256 = record.sha256
        del record  # extraction reads the file again; keep no decoded copy meanwhile
        for entry in h.store.images:
            if entry.sha256 == sha256:
                return {"added": False, "image": image_summary(entry), "store": h.summary(),
                        "message": f"'{name}' is already in the store as image {entry.index}"}
        try:
            model = self.model()
        except Exception as e:  # noqa: BLE001 - e.g. weights not on this machine
            raise ExplorerError(409, f"model '{self._model_spec}' could not be loaded: {e}") from e
        if h.upload_error:
            raise ExplorerError(409, h.upload_error)
        stem, ext = os.path.splitext(name)
        ext = ext.lower() if ext.lower() in IMAGE_EXTENSIONS else ".img"
        if note:
            ext = ".png"  # the shrunk picture
        safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in stem)[:60] or "upload"
        with h.write_lock:
            folder = h.path / "uploads" / sha256[:16]  # one folder per picture: names never collide
            folder.mkdir(parents=True, exist_ok=True)
            final = folder / f"{safe}{ext}"
            if not final.exists():
                shutil.copyfile(tmp_path, final)
            try:
                report = extract_like(h.path, model, [str(final)], progress=False)
            except (ValueError, RuntimeError) as e:  # incl. StoreError, a model that does not fit, out of memory
                raise ExplorerError(409, f"cannot add '{name}' to store {h.index}: {e}") from e
            finally:
                h.reopen()
            if report.errors:
                raise ExplorerError(400, f"'{name}' was refused: {report.errors[0][1]}")
        entry = next((e for e in h.store.images if e.sha256 == sha256), None)
        if entry is None:  # pragma: no cover - extract_like adds it or raises
            raise ExplorerError(409, f"'{name}' was not added")
        return {"added": True, "image": image_summary(entry), "store": h.summary(),
                "message": f"added '{name}' as image {entry.index}" + (f"; {note}" if note else "")}
