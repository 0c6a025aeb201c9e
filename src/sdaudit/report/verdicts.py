"""The analysis of an audit's numbers: per-layer flags and verdicts, and the findings of the page.

A flag is raised only when the number is clearly over its threshold: with an interval (newer
results) when the interval's low end clears it, and with a control run only when the interval of
(model - control) lies above 0. Otherwise the layer gets a note ("uncertain (interval spans the
threshold)", "not distinguishable from the untrained control") instead of a finding. Results
without intervals keep the point-estimate rules, and their verdicts say "(no interval)".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..analyses.channels import DEFAULT_THRESHOLDS
from ..audit_results import AnomalySummary, AuditResults, ControlRun, LayerRow
from ..constants import RESOLUTIONS
from .matching import matching_summary
from .intervals import FEW_CHANNELS, INTERVAL_METRICS, NOT_DEFINED, clears_control, controls_of, fmt_interval, \
    recurrence_text

#: Verdict thresholds (stated on the page). Position: above-chance skill at the finest comparison
#: resolution, (acc - chance) / (1 - chance): 0 = chance, 1 = perfect. Border: relative similarity
#: (cropped / full); anomalies: relative norm of the anomaly patches (mean over anomalies).
THRESHOLDS: dict[str, float] = {
    "position_strong": 0.5,
    "position_mild": 0.2,
    "corner_strong": 2.0,
    "corner_mild": 1.5,
    "border_strong": 1.2,
    "border_mild": 1.1,
    # a relative similarity divides by the group's mean cosine in the full image; where that reference is
    # near zero (near-orthogonal tokens, e.g. a 4-channel conv_out) the ratio is arbitrary, not an artifact
    "border_min_reference": 0.05,
    "anomaly_strong": 2.0,
    "anomaly_mild": 1.5,
}

UNCERTAIN = "uncertain (interval spans the threshold)"
FEW_CHANNELS_NOTE = "few channels: norm outliers and ratios mean little here"
MASSIVE_NOTE = "{n} massive channel(s): its token norms, and the anomalies on them, may be dominated by these"


def _pct(v: float) -> str:
    return f"{100 * v:.1f}%"


def _ratio(v: float) -> str:
    return f"{v:.2f}"


def finest_resolution(table: Sequence[LayerRow]) -> int | None:
    """The largest comparison resolution s with any probe accuracy in the table."""
    have = [s for s in RESOLUTIONS if any(r.accuracy(s) is not None for r in table)]
    return max(have) if have else None


def _skill(acc: float | None, chance: float | None) -> float | None:
    if acc is None or chance is None or chance >= 1:
        return None
    return (acc - chance) / (1 - chance)


def _level(value: float | None, mild: float, strong: float) -> int:
    if value is None:
        return -1  # not measured
    return 2 if value >= strong else 1 if value >= mild else 0


def meaningful_ratio(ratio: float | None, reference: float | None) -> bool:
    """Whether a relative similarity can be read: positive, over a reference similarity (the full image's
    group mean cosine, its denominator) of at least ``border_min_reference``, where that is known."""
    return ratio is not None and ratio > 0 and (reference is None or reference >= THRESHOLDS["border_min_reference"])


def meaningful_mask(results: AuditResults | ControlRun, layers: Sequence[str], group: str) -> list[bool]:
    """Per layer: whether its ``group`` ("corner" / "border") ratio is one the report reads (for the figures)."""
    by = {r.layer: r for r in results.table}
    return [name in by and not by[name].borders_undefined
            and meaningful_ratio(by[name].ratio(group), results.reference(name, group)) for name in layers]


NO_INTERVAL = "unconfirmed (too few images for an interval)"


def _flag(row: LayerRow, metric: str, value: float | None, low: float | None, *, mild: float,
          strong: float, controls: Sequence[ControlRun], what: str) -> tuple[int, str | None]:
    """(level, note) of one measure: the level the evidence supports, and why it is lower than the point's."""
    level = _level(value, mild, strong)
    if level <= 0:
        return level, None
    note = None
    if row.has_interval(metric):
        # a finding needs its whole interval over the threshold: judge the low end
        sure = max(_level(low, mild, strong), 0)
        if sure < level:
            # no bound at all: too few images for an interval (the audit gives none under 5)
            level, note = sure, f"{what} {UNCERTAIN if low is not None else NO_INTERVAL}"
    if level > 0 and controls:
        label = clears_control(row, metric, controls)
        if label is not None:
            name = "the control" if label == "control" else f"the {label} control"
            level, note = 0, f"{what} not distinguishable from {name}"
    return level, note


