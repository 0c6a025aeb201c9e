"""The audit report: one self-contained HTML page per audit folder, and a comparison page.

:func:`render_report` reads ``DIR/results.json`` (and ``DIR/maps.npz`` if present), redraws the
figures into ``DIR/figures/`` and writes ``DIR/report.html``. :func:`render_comparison` draws
several audits in one figure and writes a comparison page. Pages have inline CSS and their figures
embedded as ``data:`` URIs (SVG for the curves, PNG for the maps): no external resource, so a page
can be mailed or archived alone. Every number on a page is read from ``results.json``; every
string from it is HTML-escaped (jinja2 autoescape).
"""

from __future__ import annotations

import base64
import datetime as _dt
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jinja2

from . import figures as F
from .paper import PAPER_ANOMALY_LABELS, PAPER_MODEL_NAMES, RESOLUTIONS, load_paper_results, paper_model_key

RESULTS_FORMAT = "sdaudit-audit/"

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


# --------------------------------------------------------------------------------------------
# number formats (the tests use these too, so the page and the tests agree)


def _num(v: Any) -> float | None:
    if v is None or isinstance(v, (bool, jinja2.Undefined)):
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def fmt_pct(v: Any) -> str:
    """0.975527 -> '97.6%'; missing -> '—'."""
    f = _num(v)
    return "—" if f is None else f"{100 * f:.1f}%"


def fmt_ratio(v: Any) -> str:
    """1.21224 -> '1.21'; missing -> '—'."""
    f = _num(v)
    return "—" if f is None else f"{f:.2f}"


def fmt_pm(mean: Any, std: Any) -> str:
    """'3.79 ± 1.54'."""
    m, s = _num(mean), _num(std)
    if m is None:
        return "—"
    return f"{m:.2f}" if s is None else f"{m:.2f} ± {s:.2f}"


def fmt_int(v: Any) -> str:
    f = _num(v)
    return "—" if f is None else f"{int(round(f)):,}"


# --------------------------------------------------------------------------------------------
# reading


def load_results(result_dir: Path) -> dict[str, Any]:
    """``DIR/results.json``, checked to be an sdaudit audit."""
    path = Path(result_dir) / "results.json"
    if not path.is_file():
        raise FileNotFoundError(f"no results.json in '{result_dir}': is it an sdaudit audit folder?")
    with open(path, encoding="utf-8") as fh:
        results = json.load(fh)
    fmt = str(results.get("format") or "")
    if not fmt.startswith(RESULTS_FORMAT):
        raise ValueError(f"'{path}' is not an sdaudit audit result (format '{fmt}', expected '{RESULTS_FORMAT}1')")
    if not isinstance(results.get("table"), list):
        raise ValueError(f"'{path}' has no per-layer 'table'")
    return results


def finest_resolution(table: Sequence[Mapping[str, Any]]) -> int | None:
    """The largest comparison resolution s with any probe accuracy in the table."""
    have = [s for s in RESOLUTIONS if any(_num(r.get(f"probe_acc_{s}")) is not None for r in table)]
    return max(have) if have else None


def _chance(row: Mapping[str, Any], s: int) -> float | None:
    c = _num(row.get(f"probe_chance_{s}"))
    if c is None:
        g = _num(row.get("grid"))
        c = 1.0 / min(s, g) if g else None
    return c


def _skill(acc: float | None, chance: float | None) -> float | None:
    if acc is None or chance is None or chance >= 1:
        return None
    return (acc - chance) / (1 - chance)


def _n_images(results: Mapping[str, Any]) -> int | None:
    if results.get("images"):
        return len(results["images"])
    return (results.get("anomalies") or {}).get("n_images")


# --------------------------------------------------------------------------------------------
# the analysis of the numbers: findings and verdicts


def _level(value: float | None, mild: float, strong: float) -> int:
    if value is None:
        return -1  # not measured
    return 2 if value >= strong else 1 if value >= mild else 0


def _meaningful(ratio: float | None, reference: float | None) -> bool:
    """Whether a relative similarity can be read: positive, over a reference similarity (the full image's
    group mean cosine, its denominator) of at least ``border_min_reference``, where that is known."""
    return ratio is not None and ratio > 0 and (reference is None or reference >= THRESHOLDS["border_min_reference"])


