"""The report's "Mitigations" section: what each mitigation buys and costs, per layer, grouped by block.

:func:`mitigation_rows` turns :class:`~sdaudit.mitigations.effects.MitigationEvaluation` s (one per layer)
into table rows of text: matching accuracy and positional-bias rate before and after with their
intervals and the paired difference, the artifact measure before and after, and the verdict.
:func:`mitigation_groups` groups them by block for the page partial ``_mitigations.html.j2``
(:func:`sdaudit.report.html.render_mitigations`), :func:`mitigation_text_table` prints them as plain text and
:func:`mitigation_line` sums them up in one line (the audit's closing summary).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from ..analyses.intervals import Interval
from ..constants import MIN_PROBE_GRID
from ..layer_names import block_of
from ..mitigations.effects import Change, MitigationEffect, MitigationEvaluation
from .intervals import fmt_diff, fmt_interval, fmt_pct, fmt_points


def _ci(i: Interval, fmt) -> str:
    return fmt_interval(i.estimate, i.low, i.high, fmt)


def _number(v: float) -> str:
    return f"{v:.3g}"


def _change_cells(c: Change, fmt, diff_fmt) -> dict[str, str]:
    return {"before": _ci(c.before, fmt), "after": _ci(c.after, fmt),
            "difference": fmt_diff(c.difference.estimate, c.difference.low, c.difference.high, diff_fmt)}


def control_references(controls: Sequence[Any]) -> dict[tuple[str, str], Interval]:
    """{(layer, mitigation): the untrained control's artifact measure} from the controls of an audit (their
    ``mitigations``, written when ``--mitigations`` ran with ``--control untrained``): what the measure reads
    when nothing was learned, the target a mitigation should move the model toward (e.g. the probe accuracy
    that zero padding alone gives), beside the chance level."""
    out = {}
    for control in controls:
        if getattr(control, "kind", None) != "untrained":
            continue
        for data in control.extra.get("mitigations") or []:
            ev = MitigationEvaluation.from_dict(data)
            for e in ev.effects:
                if e.artifact is not None:
                    out[(ev.layer, e.name)] = e.artifact.change.before
    return out


def _reference(artifact, control: Interval | None, fmt) -> str:
    """The 'without the artifact' cell: the measure's own reference (chance, norm 1) and the untrained control's."""
    parts = [f"{artifact.reference_label} {fmt(artifact.reference)}"] if artifact.reference is not None else []
    if control is not None and math.isfinite(control.estimate):
        parts.append(f"untrained control {_ci(control, fmt)}")
    return "; ".join(parts) or "—"


def mitigation_rows(evaluations: Sequence[MitigationEvaluation], *, region: str = "all",
                    references: dict[tuple[str, str], Interval] | None = None) -> list[dict[str, Any]]:
    """One row per (layer, mitigation) with text cells; matching numbers of each evaluation's first view in
    ``region`` (all, corner, border, other); ``references``: :func:`control_references`."""
    rows = []
    references = references or {}
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
                "reference": (_reference(artifact, references.get((ev.layer, e.name)), fmt)
                              if artifact is not None else "—"),
                "verdict": e.verdict})
    return rows


def mitigation_groups(evaluations: Sequence[MitigationEvaluation], **kw: Any) -> list[dict[str, Any]]:
    """The rows of :func:`mitigation_rows` grouped by block, blocks in the order their layers came."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in mitigation_rows(evaluations, **kw):
        groups.setdefault(row["block"], []).append(row)
    return [{"block": block, "rows": rows} for block, rows in groups.items()]


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


def _most_informative(effects: Sequence[tuple[str, MitigationEffect]], view: str) -> tuple[str, str, Change] | None:
    """(layer, metric, change) of the matching change (accuracy or bias rate to ``view``, every layer) whose
    interval excludes 0 with the largest effect; where none does, the largest effect. None if none is finite."""
    candidates = []
    for layer, e in effects:
        for metric, change in ((f"{view} accuracy", e.accuracy[view]["all"]), ("bias rate", e.bias_rate[view]["all"])):
            d = change.difference
            if math.isfinite(d.estimate):
                candidates.append((bool(d.excludes(0.0)), abs(d.estimate), layer, metric, change))
    if not candidates:
        return None
    _, _, layer, metric, change = max(candidates, key=lambda c: (c[0], c[1]))
    return layer, metric, change


def _effect_phrase(name: str, found: tuple[str, str, Change] | None, control: bool) -> str:
    label = f"{name} (control)" if control else name
    if found is None:
        return f"{label} not measurable"
    layer, metric, change = found
    d = change.difference
    size = f"{100 * d.estimate:+.1f} pp"
    if not d.excludes(0.0):
        return f"{label} no measurable effect on matching (largest: {metric} {size} on {layer})"
    verb = ("lowers" if d.estimate < 0 else "raises") if metric == "bias rate" else \
        ("costs" if d.estimate < 0 else "gains")
    return f"{label} {verb} {metric} {size} [{100 * d.low:+.1f}, {100 * d.high:+.1f}] on {layer}"


def mitigation_line(evaluations: Sequence[MitigationEvaluation]) -> str | None:
    """'mitigations: position gains flip accuracy +X pp [lo, hi] on <layer>, ...': per mitigation, its most
    informative matching change over the layers (:func:`_most_informative`), stated as an effect only where its
    interval excludes 0; None without evaluations. Layers whose grid is degenerate (under
    :data:`~sdaudit.constants.MIN_PROBE_GRID` tokens a side: a 2x2 grid is all ring, so masking the ring leaves
    nothing to match) are left out of the line when any other layer was evaluated; the report lists them all."""
    if not evaluations:
        return None
    view = evaluations[0].views[0]
    usable = [ev for ev in evaluations if min(ev.grid) >= MIN_PROBE_GRID] or list(evaluations)
    return "mitigations: " + ", ".join(
        _effect_phrase(e.name, _most_informative([(ev.layer, ev.effect(e.name)) for ev in usable], view),
                       e.control_of is not None)
        for e in evaluations[0].effects)
