"""The audit report: one self-contained HTML page per audit folder, and a comparison page.

:func:`render_report` reads ``DIR/results.json`` (and ``DIR/maps.npz`` if present), redraws the
figures into ``DIR/figures/`` and writes ``DIR/report.html``. :func:`render_comparison` draws
several audits in one figure and writes a comparison page. Pages have inline CSS and their figures
embedded as ``data:`` URIs (SVG for the curves, PNG for the maps): no external resource, so a page
can be mailed or archived alone. Every number on a page is read from ``results.json``; every
string from it is HTML-escaped (jinja2 autoescape). The findings and verdicts come from
:mod:`.verdicts` (judged on the 95 % intervals and controls where the results have them), the
agreement with the published numbers from :mod:`.paper`; the pages are the package's jinja2
templates (``report/templates/*.html.j2`` and ``report.css``). This module only formats and renders.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as _dt
import os
import urllib.parse
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jinja2

from ..audit_results import AuditResults, ControlRun, LayerRow, read_results
from ..constants import RESOLUTIONS
from ..mitigations.effects import MitigationEvaluation
from . import figures as F
from .intervals import NOT_DEFINED, beyond, fmt_diff, fmt_interval, fmt_pct, fmt_points
from .intervals import num as _num
from .compare import comparison_labels, run_differences, verdict_cells
from .mitigations import control_references, mitigation_groups
from .paper import PAPER_ANOMALY_LABELS, PublishedCurves, load_paper_results, paper_agreement, paper_model_key, \
    probe_mismatch_note, published_for
from .qualitative import qualitative_figure
from .verdicts import THRESHOLDS, finest_resolution, layer_verdicts, summarize

# the analysis lives in verdicts.py; re-exported here for the callers that import it from html
__all__ = ["THRESHOLDS", "finest_resolution", "layer_verdicts", "summarize", "render_report", "render_comparison",
           "render_mitigations", "fmt_pct", "fmt_ratio", "fmt_pm", "fmt_int", "template_environment"]

# --------------------------------------------------------------------------------------------
# number formats (the tests use these too, so the page and the tests agree)


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


def ci_pct(row: LayerRow, metric: str) -> str:
    """A row's ``metric`` as a percentage with its interval: '82.0% [79.0%, 85.0%]'."""
    return fmt_interval(row.value(metric), *row.interval(metric), fmt_pct)


def ci_ratio(row: LayerRow, metric: str) -> str:
    """A row's ``metric`` as a ratio with its interval: '0.82 [0.79, 0.85]'."""
    return fmt_interval(row.value(metric), *row.interval(metric), fmt_ratio)


def fmt_int(v: Any) -> str:
    """1234.0 -> '1,234'; missing -> '—'."""
    f = _num(v)
    return "—" if f is None else f"{int(round(f)):,}"


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


def _short(text: Any, n: int = 12) -> Any:
    return (str(text)[:n] + "…") if text and len(str(text)) > n else (text or "—")


def template_environment() -> jinja2.Environment:
    """The jinja2 environment of the pages: the package's templates, autoescaped, with the number filters."""
    env = jinja2.Environment(loader=jinja2.PackageLoader("sdaudit", "report/templates"), autoescape=True,
                             undefined=jinja2.ChainableUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters.update(pct=fmt_pct, ratio=fmt_ratio, pm=fmt_pm, int=fmt_int, ci_pct=ci_pct, ci_ratio=ci_ratio,
                       short=_short)
    return env


def _render(template: str, out: Path, **context: Any) -> Path:
    from .. import __version__

    context.update(report_version=__version__,
                   generated=_dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))
    out.write_text(template_environment().get_template(template).render(**context), encoding="utf-8")
    return out


def _beyond_cells(results: AuditResults, controls: Sequence[ControlRun], s: int | None) -> list[list[list[str]]]:
    """Per table row, per control: 'corner +0.30 [+0.12, +0.51]' texts of (model - control)."""
    metrics = ([(f"probe_acc_{s}", f"acc s={s}", fmt_points)] if s else []) + [
        ("corner_rel_sim", "corner", fmt_ratio), ("border_rel_sim", "border", fmt_ratio),
        ("anomaly_rel_norm_mean", "anomaly", fmt_ratio)]
    out = []
    for row in results.table:
        cells = []
        for i, control in enumerate(controls):
            diffs = [(name, beyond(row, m, control, first=i == 0), f) for m, name, f in metrics
                     if not (row.borders_undefined and m in ("corner_rel_sim", "border_rel_sim"))]
            cells.append([f"{name} {fmt_diff(*d, f)}" for name, d, f in diffs if d is not None and d[0] is not None])
        out.append(cells)
    return out


