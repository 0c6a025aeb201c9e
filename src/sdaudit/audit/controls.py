"""Control runs of an audit and the "beyond control" numbers.

A control (``settings.controls``: "untrained", "circular-padding"; see :mod:`sdaudit.models.controls`)
reruns the same passes on the same images with the control model, in ``OUT/controls/<kind>/`` (its own
checkpoint, so it resumes too). Its per-layer table goes into results.json beside the model's, and each
number with an interval gets ``beyond_<metric>`` = model - control with a paired bootstrap interval over
the images (:func:`sdaudit.analyses.intervals.difference_interval`): a "finding" is only one where that
interval excludes 0.
"""

from __future__ import annotations

from ..analyses.intervals import difference_interval
from ..audit_results import finite, interval_metrics, row_resolutions
from ..audit_results.schema import matching_metrics
from ..models.controls import control_model
from ..settings import AuditSettings
from .outputs import metric_terms
from .run import AuditRun, RunOptions


def run_controls(main: AuditRun, settings: AuditSettings, options: RunOptions) -> list[dict]:
    """Run every control of ``settings`` on ``main``'s images; [{kind, label, model, state}] (states merged
    over processes)."""
    controls = []
    for kind in settings.controls:
        control = control_model(main.model, kind, seed=settings.control_seed)
        run = main.derived(control, settings.single(), main.out / "controls" / kind,
                           options.labelled(f"control {kind}: "), keep_mitigations=kind == "untrained")
        controls.append({"kind": kind, "label": control.extra["control"]["label"], "model": control.identity(),
                         "state": run.execute().state})
    return controls


def add_beyond_columns(table: list[dict], state, control_state, prefix: str = "beyond_") -> None:
    """``<prefix><metric>`` (model - control) with ``_low`` / ``_high`` for every metric both runs have."""
    for row in table:
        for metric in interval_metrics(row_resolutions(row)) + matching_metrics(row, with_interval=True):
            a = metric_terms(state, row["layer"], metric)
            b = metric_terms(control_state, row["layer"], metric)
            if a is None or b is None or not len(a.index) or not len(b.index):
                continue
            iv = difference_interval(a, b)
            row[f"{prefix}{metric}"] = finite(iv.estimate)
            row[f"{prefix}{metric}_low"] = finite(iv.low)
            row[f"{prefix}{metric}_high"] = finite(iv.high)
