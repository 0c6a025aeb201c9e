"""Massive channels (DiTF, NeurIPS 2025, arXiv 2505.18584): a few channels whose values are huge on all tokens.

A token-norm detector (:mod:`sdaudit.analyses.anomalies`) cannot see them: they raise every token's norm alike.
This module measures them per layer on (N, C, rows, cols) features (numpy or torch, computed in float32).

Typical magnitude. For image i and channel c, ``m[i, c] = median over the rows*cols tokens of |x[i, c]|``;
the channel's typical magnitude over the images is ``M[c] = median over i of m[i, c]`` (a median of per-image
medians: robust to a few odd images and tokens, and streamed exactly, since it needs only the (N, C) rows
``m``, never the features).

Rule (:func:`massive_channels`), applied to a (C,) magnitude vector ``M`` with median channel
``med = median over c of M[c]``:

``rule="ratio"`` (default) channel c is massive if ``M[c] > threshold * med``, default ``threshold=100``
                 (the "100x the median" convention of the massive-activations literature, Sun et al. 2024).
``rule="mad"``   a robust z-score on log magnitudes (channel scales are multiplicative):
                 ``z[c] = (log M[c] - median log M) / (1.4826 * median |log M - median log M|)``,
                 massive if ``z[c] > threshold``, default ``threshold=10`` (far beyond the usual 3.5 cut,
                 so that thousands of ordinary channels raise no false alarm). Magnitudes are floored at the
                 smallest normal float32 before the log; when the MAD is 0 no channel is massive.

With either rule no channel is massive when ``med == 0``; ``ratio[c] = M[c] / med`` (NaN when ``med == 0``).

Consistency of a channel = the share of images in which it is massive by the same rule applied to that image
alone (to ``m[i]``). Consistency across timesteps is the same computation on accumulators of each timestep.

Without them (:func:`norm_map_without`): the token-norm map sqrt(sum over the other channels of x^2), on which
the anomaly detector (:func:`sdaudit.analyses.detect_in_map`) can be rerun.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from ._arrays import check_features, resolve_indices, token_norms
from ._base import Accumulator
from .results import _float_array, _Result

RULES = ("ratio", "mad")
DEFAULT_THRESHOLDS = {"ratio": 100.0, "mad": 10.0}
_MAD_SCALE = 1.4826  # MAD of a normal distribution -> its standard deviation
_TINY = float(np.finfo(np.float32).tiny)


def channel_magnitudes(features: Any, *, layer: str | None = None) -> np.ndarray:
    """Per-image typical magnitude ``m[i, c]`` = median over tokens of |x[i, c]|: (N, C, rows, cols) -> (N, C)
    float32."""
    x = check_features(features, layer=layer)
    return _per_image(x)


def _per_image(x: np.ndarray) -> np.ndarray:
    """Median over tokens of |x| of validated float32 features -> (N, C)."""
    return np.median(np.abs(x.reshape(x.shape[0], x.shape[1], -1)), axis=2).astype(np.float32)


def _scores(magnitudes: np.ndarray, rule: str) -> tuple[np.ndarray, float]:
    """Score per channel that the rule compares with its threshold, and the median channel's magnitude."""
    m = np.asarray(magnitudes, dtype=np.float64)
    med = float(np.median(m))
    if rule == "ratio":
        return (m / med if med > 0 else np.zeros_like(m)), med
    logs = np.log(np.maximum(m, _TINY))
    center = np.median(logs)
    mad = _MAD_SCALE * float(np.median(np.abs(logs - center)))
    if not (mad > 0 and med > 0):
        return np.zeros_like(m), med
    return (logs - center) / mad, med


def massive_channels(magnitudes: Any, *, rule: str = "ratio", threshold: float | None = None) -> np.ndarray:
    """Indices (ascending) of the massive channels of a (C,) magnitude vector by ``rule`` (module docstring);
    ``threshold`` defaults to ``DEFAULT_THRESHOLDS[rule]``."""
    if rule not in RULES:
        raise ValueError(f"unknown rule {rule!r}; choose one of {RULES}")
    t = DEFAULT_THRESHOLDS[rule] if threshold is None else float(threshold)
    scores, _ = _scores(np.asarray(magnitudes).reshape(-1), rule)
    return np.nonzero(scores > t)[0].astype(np.int64)


@dataclass
class MassiveChannelResult(_Result):
    """Massive channels of one layer (rule: module docstring).

    ``channels`` are the massive channels' indices (ascending), ``ratios`` their typical magnitude over the
    median channel's, ``consistency`` the share of images in which each is massive on that image alone.
    ``magnitudes`` is the (C,) typical magnitude of every channel, ``median`` that of the median channel.
    """

    kind = "massive_channels"

    channels: np.ndarray
    ratios: np.ndarray
    consistency: np.ndarray
    magnitudes: np.ndarray
    median: float
    rule: str
    threshold: float
    n_images: int
    layer: str | None = None
    provenance: dict = field(default_factory=dict)

    @classmethod
    def _convert(cls, kw: dict[str, Any]) -> dict[str, Any]:
        kw["channels"] = np.array(kw["channels"], dtype=np.int64).reshape(-1)
        for name in ("ratios", "consistency", "magnitudes"):
            kw[name] = _float_array(kw[name], 1)
        kw["median"] = float("nan") if kw["median"] is None else float(kw["median"])
        return kw