def _failed(row: LayerRow) -> dict[str, Any]:
    return {"layer": row.layer, "grid": row.grid, "kind": row.kind, "acc": None,
            "chance": None, "skill": None, "pos_level": -1, "corner": None, "border": None,
            "corner_ok": False, "border_ok": False, "border_level": -1, "ill": False, "anomaly": None,
            "anomaly_std": None, "anomaly_level": -1, "anomaly_text": "—", "acc_text": "not run",
            "border_text": "—", "overall": -1, "verdict": "failed", "label": "failed", "intervals": False,
            "notes": f"analysis failed: {row.error}"}


def _position_flag(row: LayerRow, s: int | None, controls) -> dict[str, Any]:
    """The position probe's part of a verdict: accuracy, chance, skill, level, and its note."""
    if not s:
        return {"acc": None, "acc_low": None, "acc_high": None, "chance": None, "skill": None, "pos_level": -1,
                "acc_text": "not run", "pos_note": None}
    t, metric = THRESHOLDS, f"probe_acc_{s}"
    acc, (acc_low, acc_high), chance = row.accuracy(s), row.interval(metric), row.chance(s)
    skill = _skill(acc, chance)
    level, note = _flag(row, metric, skill, _skill(acc_low, chance), mild=t["position_mild"],
                        strong=t["position_strong"], controls=controls, what="position code")
    return {"acc": acc, "acc_low": acc_low, "acc_high": acc_high, "chance": chance, "skill": skill,
            "pos_level": level, "pos_note": note,
            "acc_text": fmt_interval(acc, acc_low, acc_high, _pct) if acc is not None else "not run"}


def _border_flags(row: LayerRow, results: AuditResults, controls) -> dict[str, Any]:
    """The border analysis' part of a verdict: corner / border ratios, whether readable, level, notes."""
    t, undefined = THRESHOLDS, bool(row.borders_undefined)
    corner = None if undefined else row.ratio("corner")
    border = None if undefined else row.ratio("border")
    corner_ok = meaningful_ratio(corner, results.reference(row.layer, "corner"))
    border_ok = meaningful_ratio(border, results.reference(row.layer, "border"))
    c_level, c_note = _flag(row, "corner_rel_sim", corner if corner_ok else None, row.interval("corner_rel_sim")[0],
                            mild=t["corner_mild"], strong=t["corner_strong"], controls=controls, what="corner ratio")
    e_level, e_note = _flag(row, "border_rel_sim", border if border_ok else None, row.interval("border_rel_sim")[0],
                            mild=t["border_mild"], strong=t["border_strong"], controls=controls, what="border ratio")
    b_level = max(c_level, e_level)
    ill = (corner is not None and not corner_ok) or (border is not None and not border_ok)
    if undefined:
        text = NOT_DEFINED
    elif b_level >= 0 or ill:
        text = (fmt_interval(corner, *row.interval("corner_rel_sim"), _ratio) + " / "
                + fmt_interval(border, *row.interval("border_rel_sim"), _ratio))
    else:
        text = "not run"
    return {"corner": corner, "border": border, "corner_ok": corner_ok, "border_ok": border_ok,
            "border_level": b_level, "ill": ill, "border_text": text, "borders_undefined": undefined,
            "c_note": c_note, "e_note": e_note}


def _anomaly_flag(row: LayerRow, results: AuditResults, controls, none_found: bool) -> dict[str, Any]:
    """The anomaly analysis' part of a verdict: the relative norm, its level and text, and its note."""
    t, anomaly = THRESHOLDS, row.value("anomaly_rel_norm_mean")
    level, note = _flag(row, "anomaly_rel_norm_mean", anomaly, row.interval("anomaly_rel_norm_mean")[0],
                        mild=t["anomaly_mild"], strong=t["anomaly_strong"], controls=controls, what="anomaly norm")
    searched = results.anomalies.layer if results.anomalies is not None else None
    if anomaly is None and none_found:
        # the detector searches one layer; the others are measured at its finds, never searched themselves
        level, text = 0, "none found" if row.layer == searched else "not searched"
    else:
        text = fmt_interval(anomaly, *row.interval("anomaly_rel_norm_mean"), _ratio) if anomaly is not None \
            else "not run"
    return {"anomaly": anomaly, "anomaly_std": row.value("anomaly_rel_norm_std"), "anomaly_level": level,
            "anomaly_text": text, "a_note": note}


