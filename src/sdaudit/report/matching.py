"""The report's "Matching" findings: the correspondence probe's numbers (``match_<view>_*`` columns of
:mod:`sdaudit.audit.views`) per layer, against chance and against the controls, with a plain verdict.

A layer's positional bias is a finding only when its interval lies above the chance bias rate (uniformly
random matches) AND, where a control ran, the interval of (model - control) lies above 0: a bias the
untrained or circular-padding control shows as well is no property of the trained model. Torch-free.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from ..audit_results import AuditResults, ControlRun, LayerRow
from ..audit_results.schema import KEYPOINT_PREFIX, MATCHING_PREFIX
from .intervals import clears_control, controls_of, fmt_interval


def _fmt(v: float) -> str:
    return f"{v:.2f}"


def _interval(row: LayerRow, metric: str) -> str:
    """'0.42 [0.38, 0.46]' of a row's metric."""
    return fmt_interval(row.value(metric), *row.interval(metric), _fmt)


def matched_views(table: Sequence[LayerRow]) -> list[str]:
    """The views the table has matching numbers for, in the order the audit wrote them."""
    pattern = re.compile(rf"{MATCHING_PREFIX}(\w+?)_acc$")
    found = [m.group(1) for row in table for key in row.values if (m := pattern.match(key))]
    return list(dict.fromkeys(found))


def _control_bias(row: LayerRow, metric: str, controls: Sequence[ControlRun]) -> list[tuple[str, str]]:
    """[(control label, its bias rate with interval)] for this layer, for every control that has it."""
    out = []
    for c in controls:
        crow = c.by_layer().get(row.layer)
        if crow is not None and crow.value(metric) is not None:
            out.append((c.label, _interval(crow, metric)))
    return out


def bias_finding(row: LayerRow, view: str, controls: Sequence[ControlRun]) -> str | None:
    """The plain verdict on a layer's positional bias under ``view``, or None when it is no finding (its
    interval reaches chance, or it does not clearly exceed a control)."""
    metric = f"{MATCHING_PREFIX}{view}_bias"
    low, _ = row.interval(metric)
    chance = row.value(f"{metric}_chance")
    if row.value(metric) is None or low is None or chance is None or low <= chance:
        return None
    if controls and clears_control(row, metric, controls) is not None:
        return None
    text = (f"positional bias: {_interval(row, metric)} of wrong {view} "
            f"matches land on the source position (chance {_fmt(chance)}")
    for label, value in _control_bias(row, metric, controls):
        text += f"; {label} control {value}"
    return text + ")"


def _layer(row: LayerRow, view: str, controls: Sequence[ControlRun]) -> dict[str, Any]:
    base = f"{MATCHING_PREFIX}{view}"
    acc = {name: _interval(row, f"{base}_{name}") for name in ("acc", "acc_corner", "acc_border", "acc_interior")}
    chance = row.value(f"{base}_bias_chance")
    return {"layer": row.layer, "block": row.block, "grid": row.grid, **acc,
            "bias": _interval(row, f"{base}_bias"),
            "bias_value": row.value(f"{base}_bias"), "chance": _fmt(chance) if chance is not None else "—",
            "controls": _control_bias(row, f"{base}_bias", controls),
            "finding": bias_finding(row, view, controls)}


KEYPOINT_PCK = f"{KEYPOINT_PREFIX}pck10"  # the report's keypoint column: PCK at alpha = 0.1 (SPair's usual)


def keypoint_layers(table: Sequence[LayerRow]) -> list[dict[str, Any]]:
    """Per layer with keypoint numbers: PCK@0.1 overall, of ring and of interior source keypoints (intervals
    over pairs), its chance level, the pairs and the skipped keypoints."""
    out = []
    for row in table:
        if not row.has(KEYPOINT_PCK):
            continue
        cells = {name: _interval(row, f"{KEYPOINT_PCK}{suffix}")
                 for name, suffix in (("pck", ""), ("ring", "_ring"), ("interior", "_interior"))}
        chance = row.value(f"{KEYPOINT_PCK}_chance")
        out.append({"layer": row.layer, "block": row.block, "grid": row.grid, **cells,
                    "chance": _fmt(chance) if chance is not None else "—",
                    "pairs": row.values.get(f"{KEYPOINT_PREFIX}pairs"),
                    "skipped": row.values.get(f"{KEYPOINT_PREFIX}skipped")})
    return out


def matching_summary(results: AuditResults) -> dict[str, Any] | None:
    """{"views": [{"view", "layers": [per-layer dict], "findings": n, "top": the layer with the largest bias
    among the findings (or None)}], "keypoints": :func:`keypoint_layers`, "controls": labels} for the report
    and the terminal; None when neither the correspondence probe nor user keypoints ran."""
    table = [r for r in results.table if r.error is None]
    views, keypoints = matched_views(table), keypoint_layers(table)
    if not views and not keypoints:
        return None
    controls = controls_of(results)
    out = []
    for view in views:
        layers = [_layer(r, view, controls) for r in table if r.has(f"{MATCHING_PREFIX}{view}_acc")]
        found = [d for d in layers if d["finding"]]
        top = max(found, key=lambda d: d["bias_value"]) if found else None
        out.append({"view": view, "layers": layers, "findings": len(found), "top": top})
    return {"views": out, "keypoints": keypoints, "controls": [c.label for c in controls]}


def matching_line(found: dict[str, Any] | None) -> str | None:
    """The terminal's closing line on the first view: where the positional bias is strongest, or that none is."""
    if found is None or not found["views"]:
        return None
    first = found["views"][0]
    against = " and the control" if found["controls"] else ""
    if first["top"] is None:
        return (f"matching ({first['view']}): no positional bias beyond chance{against} "
                f"({len(first['layers'])} layers)")
    top = first["top"]
    return (f"matching ({first['view']}): positional bias strongest on {top['layer']}: {top['bias']} of wrong "
            f"matches on the source position (chance {top['chance']}); {first['findings']} of "
            f"{len(first['layers'])} layers beyond chance{against}")
