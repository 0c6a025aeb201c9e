"""The high-norm anomaly detector rerun without a layer's massive channels, streamed.

Massive channels (:mod:`sdaudit.analyses.channels`) raise every token's norm alike: the norm map turns huge and
flat, which hides real high-norm tokens (their 2x over the median is lost) or fakes them (a massive channel's own
spatial bumps). The fix is to detect on :func:`~sdaudit.analyses.norm_map_without`; but which channels are massive
is known only once every image was seen, and keeping a layer's full features would cost N*C*rows*cols floats.

So :class:`NormsWithoutAccumulator` keeps, per image i, the squared maps x[i, c]^2 of its ``candidates`` channels
with the largest typical magnitude m[i, c] (median over tokens of |x|), and ``rest`` = the sum of x^2 over all other
channels (float64). For the massive set S found at the end, an image whose candidates hold S gets the exact map
``sqrt(rest + sum over candidates not in S of x^2)`` (no subtraction, so no cancellation against the huge
channels); an image whose candidates miss a channel of S is left out and counted (``skipped_images``).
A massive channel is by definition among the largest in typical magnitude, so with S smaller than ``candidates``
this happens only for images where that channel is not large.

:func:`anomalies_without` (the accumulator's ``result(channels)``) runs :func:`~sdaudit.analyses.detect_in_map` on those maps: the count of anomalies, the
images with any, their mean relative norm (mean patch norm / mean map norm, the detector's own) with a bootstrap
interval over images.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ._arrays import check_features, resolve_indices
from ._base import Accumulator
from .anomalies import detect_in_map
from .intervals import item_mean_terms

CANDIDATES = 32  # channels kept per image: DiTF reports a handful of massive channels per layer


class NormsWithoutAccumulator(Accumulator):
    """Per image: the squared maps of its ``candidates`` largest channels and the summed square of the others
    (memory N * (candidates + 2) * rows * cols floats), keyed by global image index; shards merge by union."""

    def __init__(self, *, candidates: int = CANDIDATES, layer: str | None = None, provenance: dict | None = None):
        super().__init__()
        self.candidates = int(candidates)
        self.layer, self.provenance = layer, dict(provenance or {})
        self._top: dict[int, np.ndarray] = {}
        self._squares: dict[int, np.ndarray] = {}
        self._rest: dict[int, np.ndarray] = {}

    def update(self, batch: Any, image_indices: Sequence[int] | None = None) -> None:
        idx = resolve_indices(len(batch), image_indices, self._next_index)
        x = check_features(batch, layer=self.layer, image_indices=idx)
        if len(idx):
            self._next_index = max(self._next_index, int(idx.max()) + 1)
        k = min(self.candidates, x.shape[1])
        for i, image in zip(idx.tolist(), x):
            typical = np.median(np.abs(image.reshape(image.shape[0], -1)), axis=1)
            top = np.sort(np.argsort(-typical, kind="stable")[:k])
            others = np.ones(image.shape[0], bool)
            others[top] = False
            rest = image[others].astype(np.float64)
            self._top[i] = top.astype(np.int64)
            self._squares[i] = np.square(image[top])
            self._rest[i] = np.einsum("chw,chw->hw", rest, rest)

    def merge(self, other: "NormsWithoutAccumulator") -> "NormsWithoutAccumulator":
        self._check_mergeable(other)
        for mine, theirs in ((self._top, other._top), (self._squares, other._squares), (self._rest, other._rest)):
            mine.update(theirs)
        self._next_index = max(self._next_index, other._next_index)
        return self

    def maps(self, channels: Any) -> tuple[dict[int, np.ndarray], list[int]]:
        """({image: (rows, cols) float32 token-norm map without ``channels``}, the images left out because
        their candidates miss one of ``channels``)."""
        drop = np.asarray(channels, dtype=np.int64).reshape(-1)
        out, skipped = {}, []
        for i in sorted(self._top):
            top = self._top[i]
            if not np.isin(drop, top).all():
                skipped.append(i)
                continue
            kept = self._squares[i][~np.isin(top, drop)].astype(np.float64).sum(axis=0)
            out[i] = np.sqrt(self._rest[i] + kept).astype(np.float32)
        return out, skipped

    def result(self, channels: Any = (), params: dict | None = None) -> dict:
        """:func:`anomalies_without` of this accumulator: the detector on the norms without ``channels``."""
        return anomalies_without(self, channels, params)

    def _state_arrays(self):
        idx = np.array(sorted(self._top), dtype=np.int64)
        if not len(idx):
            return {"indices": idx, "top": np.zeros((0, 0), np.int64), "squares": np.zeros((0, 0, 0, 0), np.float32),
                    "rest": np.zeros((0, 0, 0))}
        return {"indices": idx, "top": np.stack([self._top[i] for i in idx]),
                "squares": np.stack([self._squares[i] for i in idx]), "rest": np.stack([self._rest[i] for i in idx])}

    def _load_state_arrays(self, state):
        idx = [int(i) for i in state["indices"]]
        self._top = {i: np.asarray(t, np.int64) for i, t in zip(idx, state["top"])}
        self._squares = {i: np.asarray(s, np.float32) for i, s in zip(idx, state["squares"])}
        self._rest = {i: np.asarray(r, np.float64) for i, r in zip(idx, state["rest"])}


def anomalies_without(acc: NormsWithoutAccumulator, channels: Any, params: dict | None = None) -> dict:
    """The anomaly detector (``params``: :data:`~sdaudit.analyses.anomalies.DEFAULTS` overrides) on the token norms
    without ``channels``: ``{"layer", "channels", "n_images", "skipped_images", "count", "images_with",
    "rel_norm_mean", "rel_norm_low", "rel_norm_high", "rows"}`` (rows [image, x, y] as the detector's)."""
    maps, skipped = acc.maps(channels)
    rows, images, values = [], [], []
    for i, norm_map in maps.items():
        for x, y, _, rel in detect_in_map(norm_map, **(params or {})):
            rows.append([i, int(x), int(y)])
            images.append(i)
            values.append(float(rel))
    v = np.asarray(values, dtype=np.float64)
    interval = item_mean_terms(np.asarray(images, np.int64), v).interval()
    finite = v[np.isfinite(v)]
    return {"layer": acc.layer, "channels": [int(c) for c in np.asarray(channels).reshape(-1)],
            "n_images": len(maps), "skipped_images": len(skipped), "count": len(rows),
            "images_with": len(set(images)), "rel_norm_mean": float(finite.mean()) if len(finite) else None,
            "rel_norm_low": _finite(interval.low), "rel_norm_high": _finite(interval.high), "rows": rows}


def _finite(value: float | None) -> float | None:
    """``value`` if finite, else None (an undefined interval: too few images with anomalies)."""
    return float(value) if value is not None and np.isfinite(value) else None