class MassiveChannelAccumulator(Accumulator):
    """Streamed :func:`detect_massive_channels`: keeps the (C,) per-image magnitudes ``m[i]`` keyed by global
    image index (memory N*C floats, not the features), so the result equals the one-shot computation exactly
    whatever the batching, and shards merge by union."""

    def __init__(self, *, rule: str = "ratio", threshold: float | None = None, layer: str | None = None,
                 provenance: dict | None = None):
        super().__init__()
        if rule not in RULES:
            raise ValueError(f"unknown rule {rule!r}; choose one of {RULES}")
        self.rule = rule
        self.threshold = DEFAULT_THRESHOLDS[rule] if threshold is None else float(threshold)
        self.layer, self.provenance = layer, dict(provenance or {})
        self._rows: dict[int, np.ndarray] = {}

    def update(self, batch: Any, image_indices: Sequence[int] | None = None) -> None:
        idx = resolve_indices(len(batch), image_indices, self._next_index)
        x = check_features(batch, layer=self.layer, image_indices=idx)
        if self._rows and x.shape[1] != self._n_channels():
            raise ValueError(f"layer {self.layer!r}: {x.shape[1]} channels, earlier batches had "
                             f"{self._n_channels()}")
        if len(idx):
            self._next_index = max(self._next_index, int(idx.max()) + 1)
        for i, row in zip(idx.tolist(), _per_image(x)):
            self._rows[i] = row

    def _n_channels(self) -> int:
        return len(next(iter(self._rows.values())))

    def merge(self, other: "MassiveChannelAccumulator") -> "MassiveChannelAccumulator":
        self._check_mergeable(other)
        if self._rows and other._rows and self._n_channels() != other._n_channels():
            raise ValueError(f"cannot merge {self._n_channels()} and {other._n_channels()} channels")
        self._rows.update(other._rows)
        self._next_index = max(self._next_index, other._next_index)
        return self

    def per_image(self) -> np.ndarray:
        """The (N, C) per-image magnitudes ``m``, rows sorted by image index."""
        return np.stack([self._rows[i] for i in sorted(self._rows)])

    def result(self) -> MassiveChannelResult:
        if not self._rows:
            raise ValueError("no images seen")
        per_image = self.per_image()
        mags = np.median(per_image, axis=0)
        channels = massive_channels(mags, rule=self.rule, threshold=self.threshold)
        scores, med = _scores(mags, "ratio")
        hits = np.zeros(len(mags))
        for row in per_image:
            hits[massive_channels(row, rule=self.rule, threshold=self.threshold)] += 1
        ratios = scores[channels] if med > 0 else np.full(len(channels), np.nan)
        return MassiveChannelResult(channels=channels, ratios=ratios,
                                    consistency=hits[channels] / len(per_image), magnitudes=mags.astype(np.float64),
                                    median=med, rule=self.rule, threshold=self.threshold,
                                    n_images=len(per_image), layer=self.layer, provenance=dict(self.provenance))

    def _state_arrays(self):
        idx = np.array(sorted(self._rows), dtype=np.int64)
        rows = self.per_image() if len(idx) else np.zeros((0, 0), np.float32)
        return {"indices": idx, "rows": rows}

    def _load_state_arrays(self, state):
        self._rows = {int(i): np.asarray(r, np.float32) for i, r in zip(state["indices"], state["rows"])}


def detect_massive_channels(features: Any, *, rule: str = "ratio", threshold: float | None = None,
                            image_indices: Sequence[int] | None = None, layer: str | None = None,
                            provenance: dict | None = None) -> MassiveChannelResult:
    """Massive channels of (N, C, rows, cols) features: indices, ratios, consistency (module docstring)."""
    acc = MassiveChannelAccumulator(rule=rule, threshold=threshold, layer=layer, provenance=provenance)
    acc.update(features, image_indices)
    return acc.result()


MAX_CHANNEL_IDS = 16  # a summary lists at most this many massive channels per layer (the largest ratios)


def channel_summary(result: MassiveChannelResult, max_ids: int = MAX_CHANNEL_IDS) -> dict:
    """A layer's massive channels in the columns results.json, results.csv and the explorer show: the count,
    the indices (at most ``max_ids``, largest ratio first), the largest ratio to the median channel and the
    smallest consistency across images (both None without massive channels); JSON-safe (no NaN)."""
    ratios = np.asarray(result.ratios, dtype=np.float64)
    order = np.argsort(-np.nan_to_num(ratios, nan=-np.inf), kind="stable")[:max_ids]
    found = len(result.channels) > 0
    finite_ratios = ratios[np.isfinite(ratios)]
    return {"massive_channels": int(len(result.channels)),
            "massive_channel_ids": [int(c) for c in result.channels[order]],
            "massive_ratio_max": float(finite_ratios.max()) if found and len(finite_ratios) else None,
            "massive_consistency_min": float(result.consistency.min()) if found else None}


def _kept(n_channels: int, channels: Any) -> np.ndarray:
    """Boolean (C,) mask of the channels not in ``channels`` (indices checked against the layer's width)."""
    drop = np.asarray(channels, dtype=np.int64).reshape(-1)
    if drop.size and (drop.min() < 0 or drop.max() >= n_channels):
        raise IndexError(f"channel indices {drop.tolist()} outside 0..{n_channels - 1}")
    keep = np.ones(n_channels, bool)
    keep[drop] = False
    return keep


def without_channels(features: Any, channels: Any, *, layer: str | None = None) -> np.ndarray:
    """The features with ``channels`` removed: (N, C, rows, cols) -> (N, C - k, rows, cols) float32, e.g. for
    :func:`sdaudit.analyses.detect_anomalies` without the massive channels."""
    x = check_features(features, layer=layer)
    return np.ascontiguousarray(x[:, _kept(x.shape[1], channels)])


def norm_map_without(features: Any, channels: Any, *, layer: str | None = None) -> np.ndarray:
    """Token-norm map without ``channels``: sqrt(sum over the other channels of x^2), (N, rows, cols) float32,
    for :func:`sdaudit.analyses.detect_in_map`."""
    return token_norms(without_channels(features, channels, layer=layer))
