"""Removing the positional component of a layer's features: two transforms to compare.

:class:`PositionMean` subtracts the mean feature at each grid position over the fitted images,
``mu[:, r, c] = mean_i x[i, :, r, c]``; with ``keep_global_mean`` (default) it subtracts only its
deviation from the layer's mean token ``mu_bar = mean_{r,c} mu[:, r, c]``, so the transformed features
keep their overall offset (and typical norm) and lose only what differs from place to place:
``x'[:, r, c] = x[:, r, c] - (mu[:, r, c] - mu_bar)``. It removes any fixed per-position pattern,
linear or not in (r, c), in all C dimensions, but also the average image content at each place
(e.g. a photographer's centre bias), and it knows only the fitted grid.

:class:`PositionSubspace` projects every token onto the orthogonal complement of the subspace that
linearly predicts its row and column. That subspace is the span of the cross-covariance between the
token features and the one-hot row and column targets (the directions least-squares regression of
those targets reads), i.e. of the count-weighted centred class means
``sqrt(n_r) (mu_r - mu)`` (rows) and ``sqrt(n_c) (mu_c - mu)`` (columns), orthonormalised by an SVD
(LEACE's orthogonal variant, Belrose et al., NeurIPS 2023). With all of it removed
(``n_components=None``: rank <= rows + cols - 2) every row class and every column class has the same mean
on the fitted images, so no linear probe beats chance there (linear guardedness); ``n_components=k``
removes only the k strongest directions. It keeps everything orthogonal to those few directions
exactly (content, norms along other axes) but removes the content variance along them too, and it
does not remove non-linear positional codes (e.g. per-position variance).
"""

from __future__ import annotations

import numpy as np

from ..errors import UsageError
from .base import Mitigation

_RANK_TOL = 1e-10  # singular values below this share of the largest are numerical zeros


class PositionMean(Mitigation):
    """Subtract the fitted mean feature at each grid position (module docstring).

    Parameters:
        keep_global_mean: subtract ``mu[:, r, c] - mu_bar`` (default) instead of ``mu[:, r, c]``.

    Fitted attributes: ``position_mean_`` (C, rows, cols) and ``global_mean_`` (C,), float64.
    """

    kind = "position"

    def __init__(self, *, keep_global_mean: bool = True):
        self.keep_global_mean = bool(keep_global_mean)
        super().__init__()

    def _empty_state(self, n_channels, grid):
        return {"sum": np.zeros((n_channels, *grid), np.float64)}

    def _accumulate(self, x):
        self._state["sum"] += x.sum(axis=0, dtype=np.float64)

    def _derive(self):
        self.position_mean_ = self._state["sum"] / self.n_images_
        self.global_mean_ = self.position_mean_.mean(axis=(1, 2))

    def _apply(self, x):
        offset = self.position_mean_
        if self.keep_global_mean:
            offset = offset - self.global_mean_[:, None, None]
        return (x - offset[None]).astype(np.float32)


class PositionSubspace(Mitigation):
    """Project out the subspace that linearly predicts a token's row and column (module docstring).

    Parameters:
        n_components: directions removed; None (default) = all of them (the subspace's rank), which makes
            every row's and column's mean equal on the fitted images.

    Fitted attributes: ``components_`` (k, C) orthonormal rows, ``singular_values_`` (k,) their strength.
    """

    kind = "position-subspace"

    def __init__(self, *, n_components: int | None = None):
        if n_components is not None and int(n_components) < 1:
            raise UsageError(f"n_components must be >= 1 or None, got {n_components}")
        self.n_components = None if n_components is None else int(n_components)
        super().__init__()

    def _empty_state(self, n_channels, grid):
        return {"row_sum": np.zeros((grid[0], n_channels), np.float64),
                "col_sum": np.zeros((grid[1], n_channels), np.float64)}

    def _accumulate(self, x):
        self._state["row_sum"] += x.sum(axis=(0, 3), dtype=np.float64).T
        self._state["col_sum"] += x.sum(axis=(0, 2), dtype=np.float64).T

    def _derive(self):
        rows, cols = self.grid_
        n = self.n_images_
        mu = self._state["row_sum"].sum(axis=0) / (n * rows * cols)
        mu_r = self._state["row_sum"] / (n * cols)
        mu_c = self._state["col_sum"] / (n * rows)
        # weights sqrt(class count) up to the common factor sqrt(n): the cross-covariance's columns
        m = np.vstack([np.sqrt(cols) * (mu_r - mu), np.sqrt(rows) * (mu_c - mu)])
        _, s, vt = np.linalg.svd(m, full_matrices=False)
        rank = int((s > _RANK_TOL * s[0]).sum()) if s.size and s[0] > 0 else 0
        k = rank if self.n_components is None else min(self.n_components, rank)
        self.components_ = vt[:k]
        self.singular_values_ = s[:k]

    def _apply(self, x):
        v = self.components_.astype(np.float32)
        coef = np.einsum("kc,nchw->nkhw", v, x)
        return (x - np.einsum("kc,nkhw->nchw", v, coef)).astype(np.float32)
