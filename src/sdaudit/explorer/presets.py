"""Automatic examples of the paper's three phenomena on the open data (see ``docs/explorer.md``).

* positional: the grid-centre token of the layer whose tokens at the same position of different
  images are most alike (:func:`position_score`);
* corner: a corner token (:func:`~sdaudit.analyses.similarity.typical_corner`) of the down/mid layer
  whose corners are most alike relative to the interior (corner minus other within-group cosine of
  :func:`~sdaudit.analyses.group_similarity`);
* anomaly: the peak token of the strongest detection of :func:`~sdaudit.analyses.detect_anomalies`,
  on the paper's anomaly layer first, else on the U-Net blocks' layers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..analyses import NonFiniteInputError, group_similarity
from ..analyses.similarity import typical_corner
from ..constants import PAPER_ANOMALY_LAYER
from ..layer_names import block_of
from ..store import RepresentationStore
from .errors import ExplorerError

#: Images scanned for the positional and corner presets.
PRESET_IMAGES = 4
#: Images searched for an anomaly on the paper's anomaly layer, and on each fallback layer.
PRESET_ANOMALY_IMAGES = 64
FALLBACK_ANOMALY_IMAGES = 8
#: The paper's best position-probe layer family: the positional example when no layer can be ranked.
POSITIONAL_FALLBACK = "up_blocks[1].resnets[1]"
PRESETS = ("positional", "corner", "anomaly")
#: A positional score (same- minus any-position cosine) from which the same position visibly lights up.
POSITION_CLEAR = 0.2
#: A corner score (corner minus interior cosine) from which the other corners visibly light up.
CORNER_CLEAR = 0.2

#: detections(layer, image) -> the detector's findings (dicts with image, peak, score, relative_norm).
Detections = Callable[[str, int], list[dict]]


def finite_or_none(v: float | None) -> float | None:
    """``v`` as a float, or None (JSON null) for None, NaN and infinities."""
    return float(v) if v is not None and math.isfinite(v) else None


def position_score(x: np.ndarray) -> float:
    """How much more alike tokens at the same position of different images are than tokens at any
    positions of different images: mean cosine (same position) - mean cosine (any position), after
    subtracting the mean token. Needs at least 2 images."""
    n, c, h, w = x.shape
    p = h * w
    if n < 2 or p < 2:
        return float("nan")
    x = x - x.mean(axis=(0, 2, 3), keepdims=True)
    t = x.reshape(n, c, p).transpose(0, 2, 1).astype(np.float64)  # (N, P, C)
    norms = np.linalg.norm(t, axis=2, keepdims=True)
    u = np.divide(t, norms, out=np.zeros_like(t), where=norms > 0)  # a zero token has cosine 0
    nonzero = float((norms > 0).sum())
    per_pos = u.sum(axis=0)  # (P, C)
    same = (float((per_pos ** 2).sum()) - nonzero) / (p * n * (n - 1))
    per_img = u.sum(axis=1)  # (N, C)
    total = u.sum(axis=(0, 1))
    cross = (float(total @ total) - float((per_img ** 2).sum())) / (n * (n - 1) * p * p)
    return same - cross


def corner_score(x: np.ndarray) -> tuple[float, tuple[int, int]]:
    """Mean pairwise cosine of the 4 corner tokens minus that of the interior tokens (within each
    image), and the corner most alike the other corners. Needs a grid of at least 4x4."""
    if min(x.shape[2:]) < 4:
        return float("nan"), (0, 0)
    within = group_similarity(x).within
    return within["corner"] - within["other"], typical_corner(x)


@dataclass
class _Scan:
    """The first images' statistics per layer: what the positional and corner presets rank."""

    images: list[int]
    grids: dict[str, tuple[int, int]]
    position: dict[str, float] = field(default_factory=dict)
    corner: dict[str, tuple[float, tuple[int, int]]] = field(default_factory=dict)


def _scan(store: RepresentationStore) -> _Scan:
    """Score every layer on the first :data:`PRESET_IMAGES` images (layers holding NaN/Inf are skipped)."""
    scan = _Scan(list(range(min(PRESET_IMAGES, store.num_images))),
                 {name: tuple(store.layer_shape(name)[1:]) for name in store.layers})
    pos_min = min(8, max(min(g) for g in scan.grids.values()))
    big = [name for name, g in scan.grids.items() if min(g) >= 4]
    corner_pool = [name for name in big if block_of(name).startswith(("down_blocks", "mid_block"))] or big
    for name, grid in scan.grids.items():
        want_pos = len(scan.images) >= 2 and min(grid) >= pos_min
        if not (want_pos or name in corner_pool):
            continue
        x = store.read(name, scan.images).astype(np.float32)
        if not np.isfinite(x).all():
            continue
        if want_pos:
            scan.position[name] = position_score(x)
        if name in corner_pool:
            scan.corner[name] = corner_score(x)
    return scan


def _similarity_preset(name: str, layer: str, scan: _Scan, token: tuple[int, int], **extra) -> dict:
    return {"name": name, "layer": layer, "image": scan.images[0], "row": token[0], "col": token[1],
            "measure": "cosine", "view": "similarity", "images": scan.images, **extra}


def _positional_text(layer: str, score: float, n_images: int) -> str:
    """What to look for in the positional example, and whether this store's score says it is there."""
    text = (f"Grid-centre token at {layer}, the layer whose tokens at the same position of different images are "
            f"most alike (same- minus any-position cosine {score:.3f} over {n_images} images). Look for: the "
            "same position lighting up in every image, whatever the picture shows.")
    return text + _verdict(score, POSITION_CLEAR, "says it should be visible here",
                           "on this store expect little or no positional pattern")


