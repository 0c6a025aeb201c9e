"""What qualifies an audit's numbers, in words for the terminal: random weights, controls, warnings."""

from __future__ import annotations

from ..audit_results import AuditResults, LayerRow, ratio_metric


def caveats(results: AuditResults) -> list[str]:
    """Lines to print under an audit's summary."""
    out = []
    if results.random_weights:
        out.append("random weights: this model was not trained; its numbers show what the architecture alone "
                   "produces")
    for control in results.controls:
        out.append(f"control: {control.label} (its curves and the 'beyond control' columns are in the report)")
    out += [f"warning: {w}" for w in results.warnings]
    return out


def ratio_text(results: AuditResults, row: LayerRow, group: str = "corner") -> str:
    """A border/corner ratio with its interval, 'n.d.' where not defined, 'n.m.' where not meaningful."""
    if row.borders_undefined:
        return "n.d."
    value = row.ratio(group)
    if value is None:
        return "-"
    from ..report.verdicts import meaningful_ratio  # the report's rule (report/ loads matplotlib: only when used)

    if not meaningful_ratio(value, results.reference(row.layer, group)):
        return "n.m."
    return with_interval(value, *row.interval(ratio_metric(group)))


def with_interval(value, low, high, digits: int = 3) -> str:
    """'0.812 [0.790, 0.835]'; without bounds the value alone; '-' without a value."""
    if value is None:
        return "-"
    if low is None or high is None:
        return f"{value:.{digits}f}"
    return f"{value:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"
