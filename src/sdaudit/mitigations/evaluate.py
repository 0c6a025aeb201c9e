"""What a mitigation buys and costs on one layer: matching and the artifact measure, before and after.

:class:`MitigationEvaluator` is a streaming accumulator (``state_dict`` / ``from_state_dict`` /
``merge``, like the analyses') for one layer and a list of mitigations (:data:`sdaudit.mitigations.REGISTRY`
names). The audit's images are split like the position probe's: indices below ``n_train`` fit, the
others measure.

1. ``fit(features, image_indices)`` (training images): every mitigation ``partial_fit`` s on them.
2. ``measure(features, view_features, image_indices)`` (test images, after all ``n_train`` are fitted):
   on the same test images, before and after each mitigation (after = its ``transform`` applied to the
   image's features and to its views' features alike):

   * matching to each known view (:class:`~sdaudit.analyses.correspondence.ViewMatchingAccumulator`):
     accuracy within one token and positional-bias rate, overall and per source region;
   * the artifact measure the mitigation targets: for ``position`` / ``position-subspace`` the accuracy
     of a closed-form position probe (LDA at comparison resolution ``resolution``) trained and tested
     on the test images alone (the first ``probe_train_fraction`` of them train it), before and after,
     with its chance level; for ``anomalies`` the relative norm at the anomalies detected BEFORE
     (toward 1 after a repair); for ``channels`` the largest massive-channel ratio; for ``border``
     the interior tokens' matching accuracy with the ring candidates of weight 0 masked
     (:mod:`sdaudit.mitigations.measures`).

   With ``anomalies`` (neighbour repair) the evaluator adds ``anomalies-mean``, the mean-substitution
   control (:class:`~sdaudit.mitigations.AnomalyRepair` with ``method="mean"``, same detector), measured
   in the same way, so that a repair is always read next to its control.

Every difference after - before has a paired bootstrap interval over the test images (both sides
recomputed on the same resampled images: :func:`~sdaudit.analyses.intervals.difference_interval`).

Sharded runs: shards fit their training images, exchange ``state_dict`` s and ``merge`` them (fit
statistics add while the fit is incomplete), measure their test images, and merge again (shards that
both hold the complete fit must hold the same one; it is kept once).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from ..analyses._arrays import check_features, resolve_indices
from ..analyses._base import Accumulator, nest, unnest
from ..analyses.correspondence import DEFAULT_ALPHAS, REGIONS, ViewMatchingAccumulator, chance_bias_rate
from ..analyses.intervals import (DEFAULT_BOOT, DEFAULT_LEVEL, Bootstrap, PerImageStats, Terms,
                                  difference_interval, ratio)
from ..analyses.position import PositionProbeAccumulator
from ..analyses.views import Correspondence
from ..constants import RESOLUTIONS
from . import make_mitigation
from .base import Mitigation
from .effects import ARTIFACT_MEASURES, ArtifactChange, Change, MitigationEffect, MitigationEvaluation, verdict
from .measures import anomaly_norm_rows, channel_ratio_rows, masked_interior_rows

BEFORE = "before"
POSITIONAL = ("position", "position-subspace")
CONTROL = "anomalies-mean"  # the mean-substitution control of the neighbour repair


def _transforms(names: Sequence[str], options: Mapping[str, dict]) -> dict[str, Mitigation]:
    """Label -> unfitted mitigation; ``anomalies`` with the neighbour repair brings its control along."""
    out = {name: make_mitigation(name, **dict(options.get(name) or {})) for name in names}
    repair = out.get("anomalies")
    if repair is not None and repair.method == "neighbours" and CONTROL not in out:
        out[CONTROL] = make_mitigation("anomalies", **{**repair.get_params(), "method": "mean"})
    return out


class MitigationEvaluator(Accumulator):
    """Streamed before/after evaluation of mitigations on one layer (module docstring).

    Parameters:
        mitigations: registry names (``position``, ``position-subspace``, ``anomalies``, ``channels``, ``border``).
        views: view name -> :class:`~sdaudit.analyses.views.Correspondence` (or its ``to_dict``) on the
            layer's grid; the first is the one the verdicts quote.
        n_images, n_train: all images, and how many of them (indices < n_train) fit the mitigations.
        options: mitigation name -> its keyword options (e.g. ``{"border": {"ring": 2}}``).
        resolution: the position probe's comparison resolution; probe_train_fraction: the share of the
            test images that train it.
        alphas, n_boot, level, seed: PCK thresholds and the bootstrap, as in the view matching.
    """

    def __init__(self, mitigations: Sequence[str], views: Mapping[str, Correspondence | dict], *, n_images: int,
                 n_train: int, layer: str | None = None, options: Mapping[str, dict] | None = None,
                 resolution: int = RESOLUTIONS[0], probe_train_fraction: float = 0.5,
                 alphas: Sequence[float] = DEFAULT_ALPHAS, provenance: dict | None = None,
                 n_boot: int = DEFAULT_BOOT, level: float = DEFAULT_LEVEL, seed: int = 0):
        super().__init__()
        if not 0 < int(n_train) < int(n_images):
            raise ValueError(f"n_train={n_train} must be between 1 and n_images-1={int(n_images) - 1}")
        if not views:
            raise ValueError("at least one view is needed to measure matching")
        self.n_images, self.n_train, self.layer = int(n_images), int(n_train), layer
        self.views = {name: c if isinstance(c, Correspondence) else Correspondence.from_dict(c)
                      for name, c in views.items()}
        self.transforms = _transforms(list(mitigations), dict(options or {}))
        self.resolution, self.provenance = int(resolution), dict(provenance or {})
        self._boot = Bootstrap(int(n_boot), float(level), int(seed))
        boot = {"n_boot": int(n_boot), "level": float(level), "seed": int(seed)}
        states = [BEFORE, *self.transforms]
        self.matching = {v: {s: ViewMatchingAccumulator(c, alphas=alphas, layer=layer, **boot) for s in states}
                         for v, c in self.views.items()}
        positional = [s for s in states if s == BEFORE or self.transforms[s].kind in POSITIONAL]
        self.probes = {} if len(positional) < 2 else {
            s: PositionProbeAccumulator(self.n_images - self.n_train, train_fraction=probe_train_fraction,
                                        resolutions=(self.resolution,), layer=layer, **boot) for s in positional}
        self.rows = {s: PerImageStats(3) for s, m in self.transforms.items() if m.kind not in POSITIONAL}

    # -- streaming -----------------------------------------------------------------------------
    @property
    def n_fitted(self) -> int:
        """Training images the mitigations have been fitted on so far."""
        return next(iter(self.transforms.values())).n_images_ if self.transforms else self.n_train

    def update(self, features: Any, view_features: Mapping[str, Any] | None = None,
               image_indices: Sequence[int] | None = None) -> None:
        """Route a batch by image index: training images to :meth:`fit`, the others to :meth:`measure`
        (the views' features are needed only for those)."""
        idx = resolve_indices(len(features), image_indices, self._next_index)
        train = idx < self.n_train
        if train.any():
            self.fit(_take(features, train), idx[train])
        if (~train).any():
            if view_features is None:
                raise ValueError("test images need the features of their views")
            self.measure(_take(features, ~train), {v: _take(b, ~train) for v, b in view_features.items()},
                         idx[~train])

    def fit(self, features: Any, image_indices: Sequence[int] | None = None) -> None:
        """Partial-fit every mitigation on training images (indices < n_train)."""
        idx = resolve_indices(len(features), image_indices, self._next_index)
        if len(idx) == 0:
            return
        if idx.max() >= self.n_train:
            raise ValueError(f"fit: image {int(idx.max())} is a test image (n_train={self.n_train})")
        if self.n_fitted + len(idx) > self.n_train:
            raise ValueError(f"fit: more than n_train={self.n_train} training images (an image given twice?)")
        x = check_features(features, layer=self.layer, image_indices=idx)
        for m in self.transforms.values():
            m.partial_fit(x, layer=self.layer)
        self._next_index = max(self._next_index, int(idx.max()) + 1)

    def measure(self, features: Any, view_features: Mapping[str, Any],
                image_indices: Sequence[int] | None = None) -> None:
        """Measure test images (indices >= n_train) and their views before and after every mitigation."""
        idx = resolve_indices(len(features), image_indices, self._next_index)
        if len(idx) == 0:
            return
        if idx.min() < self.n_train or idx.max() >= self.n_images:
            raise ValueError(f"measure: test images have indices in [{self.n_train}, {self.n_images}), got "
                             f"{int(idx.min())}..{int(idx.max())}")
        if self.n_fitted < self.n_train:
            raise ValueError(f"measure: the mitigations are fitted on {self.n_fitted} of n_train={self.n_train} "
                             "training images; fit (or merge) them all first")
        missing = [v for v in self.views if v not in view_features]
        if missing:
            raise ValueError(f"measure: no features of the view(s) {missing}")
        x = check_features(features, layer=self.layer, image_indices=idx)
        views = {v: check_features(view_features[v], layer=self.layer, name=f"{v} view features",
                                   image_indices=idx) for v in self.views}
        self._measure_state(BEFORE, x, views, idx)
        for label, m in self.transforms.items():
            y = m.transform(x)
            self._measure_state(label, y, {v: m.transform(b) for v, b in views.items()}, idx)
            self._measure_artifact(label, (x, y), views, idx)
        self._next_index = max(self._next_index, int(idx.max()) + 1)

    def _measure_state(self, state: str, x: np.ndarray, views: dict[str, np.ndarray], idx: np.ndarray) -> None:
        for v, b in views.items():
            self.matching[v][state].update(x, b, idx)
        if state in self.probes:
            self.probes[state].update(x, idx - self.n_train)  # the probe's own split over the test images

    def _measure_artifact(self, label: str, pair: tuple[np.ndarray, np.ndarray], views: dict[str, np.ndarray],
                          idx: np.ndarray) -> None:
        m, (x, y) = self.transforms[label], pair
        if m.kind == "anomalies":
            detector = {k: v for k, v in m.get_params().items() if k != "method"}
            self.rows[label].add(idx, anomaly_norm_rows(x, y, detector))
        elif m.kind == "channels":
            self.rows[label].add(idx, channel_ratio_rows(x, y))
        elif m.kind == "border":
            view = next(iter(self.views))
            self.rows[label].add(idx, masked_interior_rows(x, views[view], self.views[view], m.weights(m.grid_)))

    # -- results -------------------------------------------------------------------------------
    def result(self) -> MitigationEvaluation:
        """Every mitigation's :class:`MitigationEffect` (raises before any test image was measured)."""
        first = next(iter(self.views))
        tested = self.matching[first][BEFORE].per_image.arrays()[0]
        if not len(tested):
            raise ValueError(f"layer {self.layer!r}: no test images measured")
        return MitigationEvaluation(layer=self.layer, grid=self.views[first].grid, views=list(self.views),
                                    n_fit_images=self.n_fitted, n_test_images=len(tested),
                                    effects=[self._effect(label) for label in self.transforms],
                                    provenance=dict(self.provenance))

    def _effect(self, label: str) -> MitigationEffect:
        m, first = self.transforms[label], next(iter(self.views))
        accuracy = {v: {g: self._matching_change(v, label, g, "accuracy") for g in REGIONS} for v in self.views}
        bias = {v: {g: self._matching_change(v, label, g, "bias") for g in REGIONS} for v in self.views}
        artifact = self._artifact_change(label)
        return MitigationEffect(
            name=label, mitigation=m.kind, params=m.get_params(), accuracy=accuracy, bias_rate=bias,
            chance_bias_rate={v: chance_bias_rate(c) for v, c in self.views.items()}, artifact=artifact,
            verdict=verdict(label, accuracy[first]["all"], bias[first]["all"], artifact, first),
            control_of="anomalies" if label == CONTROL else None)

    def _change(self, before: Terms, after: Terms) -> Change:
        boot = self._boot
        return Change(boot.interval(before.rows, before.statistic), boot.interval(after.rows, after.statistic),
                      difference_interval(after, before, n_boot=boot.n_boot, level=boot.level, seed=boot.seed))

    def _matching_change(self, view: str, label: str, region: str, metric: str) -> Change:
        return self._change(self.matching[view][BEFORE].terms(region, metric),
                            self.matching[view][label].terms(region, metric))

    def _artifact_change(self, label: str) -> ArtifactChange:
        kind = self.transforms[label].kind
        measure, reference_label = ARTIFACT_MEASURES[kind]
        if kind in POSITIONAL:
            s = self.resolution
            chance = self.probes[BEFORE].result().chance[s]
            self.probes[label].result()  # scores the test images still waiting for the probe's training (shards)
            change = self._change(self.probes[BEFORE].terms(s), self.probes[label].terms(s))
            return ArtifactChange(f"{measure} (s = {s})", change, chance, reference_label)
        index, rows = self.rows[label].arrays()
        change = self._change(Terms(index, rows, ratio(1, 0)), Terms(index, rows, ratio(2, 0)))
        reference = None if reference_label is None else 1.0  # relative norm 1; largest channel = median channel
        return ArtifactChange(measure, change, reference, reference_label)

    # -- state ---------------------------------------------------------------------------------
    def merge(self, other: "MitigationEvaluator") -> "MitigationEvaluator":
        self._check_mergeable(other)
        self._merge_fits(other)
        for v, per in self.matching.items():
            for s, acc in per.items():
                acc.merge(other.matching[v][s])
        for s, probe in self.probes.items():
            probe.merge(other.probes[s])
        for s, rows in self.rows.items():
            rows.merge(other.rows[s])
        self._next_index = max(self._next_index, other._next_index)
        return self

    def _merge_fits(self, other: "MitigationEvaluator") -> None:
        mine, theirs = self.n_fitted, other.n_fitted
        if mine == theirs == self.n_train:  # both measured with the complete (merged) fit: keep it once
            for label, m in self.transforms.items():
                o = other.transforms[label]._state
                # sorted along the image axis: per-image rows (massive channels) arrive in shard order
                if any(not np.allclose(np.sort(v, axis=0), np.sort(o[k], axis=0)) for k, v in m._state.items()):
                    raise ValueError(f"cannot merge shards fitted differently ({label!r})")
            return
        if mine + theirs > self.n_train:
            raise ValueError(f"merged shards hold {mine + theirs} training images, more than n_train={self.n_train}")
        for label, m in self.transforms.items():
            m.merge(other.transforms[label])

    def _state_arrays(self) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        for label, m in self.transforms.items():
            out.update(nest(f"fit.{label}", m._state))
            out[f"fitmeta.{label}"] = np.array([m.n_images_, *(m.grid_ or (0, 0)), m.n_channels_ or 0], np.int64)
        for v, per in self.matching.items():
            for s, acc in per.items():
                out.update(nest(f"match.{v}.{s}", acc.state_dict()))
        for s, probe in self.probes.items():
            out.update(nest(f"probe.{s}", probe.state_dict()))
        for s, rows in self.rows.items():
            out.update(nest(f"rows.{s}", rows.state()))
        return out

    def _load_state_arrays(self, state: dict[str, np.ndarray]) -> None:
        for label, m in self.transforms.items():
            n, rows, cols, channels = (int(v) for v in state[f"fitmeta.{label}"])
            if n:
                m._restore(unnest(f"fit.{label}", state), {"layer": self.layer, "grid": [rows, cols],
                                                            "n_channels": channels, "n_images": n})
        for v, per in self.matching.items():
            for s in per:
                per[s] = ViewMatchingAccumulator.from_state_dict(unnest(f"match.{v}.{s}", state))
        for s in self.probes:
            self.probes[s] = PositionProbeAccumulator.from_state_dict(unnest(f"probe.{s}", state))
        for s, rows in self.rows.items():
            rows.load(unnest(f"rows.{s}", state))


def _take(x: Any, mask: np.ndarray) -> Any:
    """The images of a numpy array or torch tensor where ``mask`` is True."""
    return x[mask] if isinstance(x, np.ndarray) else x[np.nonzero(mask)[0].tolist()]


def evaluate_mitigations(features: Any, view_features: Mapping[str, Any], mitigations: Sequence[str],
                         views: Mapping[str, Correspondence], *, n_train: int, **settings: Any) -> MitigationEvaluation:
    """One-shot :class:`MitigationEvaluator` over (N, C, rows, cols) ``features`` (all images: the first
    ``n_train`` fit) and their views' features; ``settings`` are the evaluator's keyword parameters."""
    ev = MitigationEvaluator(mitigations, views, n_images=len(features), n_train=n_train, **settings)
    ev.update(features, view_features)
    return ev.result()