def _notes(pos: dict, bor: dict, ano: dict, few_channels: bool) -> list[str]:
    """Why a layer got its verdict, in words: the flags, then what lowered them."""
    notes = [{2: "encodes absolute position", 1: "some position information"}.get(pos["pos_level"], ""),
             {2: "strong border/corner artifact", 1: "mild border/corner artifact"}.get(bor["border_level"], "")]
    if bor["ill"]:
        notes.append("border/corner ratio not meaningful (reference similarity near zero)")
    if bor["borders_undefined"]:
        notes.append(f"border/corner {NOT_DEFINED}")
    notes.append({2: "high-norm anomalies", 1: "raised norm at anomalies"}.get(ano["anomaly_level"], ""))
    notes += [n for n in (pos["pos_note"], bor["c_note"], bor["e_note"], ano["a_note"]) if n]
    if few_channels:
        notes.append(FEW_CHANNELS_NOTE)
    return [n for n in notes if n]


def _verdict(row: LayerRow, results: AuditResults, s: int | None, controls, none_found: bool) -> dict[str, Any]:
    pos, bor = _position_flag(row, s, controls), _border_flags(row, results, controls)
    ano = _anomaly_flag(row, results, controls, none_found)
    few = 0 < results.channels().get(row.layer, FEW_CHANNELS + 1) <= FEW_CHANNELS
    notes = _notes(pos, bor, ano, few)
    if row.value("massive_channels"):
        notes.append(MASSIVE_NOTE.format(n=int(row.value("massive_channels"))))
    # position alone is expected in a U-Net: at most "caution"; artifacts can make a layer "affected"
    # a border test that could not be read is no pass either: at least "caution"; nor is an artifact whose
    # interval spans its threshold (one the control shows as well is no artifact of this model: no raise)
    uncertain = any(n and UNCERTAIN in n for n in (bor["c_note"], bor["e_note"], ano["a_note"]))
    overall = max(min(pos["pos_level"], 1), bor["border_level"], ano["anomaly_level"], 1 if bor["ill"] or uncertain else 0)
    verdict = ["usable", "caution", "affected"][overall]
    with_intervals = any(row.has_interval(m) for m in INTERVAL_METRICS)
    out = {"layer": row.layer, "grid": row.grid, "kind": row.kind, **pos, **bor, **ano}
    for key in ("pos_note", "c_note", "e_note", "a_note"):
        del out[key]
    # old results: the point-estimate rules, labelled as such
    out.update(overall=overall, verdict=verdict, intervals=with_intervals,
               label=verdict if with_intervals else f"{verdict} (no interval)",
               notes="; ".join(notes) if notes else "no flag")
    return out


def layer_verdicts(results: AuditResults | Mapping[str, Any]) -> list[dict[str, Any]]:
    """Per layer: the three flags (level -1 not measured, 0 none, 1 mild, 2 strong) and a verdict.

    ``verdict`` is usable / caution / affected / failed; ``label`` adds "(no interval)" when the
    row has no interval fields; ``notes`` says why, including the flags the evidence does not carry.
    """
    results = AuditResults.coerce(results)
    s = finest_resolution(results.table)
    none_found = results.anomalies is not None and results.anomalies.count == 0
    controls = controls_of(results)
    return [_failed(row) if row.error else _verdict(row, results, s, controls, none_found) for row in results.table]


def _layer_range(names: Sequence[str], order: Sequence[str]) -> str:
    """'9 layers from A to B' when they are consecutive in the plot order, else the list."""
    if not names:
        return ""
    idx = sorted(order.index(n) for n in names if n in order)
    if len(idx) > 3 and idx == list(range(idx[0], idx[-1] + 1)):
        return f"{len(idx)} consecutive layers, from {order[idx[0]]} to {order[idx[-1]]}"
    if len(idx) > 3:
        return f"{len(idx)} layers, from {order[idx[0]]} to {order[idx[-1]]}"
    return ", ".join(names)


def _clearly_above(row: LayerRow, metric: str, threshold: float, controls) -> bool:
    """Above ``threshold`` by the interval's low end where there is one, and beyond every control."""
    value = row.value(metric)
    if value is None or value <= threshold:
        return False
    if row.has_interval(metric):
        low = row.interval(metric)[0]
        if low is None or low <= threshold:
            return False
    return clears_control(row, metric, controls) is None


def _position(verdicts, s) -> dict[str, Any] | None:
    if s is None:
        return None
    measured = [v for v in verdicts if v["skill"] is not None]
    ranked = sorted(measured, key=lambda v: -v["skill"])
    item = lambda v: {"layer": v["layer"], "grid": v["grid"], "acc": v["acc"], "chance": v["chance"],  # noqa: E731
                      "acc_text": v["acc_text"], "classes": min(s, int(v["grid"])) if v["grid"] else None}
    return {"s": s, "top": [item(v) for v in ranked[:3]], "bottom": [item(v) for v in ranked[-2:][::-1]],
            "n_strong": sum(v["pos_level"] == 2 for v in measured), "n_measured": len(measured)}


