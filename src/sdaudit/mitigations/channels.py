"""Handling massive channels (DiTF, arXiv 2505.18584): a few channels huge on every token.

The channels are found as the channel analysis finds them (:mod:`sdaudit.analyses.channels`: per-image
typical magnitude ``m[i, c]`` = median over tokens of |x|, ``M[c]`` = median over the fitted images,
:func:`~sdaudit.analyses.channels.massive_channels` with its ``rule`` and ``threshold``). The fit keeps
the (N, C) per-image magnitudes (not the features), so streamed and one-shot fits are identical.

``mode="drop"`` sets each massive channel to its fitted mean over all tokens of the fitted images
(``channel_mean_``): the channel carries no information any more but the channel count, which
downstream code relies on, stays the same, and a token's norm loses the channel's huge common value
without the offset that zeroing would shift cosine similarities by.
``mode="normalise"`` divides each massive channel by its typical magnitude ``M[c]`` and multiplies it by
the median channel's ``median_``: it keeps the channel's pattern across tokens at an ordinary scale.
"""

from __future__ import annotations

import numpy as np

from ..analyses.channels import RULES, channel_magnitudes, massive_channels
from ..errors import UsageError
from .base import Mitigation

MODES = ("drop", "normalise")


class MassiveChannels(Mitigation):
    """Drop or normalise the massive channels found on the fitted images (module docstring).

    Parameters:
        mode: "drop" (set to the fitted channel mean) or "normalise" (scale to the median channel's magnitude).
        rule, threshold: the channel analysis's rule ("ratio" or "mad") and threshold (None = its default).

    Fitted attributes: ``channels_`` (indices, ascending), ``magnitudes_`` (C,) typical magnitudes,
    ``median_`` the median channel's, ``channel_mean_`` (C,) float64.
    """

    kind = "channels"

    def __init__(self, *, mode: str = "drop", rule: str = "ratio", threshold: float | None = None):
        if mode not in MODES:
            raise UsageError(f"massive-channel mode {mode!r}: choose one of {', '.join(MODES)}")
        if rule not in RULES:
            raise UsageError(f"massive-channel rule {rule!r}: choose one of {', '.join(RULES)}")
        self.mode, self.rule = mode, rule
        self.threshold = None if threshold is None else float(threshold)
        super().__init__()

    def _empty_state(self, n_channels, grid):
        return {"per_image": np.zeros((0, n_channels), np.float32),
                "channel_sum": np.zeros(n_channels, np.float64)}

    def _accumulate(self, x):
        self._state["per_image"] = np.concatenate([self._state["per_image"], channel_magnitudes(x)])
        self._state["channel_sum"] += x.sum(axis=(0, 2, 3), dtype=np.float64)

    def _merged_state(self, other):
        return {"per_image": np.concatenate([self._state["per_image"], other["per_image"]]),
                "channel_sum": self._state["channel_sum"] + other["channel_sum"]}

    def _derive(self):
        self.magnitudes_ = np.median(self._state["per_image"], axis=0).astype(np.float64)
        self.median_ = float(np.median(self.magnitudes_))
        self.channels_ = massive_channels(self.magnitudes_, rule=self.rule, threshold=self.threshold)
        self.channel_mean_ = self._state["channel_sum"] / (self.n_images_ * self.grid_[0] * self.grid_[1])

    def _apply(self, x):
        ch = self.channels_
        if self.mode == "drop":
            x[:, ch] = self.channel_mean_[ch].astype(np.float32)[None, :, None, None]
        else:
            scale = self.median_ / self.magnitudes_[ch]
            x[:, ch] *= scale.astype(np.float32)[None, :, None, None]
        return x
