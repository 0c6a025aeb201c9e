"""Reading the audit's uncertainty: 95 % intervals, controls and the "beyond control" differences.

The audit gives every per-layer number M in :data:`INTERVAL_METRICS` a bootstrap interval over images
(``M_low``, ``M_high``) and, with a control run, the difference to the control with its interval
(``beyond_M``, ``beyond_M_low``, ``beyond_M_high``). All of it is optional: older results have none,
and then the report falls back to point estimates and says so. Nothing here draws or renders.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

# the same tuple as sdaudit.audit.outputs.INTERVAL_METRICS (not imported: the report reads results.json only)
INTERVAL_METRICS = ("probe_acc_8", "probe_acc_16", "probe_acc_32", "probe_acc_64", "corner_rel_sim", "border_rel_sim",
                    "other_rel_sim", "anomaly_rel_norm_mean")

#: what the audit writes for a layer whose cropped (n-2) grid is under 3x3
NOT_DEFINED = "not defined (grid too small)"

#: channel count at or under which norms and ratios over channels mean little (e.g. conv_out's 4)
FEW_CHANNELS = 8


def num(v: Any) -> float | None:
    """A value as a finite float, else None (None, bool, text, NaN, jinja Undefined)."""
    import jinja2

    if v is None or isinstance(v, (bool, jinja2.Undefined)):
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def has_interval(row: Mapping[str, Any], metric: str) -> bool:
    """Whether the audit wrote an interval for ``metric`` in this row (its bounds may still be null)."""
    return f"{metric}_low" in row or f"{metric}_high" in row


def interval(row: Mapping[str, Any], metric: str) -> tuple[float | None, float | None]:
    """(low, high) of ``metric``; None where absent or undefined."""
    return num(row.get(f"{metric}_low")), num(row.get(f"{metric}_high"))


def borders_undefined(row: Mapping[str, Any]) -> bool:
    return bool(row.get("borders_undefined"))


def controls_of(results: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The control runs: ``results["controls"]`` (a list) or ``results["control"]`` as a one-element list.

    Each gets a ``label`` (its own, else its kind) and ``by_layer`` (its table keyed by layer name).
    """
    raw = results.get("controls")
    if not isinstance(raw, list):
        raw = [results["control"]] if isinstance(results.get("control"), Mapping) else []
    if not raw and any(isinstance(r, Mapping) and any(str(k).startswith("beyond_") for k in r)
                       for r in results.get("table") or []):
        # differences to a control without its description: still judged against, under a generic name
        raw = [{"label": "control"}]
    out = []
    for c in raw:
        if not isinstance(c, Mapping):
            continue
        label = str(c.get("label") or c.get("kind") or "control")
        rows = [r for r in (c.get("table") or []) if isinstance(r, Mapping)]
        out.append({**c, "label": label, "by_layer": {str(r.get("layer")): r for r in rows}})
    return out


def beyond(row: Mapping[str, Any], metric: str, control: Mapping[str, Any], *,
           first: bool) -> tuple[float | None, float | None, float | None] | None:
    """(model - control, low, high) for ``metric`` at this row's layer, or None when unknown.

    The model's ``beyond_M*`` fields belong to the first control; every control's own table rows carry
    ``beyond_M*`` of (model - that control) too. Without them, the difference of the point estimates
    with a conservative interval from the two intervals (model low - control high, model high - control low).
    """
    if first and f"beyond_{metric}" in row:
        return num(row.get(f"beyond_{metric}")), num(row.get(f"beyond_{metric}_low")), num(row.get(f"beyond_{metric}_high"))
    crow = control["by_layer"].get(str(row.get("layer")))
    if not crow:
        return None
    if f"beyond_{metric}" in crow:  # the paired interval the audit computed for this control
        return num(crow.get(f"beyond_{metric}")), num(crow.get(f"beyond_{metric}_low")), num(crow.get(f"beyond_{metric}_high"))
    m, c = num(row.get(metric)), num(crow.get(metric))
    if m is None or c is None:
        return None
    m_lo, m_hi = interval(row, metric)
    c_lo, c_hi = interval(crow, metric)
    lo = m_lo - c_hi if m_lo is not None and c_hi is not None else None
    hi = m_hi - c_lo if m_hi is not None and c_lo is not None else None
    return m - c, lo, hi


def clears_control(row: Mapping[str, Any], metric: str, controls: Sequence[Mapping[str, Any]]) -> str | None:
    """The label of the first control that the model does not clearly exceed on ``metric``, else None.

    Exceeding means the interval of (model - control) lies above 0: every artifact measure here is
    "higher is worse", so a difference below 0 is no finding either."""
    for i, c in enumerate(controls):
        d = beyond(row, metric, c, first=i == 0)
        if d is None:
            continue  # the control lacks this layer or metric: nothing to compare with
        _, lo, _ = d
        if lo is None or lo <= 0:
            return str(c["label"])
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


def warnings_of(results: Mapping[str, Any]) -> list[str]:
    """``results["warnings"]`` as a list of strings (a single string is one warning)."""
    raw = results.get("warnings")
    if isinstance(raw, str):
        return [raw]
    return [str(w) for w in raw] if isinstance(raw, list) else []


def recurrence_text(rec: Mapping[str, Any] | None) -> str | None:
    """The permutation test of anomaly positions in one plain sentence, or None when absent."""
    if not isinstance(rec, Mapping):
        return None
    pairs, expected, p = num(rec.get("pairs")), num(rec.get("null_mean")), num(rec.get("p_value"))
    if pairs is None or expected is None:
        return None
    p_text = f"p = {p:.3g}" if p is not None else "p not computed"
    counts = f"{int(round(pairs))} coincident pairs vs {expected:.1f} expected ({p_text})"
    if p is not None and p < 0.05:
        return f"Anomalies recur at the same positions: {counts}."
    return f"Anomalies do not recur at the same positions more often than chance: {counts}."