def _timestep_figure(results: AuditResults, fig_dir: Path) -> list[Path] | None:
    """``figures/timesteps.{svg,png}``: the per-layer curves of every audited timestep in one figure (or None)."""
    if len(results.timesteps) < 2:
        return None
    runs = [dataclasses.replace(results, table=t.table, label=f"t = {t.timestep}", controls=[])
            for t in results.timesteps]
    return _save(F.quantitative_figure(runs), fig_dir / "timesteps")


def _save(fig, path: Path) -> list[Path]:
    files = F.save_figure(fig, path)
    fig.clear()
    return files


def _figures(result_dir: Path, results: AuditResults, published) -> dict[str, Any]:
    """Redraw the page's figures into ``DIR/figures/``; their data URIs for the page."""
    fig_dir, maps_path = result_dir / "figures", result_dir / "maps.npz"
    quant_files = _save(F.quantitative_figure([results], paper=published), fig_dir / "quantitative")
    timestep_files = _timestep_figure(results, fig_dir)
    qual = qualitative_figure(results, maps_path) if maps_path.is_file() and results.maps is not None else None
    qual_files = _save(qual, fig_dir / "qualitative") if qual is not None else None
    return {"quant_uri": _data_uri(quant_files[0], "image/svg+xml"),
            "timestep_uri": _data_uri(timestep_files[0], "image/svg+xml") if timestep_files else None,
            "qual_uri": _data_uri(qual_files[1], "image/png") if qual_files else None,
            "maps_present": maps_path.is_file()}


def _paper_context(results: AuditResults, published: PublishedCurves | None) -> dict[str, Any]:
    """The page's comparison with the published numbers (of the same model, else of the model whose layer
    names match); empty without them."""
    if not published:
        return {}
    return {"paper_name": published.name, "paper_own": published.own, "paper_label": published.label,
            "agreement": paper_agreement(results.table, published.rows),
            "paper_labels": PAPER_ANOMALY_LABELS.get(published.key) if published.own else None}


#: the explorer's address as ``sdaudit explore`` serves it by default; ``store=0``: the first store given
EXPLORER_URL = "http://127.0.0.1:8765/"
STORE_DIRNAME = "store"


def explorer_links(result_dir: Path, layers: Sequence[str]) -> dict[str, Any]:
    """Where the audit kept its store (``--keep-store``): the command that serves it and, per layer, the
    explorer's URL at that layer; ``{}`` without a store."""
    store = Path(result_dir) / STORE_DIRNAME
    if not store.is_dir():
        return {}
    return {"explore_command": f"sdaudit explore {store.resolve()}",
            "explore_urls": {name: EXPLORER_URL + "?" + urllib.parse.urlencode({"store": 0, "layer": name})
                             for name in layers}}


def render_report(result_dir: Path, compare_paper: bool = False) -> Path:
    """Redraw ``DIR/figures/{quantitative,qualitative}.{svg,png}`` and write ``DIR/report.html``.

    ``compare_paper``: overlay the published curves of the same model (SD-1.5, SD-2.1, SD-Turbo)
    and add a section comparing the numbers. Returns the page's path.
    """
    result_dir = Path(result_dir)
    results = read_results(result_dir)
    published = published_for(results) if compare_paper else None
    summary = summarize(results)
    finest = finest_resolution(results.table)
    return _render(
        "report.html.j2", result_dir / "report.html", r=results, title=F.run_label(results, "model"),
        summary=summary, t=THRESHOLDS, finest=finest,
        resolutions=[s for s in RESOLUTIONS if any(r.has(f"probe_acc_{s}") for r in results.table)],
        grids=sorted({int(r.grid) for r in results.table if _num(r.grid)}, reverse=True),
        n_images=results.n_images, settings=_settings_rows(results.settings),
        timesteps=[t.timestep for t in results.timesteps], compare_paper=compare_paper,
        paper_key=paper_model_key(results.model_name), result_dir=str(result_dir.resolve()),
        beyond=_beyond_cells(results, summary["controls"], finest), probe_note=probe_mismatch_note(results.probe_method),
        **_figures(result_dir, results, published), **(_paper_context(results, published) if compare_paper else {}),
        **explorer_links(result_dir, [row.layer for row in results.table]),
        mitigations=mitigation_groups(results.mitigations, references=control_references(results.controls)))


def render_mitigations(evaluations: Sequence[MitigationEvaluation]) -> str:
    """The report's mitigation section (HTML) on its own; the report includes the same partial."""
    template = template_environment().get_template("_mitigations.html.j2")
    return template.render(mitigations=mitigation_groups(evaluations))


