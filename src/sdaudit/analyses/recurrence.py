"""Do anomalies recur at the same token positions across images more than chance? (permutation test)

Statistic: the number of coincident pairs, i.e. pairs of anomalies of *different* images at the same
upper-left position ``(x, y)`` (each image's rows deduplicated first):

    pairs = sum_p C(c_p, 2) - sum_(image, p) C(c_(image, p), 2)

with c_p the anomalies at position p over all images. Under the null hypothesis, each anomaly's
position is redrawn at random, keeping what the null should not test:

``null="ring"`` (default) keeps each anomaly's distance to the nearest edge of the grid of patch
    positions, d = min(x, y, n-2-x, n-2-y) (clipped at 0), and draws its position uniformly among the
    positions at that distance. Anomalies that merely prefer the edges (as zero padding would make
    them) do not count as recurrent; anomalies that sit at the *same* edge positions in many images
    (as a noise pattern shared by all images would make them, quirk 3 of the published code) do.
``null="uniform"`` draws every position uniformly over the grid: this also flags a mere edge
    preference.

p = (1 + #{null pairs >= observed pairs}) / (1 + n_perm). ``ratio`` = observed / mean null pairs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .labels import validate_labels
from .results import _Result

NULLS = ("ring", "uniform")


@dataclass
class RecurrenceResult(_Result):
    """Position recurrence of anomalies: coincident cross-image pairs, their null distribution, p-value."""

    pairs: int
    null_mean: float
    null_q95: float
    p_value: float
    ratio: float
    n_anomalies: int
    n_images: int
    grid: tuple[int, int]
    null: str
    n_perm: int
    top_positions: list[dict[str, int]] = field(default_factory=list)  # [{"x", "y", "images"}], most shared first
    provenance: dict[str, Any] = field(default_factory=dict)
    kind = "position_recurrence"

    @property
    def recurrent(self) -> bool:
        """Whether the anomalies recur beyond the null at the 5 % level."""
        return bool(self.p_value < 0.05)

    @classmethod
    def _convert(cls, kw):
        kw["grid"] = tuple(kw["grid"])
        return kw


def _positions(grid: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Upper-left positions of 2x2 patches, (P, 2) as (x, y), and each one's distance to the nearest edge."""
    h, w = max(grid[0] - 1, 1), max(grid[1] - 1, 1)
    ys, xs = np.mgrid[0:h, 0:w]
    xy = np.stack([xs.ravel(), ys.ravel()], axis=1)
    return xy, _ring(xy, grid)


def _ring(xy: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    x, y = xy[:, 0], xy[:, 1]
    d = np.minimum.reduce([x, y, grid[1] - 2 - x, grid[0] - 2 - y])
    return np.maximum(d, 0)


def _coincident_pairs(images: np.ndarray, pos: np.ndarray) -> int:
    """Pairs of anomalies of different images at the same position (``pos``: integer position ids)."""
    _, c = np.unique(pos, return_counts=True)
    _, ci = np.unique(images * (int(pos.max(initial=0)) + 1) + pos, return_counts=True)
    return int((c * (c - 1) // 2).sum() - (ci * (ci - 1) // 2).sum())


def position_recurrence(anomalies: Any, grid: int | tuple[int, int] = 32, *, null: str = "ring",
                        n_perm: int = 2000, seed: int = 0, provenance: dict | None = None) -> RecurrenceResult:
    """Permutation test of whether anomalies sit at the same positions across images (module docstring).

    Parameters:
        anomalies: (K, 3) rows [image, x, y] (upper-left token of each 2x2 patch), e.g. a label file or
            an :class:`~sdaudit.analyses.results.AnomalyDetectionResult`.
        grid: the labelling grid, n or (rows, cols).
        null: "ring" (keep each anomaly's distance to the edge) or "uniform".
        n_perm: permutations; seed: of the permutations.
    """
    if null not in NULLS:
        raise ValueError(f"unknown null {null!r}; choose one of {', '.join(NULLS)}")
    grid = (int(grid), int(grid)) if np.isscalar(grid) else tuple(int(g) for g in grid)
    rows = np.unique(validate_labels(getattr(anomalies, "rows", anomalies), grid=grid, source="anomalies"), axis=0)
    images, xy = rows[:, 0], np.minimum(rows[:, 1:], [grid[1] - 2, grid[0] - 2]).clip(0)
    width = max(grid[1] - 1, 1)
    observed = _coincident_pairs(images, xy[:, 1] * width + xy[:, 0])
    all_xy, all_ring = _positions(grid)
    classes = _ring(xy, grid) if null == "ring" else np.zeros(len(xy), np.int64)
    pool_ring = all_ring if null == "ring" else np.zeros(len(all_xy), np.int64)
    rng = np.random.default_rng(seed)
    null_pairs = np.empty(n_perm, np.int64)
    for k in range(n_perm):
        pos = np.empty(len(xy), np.int64)
        for d in np.unique(classes):
            pool = np.nonzero(pool_ring == d)[0]
            sel = classes == d
            pick = all_xy[pool[rng.integers(0, len(pool), int(sel.sum()))]]
            pos[sel] = pick[:, 1] * width + pick[:, 0]
        null_pairs[k] = _coincident_pairs(images, pos)
    mean = float(null_pairs.mean()) if n_perm else float("nan")
    return RecurrenceResult(
        pairs=observed, null_mean=mean, null_q95=float(np.quantile(null_pairs, 0.95)) if n_perm else float("nan"),
        p_value=float((1 + (null_pairs >= observed).sum()) / (1 + n_perm)),
        ratio=observed / mean if mean > 0 else float("nan"), n_anomalies=len(rows),
        n_images=int(np.unique(images).size), grid=grid, null=null, n_perm=int(n_perm),
        top_positions=_top_positions(images, xy), provenance=dict(provenance or {}))


def _top_positions(images: np.ndarray, xy: np.ndarray, k: int = 5) -> list[dict[str, int]]:
    """The positions shared by the most images (at least 2)."""
    per_image = np.unique(np.column_stack([images, xy]), axis=0)[:, 1:]
    if not len(per_image):
        return []
    uniq, counts = np.unique(per_image, axis=0, return_counts=True)
    order = np.lexsort((uniq[:, 1], uniq[:, 0], -counts))[:k]
    return [{"x": int(uniq[i, 0]), "y": int(uniq[i, 1]), "images": int(counts[i])} for i in order if counts[i] > 1]
