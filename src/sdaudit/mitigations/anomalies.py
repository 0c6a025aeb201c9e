"""Repairing high-norm anomalous tokens, with the controls the registers literature asks for.

Detection is the audit's own (:func:`sdaudit.analyses.anomalies.detect_in_map`, same parameters and
defaults), run per image on the token-norm map of the features being transformed. The repaired tokens
are those of each detected 2x2 patch (the detector's and the published labels' unit; clipped to the grid).

Replacement (``method``):

``"neighbours"`` (default) the mean of the token's non-anomalous 8-neighbours in the same image (the
                 repair); a token with none (a patch covering its whole neighbourhood) gets the fitted
                 mean token instead.
``"mean"``       the layer's mean token over the fitted images, ``mean_token_`` (mean substitution: the
                 control a repair must be compared with; arXiv 2604.14433 found zeroing registers costs up
                 to 36.6 points where mean substitution costs about 1).
``"zero"``       zeros: only as an explicitly named comparison (it overstates the harm of removal).

Images without detections are returned unchanged (bit for bit).
"""

from __future__ import annotations

import numpy as np

from ..analyses._arrays import check_features, token_norms
from ..analyses.anomalies import DEFAULTS, detect_in_map
from ..errors import UsageError
from .base import Mitigation

METHODS = ("neighbours", "mean", "zero")
_SHIFTS = [(dy, dx) for dy in range(3) for dx in range(3) if (dy, dx) != (1, 1)]


class AnomalyRepair(Mitigation):
    """Replace the tokens of detected anomalies (module docstring).

    Parameters:
        method: "neighbours", "mean" or "zero".
        z_threshold, ratio_threshold, max_tokens, local_ratio: the detector's (defaults as in the audit).

    Fitted attribute: ``mean_token_`` (C,), float64: the mean token over all tokens of the fitted images.
    """

    kind = "anomalies"

    def __init__(self, *, method: str = "neighbours", z_threshold: float = DEFAULTS["z_threshold"],
                 ratio_threshold: float = DEFAULTS["ratio_threshold"], max_tokens: int = DEFAULTS["max_tokens"],
                 local_ratio: float = DEFAULTS["local_ratio"]):
        if method not in METHODS:
            raise UsageError(f"anomaly repair method {method!r}: choose one of {', '.join(METHODS)}")
        self.method = method
        self.z_threshold, self.ratio_threshold = float(z_threshold), float(ratio_threshold)
        self.max_tokens, self.local_ratio = int(max_tokens), float(local_ratio)
        super().__init__()

    def _detector_params(self) -> dict:
        return {"z_threshold": self.z_threshold, "ratio_threshold": self.ratio_threshold,
                "max_tokens": self.max_tokens, "local_ratio": self.local_ratio}

    def _empty_state(self, n_channels, grid):
        return {"token_sum": np.zeros(n_channels, np.float64)}

    def _accumulate(self, x):
        self._state["token_sum"] += x.sum(axis=(0, 2, 3), dtype=np.float64)

    def _derive(self):
        self.mean_token_ = self._state["token_sum"] / (self.n_images_ * self.grid_[0] * self.grid_[1])

    def anomaly_mask(self, X) -> np.ndarray:
        """(N, rows, cols) bool: the tokens :meth:`transform` replaces (the detected 2x2 patches)."""
        x = check_features(X, layer=self.layer_)
        return _masks(token_norms(x), self._detector_params())

    def _apply(self, x):
        masks = _masks(token_norms(x), self._detector_params())
        for i in np.nonzero(masks.reshape(len(x), -1).any(axis=1))[0]:
            x[i] = self._repaired(x[i], masks[i])
        return x

    def _repaired(self, img: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """One image (C, rows, cols) with its ``mask`` tokens replaced by ``method``."""
        fallback = self.mean_token_.astype(np.float32)
        if self.method == "zero":
            img[:, mask] = 0.0
            return img
        if self.method == "mean":
            img[:, mask] = fallback[:, None]
            return img
        total, count = _neighbour_sums(img, ~mask)
        ys, xs = np.nonzero(mask)
        for y, x in zip(ys, xs):  # few tokens: the detector keeps components of at most max_tokens
            img[:, y, x] = total[:, y, x] / count[y, x] if count[y, x] else fallback
        return img


def _masks(norms: np.ndarray, params: dict) -> np.ndarray:
    """The detected 2x2 patches of each (rows, cols) norm map as a boolean (N, rows, cols) mask."""
    masks = np.zeros(norms.shape, bool)
    for i, m in enumerate(norms):
        for x0, y0, _, _ in detect_in_map(m, **params):
            masks[i, y0:y0 + 2, x0:x0 + 2] = True
    return masks


def _neighbour_sums(img: np.ndarray, keep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per token, the sum of its kept 8-neighbours' features (C, rows, cols, float64) and their count."""
    h, w = keep.shape
    padded = np.pad(img * keep[None], ((0, 0), (1, 1), (1, 1))).astype(np.float64)
    kept = np.pad(keep, 1).astype(np.int64)
    total = sum(padded[:, dy:dy + h, dx:dx + w] for dy, dx in _SHIFTS)
    count = sum(kept[dy:dy + h, dx:dx + w] for dy, dx in _SHIFTS)
    return total, count