def _corner_text(layer: str, score: float) -> str:
    """What to look for in the corner example, and whether this store's score says it is there."""
    text = (f"Corner token at {layer}, the down/mid layer whose four corners are most alike relative to the "
            f"interior (corner minus interior mean cosine {score:.3f}). Look for: the other corners and the border "
            "brighter than the interior.")
    return text + _verdict(score, CORNER_CLEAR, "says they should stand out here",
                           "on this store the corners are not clearly more alike than the interior, so expect no "
                           "corner artifact")


def _verdict(score: float, clear: float, visible: str, absent: str) -> str:
    """The sentence that says whether a preset's measured score makes its effect visible on this store."""
    if score >= clear:
        return f" The score ({score:.3f} >= {clear}) {visible}."
    return f" The score is low ({score:.3f} < {clear}): {absent}."


def _positional(scan: _Scan) -> dict:
    finite = {k: v for k, v in scan.position.items() if math.isfinite(v)}
    if finite:
        layer = max(finite, key=finite.get)
        h, w = scan.grids[layer]
        return _similarity_preset(
            "positional", layer, scan, (h // 2, w // 2), score=finite_or_none(finite[layer]),
            description=_positional_text(layer, finite[layer], len(scan.images)))
    ups = [name for name in scan.grids if block_of(name).startswith("up_blocks")]
    if not ups:
        return {"name": "positional", "unavailable": "needs 2 images and a grid of 8x8 or more"}
    layer = POSITIONAL_FALLBACK if POSITIONAL_FALLBACK in ups else max(ups, key=lambda n: min(scan.grids[n]))
    h, w = scan.grids[layer]
    return _similarity_preset(
        "positional", layer, scan, (h // 2, w // 2), score=None,
        description=f"Grid-centre token at {layer} (the paper's best position-probe layer family; "
                    "add a second image to rank the layers).")


def _corner(scan: _Scan) -> dict:
    finite = {k: v for k, v in scan.corner.items() if math.isfinite(v[0])}
    if not finite:
        return {"name": "corner", "unavailable": "no down/mid layer with a grid of 4x4 or more"}
    layer = max(finite, key=lambda k: finite[k][0])
    score, token = finite[layer]
    return _similarity_preset(
        "corner", layer, scan, token, score=finite_or_none(score),
        description=_corner_text(layer, score))


def _strongest(layers: list[str], count: int, detections: Detections) -> tuple[tuple, str, dict] | None:
    """The detection with the highest score (then relative norm) on the first ``count`` images of ``layers``."""
    best = None
    for name in layers:
        for i in range(count):
            try:
                found = detections(name, i)
            except (ExplorerError, NonFiniteInputError, ValueError):  # e.g. non-finite values at this layer
                break
            for d in found:
                key = (math.inf if d["score"] is None else d["score"], d["relative_norm"] or 0.0)
                if best is None or key > best[0]:
                    best = (key, name, d)
    return best


def _anomaly(store: RepresentationStore, grids: dict[str, tuple[int, int]], detections: Detections) -> dict:
    n = store.num_images
    search = [PAPER_ANOMALY_LAYER] if PAPER_ANOMALY_LAYER in grids else []
    # fallback: the U-Net blocks' layers (not conv_in / conv_out, whose 4 channels are latents), up_blocks first
    max_grid = max(min(g) for g in grids.values())
    blocks = [name for name, g in grids.items()
              if block_of(name) not in ("conv_in", "conv_out") and min(g) >= min(8, max_grid)]
    blocks.sort(key=lambda name: not block_of(name).startswith("up_blocks"))
    best = (_strongest(search, min(PRESET_ANOMALY_IMAGES, n), detections)
            or _strongest(blocks, min(FALLBACK_ANOMALY_IMAGES, n), detections))
    if best is None:
        return {"name": "anomaly", "unavailable": "the detector found no high-norm anomaly (searched "
                f"{PAPER_ANOMALY_LAYER if search else 'no reference layer'}, then the U-Net blocks' layers on the "
                f"first {FALLBACK_ANOMALY_IMAGES} images)"}
    _, layer, d = best
    others = [i for i in range(n) if i != d["image"]][: PRESET_IMAGES - 1]
    score_text = "inf" if d["score"] is None else f"{d['score']:.1f}"
    return {"name": "anomaly", "layer": layer, "image": d["image"], "row": d["peak"][0], "col": d["peak"][1],
            "measure": "cosine", "view": "similarity", "images": [d["image"], *others],
            "score": d["score"], "detection": d,
            "description": f"Peak token of the strongest detected high-norm anomaly at {layer} (image "
                           f"{d['image']}, robust z {score_text}, {d['relative_norm']:.2f}x the mean norm). Look for: "
                           "other tokens that light up, in this image and others; if they are high-norm tokens "
                           "too (norm view), the anomalies share one direction."}


def compute_presets(store: RepresentationStore, detections: Detections) -> dict:
    """The three presets of ``store`` (``detections``: the explorer's cached detector)."""
    if store.num_images == 0:
        return {k: {"name": k, "unavailable": "the store has no images"} for k in PRESETS}
    scan = _scan(store)
    return {"positional": _positional(scan), "corner": _corner(scan),
            "anomaly": _anomaly(store, scan.grids, detections)}
