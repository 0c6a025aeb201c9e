"""Figures of an audit: the paper's Fig. 2/4/5 (per-layer curves) and Fig. 1/3 (maps).

Everything uses matplotlib's object API (``matplotlib.figure.Figure``, no pyplot state), so
figures can be made in a server or a test without a display and are freed with the object.

* :func:`quantitative_figure`: three stacked panels over the layers (probe accuracy, corner /
  border relative similarity, anomaly relative norm) for one or several runs, aligned on layer
  names, with 95 % interval bands and control curves where the results have them, optionally
  with the published curves overlaid.
* :func:`qualitative_figure`: rows of similarity and norm maps over the shown images.
* :func:`save_figure`: writes ``.svg`` and ``.png``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps, rc_context
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter, NullLocator

from ..layer_names import block_of, kind_of, norm_key  # noqa: F401  (norm_key is re-exported)
from . import figure_marks as M

RESOLUTIONS = (8, 16, 32, 64)
PNG_DPI = 150

# one colour family and line style per run; within a family darker = finer resolution / corner
_FAMILIES = ("Blues", "Oranges", "Greens", "Purples", "Reds", "Greys", "YlOrBr", "BuGn")
_RUN_STYLES = ("-", "--", "-.", (0, (5, 1, 1, 1, 1, 1)), (0, (8, 2)), (0, (3, 1)))
_PUB_LS = (0, (5, 1.5, 1, 1.5))  # published curves: thin dash-dot (the reference line at 1 is dashed)
_SINGLE = {"corner": "#c0392b", "border": "#e69f00", "anomaly": "#2e8b57"}


# --------------------------------------------------------------------------------------------
# small helpers





def short_block(block: str) -> str:
    """``down_blocks[2]`` -> ``down2``, ``mid_block`` -> ``mid``, ``conv_in`` -> ``in``."""
    m = re.fullmatch(r"(down|up)_blocks\[(\d+)\]", block)
    if m:
        return f"{m.group(1)}{m.group(2)}"
    return {"mid_block": "mid", "conv_in": "in", "conv_out": "out"}.get(block, block)


def mpl_text(text: Any) -> str:
    """User text made safe for matplotlib: a ``$`` would start mathtext."""
    return str(text).replace("$", r"\$")


def _f(value: Any) -> float:
    """A table value as float; None / missing / non-numeric -> NaN."""
    if value is None:
        return float("nan")
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def run_label(run: Mapping[str, Any], default: str = "run") -> str:
    if run.get("label"):
        return str(run["label"])
    model = run.get("model") or {}
    return str(model.get("name") or default)


def _run_table(run: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    table = run.get("table")
    if table is None:
        raise ValueError("a run needs a 'table' (the rows of results.json)")
    return list(table)


def align_layers(tables: Sequence[Sequence[Mapping[str, Any]]]) -> list[str]:
    """Union of the layer names of several tables, in the first table's order.

    A layer only in a later table is put right after the layer that precedes it there (e.g.
    ``up_blocks[0].resnets[2]`` of the 46-layer set lands after ``up_blocks[0].resnets[1]``)."""
    order: list[str] = []
    for table in tables:
        names = [str(r["layer"]) for r in table]
        for i, name in enumerate(names):
            if name in order:
                continue
            prev = next((names[j] for j in range(i - 1, -1, -1) if names[j] in order), None)
            order.insert(order.index(prev) + 1 if prev is not None else 0, name)
    return order


def _series(table: Sequence[Mapping[str, Any]], layers: Sequence[str], key: str) -> np.ndarray:
    by = {str(r["layer"]): r for r in table}
    return np.array([_f(by[name].get(key)) if name in by else np.nan for name in layers])


def _grid_of(row: Mapping[str, Any] | None) -> float:
    if not row:
        return float("nan")
    return _f(row.get("grid"))


def _chance(table: Sequence[Mapping[str, Any]], layers: Sequence[str], s: int) -> np.ndarray:
    """probe_chance_s from the table, else 1 / min(s, grid)."""
    by = {str(r["layer"]): r for r in table}
    out = []
    for name in layers:
        row = by.get(name)
        c = _f(row.get(f"probe_chance_{s}")) if row else float("nan")
        if not np.isfinite(c):
            g = _grid_of(row)
            c = 1.0 / min(s, g) if np.isfinite(g) and g > 0 else float("nan")
        out.append(c)
    return np.array(out)


def _block_spans(blocks: Sequence[str]) -> list[tuple[str, int, int]]:
    """Consecutive runs of one block: (block, first index, last index)."""
    spans: list[tuple[str, int, int]] = []
    for i, b in enumerate(blocks):
        if spans and spans[-1][0] == b:
            spans[-1] = (b, spans[-1][1], i)
        else:
            spans.append((b, i, i))
    return spans


def _text_width_pt(text: str, size: float) -> float:
    return 0.6 * size * len(text) + 2


def _log2_axis(ax) -> None:
    ax.set_yscale("log", base=2)
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())


_NICE_TICKS = (0.125, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0)


def _fit_log_limits(ax, arrays: Sequence[np.ndarray]) -> None:
    """y limits of a log-2 panel: cover the positive finite values and 1, with a margin; ticks at
    powers of two (and 0.75, 1.5, 3, ... when the range spans few octaves)."""
    vals = np.concatenate([a[np.isfinite(a) & (a > 0)] for a in arrays] + [np.array([1.0])])
    lo, hi = float(vals.min()), float(vals.max())
    lo, hi = 2 ** (np.log2(lo) - 0.2), 2 ** (np.log2(hi) + 0.2)
    ax.set_ylim(lo, hi)
    octaves = np.log2(hi) - np.log2(lo)
    if octaves <= 3.0 and lo >= 0.1 and hi <= 16:
        ticks = [t for t in _NICE_TICKS if lo <= t <= hi]
    else:
        ticks = list(2.0 ** np.arange(np.ceil(np.log2(lo)), np.floor(np.log2(hi)) + 1))
    ax.yaxis.set_major_locator(FixedLocator(ticks))
    ax.yaxis.set_minor_locator(NullLocator())
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))


def _mark_off_scale(ax, x: np.ndarray, values: np.ndarray, color, slot: int = 0) -> bool:
    """Values <= 0 cannot be drawn on a log axis: mark them at the bottom edge instead (one
    height ``slot`` per series, so that markers of several series stay visible)."""
    bad = np.isfinite(values) & (values <= 0)
    if bad.any():
        ax.plot(x[bad], np.full(bad.sum(), 0.035 + 0.055 * slot), ls="none", marker="v", ms=5, color=color,
                transform=ax.get_xaxis_transform(), clip_on=False, zorder=5)
    return bool(bad.any())


def _no_data(ax, text: str) -> None:
    ax.text(0.5, 0.72, text, transform=ax.transAxes, ha="center", va="center", color="0.4", fontsize=10,
            bbox={"facecolor": "white", "edgecolor": "0.8", "boxstyle": "round,pad=0.4"})


# --------------------------------------------------------------------------------------------
# quantitative figure (paper Fig. 2/4/5)


def _layer_axis(fig: Figure, ax, layers: Sequence[str], kinds: Sequence[str], blocks: Sequence[str],
                width_in: float) -> None:
    """Kind labels under every layer, block names centred under their layers, separators."""
    n = len(layers)
    x = np.arange(n)
    kind_size = 8.0
    ax.set_xticks(x)
    ax.set_xticklabels(kinds, rotation=90, fontsize=kind_size)
    ax.tick_params(axis="x", length=2.5, pad=1.5)
    # block labels: full names if they all fit under their layers, else short ones (down2, mid, in)
    spans = _block_spans(blocks)
    per_layer_pt = max(6.0, ax.get_position().width * width_in * 72 / max(n, 1))
    size = 9.0
    def fits(labels):
        return all(_text_width_pt(lab, size) <= (e - s + 1) * per_layer_pt for lab, (_, s, e) in zip(labels, spans))
    labels = [b for b, _, _ in spans]
    if not fits(labels):
        labels = [short_block(b) for b, _, _ in spans]
    while not fits(labels) and size > 5.5:
        size -= 0.5
    kind_height = max((_text_width_pt(k, kind_size) for k in kinds), default=10) + 4
    sec = ax.secondary_xaxis("bottom")
    sec.set_xticks([(s + e) / 2 for _, s, e in spans])
    sec.set_xticklabels([mpl_text(lab) for lab in labels], fontsize=size)
    sec.tick_params(axis="x", length=0, pad=kind_height + 3)
    sec.spines["bottom"].set_visible(False)
    # separators between blocks: long ticks reaching through both label rows
    sep = ax.secondary_xaxis("bottom")
    bounds = [s - 0.5 for _, s, _ in spans[1:]]
    sep.set_xticks(bounds)
    sep.set_xticklabels([""] * len(bounds))
    sep.tick_params(axis="x", length=kind_height + size + 8, width=0.7, color="0.55", direction="out")
    sep.spines["bottom"].set_visible(False)


@dataclass
class _Plot:
    """What the three panels share: the runs, their aligned layers and their styles."""

    runs: Sequence[Mapping[str, Any]]
    tables: list[list[Mapping[str, Any]]]
    labels: list[str]
    overlays: list[tuple[str, Sequence[Mapping[str, Any]], int | None]]
    layers: list[str]
    x: np.ndarray
    multi: bool
    families: list[Any]
    styles: list[Any]
    shade: dict[int, float]
    controls: list[tuple[int, str, dict[str, Any]]]
    resolutions: list[int]



def _probe_panel(ax_p, P: _Plot) -> None:
    """Panel 1: probe accuracy per resolution, chance dotted, interval bands, controls, overlays."""
    runs, tables, labels, overlays, layers, x = P.runs, P.tables, P.labels, P.overlays, P.layers, P.x
    multi, families, styles, shade, controls = P.multi, P.families, P.styles, P.shade, P.controls
    resolutions, grey = P.resolutions, colormaps["Greys"]
    res_present: list[int] = []
    chance_drawn: set[tuple] = set()
    any_probe = False
    any_band = False
    for ri, (table, lab) in enumerate(zip(tables, labels)):
        for s in resolutions:
            y = _series(table, layers, f"probe_acc_{s}")
            if not np.isfinite(y).any():
                continue
            any_probe = True
            if s not in res_present:
                res_present.append(s)
            color = families[ri](shade[s]) if multi else colormaps["Blues"](shade[s])
            ax_p.plot(x, y, color=color, ls=styles[ri] if multi else "-", lw=1.5, marker=".", ms=3.5,
                      label=None if multi else f"{s}", zorder=3)
            any_band |= bool(M.band(ax_p, x, table, layers, f"probe_acc_{s}", color, alpha=0.15 if multi else 0.2))
            c = _chance(table, layers, s)
            sig = (s, tuple(np.round(np.nan_to_num(c, nan=-1), 6)))
            if np.isfinite(c).any() and sig not in chance_drawn:
                chance_drawn.add(sig)
                ax_p.plot(x, c, color=grey(shade[s]) if multi else color, ls=":", lw=1.1, drawstyle="steps-mid",
                          zorder=2)
    for lab, rows, ri in overlays:
        for s in resolutions:
            y = _series(rows, layers, f"probe_acc_{s}")
            if np.isfinite(y).any():
                color = grey(0.35 + 0.4 * shade[s]) if ri is None else families[ri](0.3 + 0.3 * shade[s])
                ax_p.plot(x, y, color=color, ls=_PUB_LS, lw=0.9, zorder=2.5)
    for ri, _, crun in controls:
        for s in resolutions:
            y = _series(crun["table"], layers, f"probe_acc_{s}")
            if np.isfinite(y).any():
                M.control_line(ax_p, x, y, shade=1 - shade[s])
                M.band(ax_p, x, crun["table"], layers, f"probe_acc_{s}", "0.5", alpha=0.1)
    ax_p.set_ylim(0, 1.02)
    ax_p.set_ylabel("probe accuracy")
    ax_p.set_title("Position probe: test accuracy of a linear probe at comparison resolution s (dotted: chance)",
                   fontsize=10.5, loc="left")
    if not any_probe:
        _no_data(ax_p, "position probe not run")
    handles = []
    for s in (res_present or resolutions):
        c = grey(shade[s]) if multi else colormaps["Blues"](shade[s])
        handles.append(Line2D([], [], color=c, lw=1.6, label=f"s = {s}"))
    handles.append(Line2D([], [], color="0.4", ls=":", lw=1.1, label="chance 1/min(s, n)"))
    if any_band:
        handles.append(M.band_handle("0.4" if multi else colormaps["Blues"](0.7)))
    handles += _control_handles(controls)
    if overlays:
        handles.append(Line2D([], [], color="0.5", ls=_PUB_LS, lw=0.9, label=M.published_label(runs)))
    ax_p.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.005, 1.0), fontsize=8.5, frameon=False,
                title="resolution" + (" (shade)" if multi else ""), title_fontsize=8.5, alignment="left")


def _border_panel(ax_b, P: _Plot) -> None:
    """Panel 2: corner / border relative similarity (log 2), unreadable ratios at the top edge."""
    runs, labels, overlays, layers, x = P.runs, P.labels, P.overlays, P.layers, P.x
    multi, families, styles, controls = P.multi, P.families, P.styles, P.controls
    _log2_axis(ax_b)
    drawn_b: list[np.ndarray] = []
    off_scale = False
    groups = (("corner", "corner_rel_sim", 0.85, "o"), ("border", "border_rel_sim", 0.5, "s"))
    edge = band_b = False
    for ri, (run, lab) in enumerate(zip(runs, labels)):
        for g, key, sh, mk in groups:
            # a ratio that is not meaningful (near-zero reference) or not defined (grid too small) is marked
            # at the top edge: plotted at its value it would rescale the axis and read as a finding
            y, mark = M.readable_ratios(run, layers, g)
            color = families[ri](sh) if multi else _SINGLE[g]
            edge |= M.edge_marks(ax_b, x, mark, color, slot=2 * ri + (g == "border"))
            if not np.isfinite(y).any():
                continue
            ax_b.plot(x, np.where(y > 0, y, np.nan), color=color, ls=styles[ri] if multi else "-", lw=1.5,
                      marker=mk, ms=2.8, zorder=3)
            drawn_b.append(y)
            bounds = M.band(ax_b, x, run["table"], layers, key, color, keep=np.isfinite(y) & (y > 0), log=True,
                            alpha=0.15 if multi else 0.2)
            drawn_b += bounds
            band_b |= bool(bounds)
            off_scale |= _mark_off_scale(ax_b, x, y, color, slot=2 * ri + (g == "border"))
    for ri, _, crun in controls:
        for g, key, sh, mk in groups:
            y, mark = M.readable_ratios(crun, layers, g)
            # a control may not carry its reference similarities: where the run's own ratio cannot be read,
            # the control's cannot either (same layer, same near-zero reference) and is left out
            y = np.where(mark | M.readable_ratios(runs[ri], layers, g)[1], np.nan, y)
            if np.isfinite(y).any():
                M.control_line(ax_b, x, np.where(y > 0, y, np.nan), shade=sh)
                drawn_b.append(y)
    for lab, rows, ri in overlays:
        for g, key, sh, mk in groups:
            y = _series(rows, layers, key)
            if np.isfinite(y).any():
                color = ("0.35" if g == "corner" else "0.6") if ri is None else families[ri](0.3 + 0.25 * sh)
                ax_b.plot(x, np.where(y > 0, y, np.nan), color=color, ls=_PUB_LS, lw=0.9, zorder=2.5)
                drawn_b.append(y)
    ax_b.axhline(1.0, color="0.25", ls="--", lw=0.9, zorder=1)
    if drawn_b:
        _fit_log_limits(ax_b, drawn_b)
    else:
        ax_b.set_ylim(0.5, 2)
        _no_data(ax_b, "border analysis not run")
    ax_b.set_ylabel("relative similarity\n(cropped / full)")
    ax_b.set_title("Border artifacts: mean pairwise cosine of edge tokens relative to the same content "
                   "away from the edge (> 1: more alike at the edge)", fontsize=10.5, loc="left")
    gh = []
    for g, _, sh, mk in groups:
        c = colormaps["Greys"](sh) if multi else _SINGLE[g]
        gh.append(Line2D([], [], color=c, marker=mk, ms=3.5, lw=1.5, label=g))
    gh.append(Line2D([], [], color="0.25", ls="--", lw=0.9, label="1 (no effect)"))
    if off_scale:
        gh.append(Line2D([], [], color="0.3", ls="none", marker="v", ms=5, label="value ≤ 0 (off scale)"))
    if edge:
        gh.append(M.edge_handle())
    if band_b:
        gh.append(M.band_handle("0.4"))
    gh += _control_handles(controls)
    if overlays:
        gh.append(Line2D([], [], color="0.5", ls=_PUB_LS, lw=0.9, label="published"))
    ax_b.legend(handles=gh, loc="upper left", bbox_to_anchor=(1.005, 1.0), fontsize=8.5, frameon=False,
                title="group" + (" (shade)" if multi else ""), title_fontsize=8.5, alignment="left")


def _anomaly_panel(ax_a, P: _Plot) -> None:
    """Panel 3: anomaly relative norm (log 2), interval band (else +/- 1 std), controls."""
    runs, tables, labels, overlays, layers, x = P.runs, P.tables, P.labels, P.overlays, P.layers, P.x
    multi, families, styles, controls = P.multi, P.families, P.styles, P.controls
    _log2_axis(ax_a)
    drawn_a: list[np.ndarray] = []
    band_a = std_a = False
    for ri, (table, lab) in enumerate(zip(tables, labels)):
        m = _series(table, layers, "anomaly_rel_norm_mean")
        if not np.isfinite(m).any():
            continue
        color = families[ri](0.8) if multi else _SINGLE["anomaly"]
        # with an interval the band is the 95 % interval of the mean; without, the spread over anomalies
        bounds = M.band(ax_a, x, table, layers, "anomaly_rel_norm_mean", color, log=True,
                        alpha=0.18 if multi else 0.25)
        if bounds:
            band_a = True
            drawn_a += bounds
        else:
            sd = np.nan_to_num(_series(table, layers, "anomaly_rel_norm_std"), nan=0.0)
            lo = np.maximum(m - sd, m / 8)  # a log axis cannot show <= 0; clip the band at 1/8 of the mean
            ax_a.fill_between(x, lo, m + sd, color=color, alpha=0.18 if multi else 0.25, lw=0, zorder=2)
            std_a = True
            drawn_a.append(m + sd)
        ax_a.plot(x, np.where(m > 0, m, np.nan), color=color, ls=styles[ri] if multi else "-", lw=1.6,
                  marker=".", ms=3.5, zorder=3)
        drawn_a.append(m)
    for ri, _, crun in controls:
        m = _series(crun["table"], layers, "anomaly_rel_norm_mean")
        if np.isfinite(m).any():
            M.control_line(ax_a, x, np.where(m > 0, m, np.nan))
            drawn_a.append(m)
    for lab, rows, ri in overlays:
        m = _series(rows, layers, "anomaly_rel_norm_mean")
        if np.isfinite(m).any():
            color = "0.45" if ri is None else families[ri](0.45)
            ax_a.plot(x, np.where(m > 0, m, np.nan), color=color, ls=_PUB_LS, lw=0.9, zorder=2.5)
            drawn_a.append(m)
    ax_a.axhline(1.0, color="0.25", ls="--", lw=0.9, zorder=1)
    if drawn_a:
        _fit_log_limits(ax_a, drawn_a)
    else:
        ax_a.set_ylim(0.5, 2)
        ran = any(isinstance(r.get("anomalies"), Mapping) for r in runs)
        _no_data(ax_a, "no anomalies detected" if ran else "anomaly analysis not run")
    ax_a.set_ylabel("relative norm\n(anomaly / map mean)")
    band_text = " / ".join(t for t, on in (("95 % interval", band_a), ("± 1 std over anomalies", std_a)) if on)
    ax_a.set_title("High-norm anomalies: norm of the anomaly patches relative to the mean token norm"
                   + (f" (band: {band_text})" if band_text else ""), fontsize=10.5, loc="left")
    a_color = "0.3" if multi else _SINGLE["anomaly"]
    ah = [Line2D([], [], color=a_color, lw=1.6, label="mean")]
    ah += [Patch(color=a_color, alpha=0.25, lw=0, label=t) for t, on in
           (("95 % interval", band_a), ("± 1 std", std_a or not band_a)) if on]
    ah += [Line2D([], [], color="0.25", ls="--", lw=0.9, label="1 (no effect)")] + _control_handles(controls)
    if overlays:
        ah.append(Line2D([], [], color="0.5", ls=_PUB_LS, lw=0.9, label="published"))
    ax_a.legend(handles=ah, loc="upper left", bbox_to_anchor=(1.005, 1.0), fontsize=8.5, frameon=False)


def quantitative_figure(runs: Sequence[Mapping[str, Any]],
                        paper: Sequence[Mapping[str, Any]] | Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
                        title: str | None = None, resolutions: Sequence[int] | None = None) -> Figure:
    """The paper's Fig. 2/4/5 for one or several runs.

    ``runs``: results dicts (``results.json``) or ``{"label": ..., "table": rows}``. Runs are
    aligned on layer names (the union, in the first run's order); a layer a run lacks is a gap.
    ``paper``: published rows (:func:`sdaudit.report.paper.load_paper_results`) drawn thin and
    dashed as "published"; or a mapping run label -> rows to overlay one per run.

    Panels (top to bottom): probe accuracy per comparison resolution (darker = finer) with the
    chance level of each resolution dotted; corner and border relative similarity (log 2, dashed
    line at 1); anomaly relative norm (log 2, dashed line at 1).

    Uncertainty (see :mod:`.figure_marks`): a 95 % interval band wherever the table has ``M_low`` /
    ``M_high`` (the anomaly panel falls back to +/- 1 std over anomalies without one); each control
    of a run (``control`` / ``controls``) as a grey dashed curve labelled with its label; a corner /
    border ratio that is not meaningful (reference similarity < 0.05) or not defined (grid too small)
    as an open triangle at the top edge, never as a point that rescales the axis. The title says
    "random weights" for a run whose ``model.random_weights`` is true.
    ``resolutions``: the probe resolutions drawn; default all four for one run, the coarsest and
    finest (8, 64) for several runs (four lines per run would hide the differences).
    """
    if not runs:
        raise ValueError("quantitative_figure needs at least one run")
    tables = [_run_table(r) for r in runs]
    labels = _unique_labels([run_label(r, f"run {i + 1}") for i, r in enumerate(runs)])
    overlays: list[tuple[str, Sequence[Mapping[str, Any]], int | None]] = []  # (label, rows, run index)
    if paper is not None:
        if isinstance(paper, Mapping):
            for i, lab in enumerate(labels):
                rows = paper.get(lab)
                if rows:
                    overlays.append((f"{lab} published" if len(runs) > 1 else "published", rows, i))
        elif len(paper):
            overlays.append(("published", paper, None))
    layers = align_layers(tables + [rows for _, rows, _ in overlays])
    # block / kind of each layer: from the first table that has it
    info: dict[str, Mapping[str, Any]] = {}
    for table in tables + [rows for _, rows, _ in overlays]:
        for r in table:
            info.setdefault(str(r["layer"]), r)
    kinds = [str(info[n].get("kind") or kind_of(n)) for n in layers]
    blocks = [str(info[n].get("block") or block_of(n)) for n in layers]

    n = len(layers)
    x = np.arange(n)
    multi = len(runs) > 1
    if resolutions is None:
        resolutions = (RESOLUTIONS[0], RESOLUTIONS[-1]) if multi else RESOLUTIONS
    resolutions = [s for s in RESOLUTIONS if s in set(resolutions)]
    # fixed margins (inches) instead of a layout engine: predictable, and twice as fast to save
    left, right, bottom, top, gap = 1.0, 2.05, 0.85, 0.62 + (0.3 if multi else 0.0), 0.42
    width = max(9.0, 0.23 * n + left + right)
    height = 9.6 + (0.3 if multi else 0.0)
    fig = Figure(figsize=(width, height))
    axes = fig.subplots(3, 1, sharex=True, gridspec_kw={"height_ratios": [1.15, 1, 1]})
    panel_h = (height - top - bottom - 2 * gap) / 3.15
    fig.subplots_adjust(left=left / width, right=1 - right / width, bottom=bottom / height, top=1 - top / height,
                        hspace=gap / panel_h)
    ax_p, ax_b, ax_a = axes
    families = [colormaps[_FAMILIES[i % len(_FAMILIES)]] for i in range(len(runs))]
    styles = [_RUN_STYLES[i % len(_RUN_STYLES)] for i in range(len(runs))]
    shade = {s: 0.45 + 0.5 * i / (len(RESOLUTIONS) - 1) for i, s in enumerate(RESOLUTIONS)}  # darker = finer

    # separators through all panels
    for ax in axes:
        for _, s, _ in _block_spans(blocks)[1:]:
            ax.axvline(s - 0.5, color="0.88", lw=0.7, zorder=0)
        ax.grid(axis="y", color="0.93", lw=0.6, zorder=0)
        ax.set_xlim(-0.6, n - 0.4)

    P = _Plot(runs=runs, tables=tables, labels=labels, overlays=overlays, layers=layers, x=x, multi=multi,
              families=families, styles=styles, shade=shade, controls=M.control_runs(runs, labels),
              resolutions=resolutions)
    _probe_panel(ax_p, P)
    _border_panel(ax_b, P)
    _anomaly_panel(ax_a, P)

    for ax in axes:
        ax.tick_params(axis="y", labelsize=9)
        ax.yaxis.label.set_size(10)
    for ax in axes[:-1]:
        ax.tick_params(axis="x", length=0, labelbottom=False)
    _layer_axis(fig, ax_a, layers, kinds, blocks, width)

    if multi:
        run_handles = [Line2D([], [], color=families[i](0.8), ls=styles[i], lw=2.0, label=mpl_text(lab))
                       for i, lab in enumerate(labels)]
        for lab, _, ri in overlays:
            if ri is not None:
                run_handles.append(Line2D([], [], color=families[ri](0.45), ls=_PUB_LS, lw=1.0,
                                          label=mpl_text(lab)))
        fig.legend(handles=run_handles, loc="upper center", bbox_to_anchor=(0.5, 1 - 0.32 / height),
                   ncols=min(len(run_handles), 6), fontsize=10, frameon=False)
    if title is None:
        # random weights say nothing about a trained model: the title says so
        shown = [lab + (" (random weights)" if M.random_weights(r) else "") for r, lab in zip(runs, labels)]
        title = ("Comparison: " + ", ".join(shown)) if multi else shown[0]
        title += f"  ({n} layers)"
    fig.suptitle(mpl_text(title), fontsize=12, x=0.1 / width, y=1 - 0.08 / height, ha="left", va="top")
    fig.sdaudit_layers = list(layers)  # type: ignore[attr-defined]  (for callers and tests)
    fig.sdaudit_labels = list(labels)  # type: ignore[attr-defined]
    return fig


def _control_handles(controls) -> list[Line2D]:
    seen = []
    for _, name, _ in controls:
        if name not in seen:
            seen.append(name)
    return [M.control_handle(mpl_text(name)) for name in seen]


def _unique_labels(labels: Sequence[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for lab in labels:
        seen[lab] = seen.get(lab, 0) + 1
        out.append(lab if seen[lab] == 1 else f"{lab} #{seen[lab]}")
    return out


# --------------------------------------------------------------------------------------------


def save_figure(fig: Figure, path_without_suffix: str | Path, dpi: int = PNG_DPI) -> list[Path]:
    """Write ``<path>.svg`` and ``<path>.png`` (``dpi``); returns both paths."""
    base = Path(path_without_suffix)
    base.parent.mkdir(parents=True, exist_ok=True)
    svg, png = base.with_name(base.name + ".svg"), base.with_name(base.name + ".png")
    with rc_context({"svg.hashsalt": "sdaudit"}):  # stable ids: the same results give the same svg
        fig.savefig(svg, format="svg", metadata={"Date": None})
    fig.savefig(png, format="png", dpi=dpi)
    return [svg, png]
