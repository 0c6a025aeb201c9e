"""Down-weighting or masking the outer ring of the token grid, for matching.

Tokens within ``ring`` tokens of the grid's edge (the border ring of the border analysis, widened) get
the weight ``weight`` in [0, 1], all others 1; ``weight=0`` masks the ring. :meth:`BorderWeight.weights`
gives the per-token weight map a matcher can use directly (e.g. to weight similarities or to exclude
ring tokens as match candidates); :meth:`~BorderWeight.transform` scales the ring tokens' features by it.
"""

from __future__ import annotations

import numpy as np

from ..errors import UsageError
from .base import Mitigation


class BorderWeight(Mitigation):
    """Scale the tokens of the outer ring (module docstring).

    Parameters:
        ring: ring width in tokens (>= 1).
        weight: the ring's weight in [0, 1]; 0 masks it.

    Fitting records only the layer, grid and channel count (nothing is learnt from the images).
    """

    kind = "border"

    def __init__(self, *, ring: int = 1, weight: float = 0.0):
        if int(ring) != ring or ring < 1:
            raise UsageError(f"border ring width must be a whole number of tokens >= 1, got {ring}")
        if not 0.0 <= float(weight) <= 1.0:
            raise UsageError(f"border weight must be in [0, 1], got {weight}")
        self.ring, self.weight = int(ring), float(weight)
        super().__init__()

    def weights(self, grid: int | tuple[int, int]) -> np.ndarray:
        """The (rows, cols) float32 weight map of a grid (an int is a square grid): ``weight`` on the ring, 1 inside."""
        rows, cols = (grid, grid) if np.isscalar(grid) else (int(grid[0]), int(grid[1]))
        r = np.arange(rows)[:, None]
        c = np.arange(cols)[None, :]
        on_ring = (r < self.ring) | (r >= rows - self.ring) | (c < self.ring) | (c >= cols - self.ring)
        return np.where(on_ring, np.float32(self.weight), np.float32(1.0)).astype(np.float32)

    def _apply(self, x):
        return x * self.weights(self.grid_)[None, None]
