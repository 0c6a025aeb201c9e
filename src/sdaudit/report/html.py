"""The audit report: one self-contained HTML page per audit folder, and a comparison page.

:func:`render_report` reads ``DIR/results.json`` (and ``DIR/maps.npz`` if present), redraws the
figures into ``DIR/figures/`` and writes ``DIR/report.html``. :func:`render_comparison` draws
several audits in one figure and writes a comparison page. Pages have inline CSS and their figures
embedded as ``data:`` URIs (SVG for the curves, PNG for the maps): no external resource, so a page
can be mailed or archived alone. Every number on a page is read from ``results.json``; every
string from it is HTML-escaped (jinja2 autoescape). The findings and verdicts come from
:mod:`.verdicts` (judged on the 95 % intervals and controls where the results have them), the
templates from :mod:`.templates`.
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

from ..errors import UsageError
from . import figures as F
from .intervals import NOT_DEFINED, beyond, fmt_diff, fmt_interval
from .intervals import num as _num
from .qualitative import qualitative_figure
from .paper import (PAPER_ANOMALY_LABELS, PAPER_MODEL_NAMES, RESOLUTIONS, load_paper_results, paper_model_key,
                    probe_mismatch_note)
from .templates import _COMPARE_TEMPLATE, _REPORT_TEMPLATE
from .verdicts import THRESHOLDS, _chance, _n_images, finest_resolution, layer_verdicts, summarize

# the analysis moved to verdicts.py; re-exported here for the callers that import it from html
__all__ = ["THRESHOLDS", "finest_resolution", "layer_verdicts", "summarize", "render_report", "render_comparison",
           "fmt_pct", "fmt_ratio", "fmt_pm", "fmt_int", "load_results"]

RESULTS_FORMAT = "sdaudit-audit/"

# --------------------------------------------------------------------------------------------
# number formats (the tests use these too, so the page and the tests agree)


def fmt_pct(v: Any) -> str:
    """0.975527 -> '97.6%'; missing -> '—'."""
    f = _num(v)
    return "—" if f is None else f"{100 * f:.1f}%"


def fmt_points(v: Any) -> str:
    """A difference of two accuracies in percentage points: 0.3 -> '30.0 pp'; missing -> '—'."""
    f = _num(v)
    return "—" if f is None else f"{100 * f:.1f} pp"


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


def ci_pct(row: Mapping[str, Any], metric: str) -> str:
    """A row's ``metric`` as a percentage with its interval: '82.0% [79.0%, 85.0%]'."""
    return fmt_interval(row.get(metric), row.get(f"{metric}_low"), row.get(f"{metric}_high"), fmt_pct)


def ci_ratio(row: Mapping[str, Any], metric: str) -> str:
    """A row's ``metric`` as a ratio with its interval: '0.82 [0.79, 0.85]'."""
    return fmt_interval(row.get(metric), row.get(f"{metric}_low"), row.get(f"{metric}_high"), fmt_ratio)


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
        raise UsageError(f"'{path}' is not an sdaudit audit result (format '{fmt}', expected '{RESULTS_FORMAT}1')")
    if not isinstance(results.get("table"), list):
        raise UsageError(f"'{path}' has no per-layer 'table'")
    return results


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
    env.filters.update(pct=fmt_pct, ratio=fmt_ratio, pm=fmt_pm, int=fmt_int, ci_pct=ci_pct, ci_ratio=ci_ratio,
                       short=lambda s, n=12: (str(s)[:n] + "…") if s and len(str(s)) > n else (s or "—"))
    return env


def _beyond_cells(results: Mapping[str, Any], controls: Sequence[Mapping[str, Any]], s: int | None) -> list[list[list[str]]]:
    """Per table row, per control: 'corner +0.30 [+0.12, +0.51]' texts of (model - control)."""
    metrics = ([(f"probe_acc_{s}", f"acc s={s}", fmt_points)] if s else []) + [
        ("corner_rel_sim", "corner", fmt_ratio), ("border_rel_sim", "border", fmt_ratio),
        ("anomaly_rel_norm_mean", "anomaly", fmt_ratio)]
    out = []
    for row in results["table"]:
        cells = []
        for i, control in enumerate(controls):
            diffs = [(name, beyond(row, m, control, first=i == 0), f) for m, name, f in metrics
                     if not (row.get("borders_undefined") and m in ("corner_rel_sim", "border_rel_sim"))]
            cells.append([f"{name} {fmt_diff(*d, f)}" for name, d, f in diffs if d is not None and d[0] is not None])
        out.append(cells)
    return out


def _model_title(results: Mapping[str, Any]) -> str:
    return F.run_label(results, "model")


def _timestep_figure(results: Mapping[str, Any], fig_dir: Path) -> list[Path] | None:
    """``figures/timesteps.{svg,png}``: the per-layer curves of every audited timestep in one figure (or None)."""
    timesteps = results.get("timesteps") or []
    if len(timesteps) < 2:
        return None
    runs = [{**results, "table": t["table"], "label": f"t = {t['timestep']}", "control": None, "controls": []}
            for t in timesteps]
    fig = F.quantitative_figure(runs)
    files = F.save_figure(fig, fig_dir / "timesteps")
    fig.clear()
    return files


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
    timestep_files = _timestep_figure(results, fig_dir)
    qual_files = None
    maps_path = result_dir / "maps.npz"
    if maps_path.is_file() and results.get("maps"):
        qual = qualitative_figure(results, maps_path)
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
        "timestep_uri": _data_uri(timestep_files[0], "image/svg+xml") if timestep_files else None,
        "timesteps": [t["timestep"] for t in results.get("timesteps") or []],
        "qual_uri": _data_uri(qual_files[1], "image/png") if qual_files else None,
        "compare_paper": compare_paper, "paper_key": paper_model_key(model_name),
        "generated": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "result_dir": str(result_dir.resolve()),
        "maps_present": maps_path.is_file(),
        "beyond": _beyond_cells(results, summary["controls"], finest),
        "probe_note": probe_mismatch_note((results.get("settings") or {}).get("probe_method")),
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
                "acc": ci_pct(row, f"probe_acc_{s}") if s else "—", "chance": _chance(row, s) if s else None,
                "corner": NOT_DEFINED if row.get("borders_undefined") else ci_ratio(row, "corner_rel_sim"),
                "anomaly": ci_ratio(row, "anomaly_rel_norm_mean"), "grid": row.get("grid")})
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
        "probe_notes": sorted({note for lab, r in zip(labels, runs) if paper and lab in paper
                               and (note := probe_mismatch_note((r.get("settings") or {}).get("probe_method")))}),
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
