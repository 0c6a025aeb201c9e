"""Per-image artifact measures before and after a mitigation, as rows of sums for paired bootstrap intervals.

Each function takes the features of the same images before (``x``) and after (``y``) a mitigation,
(N, C, rows, cols) float32, and returns (N, 3) rows ``[denominator, before numerator, after numerator]``:
the measure is sum(numerator) / sum(denominator) over images, so before and after are resampled together
(:func:`sdaudit.analyses.intervals.difference_interval`).

* :func:`anomaly_norm_rows`: the anomalies detected BEFORE (the repair's own detector and parameters) and
  their relative norm, mean norm of the detected 2x2 patch (clipped to the grid) / mean norm of the
  image's whole map, as the audit defines it; rows = [anomalies, sum of ratios before, sum after]. A
  repair moves it toward 1 (no anomaly); images without detections add zeros.
* :func:`channel_ratio_rows`: per image, the largest massive-channel ratio max_c m[i, c] / median_c m[i, c]
  with m[i, c] the median over tokens of |x| (the channel analysis's typical magnitude); rows =
  [1, ratio before, ratio after]: the mean over images.
* :func:`masked_interior_rows`: matching of interior source tokens (not on the outer ring) to a view with
  the candidates of weight 0 in a border mask excluded (their similarity set to -inf before the argmax;
  weights in (0, 1] keep the candidate); rows = [valid interior tokens, hits with all candidates, hits
  with the masked candidates]. A hit is a nearest neighbour within one token of the true match, as in
  :mod:`sdaudit.analyses.correspondence`.
"""

from __future__ import annotations

import numpy as np

from ..analyses._arrays import token_norms
from ..analyses.anomalies import detect_in_map
from ..analyses.borders import group_masks
from ..analyses.channels import channel_magnitudes
from ..analyses.correspondence import nearest_tokens, unit_tokens
from ..analyses.views import Correspondence

_TINY = float(np.finfo(np.float32).tiny)


def anomaly_norm_rows(x: np.ndarray, y: np.ndarray, detector: dict) -> np.ndarray:
    """[anomalies, sum of relative norms before, after] per image, at the anomalies detected in ``x``
    with the detector parameters ``detector`` (:func:`~sdaudit.analyses.anomalies.detect_in_map`)."""
    before, after = token_norms(x), token_norms(y)
    rows = np.zeros((len(x), 3))
    for i in range(len(x)):
        mean_b, mean_a = float(before[i].mean()), float(after[i].mean())
        for x0, y0, _, _ in detect_in_map(before[i], **detector):
            patch = (slice(y0, y0 + 2), slice(x0, x0 + 2))
            rows[i] += (1.0, before[i][patch].mean() / mean_b, after[i][patch].mean() / max(mean_a, _TINY))
    return rows


def largest_channel_ratio(x: np.ndarray) -> np.ndarray:
    """(N,) per image: the largest channel's typical magnitude over the median channel's."""
    m = channel_magnitudes(x).astype(np.float64)
    return m.max(axis=1) / np.maximum(np.median(m, axis=1), _TINY)


def channel_ratio_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """[1, largest massive-channel ratio before, after] per image."""
    return np.stack([np.ones(len(x)), largest_channel_ratio(x), largest_channel_ratio(y)], axis=1)


def _interior_hits(a: np.ndarray, b: np.ndarray, corr: Correspondence, keep: np.ndarray) -> np.ndarray:
    """(N,) hits of the interior valid source tokens of A among the candidates ``keep`` (flat bool) of B."""
    rows, cols = corr.grid
    source = (group_masks(rows, cols)[2] & corr.valid).reshape(-1)
    target = corr.target.reshape(-1, 2)[source]
    nn = nearest_tokens(unit_tokens(a)[:, source], unit_tokens(b), candidates=keep)
    pred = np.stack(np.divmod(np.maximum(nn, 0), cols), axis=-1)
    return ((nn >= 0) & (np.abs(pred - target).max(axis=-1) <= 1)).sum(axis=1).astype(np.float64)


def masked_interior_rows(a: np.ndarray, b: np.ndarray, corr: Correspondence, weights: np.ndarray) -> np.ndarray:
    """[valid interior tokens, hits with all candidates, hits with weight-0 candidates excluded] per image,
    for features ``a`` of images and ``b`` of their views and a (rows, cols) border weight map."""
    rows, cols = corr.grid
    n_source = float((group_masks(rows, cols)[2] & corr.valid).sum())
    every = np.ones(rows * cols, bool)
    kept = np.asarray(weights).reshape(-1) > 0
    return np.stack([np.full(len(a), n_source), _interior_hits(a, b, corr, every),
                     _interior_hits(a, b, corr, kept)], axis=1)
