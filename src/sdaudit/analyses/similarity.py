"""Similarity maps (paper Fig. 1, 3): one reference token against every token of some images.

Measures (all computed in float32; float16 input is upcast):

``cosine``           t.x / (|t| |x|); 0 where either token has zero norm.
``centered_cosine``  cosine of (t - m) and (x - m), m = the *mean token*: by default the mean over
                     all N*rows*cols tokens of the compared images (``others`` if given, else
                     ``features``); pass ``center=`` to use another (e.g. a dataset mean from
                     :class:`TokenMeanAccumulator`). The authors' explorer used, per image pair,
                     (mean of the reference image + mean of the compared image) / 2, which is the
                     same as the default when a single image is compared with itself.
``dot``              t.x (raw; the explorer divides by the map's max |value| for display).
``l1``/``l2``/``linf`` distances sum|t-x|, sqrt(sum (t-x)^2), max|t-x| (raw, units of the
                     features; the explorer shows 1 - d/max d).
``relative_l2_norm`` |x| / |t|: the token's norm relative to the reference's norm (1 = same
                     norm). The explorer shows (|x| - |t|) / max||x| - |t||, a monotone display
                     variant of the same comparison. Raises if the reference has zero norm.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ._arrays import as_float32, check_features, check_finite, resolve_indices, token_norms
from ._base import Accumulator

MEASURES = ("cosine", "centered_cosine", "dot", "l1", "l2", "linf", "relative_l2_norm")


def norm_map(features: Any, *, layer: str | None = None) -> np.ndarray:
    """L2 norm of every token: (N, C, rows, cols) -> (N, rows, cols) float32."""
    return token_norms(check_features(features, layer=layer))


def reference_token(features: Any, image: int, row: int, col: int, *, layer: str | None = None) -> np.ndarray:
    """The (C,) float32 feature vector of token (row, col) of image ``image``."""
    arr = as_float32(features)
    if arr.ndim != 4:
        raise ValueError(f"expected (N, C, rows, cols), got {tuple(arr.shape)}")
    n, _, h, w = arr.shape
    if not (-n <= image < n and -h <= row < h and -w <= col < w):
        raise IndexError(f"reference (image={image}, row={row}, col={col}) outside array of "
                         f"{n} images with {h}x{w} grid")
    t = np.array(arr[image, :, row, col], dtype=np.float32)
    check_finite(t[None], layer, [image], name="reference token")
    return t


def typical_corner(features: Any, *, layer: str | None = None) -> tuple[int, int]:
    """(row, col) of the corner token most alike the other three corners of its image (largest summed
    cosine to them, averaged over images; ties: top-left, top-right, bottom-left, bottom-right): a
    reference token whose similarity map shows the corner effect (see :mod:`sdaudit.analyses.borders`)."""
    x = check_features(features, layer=layer)
    n, _, h, w = x.shape
    corners = [(0, 0), (0, w - 1), (h - 1, 0), (h - 1, w - 1)]
    t = np.stack([x[:, :, r, c] for r, c in corners], axis=1).astype(np.float64)  # (N, 4, C)
    norms = np.linalg.norm(t, axis=2, keepdims=True)
    u = np.divide(t, norms, out=np.zeros_like(t), where=norms > 0)  # a zero token has cosine 0
    sims = np.einsum("nac,nbc->ab", u, u) / n
    np.fill_diagonal(sims, 0)
    return corners[int(np.argmax(sims.sum(axis=1)))]


def similarity_map(features: Any, ref: tuple[int, int, int] | Any = (0, 0, 0), measure: str = "cosine",
                   others: Any = None, *, center: Any = None, layer: str | None = None) -> np.ndarray:
    """Similarity of one reference token to every token of every image.

    ``ref`` is ``(image, row, col)`` into ``features``, or directly a (C,) vector. Tokens compared
    are those of ``others`` if given, else of ``features``. Returns (N, rows, cols) float32 for the
    compared array. See the module docstring for the measures.
    """
    if measure not in MEASURES:
        raise ValueError(f"unknown measure {measure!r}; choose one of {MEASURES}")
    if isinstance(ref, tuple) and len(ref) == 3 and all(isinstance(v, (int, np.integer)) for v in ref):
        t = reference_token(features, *ref, layer=layer)
    else:
        t = as_float32(ref).reshape(-1)
        check_finite(t[None], layer, name="reference token")
    x = check_features(features if others is None else others, layer=layer,
                       name="features" if others is None else "others")
    if x.shape[1] != t.shape[0]:
        raise ValueError(f"reference has {t.shape[0]} channels, compared features {x.shape[1]}")
    if measure == "centered_cosine" and center is None:
        center = x.mean(axis=(0, 2, 3), dtype=np.float64).astype(np.float32)
    return _maps(x, t, measure, None if center is None else as_float32(center).reshape(-1))


def _maps(x: np.ndarray, t: np.ndarray, measure: str, center: np.ndarray | None) -> np.ndarray:
    """Core of :func:`similarity_map` on validated float32 arrays, one image at a time."""
    out = np.empty((x.shape[0],) + x.shape[2:], dtype=np.float32)
    if measure == "centered_cosine":
        if center is None:
            raise ValueError("centered_cosine needs a center (mean token)")
        t = t - center
    tn = np.float32(np.sqrt(np.dot(t, t)))
    if measure == "relative_l2_norm" and tn == 0:
        raise ValueError("relative_l2_norm: the reference token has zero norm")
    for i in range(x.shape[0]):
        xi = x[i]
        if measure == "centered_cosine":
            xi = xi - center[:, None, None]
        if measure in ("cosine", "centered_cosine", "dot"):
            d = np.einsum("chw,c->hw", xi, t)
            if measure == "dot":
                out[i] = d
            else:
                xn = np.sqrt(np.einsum("chw,chw->hw", xi, xi))
                den = xn * tn
                out[i] = np.divide(d, den, out=np.zeros_like(d), where=den > 0)
        elif measure == "relative_l2_norm":
            out[i] = np.sqrt(np.einsum("chw,chw->hw", xi, xi)) / tn
        else:
            diff = np.abs(xi - t[:, None, None])
            if measure == "l1":
                out[i] = diff.sum(axis=0)
            elif measure == "l2":
                out[i] = np.sqrt(np.einsum("chw,chw->hw", diff, diff))
            else:
                out[i] = diff.max(axis=0)
    return out


class TokenMeanAccumulator(Accumulator):
    """Streams the mean token (C,) over all tokens of all images seen (for ``centered_cosine``)."""

    def __init__(self, layer: str | None = None):
        super().__init__()
        self.layer = layer
        self._sum: np.ndarray | None = None
        self._count = 0

    def update(self, batch: Any, image_indices: Sequence[int] | None = None) -> None:
        x = check_features(batch, layer=self.layer, image_indices=image_indices)
        self._next_index += x.shape[0]
        s = x.sum(axis=(0, 2, 3), dtype=np.float64)
        self._sum = s if self._sum is None else self._sum + s
        self._count += x.shape[0] * x.shape[2] * x.shape[3]

    def merge(self, other: "TokenMeanAccumulator") -> "TokenMeanAccumulator":
        self._check_mergeable(other)
        if other._sum is not None:
            self._sum = other._sum.copy() if self._sum is None else self._sum + other._sum
            self._count += other._count
        return self

    def result(self) -> np.ndarray:
        if self._sum is None:
            raise ValueError("no tokens seen")
        return (self._sum / self._count).astype(np.float32)

    def _state_arrays(self):
        return {"sum": np.zeros(0) if self._sum is None else self._sum, "count": np.array(self._count)}

    def _load_state_arrays(self, state):
        self._sum = None if state["sum"].size == 0 else state["sum"].astype(np.float64)
        self._count = int(state["count"])


class SimilarityMapAccumulator(Accumulator):
    """Streamed :func:`similarity_map` (or norm map with ``measure="norm"``) for a fixed reference.

    ``ref`` is the (C,) reference vector (see :func:`reference_token`); for ``centered_cosine``
    pass ``center`` (e.g. from a first pass with :class:`TokenMeanAccumulator`). The output itself
    is (N, rows, cols), so memory grows with N by one map per image (not by the features).
    ``result()`` returns the maps sorted by image index; ``image_indices`` gives that order.
    """

    def __init__(self, ref: Any = None, measure: str = "cosine", center: Any = None, layer: str | None = None):
        super().__init__()
        if measure != "norm" and measure not in MEASURES:
            raise ValueError(f"unknown measure {measure!r}; choose 'norm' or one of {MEASURES}")
        if measure != "norm" and ref is None:
            raise ValueError(f"measure {measure!r} needs a reference vector")
        if measure == "centered_cosine" and center is None:
            raise ValueError("streamed centered_cosine needs center= (mean token, e.g. from "
                             "TokenMeanAccumulator), since it depends on all images")
        self.ref = None if ref is None else as_float32(ref).reshape(-1)
        self.center = None if center is None else as_float32(center).reshape(-1)
        self.measure = measure
        self.layer = layer
        self._maps: dict[int, np.ndarray] = {}

    def update(self, batch: Any, image_indices: Sequence[int] | None = None) -> None:
        idx = resolve_indices(len(batch), image_indices, self._next_index)
        x = check_features(batch, layer=self.layer, image_indices=idx)
        self._next_index = max(self._next_index, int(idx.max()) + 1)
        maps = token_norms(x) if self.measure == "norm" else _maps(x, self.ref, self.measure, self.center)
        for i, m in zip(idx.tolist(), maps):
            self._maps[i] = m

    def merge(self, other: "SimilarityMapAccumulator") -> "SimilarityMapAccumulator":
        self._check_mergeable(other)
        self._maps.update(other._maps)
        return self

    @property
    def image_indices(self) -> np.ndarray:
        return np.array(sorted(self._maps), dtype=np.int64)

    def result(self) -> np.ndarray:
        if not self._maps:
            raise ValueError("no images seen")
        return np.stack([self._maps[i] for i in sorted(self._maps)])

    def _state_arrays(self):
        idx = self.image_indices
        maps = np.stack([self._maps[i] for i in idx]) if len(idx) else np.zeros((0, 0, 0), np.float32)
        return {"indices": idx, "maps": maps}

    def _load_state_arrays(self, state):
        self._maps = {int(i): m for i, m in zip(state["indices"], state["maps"])}