def _side_by_side(runs: Sequence[AuditResults], layers: Sequence[str], s_list) -> list[dict[str, Any]]:
    """Per layer of the figure: each run's accuracy, corner ratio and anomaly norm cells (None where absent)."""
    by_layer = [{row.layer: row for row in r.table} for r in runs]
    out = []
    for name in layers:
        cells = []
        for table, s in zip(by_layer, s_list):
            row = table.get(name)
            cells.append(None if row is None else {
                "acc": ci_pct(row, f"probe_acc_{s}") if s else "—", "chance": row.chance(s) if s else None,
                "corner": NOT_DEFINED if row.borders_undefined else ci_ratio(row, "corner_rel_sim"),
                "anomaly": ci_ratio(row, "anomaly_rel_norm_mean"), "grid": row.grid})
        out.append({"layer": name, "cells": cells})
    return out


def _settings_diff(runs: Sequence[AuditResults]) -> list[dict[str, Any]]:
    """Every setting of any run, with each run's value and whether they differ."""
    keys: list[str] = []
    for r in runs:
        keys += [k for k in r.settings if k not in keys]
    rows = []
    for k in keys:
        vals = [_settings_rows({k: r.settings.get(k)})[0][1] for r in runs]
        rows.append({"key": k, "vals": vals, "differs": len(set(vals)) > 1})
    return rows


def _one_overlay(paper: Mapping[str, PublishedCurves]) -> PublishedCurves | None:
    """Runs that all get the same published model's curves share one overlay (drawn once, in grey)."""
    curves = list(paper.values())
    if not curves or len({c.key for c in curves}) > 1:
        return None
    layers = {row["layer"] for c in curves for row in c.rows}
    rows = [row for row in (load_paper_results(curves[0].key) or []) if row["layer"] in layers]
    return PublishedCurves(curves[0].key, rows, own=all(c.own for c in curves))


def _comparison_figure(runs: Sequence[AuditResults], labels: Sequence[str], out: Path,
                       compare_paper: bool) -> tuple[list[str], list[Path], dict[str, PublishedCurves]]:
    """The comparison figure at ``OUT/figures/comparison.*``: (its layers, its files, the overlays by run label)."""
    paper = {lab: pub for lab, r in zip(labels, runs) if (pub := published_for(r))} if compare_paper else {}
    fig = F.quantitative_figure([dataclasses.replace(r, label=lab) for r, lab in zip(runs, labels)],
                                paper=_one_overlay(paper) or paper or None)
    layers = list(fig.sdaudit_layers)  # type: ignore[attr-defined]
    return layers, _save(fig, out / "figures" / "comparison"), paper


def render_comparison(result_dirs: Sequence[Path], out: Path, compare_paper: bool = False,
                      labels: Sequence[str] | None = None) -> Path:
    """Several audits side by side: ``OUT/figures/comparison.{svg,png}`` and ``OUT/report.html``.

    ``labels``: one per folder (default: the folder names). The page opens with a banner naming every
    setting that differs between the runs (:func:`.compare.run_differences`), and puts each run's
    verdict beside its numbers per layer."""
    dirs = [Path(d) for d in result_dirs]
    labels = comparison_labels(dirs, labels)
    runs = [read_results(d) for d in dirs]
    out = Path(out)
    layers, files, paper = _comparison_figure(runs, labels, out, compare_paper)
    s_list = [finest_resolution(r.table) for r in runs]
    sums = [summarize(r) for r in runs]
    out.mkdir(parents=True, exist_ok=True)
    return _render(
        "compare.html.j2", out / "report.html",
        runs=[{"label": lab, "r": r, "dir": str(d.resolve()), "n_images": r.n_images, "s": s, "sum": sm,
               "has_report": (d / "report.html").is_file(), "report_href": _relative_href(d / "report.html", out)}
              for lab, r, d, s, sm in zip(labels, runs, dirs, s_list, sums)],
        layers=[dict(row, verdicts=v) for row, v in zip(_side_by_side(runs, layers, s_list),
                                                        verdict_cells([sm["verdicts"] for sm in sums], layers))],
        settings_rows=_settings_diff(runs), differences=run_differences(runs, labels),
        fig_uri=_data_uri(files[0], "image/svg+xml"), compare_paper=compare_paper,
        paper_runs=[f"{lab}: {pub.label}" + ("" if pub.own else " at the layers whose names match")
                    for lab, pub in paper.items()], t=THRESHOLDS,
        probe_notes=sorted({note for lab, r in zip(labels, runs)
                            if lab in paper and (note := probe_mismatch_note(r.probe_method))}))


def _relative_href(target: Path, base: Path) -> str:
    try:
        return Path(os.path.relpath(target.resolve(), base.resolve())).as_posix()
    except ValueError:  # another drive on Windows
        return target.resolve().as_uri()
