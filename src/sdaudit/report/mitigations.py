"""The report's "Mitigations" section: what each mitigation buys and costs, per layer, grouped by block.

:func:`mitigation_rows` turns :class:`~sdaudit.mitigations.effects.MitigationEvaluation` s (one per layer)
into table rows of text: matching accuracy and positional-bias rate before and after with their
intervals and the paired difference, the artifact measure before and after, and the verdict.
:func:`mitigation_groups` groups them by block for the page partial ``_mitigations.html.j2``
(:func:`render_mitigations`), :func:`mitigation_text_table` prints them as plain text.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..analyses.intervals import Interval
from ..layer_names import block_of
from ..mitigations.effects import Change, MitigationEvaluation
from .html import fmt_pct, fmt_points, template_environment
from .intervals import fmt_diff, fmt_interval


def _ci(i: Interval, fmt) -> str:
    return fmt_interval(i.estimate, i.low, i.high, fmt)


def _number(v: float) -> str:
    return f"{v:.3g}"


def _change_cells(c: Change, fmt, diff_fmt) -> dict[str, str]:
    return {"before": _ci(c.before, fmt), "after": _ci(c.after, fmt),
            "difference": fmt_diff(c.difference.estimate, c.difference.low, c.difference.high, diff_fmt)}


def mitigation_rows(evaluations: Sequence[MitigationEvaluation], *, region: str = "all") -> list[dict[str, Any]]:
    """One row per (layer, mitigation) with text cells; matching numbers of each evaluation's first view in
    ``region`` (all, corner, border, other)."""
    rows = []
    for ev in evaluations:
        view = ev.views[0]
        for e in ev.effects:
            artifact = e.artifact
            art = artifact.change if artifact is not None else None
            pct = "accuracy" in (artifact.measure if artifact else "")  # probe and matching accuracies
            fmt, diff_fmt = (fmt_pct, fmt_points) if pct else (_number, _number)
            rows.append({
                "block": block_of(ev.layer) if ev.layer else "—", "layer": ev.layer or "—", "grid": ev.grid,
                "mitigation": e.name, "control_of": e.control_of, "view": view, "n_test": ev.n_test_images,
                "accuracy": _change_cells(e.accuracy[view][region], fmt_pct, fmt_points),
                "bias_rate": _change_cells(e.bias_rate[view][region], fmt_pct, fmt_points),
                "chance_bias_rate": fmt_pct(e.chance_bias_rate[view][region]),
                "measure": artifact.measure if artifact else "—",
                "artifact": _change_cells(art, fmt, diff_fmt) if art is not None else None,
                "reference": (f"{artifact.reference_label} {fmt(artifact.reference)}"
                              if artifact is not None and artifact.reference is not None else "—"),
                "verdict": e.verdict})
    return rows


def mitigation_groups(evaluations: Sequence[MitigationEvaluation], **kw: Any) -> list[dict[str, Any]]:
    """The rows of :func:`mitigation_rows` grouped by block, blocks in the order their layers came."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in mitigation_rows(evaluations, **kw):
        groups.setdefault(row["block"], []).append(row)
    return [{"block": block, "rows": rows} for block, rows in groups.items()]


def render_mitigations(evaluations: Sequence[MitigationEvaluation]) -> str:
    """The report's mitigation section (HTML) on its own; the report includes the same partial."""
    template = template_environment().get_template("_mitigations.html.j2")
    return template.render(mitigations=mitigation_groups(evaluations))


_COLUMNS = (("layer", 31), ("mitigation", 17), ("acc before", 24), ("acc after", 24), ("Δ acc", 26),
            ("bias before", 24), ("bias after", 24), ("Δ bias", 26))


def mitigation_text_table(evaluations: Sequence[MitigationEvaluation]) -> str:
    """Matching accuracy and positional-bias rate before/after each mitigation, per block, as plain text."""
    lines = []
    for group in mitigation_groups(evaluations):
        lines.append(f"[{group['block']}]")
        lines.append("  ".join(name.ljust(width) for name, width in _COLUMNS))
        for r in group["rows"]:
            cells = (r["layer"], r["mitigation"], r["accuracy"]["before"], r["accuracy"]["after"],
                     r["accuracy"]["difference"], r["bias_rate"]["before"], r["bias_rate"]["after"],
                     r["bias_rate"]["difference"])
            lines.append("  ".join(str(c).ljust(width) for c, (_, width) in zip(cells, _COLUMNS)))
        lines.append("")
    return "\n".join(lines)