def _borders(table: Sequence[LayerRow], verdicts, controls) -> dict[str, Any] | None:
    # the readable ratios only: an arbitrary one (see meaningful_ratio) would top these lists
    rows = {r.layer: r for r in table}

    def listed(group):
        ok = [v for v in verdicts if v[f"{group}_ok"]]
        return [(v["layer"], v[group], fmt_interval(v[group], *rows[v["layer"]].interval(f"{group}_rel_sim"),
                                                    _ratio)) for v in ok], ok
    corners, c_ok = listed("corner")
    borders, e_ok = listed("border")
    if not corners and not borders and not any(v["ill"] for v in verdicts):
        return None
    above = lambda ok, m: sum(_clearly_above(rows[v["layer"]], m, 1.0, controls) for v in ok)  # noqa: E731
    return {
        "top_corner": sorted(corners, key=lambda t: -t[1])[:3], "top_border": sorted(borders, key=lambda t: -t[1])[:3],
        "n_corner_above_1": above(c_ok, "corner_rel_sim"), "n_corner": len(corners),
        "n_border_above_1": above(e_ok, "border_rel_sim"), "n_border": len(borders),
        "n_strong": sum(v["border_level"] == 2 for v in verdicts),
        "ill": [v["layer"] for v in verdicts if v["ill"]],
        "undefined": [v["layer"] for v in verdicts if v.get("borders_undefined")],
    }


def _anomalies(results: AuditResults, verdicts) -> dict[str, Any] | None:
    found = results.anomalies
    rel = [(r.layer, r.value("anomaly_rel_norm_mean"), r.value("anomaly_rel_norm_std"), r) for r in results.table]
    rel = [t for t in rel if t[1] is not None]
    if found is None and not rel:
        return None
    order = [r.layer for r in results.table]
    # the layers with a strong flag: judged on the interval and the controls where there are any
    above = [v["layer"] for v in verdicts if v["anomaly_level"] == 2]
    peak = max(rel, key=lambda t: t[1]) if rel else None
    n_img = (found.n_images if found is not None else None) or results.n_images
    with_ = found.images_with if found is not None else None
    return {
        "layer": results.anomaly_layer, "count": found.count if found is not None else None, "images_with": with_,
        "n_images": n_img, "share": (with_ / n_img) if (with_ is not None and n_img) else None,
        "above": above, "above_text": _layer_range(above, order), "peak": peak[:3] if peak else None,
        "peak_interval": peak[3].interval("anomaly_rel_norm_mean") if peak else (None, None),
    }


def _channels(table: Sequence[LayerRow], found: AnomalySummary | None) -> dict[str, Any] | None:
    """The massive channels (opt-in analysis "channels"): the layers that have any, each with its count,
    indices, largest ratio and smallest consistency; ``top`` is the layer with the most; ``without`` the
    anomalies found without the anomaly layer's massive channels, next to the plain ones (when it has any).
    None when not run."""
    measured = [r for r in table if r.has("massive_channels")]
    if not measured:
        return None
    without = found.without_massive if found is not None else None
    if without and without.get("channels"):
        without = {**without, "count_plain": found.count, "images_with_plain": found.images_with}
    else:
        without = None
    layers = [{"layer": r.layer, "count": int(r.value("massive_channels")), "ids": r.values.get("massive_channel_ids"),
               "ratio_max": r.value("massive_ratio_max"), "consistency_min": r.value("massive_consistency_min")}
              for r in measured if r.value("massive_channels")]
    top = max(layers, key=lambda d: d["count"]) if layers else None  # the first such layer on a tie
    return {"n_measured": len(measured), "layers": layers, "top": top, "threshold": DEFAULT_THRESHOLDS["ratio"],
            "without": without}


def summarize(results: AuditResults | Mapping[str, Any]) -> dict[str, Any]:
    """The findings of an audit as plain data (the page renders them as sentences)."""
    results = AuditResults.coerce(results)
    table = results.table
    verdicts = layer_verdicts(results)
    controls = controls_of(results)
    out: dict[str, Any] = {"n_layers": len(table), "verdicts": verdicts, "controls": controls,
                           "position": _position(verdicts, finest_resolution(table)),
                           "borders": _borders(table, verdicts, controls),
                           "anomalies": _anomalies(results, verdicts),
                           "channels": _channels(table, results.anomalies),
                           "matching": matching_summary(results),
                           "recurrence": recurrence_text(results.recurrence),
                           "random_weights": results.random_weights,
                           "warnings": list(results.warnings),
                           "intervals": any(v["intervals"] for v in verdicts)}
    levels = [v["overall"] for v in verdicts]
    out["n_usable"], out["n_caution"], out["n_affected"] = (levels.count(0), levels.count(1), levels.count(2))
    out["n_failed"] = levels.count(-1)
    return out