def layer_verdicts(results: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Per layer: the three flags (level -1 not measured, 0 none, 1 mild, 2 strong) and a verdict."""
    table = results["table"]
    s = finest_resolution(table)
    t = THRESHOLDS
    anomalies = results.get("anomalies")
    none_found = isinstance(anomalies, Mapping) and anomalies.get("count") == 0
    out = []
    for row in table:
        if row.get("error"):
            out.append({"layer": row.get("layer"), "grid": row.get("grid"), "kind": row.get("kind"), "acc": None,
                        "chance": None, "skill": None, "pos_level": -1, "corner": None, "border": None,
                        "corner_ok": False, "border_ok": False,
                        "border_level": -1, "ill": False, "anomaly": None, "anomaly_std": None, "anomaly_level": -1,
                        "anomaly_text": "—", "overall": -1, "verdict": "failed",
                        "notes": f"analysis failed: {row['error']}"})
            continue
        acc = _num(row.get(f"probe_acc_{s}")) if s else None
        chance = _chance(row, s) if s else None
        skill = _skill(acc, chance)
        corner, border = _num(row.get("corner_rel_sim")), _num(row.get("border_rel_sim"))
        anomaly = _num(row.get("anomaly_rel_norm_mean"))
        pos_level = _level(skill, t["position_mild"], t["position_strong"])
        reference = ((results.get("borders") or {}).get(row.get("layer")) or {}).get("full") or {}
        corner_ok = _meaningful(corner, _num(reference.get("corner")))
        border_ok = _meaningful(border, _num(reference.get("border")))
        b_level = max(_level(corner if corner_ok else None, t["corner_mild"], t["corner_strong"]),
                      _level(border if border_ok else None, t["border_mild"], t["border_strong"]))
        ill = (corner is not None and not corner_ok) or (border is not None and not border_ok)
        a_level = _level(anomaly, t["anomaly_mild"], t["anomaly_strong"])
        if anomaly is None and none_found:
            a_level, a_text = 0, "none found"
        else:
            a_text = fmt_ratio(anomaly) if anomaly is not None else "not run"
        notes = []
        if pos_level == 2:
            notes.append("encodes absolute position")
        elif pos_level == 1:
            notes.append("some position information")
        if b_level == 2:
            notes.append("strong border/corner artifact")
        elif b_level == 1:
            notes.append("mild border/corner artifact")
        if ill:
            notes.append("border/corner ratio not meaningful (reference similarity near zero)")
        if a_level == 2:
            notes.append("high-norm anomalies")
        elif a_level == 1:
            notes.append("raised norm at anomalies")
        # position alone is expected in a U-Net: at most "caution"; artifacts can make a layer "affected"
        # a border test that could not be read is no pass either: at least "caution"
        overall = max(min(pos_level, 1), b_level, a_level, 1 if ill else 0)
        out.append({
            "layer": row.get("layer"), "grid": row.get("grid"), "kind": row.get("kind"),
            "acc": acc, "chance": chance, "skill": skill, "pos_level": pos_level,
            "corner": corner, "border": border, "corner_ok": corner_ok, "border_ok": border_ok,
            "border_level": b_level, "ill": ill,
            "anomaly": anomaly, "anomaly_std": _num(row.get("anomaly_rel_norm_std")), "anomaly_level": a_level,
            "anomaly_text": a_text,
            "overall": overall, "verdict": ["usable", "caution", "affected"][overall],
            "notes": "; ".join(notes) if notes else "no flag",
        })
    return out


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


def summarize(results: Mapping[str, Any]) -> dict[str, Any]:
    """The findings of an audit as plain data (the page renders them as sentences)."""
    table = results["table"]
    order = [str(r.get("layer")) for r in table]
    verdicts = layer_verdicts(results)
    out: dict[str, Any] = {"n_layers": len(table)}

    s = finest_resolution(table)
    if s is None:
        out["position"] = None
    else:
        measured = [v for v in verdicts if v["skill"] is not None]
        ranked = sorted(measured, key=lambda v: -v["skill"])
        item = lambda v: {"layer": v["layer"], "grid": v["grid"], "acc": v["acc"], "chance": v["chance"],  # noqa: E731
                          "classes": min(s, int(v["grid"])) if v["grid"] else None}
        out["position"] = {
            "s": s, "top": [item(v) for v in ranked[:3]], "bottom": [item(v) for v in ranked[-2:][::-1]],
            "n_strong": sum(v["pos_level"] == 2 for v in measured), "n_measured": len(measured),
        }

    # the readable ratios only: an arbitrary one (see _meaningful) would top these lists
    corners = [(v["layer"], v["corner"]) for v in verdicts if v["corner_ok"]]
    borders = [(v["layer"], v["border"]) for v in verdicts if v["border_ok"]]
    if not corners and not borders and not any(v["ill"] for v in verdicts):
        out["borders"] = None
    else:
        out["borders"] = {
            "top_corner": sorted(corners, key=lambda t: -t[1])[:3],
            "top_border": sorted(borders, key=lambda t: -t[1])[:3],
            "n_corner_above_1": sum(c > 1 for _, c in corners), "n_corner": len(corners),
            "n_border_above_1": sum(b > 1 for _, b in borders), "n_border": len(borders),
            "n_strong": sum(v["border_level"] == 2 for v in verdicts),
            "ill": [v["layer"] for v in verdicts if v["ill"]],
        }

    anomalies = results.get("anomalies") or {}
    rel = [(r.get("layer"), _num(r.get("anomaly_rel_norm_mean")), _num(r.get("anomaly_rel_norm_std"))) for r in table]
    rel = [t for t in rel if t[1] is not None]
    if not anomalies and not rel:
        out["anomalies"] = None
    else:
        above = [n for n, m, _ in rel if m > THRESHOLDS["anomaly_strong"]]
        peak = max(rel, key=lambda t: t[1]) if rel else None
        n_img = anomalies.get("n_images") or _n_images(results)
        with_ = anomalies.get("images_with")
        out["anomalies"] = {
            "layer": anomalies.get("layer") or F.anomaly_layer(results), "count": anomalies.get("count"),
            "images_with": with_, "n_images": n_img,
            "share": (with_ / n_img) if (with_ is not None and n_img) else None,
            "above": above, "above_text": _layer_range(above, order), "peak": peak,
        }
    out["verdicts"] = verdicts
    levels = [v["overall"] for v in verdicts]
    out["n_usable"], out["n_caution"], out["n_affected"] = (levels.count(0), levels.count(1), levels.count(2))
    out["n_failed"] = levels.count(-1)
    return out


def _pearson(a: Sequence[float], b: Sequence[float]) -> float | None:
    n = len(a)
    if n < 3:
        return None
    ma, mb = sum(a) / n, sum(b) / n
    va = sum((x - ma) ** 2 for x in a)
    vb = sum((y - mb) ** 2 for y in b)
    if va <= 0 or vb <= 0:
        return None
    return sum((x - ma) * (y - mb) for x, y in zip(a, b)) / math.sqrt(va * vb)


PAPER_METRICS = [(f"probe_acc_{s}", f"probe accuracy, s = {s}") for s in RESOLUTIONS] + [
    ("corner_rel_sim", "corner relative similarity"),
    ("border_rel_sim", "border relative similarity (corrected counts)"),
    ("anomaly_rel_norm_mean", "anomaly relative norm (mean)"),
]


def paper_agreement(table: Sequence[Mapping[str, Any]], published: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per metric: layers compared, Pearson r, median and largest absolute difference."""
    pub = {r["layer"]: r for r in published}
    out = []
    for key, label in PAPER_METRICS:
        pairs = [(r["layer"], _num(r.get(key)), _num(pub[r["layer"]].get(key))) for r in table if r.get("layer") in pub]
        pairs = [(n, a, b) for n, a, b in pairs if a is not None and b is not None]
        if not pairs:
            continue
        diffs = sorted(abs(a - b) for _, a, b in pairs)
        worst = max(pairs, key=lambda t: abs(t[1] - t[2]))
        out.append({"key": key, "label": label, "n": len(pairs),
                    "r": _pearson([a for _, a, _ in pairs], [b for _, _, b in pairs]),
                    "median": diffs[len(diffs) // 2], "worst_layer": worst[0], "worst": abs(worst[1] - worst[2]),
                    "ours": worst[1], "theirs": worst[2]})
    return out


# --------------------------------------------------------------------------------------------
# rendering


def _data_uri(path: Path, mime: str) -> str:
    return f"data:{mime};base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def _settings_rows(settings: Mapping[str, Any]) -> list[tuple[str, str]]:
    rows = []
    for k, v in settings.items():
        if isinstance(v, Mapping):
            v = ", ".join(f"{a} = {b}" for a, b in v.items())
        elif isinstance(v, (list, tuple)):
            v = ", ".join(str(x) for x in v)
        elif v == "":
            v = '"" (empty)'
        rows.append((str(k), "—" if v is None else str(v)))
    return rows


def _env() -> jinja2.Environment:
    env = jinja2.Environment(autoescape=True, undefined=jinja2.ChainableUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters.update(pct=fmt_pct, ratio=fmt_ratio, pm=fmt_pm, int=fmt_int,
                       short=lambda s, n=12: (str(s)[:n] + "…") if s and len(str(s)) > n else (s or "—"))
    return env


def _model_title(results: Mapping[str, Any]) -> str:
    return F.run_label(results, "model")


def render_report(result_dir: Path, compare_paper: bool = False) -> Path:
    """Redraw ``DIR/figures/{quantitative,qualitative}.{svg,png}`` and write ``DIR/report.html``.

    ``compare_paper``: overlay the published curves of the same model (SD-1.5, SD-2.1, SD-Turbo)
    and add a section comparing the numbers. Returns the page's path.
    """
    result_dir = Path(result_dir)
    results = load_results(result_dir)
    fig_dir = result_dir / "figures"
    model_name = (results.get("model") or {}).get("name")
    published = load_paper_results(model_name) if compare_paper else None

    quant = F.quantitative_figure([results], paper=published)
    quant_files = F.save_figure(quant, fig_dir / "quantitative")
    quant.clear()
    qual_files = None
    maps_path = result_dir / "maps.npz"
    if maps_path.is_file() and results.get("maps"):
        qual = F.qualitative_figure(results, maps_path)
        if qual is not None:
            qual_files = F.save_figure(qual, fig_dir / "qualitative")
            qual.clear()

    summary = summarize(results)
    finest = finest_resolution(results["table"])
    grids = sorted({int(r["grid"]) for r in results["table"] if _num(r.get("grid"))}, reverse=True)
    ctx: dict[str, Any] = {
        "r": results, "title": _model_title(results), "summary": summary, "t": THRESHOLDS,
        "finest": finest, "resolutions": [s for s in RESOLUTIONS if any(f"probe_acc_{s}" in r for r in results["table"])],
        "grids": grids, "n_images": _n_images(results), "settings": _settings_rows(results.get("settings") or {}),
        "quant_uri": _data_uri(quant_files[0], "image/svg+xml"),
        "qual_uri": _data_uri(qual_files[1], "image/png") if qual_files else None,
        "compare_paper": compare_paper, "paper_key": paper_model_key(model_name),
        "generated": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "result_dir": str(result_dir.resolve()),
        "maps_present": maps_path.is_file(),
    }
    if compare_paper and published:
        key = paper_model_key(model_name)
        ctx["paper_name"] = PAPER_MODEL_NAMES[key]
        ctx["agreement"] = paper_agreement(results["table"], published)
        ctx["paper_labels"] = PAPER_ANOMALY_LABELS.get(key)
    from .. import __version__

    ctx["report_version"] = __version__
    html = _env().from_string(_REPORT_TEMPLATE).render(**ctx)
    out = result_dir / "report.html"
    out.write_text(html, encoding="utf-8")
    return out


def render_comparison(result_dirs: Sequence[Path], out: Path, compare_paper: bool = False) -> Path:
    """Several audits side by side: ``OUT/figures/comparison.{svg,png}`` and ``OUT/report.html``."""
    dirs = [Path(d) for d in result_dirs]
    runs = [load_results(d) for d in dirs]
    labels = [F.run_label(r, d.name) for r, d in zip(runs, dirs)]
    # same model twice (e.g. two protocols): tell them apart by protocol, else by folder name
    for i, lab in enumerate(labels):
        if labels.count(lab) > 1:
            protocol = (runs[i].get("settings") or {}).get("protocol")
            same = [j for j, l2 in enumerate(labels) if l2 == lab]
            protocols = [(runs[j].get("settings") or {}).get("protocol") for j in same]
            labels[i] = f"{lab} ({protocol})" if protocol and len(set(protocols)) == len(protocols) else f"{lab} ({dirs[i].name})"
    runs_l = [{**r, "label": lab} for r, lab in zip(runs, labels)]
    paper = None
    if compare_paper:
        paper = {lab: rows for lab, r in zip(labels, runs)
                 if (rows := load_paper_results((r.get("model") or {}).get("name")))}
    out = Path(out)
    fig = F.quantitative_figure(runs_l, paper=paper or None)
    files = F.save_figure(fig, out / "figures" / "comparison")
    layers = list(fig.sdaudit_layers)  # type: ignore[attr-defined]
    fig.clear()

    summaries = [summarize(r) for r in runs]
    s_list = [finest_resolution(r["table"]) for r in runs]
    by_layer = [{str(row.get("layer")): row for row in r["table"]} for r in runs]
    layer_rows = []
    for name in layers:
        cells = []
        for i, table in enumerate(by_layer):
            row = table.get(name)
            s = s_list[i]
            cells.append(None if row is None else {
                "acc": _num(row.get(f"probe_acc_{s}")) if s else None, "chance": _chance(row, s) if s else None,
                "corner": _num(row.get("corner_rel_sim")), "border": _num(row.get("border_rel_sim")),
                "anomaly": _num(row.get("anomaly_rel_norm_mean")), "grid": row.get("grid")})
        layer_rows.append({"layer": name, "cells": cells})
    # settings that differ between the runs
    keys: list[str] = []
    for r in runs:
        for k in (r.get("settings") or {}):
            if k not in keys:
                keys.append(k)
    settings_rows = []
    for k in keys:
        vals = [_settings_rows({k: (r.get("settings") or {}).get(k)})[0][1] for r in runs]
        settings_rows.append({"key": k, "vals": vals, "differs": len(set(vals)) > 1})
    from .. import __version__

    ctx = {
        "runs": [{"label": lab, "r": r, "dir": str(d.resolve()), "n_images": _n_images(r), "s": s, "sum": sm,
                  "has_report": (d / "report.html").is_file(),
                  "report_href": _relative_href(d / "report.html", out)}
                 for lab, r, d, s, sm in zip(labels, runs, dirs, s_list, summaries)],
        "layers": layer_rows, "settings_rows": settings_rows, "fig_uri": _data_uri(files[0], "image/svg+xml"),
        "compare_paper": compare_paper, "paper_runs": [lab for lab in labels if paper and lab in paper],
        "generated": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "report_version": __version__, "t": THRESHOLDS,
    }
    html = _env().from_string(_COMPARE_TEMPLATE).render(**ctx)
    out.mkdir(parents=True, exist_ok=True)
    page = out / "report.html"
    page.write_text(html, encoding="utf-8")
    return page


def _relative_href(target: Path, base: Path) -> str:
    import os

    try:
        return Path(os.path.relpath(target.resolve(), base.resolve())).as_posix()
    except ValueError:  # another drive on Windows
        return target.resolve().as_uri()


# --------------------------------------------------------------------------------------------
# templates

_CSS = """
:root { --fg:#1d2327; --muted:#5f6b73; --line:#dde3e8; --bg:#ffffff; --panel:#f6f8fa;
        --ok:#1e7b4a; --ok-bg:#e3f4ea; --mild:#8a5a00; --mild-bg:#fff1d0; --bad:#a32020; --bad-bg:#fde2e1; }
* { box-sizing: border-box; }
body { margin:0; font:15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif;
       color:var(--fg); background:var(--bg); }
main { max-width: 1280px; margin: 0 auto; padding: 24px 28px 64px; }
header.top { border-bottom: 1px solid var(--line); padding-bottom: 14px; margin-bottom: 8px; }
h1 { font-size: 26px; margin: 0 0 4px; }
h1 small { font-weight: 400; color: var(--muted); font-size: 16px; }
h2 { font-size: 20px; margin: 36px 0 10px; padding-bottom: 4px; border-bottom: 1px solid var(--line); }
h3 { font-size: 16px; margin: 18px 0 6px; }
p, li { max-width: 980px; }
.muted { color: var(--muted); }
.meta { display: grid; grid-template-columns: repeat(auto-fill, minmax(220px, 1fr)); gap: 6px 24px; margin: 10px 0 0; }
.meta div { font-size: 14px; } .meta b { display:block; font-size: 12px; color: var(--muted); font-weight: 600;
  text-transform: uppercase; letter-spacing: .03em; }
code, .mono { font-family: ui-monospace, "DejaVu Sans Mono", Menlo, Consolas, monospace; font-size: 13px; }
.cards { display: grid; grid-template-columns: repeat(auto-fit, minmax(300px, 1fr)); gap: 14px; margin-top: 12px; }
.card { background: var(--panel); border: 1px solid var(--line); border-radius: 8px; padding: 12px 16px; }
.card h3 { margin-top: 2px; }
.card ul { padding-left: 18px; margin: 6px 0; }
.big { font-size: 22px; font-weight: 650; }
table { border-collapse: collapse; font-size: 13px; margin: 8px 0; }
th, td { padding: 3px 9px; border-bottom: 1px solid var(--line); text-align: left; vertical-align: top; }
th { background: var(--panel); font-weight: 600; position: sticky; top: 0; }
td.n { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tr:hover td { background: #fafbfc; }
.tablewrap { overflow-x: auto; max-width: 100%; }
.badge { display: inline-block; min-width: 64px; padding: 0 7px; border-radius: 10px; font-size: 12px;
         text-align: center; white-space: nowrap; }
.l-1 { color: var(--muted); } .l0 { background: var(--ok-bg); color: var(--ok); }
.l1 { background: var(--mild-bg); color: var(--mild); } .l2 { background: var(--bad-bg); color: var(--bad); }
.lp1 { background: #e6eefb; color: #2b4f8a; } .lp2 { background: #c9dbf7; color: #173a73; }
details.small { font-size: 13px; } details.small summary { font-weight: 400; color: var(--muted); }
figure { margin: 12px 0 0; } figure img { width: 100%; height: auto; border: 1px solid var(--line); border-radius: 4px; }
figcaption { font-size: 13px; color: var(--muted); margin-top: 6px; max-width: 1100px; }
details { margin: 8px 0; } summary { cursor: pointer; font-weight: 600; }
footer { margin-top: 40px; font-size: 12px; color: var(--muted); border-top: 1px solid var(--line); padding-top: 8px; }
nav.toc { font-size: 14px; margin: 10px 0 0; } nav.toc a { margin-right: 14px; color: #2457a6; text-decoration: none; }
.diff td { background: var(--mild-bg); }
"""

_BADGES = """
{% macro badge(level, text) -%}
<span class="badge l{{ level }}">{{ text }}</span>
{%- endmacro %}
{% macro lvl(level) -%}{{ {-1: "not run", 0: "none", 1: "mild", 2: "strong"}[level] }}{%- endmacro %}
"""

_REPORT_TEMPLATE = _BADGES + """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>sdaudit report: {{ title }}</title>
<style>""" + _CSS + """</style></head>
<body><main>
<header class="top">
  <h1>sdaudit report: {{ title }} <small>{{ r.model.location }}</small></h1>
  <div class="meta">
    <div><b>model</b>{{ r.model.name }} ({{ r.model.kind }}){% if r.model.revision %}<br><span class="mono">rev {{ r.model.revision|short(12) }}</span>{% endif %}</div>
    <div><b>images</b>{{ n_images|int }}{% if r.settings.size %} at {{ r.settings.size }}×{{ r.settings.size }} px{% endif %}</div>
    <div><b>protocol</b>{{ r.settings.protocol or "—" }}, t = {{ r.settings.timestep }}, seed {{ r.settings.seed }}</div>
    <div><b>layers</b>{{ summary.n_layers }} ({{ r.settings.layers or "—" }})</div>
    <div><b>audit created</b>{{ r.created or "—" }}</div>
    <div><b>analyses</b>{{ (r.settings.analyses or [])|join(", ") or "—" }}</div>
  </div>
  <nav class="toc"><a href="#findings">Findings</a><a href="#verdicts">Can I trust a layer?</a><a href="#curves">Per-layer curves</a>
  {% if qual_uri %}<a href="#maps">Maps</a>{% endif %}{% if compare_paper %}<a href="#paper">vs. paper</a>{% endif %}<a href="#numbers">Numbers</a><a href="#chance">Chance levels</a><a href="#provenance">Settings &amp; provenance</a></nav>
</header>

<h2 id="findings">Findings</h2>
<p class="muted">Of {{ summary.n_layers }} layers: <b>{{ summary.n_usable }}</b> without a flag, <b>{{ summary.n_caution }}</b> to use with caution, <b>{{ summary.n_affected }}</b> affected by an artifact{% if summary.n_failed %}, <b>{{ summary.n_failed }}</b> failed{% endif %} (see the <a href="#verdicts">verdict table</a> for the rule).</p>
<div class="cards">
<div class="card"><h3>Positional embedding</h3>
{% set p = summary.position %}
{% if p %}
  <p>A linear probe reads a token's absolute position from its features. At comparison resolution s = {{ p.s }}, <b>{{ p.n_strong }}</b> of {{ p.n_measured }} layers are at least halfway between chance and perfect. Strongest:</p>
  <ul>{% for it in p.top %}<li><code>{{ it.layer }}</code>: <b>{{ it.acc|pct }}</b> vs {{ it.chance|pct }} chance ({{ it.classes }} classes per axis on its {{ it.grid }}×{{ it.grid }} grid)</li>{% endfor %}</ul>
  <p class="muted">Weakest: {% for it in p.bottom %}<code>{{ it.layer }}</code> {{ it.acc|pct }} vs {{ it.chance|pct }}{% if not loop.last %}; {% endif %}{% endfor %}.</p>
{% else %}<p class="muted">The position probe was not run.</p>{% endif %}
</div>
<div class="card"><h3>Border and corner artifacts</h3>
{% set b = summary.borders %}
{% if b %}
  <p>Tokens at the image edge become more alike than the same content away from the edge where the relative similarity is above 1. Corner tokens: <b>{{ b.n_corner_above_1 }}</b> of {{ b.n_corner }} layers above 1; border tokens: {{ b.n_border_above_1 }} of {{ b.n_border }}.</p>
  <ul>{% for name, v in b.top_corner %}<li><code>{{ name }}</code>: corner <b>{{ v|ratio }}</b></li>{% endfor %}
  {% for name, v in b.top_border[:1] %}<li><code>{{ name }}</code>: border <b>{{ v|ratio }}</b> (highest)</li>{% endfor %}</ul>
  {% if b.ill %}<p class="muted">Ratio not meaningful (the full image's reference similarity is below {{ t.border_min_reference }}, or the ratio ≤ 0), left out above: {% for n in b.ill %}<code>{{ n }}</code>{% if not loop.last %}, {% endif %}{% endfor %}.</p>{% endif %}
{% else %}<p class="muted">The border analysis was not run.</p>{% endif %}
</div>
<div class="card"><h3>High-norm anomalies</h3>
{% set a = summary.anomalies %}
{% if a %}
  <p>{% if a.count is not none %}<span class="big">{{ a.count|int }}</span> anomalies{% if a.images_with is not none %} in <b>{{ a.images_with|int }}</b> of {{ a.n_images|int }} images ({{ a.share|pct }}){% endif %}, detected on <code>{{ a.layer }}</code>.{% else %}Anomalies on <code>{{ a.layer }}</code>.{% endif %}</p>
  {% if a.peak %}<p>Peak relative norm: <b>{{ a.peak[1]|pm(a.peak[2]) }}</b> at <code>{{ a.peak[0] }}</code>.</p>{% endif %}
  <p>{% if a.above %}Relative norm above {{ t.anomaly_strong|ratio }} in {{ a.above_text }}{% if a.above|length <= 3 %} ({{ a.above|length }} layer{{ "s" if a.above|length != 1 }}){% endif %}.{% else %}No layer has a relative norm above {{ t.anomaly_strong|ratio }}.{% endif %}</p>
  {% if a.above|length > 3 %}<details class="small"><summary>the {{ a.above|length }} layers</summary>{% for n in a.above %}<code>{{ n }}</code>{% if not loop.last %}, {% endif %}{% endfor %}</details>{% endif %}
{% else %}<p class="muted">The anomaly analysis was not run.</p>{% endif %}
</div>
</div>

<h2 id="verdicts">Can I trust this layer's features?</h2>
<p>Flags per layer. <b>Position</b>: above-chance skill of the probe at s = {{ finest or "—" }}, (acc − chance) / (1 − chance); strong ≥ {{ t.position_strong }}, mild ≥ {{ t.position_mild }}. A positional code is expected in a U-Net, but similarity between tokens then partly reflects where they are, not what they show: at most <i>caution</i>.
Position badges are blue: information, not an artifact.
<b>Border</b>: strong if corner ≥ {{ t.corner_strong }} or border ≥ {{ t.border_strong }}; mild if corner ≥ {{ t.corner_mild }} or border ≥ {{ t.border_mild }} (relative similarity; a ratio whose reference similarity in the full image is below {{ t.border_min_reference }} is not meaningful and raises no flag).
<b>Anomalies</b>: relative norm of the anomaly patches strong ≥ {{ t.anomaly_strong }}, mild ≥ {{ t.anomaly_mild }}.
Verdict: <span class="badge l2">affected</span> if a strong border or anomaly flag, <span class="badge l1">caution</span> if any other flag or a border ratio that is not meaningful, else <span class="badge l0">usable</span>.</p>
<div class="tablewrap"><table>
<thead><tr><th>#</th><th>layer</th><th>grid</th><th>position</th><th>border</th><th>anomalies</th><th>verdict</th><th>why</th></tr></thead>
<tbody>
{% for v in summary.verdicts %}<tr>
<td class="n">{{ loop.index0 }}</td><td><code>{{ v.layer }}</code></td><td class="n">{{ v.grid }}</td>
<td>{{ badge("p" ~ v.pos_level if v.pos_level > 0 else v.pos_level, v.acc|pct if v.acc is not none else "not run") }}</td>
<td>{{ badge(v.border_level, (v.corner|ratio ~ " / " ~ v.border|ratio) if v.border_level >= 0 else "not run") }}</td>
<td>{{ badge(v.anomaly_level, v.anomaly_text) }}</td>
<td>{{ badge(v.overall, v.verdict) }}</td><td class="muted">{{ v.notes }}</td></tr>
{% endfor %}</tbody></table></div>
<p class="muted">Badges show: probe accuracy at s = {{ finest or "—" }}; corner / border relative similarity; anomaly relative norm.</p>

<h2 id="curves">Per-layer curves</h2>
<figure><img alt="probe accuracy, border similarity and anomaly norm per layer" src="{{ quant_uri }}">
<figcaption>As in the paper's Fig. 2: layers in execution order, labelled by kind (res = resnet, attn = transformer, down/up = down-/upsampler, conv = conv_in/conv_out) with their block below (down0 = <code>down_blocks[0]</code>, mid = <code>mid_block</code>, …).
Top: probe accuracy per comparison resolution s (darker = finer) and, dotted, chance 1/min(s, n). Middle: relative similarity of corner and border tokens, log₂ axis; above the dashed line at 1, edge tokens are more alike than the same content elsewhere. Bottom: relative norm of the anomaly patches on every layer (mean ± std over anomalies), log₂ axis.{% if compare_paper and agreement %} Thin grey dash-dot: the published numbers ({{ paper_name }}).{% endif %} Files: <code>figures/quantitative.svg</code>, <code>.png</code>.</figcaption></figure>

{% if qual_uri %}
<h2 id="maps">Similarity and norm maps</h2>
<figure><img alt="similarity maps and norm maps of the shown images" src="{{ qual_uri }}">
<figcaption>As in the paper's Fig. 1/3. Top row: the model inputs. Then per row the similarity ({% for ex in r.maps.examples %}{{ ex.title or ex.id }}: {{ ex.measure }} on <code>{{ ex.layer }}</code>{% if not loop.last %}; {% endif %}{% endfor %}) of the reference token (red square, in its image's column) to every token of each image, one colour scale per row. Norm rows: the L2 norm of every token{% if summary.anomalies %}; cyan boxes on <code>{{ summary.anomalies.layer }}</code> are the detected anomalies (2×2 tokens){% endif %}.
Files: <code>figures/qualitative.svg</code>, <code>.png</code>.</figcaption></figure>
{% elif maps_present %}<p class="muted">maps.npz has no maps to show.</p>{% endif %}

{% if compare_paper %}
<h2 id="paper">Comparison with the published numbers</h2>
{% if agreement %}
<p>Published numbers of {{ paper_name }} (Loos &amp; Linhardt 2025; border similarity with the corrected pair counts). The published run used the paper protocol (pixels in [0, 1], sampled latents, one noise tensor shared by all images, an Adam probe trained 5 epochs); this audit used protocol <b>{{ r.settings.protocol or "—" }}</b>{% if r.settings.probe_method %} and probe <b>{{ r.settings.probe_method }}</b>{% endif %}, so the curves should agree in shape, not to the digit.</p>
<div class="tablewrap"><table><thead><tr><th>metric</th><th>layers</th><th>Pearson r</th><th>median |Δ|</th><th>largest |Δ|</th><th>at layer</th><th>this audit</th><th>published</th></tr></thead><tbody>
{% for m in agreement %}<tr><td>{{ m.label }}</td><td class="n">{{ m.n }}</td><td class="n">{{ "%.3f"|format(m.r) if m.r is not none else "—" }}</td><td class="n">{{ "%.3f"|format(m.median) }}</td><td class="n">{{ "%.3f"|format(m.worst) }}</td><td><code>{{ m.worst_layer }}</code></td><td class="n">{{ "%.3f"|format(m.ours) }}</td><td class="n">{{ "%.3f"|format(m.theirs) }}</td></tr>
{% endfor %}</tbody></table></div>
{% if paper_labels %}<p>Published hand labels: {{ paper_labels[0] }} anomalies in {{ paper_labels[1] }} of {{ paper_labels[2] }} images{% if summary.anomalies and summary.anomalies.count is not none %}; this audit detected {{ summary.anomalies.count|int }} in {{ summary.anomalies.images_with|int }} of {{ summary.anomalies.n_images|int }}{% endif %}.</p>{% endif %}
{% else %}<p class="muted">No published numbers for model “{{ r.model.name }}” (published: SD-1.5, SD-2.1, SD-Turbo).</p>{% endif %}
{% endif %}

<h2 id="numbers">Per-layer numbers</h2>
<div class="tablewrap"><table>
<thead><tr><th>#</th><th>layer</th><th>kind</th><th>grid</th>{% for s in resolutions %}<th>acc s={{ s }}</th>{% endfor %}{% if finest %}<th>chance s={{ finest }}</th>{% endif %}<th>corner</th><th>border</th><th>other</th><th>anomaly rel. norm</th></tr></thead>
<tbody>
{% for row in r.table %}<tr><td class="n">{{ loop.index0 }}</td><td><code>{{ row.layer }}</code></td><td>{{ row.kind }}</td><td class="n">{{ row.grid }}</td>
{% for s in resolutions %}<td class="n">{{ row["probe_acc_%d"|format(s)]|pct }}</td>{% endfor %}{% if finest %}<td class="n muted">{{ summary.verdicts[loop.index0].chance|pct }}</td>{% endif %}
<td class="n">{{ row.corner_rel_sim|ratio }}</td><td class="n">{{ row.border_rel_sim|ratio }}</td><td class="n">{{ row.other_rel_sim|ratio }}</td><td class="n">{{ row.anomaly_rel_norm_mean|pm(row.anomaly_rel_norm_std) }}</td></tr>
{% endfor %}</tbody></table></div>
<p class="muted">Probe accuracy: mean of row and column accuracy on held-out images ({{ ((r.settings.train_fraction or 0) * 100)|round|int }}% of the images train the probe). Relative similarity: mean pairwise cosine within the group in the cropped image divided by the same in the full image (corner, border = rest of the outer ring, other = interior). Anomaly relative norm: mean norm of the anomaly patch divided by the map's mean norm.</p>

<h2 id="chance">Chance levels</h2>
<p>The probe predicts a row and a column out of n for a layer with an n × n grid. At comparison resolution s, a prediction counts when it falls in the right one of s bins (<code>pred·s // n == label·s // n</code>); with fewer tokens than bins (n &lt; s) every token is its own bin. Guessing is therefore right with probability <b>1 / min(s, n)</b>. The same accuracy means more on a finer grid: compare each layer with its own chance level (dotted lines in the figure).</p>
<table><thead><tr><th>grid n</th>{% for s in resolutions %}<th>s = {{ s }}</th>{% endfor %}</tr></thead><tbody>
{% for n in grids %}<tr><td class="n">{{ n }}×{{ n }}</td>{% for s in resolutions %}<td class="n">{{ (1.0 / ([s, n]|min))|pct }}</td>{% endfor %}</tr>{% endfor %}
</tbody></table>

<h2 id="provenance">Settings &amp; provenance</h2>
<div class="tablewrap"><table><tbody>
{% for k, v in settings %}<tr><th>{{ k }}</th><td class="mono">{{ v }}</td></tr>{% endfor %}
<tr><th>model</th><td class="mono">{{ r.model.name }} · {{ r.model.kind }} · {{ r.model.location }}{% if r.model.revision %} · rev {{ r.model.revision }}{% endif %}{% if r.model.weights_sha256 %} · weights sha256 {{ r.model.weights_sha256 }}{% endif %}</td></tr>
{% for k, v in (r.versions or {}).items() %}<tr><th>{{ k }}</th><td class="mono">{{ v }}</td></tr>{% endfor %}
<tr><th>results format</th><td class="mono">{{ r.format }}</td></tr>
<tr><th>audit folder</th><td class="mono">{{ result_dir }}</td></tr>
</tbody></table></div>
{% if r.images %}
<details><summary>{{ r.images|length }} images and their SHA-256</summary>
<div class="tablewrap"><table><thead><tr><th>#</th><th>source</th><th>size</th><th>sha256</th></tr></thead><tbody>
{% for im in r.images %}<tr><td class="n">{{ im.index }}</td><td class="mono">{{ im.source }}</td><td class="n">{{ im.width }}×{{ im.height }}</td><td class="mono">{{ im.sha256 }}</td></tr>
{% endfor %}</tbody></table></div></details>
{% endif %}
<footer>Generated by sdaudit {{ report_version }} on {{ generated }} from results.json{% if maps_present %} and maps.npz{% endif %}. Method: Loos &amp; Linhardt, “Latent Diffusion U-Net Representations Contain Positional Embeddings and Anomalies” (ICLR 2025 DeLTa workshop).</footer>
</main></body></html>
"""

_COMPARE_TEMPLATE = _BADGES + """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>sdaudit comparison: {{ runs|map(attribute="label")|join(" vs ") }}</title>
<style>""" + _CSS + """</style></head>
<body><main>
<header class="top">
  <h1>sdaudit comparison <small>{{ runs|length }} audits</small></h1>
  <div class="tablewrap"><table><thead><tr><th>run</th><th>model</th><th>images</th><th>protocol</th><th>layers</th><th>folder</th></tr></thead><tbody>
  {% for run in runs %}<tr><td><b>{{ run.label }}</b></td><td>{{ run.r.model.name }} <span class="muted">({{ run.r.model.kind }}, {{ run.r.model.location }})</span></td><td class="n">{{ run.n_images|int }}</td><td>{{ run.r.settings.protocol or "—" }}</td><td class="n">{{ run.r.table|length }}</td><td class="mono">{% if run.has_report %}<a href="{{ run.report_href }}">{{ run.dir }}</a>{% else %}{{ run.dir }}{% endif %}</td></tr>
  {% endfor %}</tbody></table></div>
</header>

<h2>Key numbers</h2>
<div class="tablewrap"><table><thead><tr><th></th>{% for run in runs %}<th>{{ run.label }}</th>{% endfor %}</tr></thead><tbody>
<tr><th>strongest positional code</th>{% for run in runs %}<td>{% set p = run.sum.position %}{% if p and p.top %}<code>{{ p.top[0].layer }}</code><br>{{ p.top[0].acc|pct }} vs {{ p.top[0].chance|pct }} chance (s = {{ p.s }}){% else %}—{% endif %}</td>{% endfor %}</tr>
<tr><th>layers with strong positional code</th>{% for run in runs %}<td class="n">{% set p = run.sum.position %}{% if p %}{{ p.n_strong }} / {{ p.n_measured }}{% else %}—{% endif %}</td>{% endfor %}</tr>
<tr><th>peak corner similarity</th>{% for run in runs %}<td>{% set b = run.sum.borders %}{% if b and b.top_corner %}<code>{{ b.top_corner[0][0] }}</code><br>{{ b.top_corner[0][1]|ratio }}{% else %}—{% endif %}</td>{% endfor %}</tr>
<tr><th>layers with corner &gt; 1</th>{% for run in runs %}<td class="n">{% set b = run.sum.borders %}{% if b %}{{ b.n_corner_above_1 }} / {{ b.n_corner }}{% else %}—{% endif %}</td>{% endfor %}</tr>
<tr><th>anomalies (images with)</th>{% for run in runs %}<td class="n">{% set a = run.sum.anomalies %}{% if a and a.count is not none %}{{ a.count|int }} ({{ a.images_with|int }} / {{ a.n_images|int }}){% else %}—{% endif %}</td>{% endfor %}</tr>
<tr><th>peak anomaly relative norm</th>{% for run in runs %}<td>{% set a = run.sum.anomalies %}{% if a and a.peak %}<code>{{ a.peak[0] }}</code><br>{{ a.peak[1]|pm(a.peak[2]) }}{% else %}—{% endif %}</td>{% endfor %}</tr>
<tr><th>layers with anomaly rel. norm &gt; {{ t.anomaly_strong }}</th>{% for run in runs %}<td class="n">{% set a = run.sum.anomalies %}{% if a %}{{ a.above|length }}{% else %}—{% endif %}</td>{% endfor %}</tr>
<tr><th>verdicts usable / caution / affected</th>{% for run in runs %}<td class="n">{{ run.sum.n_usable }} / {{ run.sum.n_caution }} / {{ run.sum.n_affected }}</td>{% endfor %}</tr>
</tbody></table></div>

<h2>Per-layer curves</h2>
<figure><img alt="per-layer curves of all runs" src="{{ fig_uri }}">
<figcaption>All runs in one figure, aligned on layer names (a layer a run lacks is a gap). Colour family and line style = run; within a run the probe accuracy at s = 8 is light and at s = 64 dark (top; the other resolutions are on each run's own page), corner tokens dark and border tokens light (middle). Dotted: chance 1/min(s, n). Log₂ axes in the middle and bottom panels, dashed line at 1.{% if paper_runs %} Thin dash-dot: published numbers for {{ paper_runs|join(", ") }}.{% endif %} File: <code>figures/comparison.svg</code>, <code>.png</code>.</figcaption></figure>

<h2>Per-layer numbers side by side</h2>
<div class="tablewrap"><table>
<thead><tr><th rowspan="2">layer</th>{% for run in runs %}<th colspan="3" style="text-align:center">{{ run.label }}</th>{% endfor %}</tr>
<tr>{% for run in runs %}<th>acc s={{ run.s or "—" }}</th><th>corner</th><th>anomaly</th>{% endfor %}</tr></thead>
<tbody>{% for row in layers %}<tr><td><code>{{ row.layer }}</code></td>{% for c in row.cells %}{% if c %}<td class="n">{{ c.acc|pct }}</td><td class="n">{{ c.corner|ratio }}</td><td class="n">{{ c.anomaly|ratio }}</td>{% else %}<td class="n muted" colspan="3">not in this run</td>{% endif %}{% endfor %}</tr>
{% endfor %}</tbody></table></div>

<h2>Settings</h2>
<div class="tablewrap"><table><thead><tr><th>setting</th>{% for run in runs %}<th>{{ run.label }}</th>{% endfor %}</tr></thead><tbody>
{% for s in settings_rows %}<tr{% if s.differs %} class="diff"{% endif %}><th>{{ s.key }}</th>{% for v in s.vals %}<td class="mono">{{ v }}</td>{% endfor %}</tr>{% endfor %}
</tbody></table></div>
<p class="muted">Highlighted: settings that differ between the runs.</p>
<footer>Generated by sdaudit {{ report_version }} on {{ generated }}. Each run's own page: <code>sdaudit report DIR</code>.</footer>
</main></body></html>
"""
