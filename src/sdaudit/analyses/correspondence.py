"""Annotation-free matching: nearest-neighbour token matching between an image and a known view of it.

For features A and B (N, C, rows, cols) of images and their views (:mod:`sdaudit.analyses.views`) and the
:class:`~sdaudit.analyses.views.Correspondence` t(r, c) the view implies, every valid source token (r, c)
of A is matched to its cosine nearest neighbour p = argmax_q cos(a_rc, b_q) over all tokens q of B (the
first on ties; a zero token has cosine 0 with everything). Per source token, with d_inf / d_2 the
Chebyshev / Euclidean distance on the grid in tokens:

    hit        = d_inf(p, t) <= 1                          (accuracy within one token)
    pck(alpha) = d_2(p, t) <= alpha * max(rows, cols)      (PCK: alpha is a fraction of the grid's longer side,
                                                            SPair's convention, comparable across layers)
    eligible   = d_inf((r, c), t) > 1                      (landing on its own position would be wrong)
    bias       = eligible and not hit and p == (r, c)
    bias rate  = sum(bias) / sum(eligible and not hit)     (the share of wrong matches that land on the
                                                            source token's own absolute position)

Tokens whose own position is within one token of their true match (under a flip: the middle column for
odd ``cols``, the two middle columns for even ``cols``) are not eligible: landing on their own position
counts as a hit. The chance bias rate is the bias rate of uniformly random matches:
sum(eligible) / sum over eligible tokens of (rows * cols - #tokens within one token of t).

Every number is given overall and split by the SOURCE token's region (corner / border ring without the
corners / interior, :func:`~sdaudit.analyses.borders.group_masks`), with a bootstrap interval over images
from per-image counts (:mod:`sdaudit.analyses.intervals`). Cost O(N C (rows cols)^2), in chunks of the
similarity matrix; memory O(rows cols) per chunk row.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from ._arrays import check_features, resolve_indices
from ._base import Accumulator, nest, unnest
from .borders import group_masks
from .intervals import DEFAULT_BOOT, DEFAULT_LEVEL, Bootstrap, Interval, PerImageStats, Terms, ratio
from .results import GROUPS, _Result
from .views import Correspondence

REGIONS = ("all",) + GROUPS
DEFAULT_ALPHAS = (0.05, 0.1, 0.2)
_CHUNK_VALUES = 1 << 23  # similarity entries per chunk (32 MiB of float32)


def unit_tokens(x: np.ndarray) -> np.ndarray:
    """(N, rows * cols, C) float32 unit vectors of (N, C, rows, cols) features (zero tokens stay zero)."""
    n, c = x.shape[:2]
    t = np.ascontiguousarray(np.moveaxis(x.reshape(n, c, -1), 1, 2))
    norms = np.sqrt(np.einsum("ntc,ntc->nt", t, t, dtype=np.float64)).astype(np.float32)
    return t * np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0)[..., None]


def nearest_tokens(units_a: np.ndarray, units_b: np.ndarray, *, candidates: np.ndarray | None = None) -> np.ndarray:
    """For each token of A, the flat index of its cosine nearest neighbour in B: (N, Ta) int64, from unit
    vectors (N, Ta, C) and (N, Tb, C) (:func:`unit_tokens`). The similarity matrix is formed in chunks.
    ``candidates``: a (Tb,) bool mask of the tokens of B that may be chosen (default: all).

    A zero token (masked, e.g. by a border weight of 0) has no direction: as a candidate it is never chosen,
    and as a source it predicts nothing (-1), which the metrics count as a miss, never as a hit or a bias.
    """
    n, ta = units_a.shape[:2]
    out = np.empty((n, ta), np.int64)
    step = max(1, _CHUNK_VALUES // max(1, units_b.shape[1]))
    excluded = np.zeros(units_b.shape[1], bool) if candidates is None else ~np.asarray(candidates, bool)
    for i in range(n):
        blank_b = ~units_b[i].any(axis=1) | excluded
        for s in range(0, ta, step):
            sims = units_a[i, s:s + step] @ units_b[i].T
            sims[:, blank_b] = -np.inf
            out[i, s:s + step] = np.argmax(sims, axis=1)
        out[i, ~units_a[i].any(axis=1) | blank_b.all()] = -1
    return out


def _within_one(t: np.ndarray, size: int) -> np.ndarray:
    """Number of integer positions in [0, size) within distance 1 of the (fractional) positions ``t``."""
    return np.clip(np.floor(np.minimum(t + 1, size - 1)) - np.ceil(np.maximum(t - 1, 0)) + 1, 0, None)


def _eligible(corr: Correspondence) -> np.ndarray:
    """(rows * cols,) bool: valid source tokens whose own position is more than one token from their match."""
    rows, cols = corr.grid
    own = np.stack(np.divmod(np.arange(rows * cols), cols), axis=-1)
    return corr.valid.reshape(-1) & (np.abs(own - corr.target.reshape(-1, 2)).max(axis=-1) > 1)


def _quantities(nn: np.ndarray, corr: Correspondence, alphas: Sequence[float]) -> np.ndarray:
    """(N, 4 + len(alphas), rows * cols) per-token indicators: valid, hit, pck..., wrong-eligible, bias."""
    rows, cols = corr.grid
    target = corr.target.reshape(-1, 2)
    valid = corr.valid.reshape(-1)
    predicted = nn >= 0  # a zero (masked) source token predicts nothing: a miss (nearest_tokens)
    pred = np.stack(np.divmod(np.maximum(nn, 0), cols), axis=-1).astype(np.float64)  # (N, T, 2)
    cheb = np.abs(pred - target).max(axis=-1)
    euclid = np.sqrt(((pred - target) ** 2).sum(axis=-1))
    hit = valid & predicted & (cheb <= 1)
    wrong = _eligible(corr) & ~hit
    bias = wrong & predicted & (nn == np.arange(rows * cols))
    pck = [valid & predicted & (euclid <= a * max(rows, cols)) for a in alphas]
    return np.stack([np.broadcast_to(valid, hit.shape), hit, *pck, wrong, bias], axis=1).astype(np.float64)


def _region_masks(rows: int, cols: int) -> np.ndarray:
    """(4, rows * cols) float masks of the regions in :data:`REGIONS` (all, corner, border, other)."""
    return np.concatenate([np.ones((1, rows * cols)), group_masks(rows, cols).reshape(3, -1)]).astype(np.float64)


def chance_bias_rate(corr: Correspondence) -> dict[str, float]:
    """Bias rate of uniformly random matches per region (module docstring); NaN with no eligible token."""
    rows, cols = corr.grid
    target = corr.target.reshape(-1, 2)
    eligible = _eligible(corr)
    safe = np.where(eligible[:, None], target, 0.0)  # invalid tokens may hold any target
    near = _within_one(safe[:, 0], rows) * _within_one(safe[:, 1], cols)
    masks = _region_masks(rows, cols)
    num, den = masks @ eligible, masks @ np.where(eligible, rows * cols - near, 0.0)
    return {name: float(a / b) if b > 0 else float("nan") for name, a, b in zip(REGIONS, num, den)}


@dataclass
class ViewMatchingResult(_Result):
    """Matching of a layer's tokens to a known view (module docstring). Dicts are keyed by region
    (:data:`REGIONS`); ``pck[region][k]`` is PCK at ``alphas[k]`` (a fraction of the grid's longer side).
    ``tokens_per_image`` / ``eligible_per_image``: valid / bias-eligible source tokens of one image."""

    kind = "view_matching"

    view: str
    grid: tuple[int, int]
    alphas: list[float]
    accuracy: dict[str, Interval]
    pck: dict[str, list[Interval]]
    bias_rate: dict[str, Interval]
    chance_bias_rate: dict[str, float]
    tokens_per_image: dict[str, int]
    eligible_per_image: dict[str, int]
    n_images: int
    layer: str | None = None
    provenance: dict = field(default_factory=dict)

    @classmethod
    def _convert(cls, kw: dict[str, Any]) -> dict[str, Any]:
        kw["grid"] = tuple(int(v) for v in kw["grid"])
        for name in ("accuracy", "bias_rate"):
            kw[name] = {k: Interval.from_dict(v) for k, v in kw[name].items()}
        kw["pck"] = {k: [Interval.from_dict(v) for v in vs] for k, vs in kw["pck"].items()}
        kw["chance_bias_rate"] = {k: float("nan") if v is None else float(v) for k, v in kw["chance_bias_rate"].items()}
        return kw


class ViewMatchingAccumulator(Accumulator):
    """Streamed view matching: ``update(features_a, features_b, image_indices=None)`` with features of the
    images (A) and of their views (B), both (N, C, rows, cols) on the correspondence's grid. Keeps per image
    and region the counts of the module docstring (4 regions x (4 + len(alphas)) floats), never features.

    ``correspondence``: a :class:`~sdaudit.analyses.views.Correspondence` (or its ``to_dict``);
    ``alphas``: PCK thresholds as fractions of the grid's longer side; ``n_boot``, ``level``, ``seed``: the
    bootstrap over images.
    """

    def __init__(self, correspondence: Correspondence | dict, *, alphas: Sequence[float] = DEFAULT_ALPHAS,
                 layer: str | None = None, provenance: dict | None = None, n_boot: int = DEFAULT_BOOT,
                 level: float = DEFAULT_LEVEL, seed: int = 0):
        super().__init__()
        corr = (correspondence if isinstance(correspondence, Correspondence)
                else Correspondence.from_dict(correspondence))  # from a checkpoint's settings
        self.correspondence, self.alphas = corr, [float(a) for a in alphas]
        self.layer, self.provenance = layer, dict(provenance or {})
        self.bootstrap = Bootstrap(n_boot=n_boot, level=level, seed=seed)
        self._width = 4 + len(self.alphas)
        self.per_image = PerImageStats(len(REGIONS) * self._width)

    def update(self, features_a: Any, features_b: Any, image_indices: Sequence[int] | None = None) -> None:
        idx = resolve_indices(len(features_a), image_indices, self._next_index)
        a = check_features(features_a, layer=self.layer, name="features_a", image_indices=idx)
        b = check_features(features_b, layer=self.layer, name="features_b", image_indices=idx)
        grid = self.correspondence.grid
        if a.shape != b.shape or a.shape[2:] != grid:
            raise ValueError(f"layer {self.layer!r}: features_a {a.shape} and features_b {b.shape} must both be "
                             f"(N, C, {grid[0]}, {grid[1]}) (the correspondence's grid)")
        nn = nearest_tokens(unit_tokens(a), unit_tokens(b))
        counts = np.einsum("nqt,gt->ngq", _quantities(nn, self.correspondence, self.alphas), _region_masks(*grid))
        self.per_image.add(idx, counts.reshape(len(idx), -1))
        if len(idx):
            self._next_index = max(self._next_index, int(idx.max()) + 1)

    def merge(self, other: "ViewMatchingAccumulator") -> "ViewMatchingAccumulator":
        self._check_mergeable(other)
        self.per_image.merge(other.per_image)
        self._next_index = max(self._next_index, other._next_index)
        return self

    def _columns(self, region: str, metric: str) -> tuple[int, int]:
        """(numerator, denominator) columns of a metric in the per-image rows: per region valid, hit, pck...,
        wrong-eligible, bias. ``metric``: "accuracy", "bias" or "pck<j>" (the j-th alpha)."""
        base, w = REGIONS.index(region) * self._width, self._width
        if metric == "accuracy":
            return base + 1, base
        if metric == "bias":
            return base + w - 1, base + w - 2
        if metric.startswith("pck") and int(metric[3:]) < len(self.alphas):
            return base + 2 + int(metric[3:]), base
        raise ValueError(f"unknown matching metric {metric!r}")

    def terms(self, region: str, metric: str) -> Terms:
        """Bootstrap terms over images of one metric in ``region`` (see :meth:`_columns`): what paired differences
        (a mitigation's before / after, a model against its control) resample."""
        index, rows = self.per_image.arrays()
        return Terms(index, rows, ratio(*self._columns(region, metric)))

    def _interval(self, region: str, metric: str) -> Interval:
        return self.bootstrap.interval(self.per_image.arrays()[1], ratio(*self._columns(region, metric)))

    def result(self) -> ViewMatchingResult:
        index, rows = self.per_image.arrays()
        if not len(index):
            raise ValueError(f"layer {self.layer!r}: no images seen")
        w, k = self._width, len(self.alphas)
        per_region = rows[0].reshape(len(REGIONS), w)  # valid counts are the same for every image
        eligible = _region_masks(*self.correspondence.grid) @ _eligible(self.correspondence)
        return ViewMatchingResult(
            view=self.correspondence.kind, grid=self.correspondence.grid, alphas=list(self.alphas),
            accuracy={g: self._interval(g, "accuracy") for g in REGIONS},
            pck={g: [self._interval(g, f"pck{j}") for j in range(k)] for g in REGIONS},
            bias_rate={g: self._interval(g, "bias") for g in REGIONS},
            chance_bias_rate=chance_bias_rate(self.correspondence),
            tokens_per_image={g: int(per_region[i, 0]) for i, g in enumerate(REGIONS)},
            eligible_per_image={g: int(eligible[i]) for i, g in enumerate(REGIONS)},
            n_images=len(index), layer=self.layer, provenance=dict(self.provenance))

    def _state_arrays(self):
        return nest("per_image", self.per_image.state())

    def _load_state_arrays(self, state):
        self.per_image.load(unnest("per_image", state))


def match_views(features_a: Any, features_b: Any, correspondence: Correspondence, *,
                alphas: Sequence[float] = DEFAULT_ALPHAS, image_indices: Sequence[int] | None = None,
                layer: str | None = None, provenance: dict | None = None, n_boot: int = DEFAULT_BOOT,
                level: float = DEFAULT_LEVEL, seed: int = 0) -> ViewMatchingResult:
    """One-shot :class:`ViewMatchingAccumulator`: matching accuracy, PCK and positional-bias rate with
    intervals, for features of images (A) and of their known views (B), (N, C, rows, cols) each."""
    acc = ViewMatchingAccumulator(correspondence, alphas=alphas, layer=layer, provenance=provenance,
                                  n_boot=n_boot, level=level, seed=seed)
    acc.update(features_a, features_b, image_indices)
    return acc.result()
