"""Control runs of an audit and the "beyond control" numbers.

A control (``settings.controls``: "untrained", "circular-padding"; see :mod:`sdaudit.models.controls`)
reruns the same passes on the same images with the control model, in ``OUT/controls/<kind>/`` (its own
checkpoint, so it resumes too). Its per-layer table goes into results.json beside the model's, and each
number with an interval gets ``beyond_<metric>`` = model - control with a paired bootstrap interval over
the images (:func:`sdaudit.analyses.intervals.difference_interval`): a "finding" is only one where that
interval excludes 0.
"""

from __future__ import annotations

from pathlib import Path

from ..analyses.intervals import Terms, difference_interval, item_mean_terms
from ..analyses.position import probe_terms
from .outputs import INTERVAL_METRICS, _finite


def run_controls(model, items, settings, out: Path, *, progress=None, checkpoint_seconds: float = 120.0,
                 shard=None) -> list[dict]:
    """Run every control of ``settings``; returns [{kind, label, model, state, full}] (states merged over shards)."""
    from ..models.controls import control_model
    from .run import run_passes
    from .variants import labelled

    controls = []
    for kind in settings.controls:
        control = control_model(model, kind, seed=settings.control_seed)
        folder = out / "controls" / kind
        folder.mkdir(parents=True, exist_ok=True)
        state, full, _ = run_passes(control, items, settings.single(), folder,
                                    progress=labelled(progress, f"control {kind}: "),
                                    checkpoint_seconds=checkpoint_seconds, shard=shard)
        if shard is not None:
            state = shard.reduce_state(state)
        controls.append({"kind": kind, "label": control.extra["control"]["label"], "model": control.identity(),
                         "state": state, "full": full})
    return controls


def metric_terms(state, layer: str, metric: str) -> Terms | None:
    """Bootstrap terms of one table metric of ``layer`` in an audit state (None where it has none)."""
    if layer in state.failed:
        return None
    if metric.startswith("probe_acc_") and layer in state.probe:
        return probe_terms(state.probe[layer], int(metric.rsplit("_", 1)[1]))
    if metric.endswith("_rel_sim") and layer in state.borders:
        return state.borders[layer].terms(metric.split("_", 1)[0])
    if metric == "anomaly_rel_norm_mean" and state.norms is not None and state.anomaly_layer not in state.failed:
        return item_mean_terms(state.norms.images[layer], state.norms.values[layer])
    return None


def add_beyond_columns(table: list[dict], state, control_state, prefix: str = "beyond_") -> None:
    """``<prefix><metric>`` (model - control) with ``_low`` / ``_high`` for every metric both runs have."""
    for row in table:
        for metric in INTERVAL_METRICS:
            a = metric_terms(state, row["layer"], metric)
            b = metric_terms(control_state, row["layer"], metric)
            if a is None or b is None or not len(a.index) or not len(b.index):
                continue
            iv = difference_interval(a, b)
            row[f"{prefix}{metric}"] = _finite(iv.estimate)
            row[f"{prefix}{metric}_low"] = _finite(iv.low)
            row[f"{prefix}{metric}_high"] = _finite(iv.high)
