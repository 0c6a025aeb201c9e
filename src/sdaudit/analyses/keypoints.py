"""Keypoint matching on annotated image pairs: PCK of nearest-neighbour token predictions (SPair convention).

Per pair, features of image A and image B (C, rows, cols each, at the model's input size) and keypoints in
the ORIGINAL images' pixels (x, y). The model saw each image centre-cropped to a square and resized
(:func:`sdaudit.images.prepare_image`; ``square_crop=False``: resized without a crop), so a keypoint maps to
the fraction u = (x - left) / s, v = (y - top) / s of that square (s the short side, (left, top) the crop's
corner) and to the token (floor(v * rows), floor(u * cols)). Source keypoints outside the square have no
token and are skipped (counted in ``skipped``).

Each source keypoint's token is matched to its cosine nearest neighbour among B's tokens; the prediction is
that token's centre mapped back to B's original pixels. With d the distance to the annotated target in B's
pixels and L = max(h, w) of B's bounding box when given, else of the whole image B (SPair-71k's convention):

    PCK(alpha) = #(d <= alpha * L) / #keypoints,   alpha in (0.05, 0.1, 0.15) by default

split by whether the SOURCE keypoint's token is in the grid's outer ring (corners included,
:func:`~sdaudit.analyses.borders.group_masks`) or in the interior. The chance PCK is the PCK of a uniformly
random token prediction (per keypoint: the share of B's token centres within alpha * L of the target), a
control with the same keypoints. Intervals: bootstrap over pairs (the independent draws).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from ._arrays import as_float32, check_finite
from ._base import Accumulator, nest, unnest
from .borders import group_masks
from .correspondence import nearest_tokens, unit_tokens
from .intervals import DEFAULT_BOOT, DEFAULT_LEVEL, Bootstrap, Interval, PerImageStats, Terms, ratio
from .results import _Result

KEYPOINT_REGIONS = ("all", "ring", "interior")
KEYPOINT_ALPHAS = (0.05, 0.1, 0.15)


@dataclass(frozen=True)
class PairKeypoints:
    """One annotated pair, arrays only: ``keypoints_a`` / ``keypoints_b`` (K, 2) (x, y) in the original images'
    pixels, ``size_a`` / ``size_b`` (width, height), optional ``bbox_b`` (x0, y0, x1, y1) of the target object."""

    keypoints_a: np.ndarray
    keypoints_b: np.ndarray
    size_a: tuple[int, int]
    size_b: tuple[int, int]
    bbox_b: tuple[float, float, float, float] | None = None

    def __post_init__(self) -> None:
        a = np.asarray(self.keypoints_a, np.float64).reshape(-1, 2)
        b = np.asarray(self.keypoints_b, np.float64).reshape(-1, 2)
        if a.shape != b.shape:
            raise ValueError(f"{len(a)} source keypoints but {len(b)} target keypoints")
        object.__setattr__(self, "keypoints_a", a)
        object.__setattr__(self, "keypoints_b", b)
        object.__setattr__(self, "size_a", tuple(int(v) for v in self.size_a))
        object.__setattr__(self, "size_b", tuple(int(v) for v in self.size_b))


def _square(size: tuple[int, int], square_crop: bool) -> tuple[float, float, float, float]:
    """(left, top, width, height) of the part of an image of ``size`` the model sees."""
    w, h = size
    if not square_crop:
        return 0.0, 0.0, float(w), float(h)
    s = min(w, h)
    return float((w - s) // 2), float((h - s) // 2), float(s), float(s)


def keypoint_tokens(points: np.ndarray, size: tuple[int, int], grid: tuple[int, int], *,
                    square_crop: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(row, col) int tokens (K, 2) of (x, y) pixel ``points`` of an image of ``size`` on ``grid``, and a
    (K,) mask of the points inside the part of the image the model sees (module docstring)."""
    left, top, w, h = _square(size, square_crop)
    u, v = (points[:, 0] - left) / w, (points[:, 1] - top) / h
    inside = (u >= 0) & (u <= 1) & (v >= 0) & (v <= 1)
    rows, cols = grid
    tokens = np.stack([np.clip(np.floor(v * rows), 0, rows - 1), np.clip(np.floor(u * cols), 0, cols - 1)], axis=-1)
    return tokens.astype(np.int64), inside


