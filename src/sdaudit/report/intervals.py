"""Reading the audit's uncertainty: 95 % intervals, controls and the "beyond control" differences.

The audit gives every per-layer number M in :data:`INTERVAL_METRICS` a bootstrap interval over images
(``M_low``, ``M_high``) and, with a control run, the difference to the control with its interval
(``beyond_M``, ``beyond_M_low``, ``beyond_M_high``). All of it is optional: older results have none,
and then the report falls back to point estimates and says so. Nothing here draws or renders.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..audit_results import INTERVAL_METRICS, AuditResults, ControlRun, LayerRow, Recurrence, finite

__all__ = ["FEW_CHANNELS", "INTERVAL_METRICS", "NOT_DEFINED", "beyond", "clears_control", "controls_of", "fmt_diff",
           "fmt_interval", "fmt_pct", "fmt_points", "num", "recurrence_text"]

#: what the audit writes for a layer whose cropped (n-2) grid is under 3x3
NOT_DEFINED = "not defined (grid too small)"

#: channel count at or under which norms and ratios over channels mean little (e.g. conv_out's 4)
FEW_CHANNELS = 8


def num(v: Any) -> float | None:
    """A value as a finite float, else None (None, bool, text, NaN, jinja Undefined)."""
    import jinja2

    return None if isinstance(v, jinja2.Undefined) else finite(v)


def fmt_pct(v: Any) -> str:
    """0.975527 -> '97.6%'; missing -> '—'."""
    f = num(v)
    return "—" if f is None else f"{100 * f:.1f}%"


def fmt_points(v: Any) -> str:
    """A difference of two accuracies in percentage points: 0.3 -> '30.0 pp'; missing -> '—'."""
    f = num(v)
    return "—" if f is None else f"{100 * f:.1f} pp"


def controls_of(results: AuditResults) -> list[ControlRun]:
    """The control runs of ``results``; differences to a control without its description (``beyond_*`` in the
    table but no control recorded) are still judged against, under the generic label "control"."""
    if not results.controls and results.first_control_has_beyond():
        return [ControlRun(label="control")]
    return list(results.controls)


def beyond(row: LayerRow, metric: str, control: ControlRun, *,
           first: bool) -> tuple[float | None, float | None, float | None] | None:
    """(model - control, low, high) for ``metric`` at this row's layer, or None when unknown.

    The model's ``beyond_M*`` fields belong to the first control; every control's own table rows carry
    ``beyond_M*`` of (model - that control) too. Without them, the difference of the point estimates
    with a conservative interval from the two intervals (model low - control high, model high - control low).
    """
    if first and row.beyond(metric) is not None:
        return row.beyond(metric)
    crow = control.by_layer().get(row.layer)
    if crow is None:
        return None
    if crow.beyond(metric) is not None:  # the paired interval the audit computed for this control
        return crow.beyond(metric)
    m, c = row.value(metric), crow.value(metric)
    if m is None or c is None:
        return None
    m_lo, m_hi = row.interval(metric)
    c_lo, c_hi = crow.interval(metric)
    lo = m_lo - c_hi if m_lo is not None and c_hi is not None else None
    hi = m_hi - c_lo if m_hi is not None and c_lo is not None else None
    return m - c, lo, hi


def clears_control(row: LayerRow, metric: str, controls: Sequence[ControlRun]) -> str | None:
    """The label of the first control that the model does not clearly exceed on ``metric``, else None.

    Exceeding means the interval of (model - control) lies above 0: every artifact measure here is
    "higher is worse", so a difference below 0 is no finding either."""
    for i, c in enumerate(controls):
        d = beyond(row, metric, c, first=i == 0)
        if d is None:
            continue  # the control lacks this layer or metric: nothing to compare with
        _, lo, _ = d
        if lo is None or lo <= 0:
            return c.label
    return None


def fmt_interval(value: Any, low: Any, high: Any, fmt) -> str:
    """'0.82 [0.79, 0.85]' with ``fmt`` for each number; '0.82' without bounds; '—' without a value."""
    v = num(value)
    if v is None:
        return "—"
    lo, hi = num(low), num(high)
    if lo is None or hi is None:
        return fmt(v)
    return f"{fmt(v)} [{fmt(lo)}, {fmt(hi)}]"


def fmt_diff(value: Any, low: Any, high: Any, fmt) -> str:
    """A signed difference with its interval: '+0.30 [+0.12, +0.51]'."""
    signed = lambda x: ("+" if x > 0 else "") + fmt(x)  # noqa: E731
    return fmt_interval(value, low, high, signed)


def recurrence_text(rec: Recurrence | None) -> str | None:
    """The permutation test of anomaly positions in one plain sentence, or None when absent."""
    if rec is None:
        return None
    pairs, expected, p = finite(rec.pairs), finite(rec.null_mean), finite(rec.p_value)
    if pairs is None or expected is None:
        return None
    p_text = f"p = {p:.3g}" if p is not None else "p not computed"
    counts = f"{int(round(pairs))} coincident pairs vs {expected:.1f} expected ({p_text})"
    if p is not None and p < 0.05:
        return f"Anomalies recur at the same positions: {counts}."
    return f"Anomalies do not recur at the same positions more often than chance: {counts}."
