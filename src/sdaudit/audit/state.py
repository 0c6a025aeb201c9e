"""The audit's streaming state: one accumulator per layer and analysis, the passes' progress, the failed layers.

:meth:`AuditState.state_dict` is a flat dict of numpy arrays (each accumulator's ``state_dict`` under
its part's name): what a checkpoint holds (:mod:`sdaudit.audit.checkpoint`) and what the processes of
a multi-process audit exchange (:mod:`sdaudit.audit.sharding`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np

from ..analyses import (AnomalyDetector, BorderArtifactsAccumulator, MassiveChannelAccumulator, NonFiniteInputError,
                        NormsWithoutAccumulator, PaperProbeAccumulator, PositionProbeAccumulator,
                        anomaly_relative_norms)
from ..analyses.intervals import item_mean_terms
from .keypoints import keypoint_accumulators, update_keypoints
from .mitigations import fit_states, mitigation_evaluators, share_fits, update_evaluator
from .views import matching_accumulators, view_key


class AnomalyNormStream:
    """Relative norms of anomalies on every layer, computed batch by batch.

    The anomalies of a batch are detected on the anomaly layer of that same batch (or given as labels),
    so each batch's rows are measured on all layers at once; the state is one (image, value) pair per
    anomaly and layer, so the mean gets a bootstrap interval over images (an image's anomalies together).
    """

    def __init__(self, layers: Sequence[str], ref_grid: int):
        self.layers, self.ref_grid = list(layers), int(ref_grid)
        self.values: dict[str, list[float]] = {layer: [] for layer in self.layers}
        self.images: dict[str, list[int]] = {layer: [] for layer in self.layers}

    def update(self, reps: dict, rows: np.ndarray, indices: Sequence[int], skip: set[str]) -> None:
        if not len(rows):
            return
        for layer in self.layers:
            if layer in skip:
                continue
            result = anomaly_relative_norms({layer: reps[layer]}, rows, ref_grid=self.ref_grid, image_indices=indices)
            self.values[layer].extend(float(v) for v in result.values[layer])
            self.images[layer].extend(int(i) for i in np.asarray(rows)[:, 0])

    def stats(self) -> dict[str, dict]:
        out = {}
        for layer, vals in self.values.items():
            v = np.asarray(vals, dtype=np.float64)
            images = np.asarray(self.images[layer], dtype=np.int64)
            ok = np.isfinite(v)
            interval = item_mean_terms(images, v).interval()
            out[layer] = {"mean": float(v[ok].mean()) if ok.any() else None,
                          "std": float(v[ok].std()) if ok.any() else None, "count": int(ok.sum()),
                          "low": interval.low, "high": interval.high, "n_images": interval.n}
        return out

    def state_dict(self) -> dict[str, np.ndarray]:
        out = {f"{i}": np.asarray(self.values[layer], dtype=np.float64) for i, layer in enumerate(self.layers)}
        out.update({f"{i}.images": np.asarray(self.images[layer], dtype=np.int64) for i, layer in enumerate(self.layers)})
        return out

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        for i, layer in enumerate(self.layers):
            self.values[layer] = [float(v) for v in state[f"{i}"]]
            self.images[layer] = [int(v) for v in state[f"{i}.images"]]

    def merge(self, other: "AnomalyNormStream") -> "AnomalyNormStream":
        """Add another shard's values (other images); the statistics do not depend on the order."""
        if other.layers != self.layers or other.ref_grid != self.ref_grid:
            raise ValueError("cannot merge anomaly norm streams of different layers or reference grids")
        for layer in self.layers:
            self.values[layer].extend(other.values[layer])
            self.images[layer].extend(other.images[layer])
        return self


def _probe(n_images: int, layer: str, probe: dict):
    """The position probe accumulator of one layer: closed form (lda, ridge) or the published trained probe."""
    if probe.get("method") == "paper":
        kwargs = {k: v for k, v in probe.items() if k != "method"}
        return PaperProbeAccumulator(n_images, layer=layer, **kwargs)
    return PositionProbeAccumulator(n_images, layer=layer, **probe)


def _on_device(x) -> bool:
    """True for a torch tensor that is not on the CPU (a GPU batch of the audit)."""
    return type(x).__module__.startswith("torch") and getattr(x, "device", None) is not None and x.device.type != "cpu"


class _NormMaps(dict):
    """{layer: (B, 1, h, w) float32 CPU map of token norms}, computed on the tensors' device when first asked for.

    The anomaly analyses only use token norms, and the L2 norm over one channel is the value itself,
    so these maps stand in for the full features without moving them off the GPU.
    """

    def __init__(self, reps: dict):
        super().__init__()
        self.reps = reps

    def __missing__(self, layer: str):
        import torch

        value = torch.linalg.vector_norm(self.reps[layer].float(), dim=1, keepdim=True).cpu()
        self[layer] = value
        return value


class AuditState:
    """All accumulators of one audit, the passes' progress, and the layers that failed."""

    def __init__(self, layers: Sequence[str], grids: dict[str, tuple[int, int]], n_images: int, analyses: set[str],
                 anomaly_layer: str | None = None, *, probe: dict, detector: dict, labels: np.ndarray | None = None,
                 matching: dict | None = None, keypoint_pairs: list | None = None, mitigations: dict | None = None):
        self._args = (list(layers), dict(grids), int(n_images), set(analyses), anomaly_layer)
        self._kwargs = {"probe": dict(probe), "detector": dict(detector), "labels": labels, "matching": matching,
                        "keypoint_pairs": keypoint_pairs, "mitigations": mitigations}
        self.labels = labels  # given anomalies (e.g. the published labels): their norms instead of the detector's
        self.layers = list(layers)
        self.analyses = set(analyses)
        self.progress: dict[str, int] = {}
        self.failed: dict[str, str] = {}  # layer -> message (non-finite values, ...)
        self.probe = {}
        if "position" in analyses:
            self.probe = {layer: _probe(n_images, layer, probe) for layer in self.layers}
        self.borders = {}
        if "borders" in analyses:
            # grids under 5 get no cropped pass: their (n-2) grid has no border and no interior
            self.borders = {layer: BorderArtifactsAccumulator(layer=layer) for layer in self.layers
                            if grids[layer][0] == grids[layer][1] and min(grids[layer]) - 2 >= 3}
        # massive channels (opt-in "channels"): per-image channel magnitudes of every layer's full pass
        self.channels = {}
        if "channels" in analyses:
            self.channels = {layer: MassiveChannelAccumulator(layer=layer) for layer in self.layers}
        # the correspondence probe (opt-in "correspondence", matching = {"views", "size"}): per view and layer
        self.matching = matching_accumulators(self.layers, grids, **matching) if "correspondence" in analyses else {}
        # --mitigations (mitigations = {"names", "train_fraction"}, measured on the probe's views): per layer
        self.mitigations = mitigation_evaluators(self.layers, grids, **matching, **mitigations, n_images=n_images) \
            if mitigations and mitigations.get("names") else {}
        # user keypoints (settings.keypoints): the pairs, and PCK per layer
        self.keypoint_pairs = list(keypoint_pairs or [])
        self.keypoints = keypoint_accumulators(self.layers) if keypoint_pairs else {}
        self.anomaly_layer = anomaly_layer
        # the anomaly layer's token norms without its massive channels (known at the end): candidates per image
        self.without = {}
        if anomaly_layer in self.channels:
            self.without = {anomaly_layer: NormsWithoutAccumulator(layer=anomaly_layer)}
        self.detector = AnomalyDetector(layer=anomaly_layer, **detector) if anomaly_layer else None
        self.norms = AnomalyNormStream(self.layers, grids[anomaly_layer][0]) if anomaly_layer else None

    def empty_like(self) -> "AuditState":
        """A fresh state with the same layers, analyses and settings (e.g. to load another shard into)."""
        return AuditState(*self._args, **self._kwargs)

    # ----- updates -----------------------------------------------------------------------------
    def _guard(self, layer: str, fn) -> None:
        if layer in self.failed:
            return
        try:
            fn()
        except NonFiniteInputError as error:
            self.failed[layer] = str(error)

    def update_full(self, reps: dict, indices: list[int]) -> None:
        """Feed one batch of the full (uncropped) pass."""
        for layer in self.layers:
            x = reps[layer]
            if layer in self.probe:
                self._guard(layer, lambda: self.probe[layer].update(x, indices))
            if layer in self.borders:
                self._guard(layer, lambda: self.borders[layer].update(full=x, image_indices=indices))
            if layer in self.channels:
                self._guard(layer, lambda: self.channels[layer].update(x, indices))
            if layer in self.without:
                self._guard(layer, lambda: self.without[layer].update(x, indices))
            for key in (view_key(view, layer) for view in self.views):
                self._guard(layer, lambda: self.matching[key].update(x, reps[key], indices))
            if layer in self.mitigations:
                self._guard(layer, lambda: update_evaluator(self.mitigations[layer], x, reps, indices))
        if self.detector is not None and self.anomaly_layer not in self.failed:
            if _on_device(reps[self.anomaly_layer]):
                reps = _NormMaps(reps)  # token norms computed on the GPU: only (B, 1, h, w) maps leave it
            batch = AnomalyDetector(layer=self.anomaly_layer, **self.detector.params)
            try:
                batch.update(reps[self.anomaly_layer], indices)
            except NonFiniteInputError as error:
                self.failed[self.anomaly_layer] = str(error)
                return
            self.detector.merge(batch)
            rows = batch.result().rows if self.labels is None else self.labels[np.isin(self.labels[:, 0], indices)]
            self.norms.update(reps, rows, indices, skip=set(self.failed))

    @property
    def views(self) -> list[str]:
        """The correspondence probe's views (none unless "correspondence" runs)."""
        return list(dict.fromkeys(acc.provenance["view"] for acc in self.matching.values()))

    def update_keypoints(self, reps: dict, pairs: list[int]) -> None:
        """Feed one batch of the keypoint pass (pair k's images in rows 2k, 2k + 1; ``pairs``: their indices)."""
        for layer in self.layers:
            self._guard(layer, lambda: update_keypoints({layer: self.keypoints[layer]}, self.keypoint_pairs, reps,
                                                        pairs))

    def update_cropped(self, reps: dict, indices: list[int]) -> None:
        """Feed one batch of a cropped pass (only the layers of that pass's grid size are in ``reps``)."""
        for layer, x in reps.items():
            if layer in self.borders:
                self._guard(layer, lambda: self.borders[layer].update(cropped=x, image_indices=indices))

    # ----- state dicts: checkpoints and shards --------------------------------------------------------
    def _parts(self) -> dict[str, object]:
        """{part name: accumulator}; a part is "probe/<layer>", "borders/<layer>", "channels/<layer>",
        "without/<layer>", "matching/<view>:<layer>", "keypoints/<layer>", "mitigations/<layer>" or "detector"."""
        parts: dict[str, object] = {f"probe/{k}": v for k, v in self.probe.items()}
        parts.update({f"borders/{k}": v for k, v in self.borders.items()})
        parts.update({f"channels/{k}": v for k, v in self.channels.items()})
        parts.update({f"without/{k}": v for k, v in self.without.items()})
        parts.update({f"matching/{k}": v for k, v in self.matching.items()})
        parts.update({f"keypoints/{k}": v for k, v in self.keypoints.items()})
        parts.update({f"mitigations/{k}": v for k, v in self.mitigations.items()})
        if self.detector is not None:
            parts["detector"] = self.detector
        return parts

    def _set_part(self, name: str, acc) -> None:
        kind, _, layer = name.partition("/")
        if kind == "detector":
            self.detector = acc
        else:
            parts = {"probe": self.probe, "borders": self.borders, "channels": self.channels, "without": self.without,
                     "matching": self.matching, "keypoints": self.keypoints, "mitigations": self.mitigations}
            parts[kind][layer] = acc

    def state_dict(self, *, probe_training: bool = True) -> dict[str, np.ndarray]:
        """Every accumulator's state, the progress and the failed layers, as a flat dict of numpy arrays
        (keys ``"<part>|<key>"`` plus ``"__meta__"``). ``probe_training=False`` leaves out the probes'
        training statistics (keeping their test counts): a shard's part once the statistics are shared."""
        arrays: dict[str, np.ndarray] = {}
        for name, acc in self._parts().items():
            state = acc.state_dict()
            if not probe_training and name.startswith("probe/"):
                state = type(acc).test_only_state(state)
            arrays.update({f"{name}|{key}": value for key, value in state.items()})
        if self.norms is not None:
            arrays.update({f"norms|{k}": v for k, v in self.norms.state_dict().items()})
        arrays["__meta__"] = np.array(json.dumps({"progress": self.progress, "failed": self.failed}))
        return arrays

    def load_state_dict(self, arrays: dict[str, np.ndarray]) -> None:
        """Restore from :meth:`state_dict` output (accumulators, progress, failed layers)."""
        meta = json.loads(str(np.asarray(arrays["__meta__"])))
        grouped: dict[str, dict[str, np.ndarray]] = {}
        for key, value in arrays.items():
            if "|" in key:
                name, sub = key.split("|", 1)
                grouped.setdefault(name, {})[sub] = value
        for name, acc in self._parts().items():
            self._set_part(name, type(acc).from_state_dict(grouped[name]))
        if self.norms is not None:
            empty = {k: np.zeros(0) for i in range(len(self.layers)) for k in (f"{i}", f"{i}.images")}
            self.norms.load_state_dict(grouped.get("norms", {}) or empty)
        self.progress = {k: int(v) for k, v in meta.get("progress", {}).items()}
        self.failed = dict(meta.get("failed", {}))

    def merge(self, other: "AuditState") -> "AuditState":
        """Add another shard's state (other images, same settings): every accumulator is merged, failed
        layers are united. Progress is per process and left as it is."""
        if other.layers != self.layers or other.analyses != self.analyses or other.anomaly_layer != self.anomaly_layer:
            raise ValueError("cannot merge audit states of different layers, analyses or anomaly layers")
        mine, theirs = self._parts(), other._parts()
        if mine.keys() != theirs.keys():
            raise ValueError("cannot merge audit states with different accumulators")
        for name, acc in mine.items():
            acc.merge(theirs[name])
        if self.norms is not None:
            self.norms.merge(other.norms)
        self.add_failed(other.failed)
        return self

    def add_failed(self, failed: dict[str, str]) -> None:
        """Mark more layers as failed (another shard's); a layer's first message is kept."""
        for layer, message in failed.items():
            self.failed.setdefault(layer, message)

    # ----- the position probe's training statistics, shared by the shards ----------------------------------
    def probe_training(self) -> dict[str, dict]:
        """{layer: the probe's training statistics (its test counts left out)}."""
        return {layer: type(acc).train_only_state(acc.state_dict()) for layer, acc in self.probe.items()}

    def merge_probe_training(self, a: dict[str, dict], b: dict[str, dict]) -> dict[str, dict]:
        """Two shards' :meth:`probe_training` merged into one."""
        return {layer: type(acc).from_state_dict(a[layer]).merge(type(acc).from_state_dict(b[layer])).state_dict()
                for layer, acc in self.probe.items()}

    def take_probe_training(self, train: dict[str, dict]) -> None:
        """Replace each probe's training statistics by ``train`` (every shard's), keeping its own test counts."""
        for layer, acc in self.probe.items():
            cls = type(acc)
            merged = cls.from_state_dict(train[layer])
            merged.merge(cls.from_state_dict(cls.test_only_state(acc.state_dict())))
            self.probe[layer] = merged

    # ----- the mitigations' fits, shared by the shards (sdaudit.audit.mitigations) --------------------------
    def mitigation_fits(self) -> dict[str, dict]:
        """{layer: the mitigation evaluator's state}: what this process gives the others after its training images."""
        return fit_states(self.mitigations)

    def take_mitigation_fits(self, gathered: list[dict[str, dict]], rank: int) -> None:
        """Fit every evaluator on all processes' training images (``gathered``: each rank's :meth:`mitigation_fits`)."""
        share_fits(self.mitigations, gathered, rank)