def token_centres(tokens: np.ndarray, size: tuple[int, int], grid: tuple[int, int], *,
                  square_crop: bool = True) -> np.ndarray:
    """(x, y) pixels (K, 2) in an image of ``size`` of the centres of (row, col) ``tokens`` on ``grid``."""
    left, top, w, h = _square(size, square_crop)
    rows, cols = grid
    return np.stack([left + (tokens[:, 1] + 0.5) / cols * w, top + (tokens[:, 0] + 0.5) / rows * h], axis=-1)


def _features(x: Any, name: str) -> np.ndarray:
    arr = as_float32(x)
    if arr.ndim != 3 or min(arr.shape) < 1:
        raise ValueError(f"{name}: expected shape (C, rows, cols), got {tuple(arr.shape)}")
    return arr


def predict_keypoints(features_a: Any, features_b: Any, pair: PairKeypoints, *,
                      square_crop: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Predicted target keypoints (K, 2) in B's pixels (NaN where skipped) and the (K,) mask of source
    keypoints inside A's model view; features (C, rows, cols) of A and B."""
    a, b = _features(features_a, "features_a"), _features(features_b, "features_b")
    tokens, inside = keypoint_tokens(pair.keypoints_a, pair.size_a, a.shape[1:], square_crop=square_crop)
    units_a = unit_tokens(a[None])[:, tokens[:, 0] * a.shape[2] + tokens[:, 1]]
    nn = nearest_tokens(units_a, unit_tokens(b[None]))[0]
    pred = token_centres(np.stack(np.divmod(np.maximum(nn, 0), b.shape[2]), axis=-1), pair.size_b, b.shape[1:],
                         square_crop=square_crop)
    pred[nn < 0] = np.nan  # a zero (masked) source token predicts nothing: a miss
    pred[~inside] = np.nan
    return pred, inside


def _threshold_length(pair: PairKeypoints) -> float:
    """L of the module docstring: max side of B's bounding box, else of image B."""
    if pair.bbox_b is not None:
        x0, y0, x1, y1 = pair.bbox_b
        return float(max(x1 - x0, y1 - y0))
    return float(max(pair.size_b))


def _chance_hits(pair: PairKeypoints, grid_b: tuple[int, int], radii: np.ndarray, square_crop: bool) -> np.ndarray:
    """(K, len(radii)) share of B's token centres within each radius of each target keypoint."""
    rows, cols = grid_b
    all_tokens = np.stack(np.divmod(np.arange(rows * cols), cols), axis=-1)
    centres = token_centres(all_tokens, pair.size_b, grid_b, square_crop=square_crop)
    d = np.linalg.norm(pair.keypoints_b[:, None, :] - centres[None], axis=-1)  # (K, T)
    return (d[..., None] <= radii).mean(axis=1)


class KeypointMatchingAccumulator(Accumulator):
    """Streamed keypoint PCK over pairs: ``update(features_a, features_b, pair, pair_index=None)`` with the
    features (C, rows, cols) of one pair's images and its :class:`PairKeypoints`. Keeps per pair and region
    (:data:`KEYPOINT_REGIONS`) the keypoint count, PCK hits and chance hits per alpha, plus the skipped count."""

    def __init__(self, *, alphas: Sequence[float] = KEYPOINT_ALPHAS, square_crop: bool = True,
                 layer: str | None = None, provenance: dict | None = None, n_boot: int = DEFAULT_BOOT,
                 level: float = DEFAULT_LEVEL, seed: int = 0):
        super().__init__()
        self.alphas, self.square_crop = [float(a) for a in alphas], bool(square_crop)
        self.layer, self.provenance = layer, dict(provenance or {})
        self.bootstrap = Bootstrap(n_boot=n_boot, level=level, seed=seed)
        self._width = 1 + 2 * len(self.alphas)
        self.per_pair = PerImageStats(len(KEYPOINT_REGIONS) * self._width + 1)

    def update(self, features_a: Any, features_b: Any, pair: PairKeypoints, pair_index: int | None = None) -> None:
        index = self._next_index if pair_index is None else int(pair_index)
        for name, x in (("features_a", features_a), ("features_b", features_b)):
            check_finite(_features(x, name)[None], self.layer, [index], name=name)
        pred, inside = predict_keypoints(features_a, features_b, pair, square_crop=self.square_crop)
        grid_a, grid_b = np.shape(features_a)[1:], np.shape(features_b)[1:]
        radii = np.asarray(self.alphas) * _threshold_length(pair)
        hits = np.linalg.norm(pred - pair.keypoints_b, axis=-1)[:, None] <= radii  # NaN (skipped) -> False
        chance = _chance_hits(pair, grid_b, radii, self.square_crop)
        tokens, _ = keypoint_tokens(pair.keypoints_a, pair.size_a, grid_a, square_crop=self.square_crop)
        ring = ~group_masks(*grid_a)[2][tokens[:, 0], tokens[:, 1]]
        row = []
        for mask in (inside, inside & ring, inside & ~ring):
            row += [mask.sum(), *hits[mask].sum(axis=0), *chance[mask].sum(axis=0)]
        self.per_pair.add([index], np.array(row + [(~inside).sum()], np.float64)[None])
        self._next_index = max(self._next_index, index + 1)

    def merge(self, other: "KeypointMatchingAccumulator") -> "KeypointMatchingAccumulator":
        self._check_mergeable(other)
        self.per_pair.merge(other.per_pair)
        self._next_index = max(self._next_index, other._next_index)
        return self

    def _columns(self, region: str, alpha_index: int) -> tuple[int, int]:
        """(numerator, denominator) columns of PCK at the ``alpha_index``-th alpha in ``region`` (per region:
        keypoints, hits per alpha, chance hits per alpha; then the skipped count)."""
        base = KEYPOINT_REGIONS.index(region) * self._width
        return base + 1 + int(alpha_index), base

    def terms(self, region: str, alpha_index: int) -> Terms:
        """Bootstrap terms over pairs of PCK at the ``alpha_index``-th alpha in ``region``."""
        index, rows = self.per_pair.arrays()
        return Terms(np.asarray(index), rows, ratio(*self._columns(region, alpha_index)))

    def result(self) -> "KeypointMatchingResult":
        index, rows = self.per_pair.arrays()
        if not len(index):
            raise ValueError(f"layer {self.layer!r}: no pairs seen")
        w, k = self._width, len(self.alphas)
        sums = rows.sum(axis=0)
        pck, chance, counts = {}, {}, {}
        for i, region in enumerate(KEYPOINT_REGIONS):
            base = i * w
            pck[region] = [self.bootstrap.interval(rows, ratio(*self._columns(region, j))) for j in range(k)]
            with np.errstate(invalid="ignore", divide="ignore"):
                chance[region] = [float(sums[base + 1 + k + j] / sums[base]) for j in range(k)]
            counts[region] = int(sums[base])
        return KeypointMatchingResult(alphas=list(self.alphas), pck=pck, chance_pck=chance, keypoints=counts,
                                      skipped=int(sums[-1]), n_pairs=len(index), layer=self.layer,
                                      provenance=dict(self.provenance))

    def _state_arrays(self):
        return nest("per_pair", self.per_pair.state())

    def _load_state_arrays(self, state):
        self.per_pair.load(unnest("per_pair", state))


@dataclass
class KeypointMatchingResult(_Result):
    """Keypoint PCK per region (:data:`KEYPOINT_REGIONS`): ``pck[region][k]`` at ``alphas[k]`` with its
    interval over pairs, ``chance_pck`` the uniformly-random-prediction control, ``keypoints`` the evaluated
    keypoints per region, ``skipped`` the source keypoints outside the model's view."""

    kind = "keypoint_matching"

    alphas: list[float]
    pck: dict[str, list[Interval]]
    chance_pck: dict[str, list[float]]
    keypoints: dict[str, int]
    skipped: int
    n_pairs: int
    layer: str | None = None
    provenance: dict = field(default_factory=dict)

    @classmethod
    def _convert(cls, kw: dict[str, Any]) -> dict[str, Any]:
        kw["pck"] = {k: [Interval.from_dict(v) for v in vs] for k, vs in kw["pck"].items()}
        kw["chance_pck"] = {k: [float("nan") if v is None else float(v) for v in vs]
                            for k, vs in kw["chance_pck"].items()}
        return kw


def match_keypoints(features_a: Any, features_b: Any, pairs: Sequence[PairKeypoints], *,
                    alphas: Sequence[float] = KEYPOINT_ALPHAS, square_crop: bool = True, layer: str | None = None,
                    n_boot: int = DEFAULT_BOOT, seed: int = 0) -> KeypointMatchingResult:
    """One-shot keypoint PCK: ``features_a`` / ``features_b`` (P, C, rows, cols), pair p's images in row p."""
    if not len(features_a) == len(features_b) == len(pairs):
        raise ValueError(f"{len(features_a)} and {len(features_b)} feature rows for {len(pairs)} pairs")
    acc = KeypointMatchingAccumulator(alphas=alphas, square_crop=square_crop, layer=layer, n_boot=n_boot, seed=seed)
    for fa, fb, pair in zip(features_a, features_b, pairs):
        acc.update(fa, fb, pair)
    return acc.result()
