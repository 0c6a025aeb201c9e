"""The per-layer figure of an audit (the paper's Fig. 2/4/5) and saving figures.

Everything uses matplotlib's object API (``matplotlib.figure.Figure``, no pyplot state), so
figures can be made in a server or a test without a display and are freed with the object.

* :func:`quantitative_figure`: three stacked panels over the layers (probe accuracy, corner /
  border relative similarity, anomaly relative norm) for one or several runs, aligned on layer
  names, with 95 % interval bands and control curves where the results have them, optionally
  with the published curves overlaid.
* :func:`save_figure`: writes ``.svg`` and ``.png``.

The panels are drawn by :mod:`.figure_panels`, the axes and labels by :mod:`.figure_axes`; the maps
(Fig. 1/3) by :mod:`.qualitative`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps, rc_context
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from ..audit_results import AuditResults, LayerRow
from ..constants import RESOLUTIONS
from ..layer_names import block_of, kind_of, norm_key
from . import figure_marks as M
from .figure_axes import align_layers, block_spans, layer_axis, mpl_text, run_label, short_block, unique_labels
from .figure_panels import PUBLISHED_LS, PanelContext, anomaly_panel, border_panel, probe_panel
from .paper import PublishedCurves

# re-exported: callers draw their own labels with these
__all__ = ["PNG_DPI", "align_layers", "mpl_text", "norm_key", "quantitative_figure", "run_label", "save_figure",
           "short_block"]

PNG_DPI = 150

# one colour family and line style per run; within a family darker = finer resolution / corner
_FAMILIES = ("Blues", "Oranges", "Greens", "Purples", "Reds", "Greys", "YlOrBr", "BuGn")
_RUN_STYLES = ("-", "--", "-.", (0, (5, 1, 1, 1, 1, 1)), (0, (8, 2)), (0, (3, 1)))
# fixed margins (inches) instead of a layout engine: predictable, and twice as fast to save
_LEFT, _RIGHT, _BOTTOM, _GAP = 1.0, 2.05, 0.85, 0.42

Overlays = Sequence[Mapping[str, Any]] | PublishedCurves | Mapping[str, Sequence[Mapping[str, Any]] | PublishedCurves] \
    | None


def _published(value: Any, default: str) -> tuple[str, list[LayerRow]]:
    """(label, rows) of one overlay: a :class:`~.paper.PublishedCurves` names its published model."""
    if isinstance(value, PublishedCurves):
        return value.label, [LayerRow.coerce(r) for r in value.rows]
    return default, [LayerRow.coerce(r) for r in value]


def _overlays(paper: Overlays, labels: list[str]) -> list[tuple[str, list[LayerRow], int | None]]:
    """(label, published rows, run index or None) of the published curves to draw."""
    if paper is None:
        return []
    if isinstance(paper, Mapping):
        out = []
        for i, lab in enumerate(labels):
            if paper.get(lab):
                name, rows = _published(paper[lab], "published")
                out.append((f"{lab}: {name}" if len(labels) > 1 else name, rows, i))
        return out
    name, rows = _published(paper, "published")
    return [(name, rows, None)] if rows else []


def _kinds_and_blocks(tables: Sequence[Sequence[LayerRow]], layers: list[str]) -> tuple[list[str], list[str]]:
    """Kind and block of each layer: from the first table that has the layer, else from its name."""
    info: dict[str, LayerRow] = {}
    for table in tables:
        for r in table:
            info.setdefault(r.layer, r)
    return ([str(info[n].kind or kind_of(n)) for n in layers], [str(info[n].block or block_of(n)) for n in layers])


def _frame(n: int, multi: bool, blocks: list[str]) -> tuple[Figure, Any, float, float]:
    """The figure with its three stacked axes, block separators and grid; (fig, axes, width, height)."""
    top = 0.62 + (0.3 if multi else 0.0)
    width, height = max(9.0, 0.23 * n + _LEFT + _RIGHT), 9.6 + (0.3 if multi else 0.0)
    fig = Figure(figsize=(width, height))
    axes = fig.subplots(3, 1, sharex=True, gridspec_kw={"height_ratios": [1.15, 1, 1]})
    panel_h = (height - top - _BOTTOM - 2 * _GAP) / 3.15
    fig.subplots_adjust(left=_LEFT / width, right=1 - _RIGHT / width, bottom=_BOTTOM / height, top=1 - top / height,
                        hspace=_GAP / panel_h)
    for ax in axes:  # separators through all panels
        for _, s, _ in block_spans(blocks)[1:]:
            ax.axvline(s - 0.5, color="0.88", lw=0.7, zorder=0)
        ax.grid(axis="y", color="0.93", lw=0.6, zorder=0)
        ax.set_xlim(-0.6, n - 0.4)
    return fig, axes, width, height


def _context(runs: list[AuditResults], labels: list[str], overlays, layers: list[str],
             resolutions: Sequence[int] | None) -> PanelContext:
    multi = len(runs) > 1
    if resolutions is None:
        resolutions = (RESOLUTIONS[0], RESOLUTIONS[-1]) if multi else RESOLUTIONS
    return PanelContext(
        runs=runs, labels=labels, overlays=overlays, layers=layers, x=np.arange(len(layers)), multi=multi,
        families=[colormaps[_FAMILIES[i % len(_FAMILIES)]] for i in range(len(runs))],
        styles=[_RUN_STYLES[i % len(_RUN_STYLES)] for i in range(len(runs))],
        shade={s: 0.45 + 0.5 * i / (len(RESOLUTIONS) - 1) for i, s in enumerate(RESOLUTIONS)},  # darker = finer
        controls=M.control_runs(runs, labels), resolutions=[s for s in RESOLUTIONS if s in set(resolutions)])


def _run_legend(fig: Figure, P: PanelContext, height: float) -> None:
    """Several runs: one legend entry per run (and per run's published overlay) above the panels."""
    handles = [Line2D([], [], color=P.families[i](0.8), ls=P.styles[i], lw=2.0, label=mpl_text(lab))
               for i, lab in enumerate(P.labels)]
    handles += [Line2D([], [], color=P.families[ri](0.45), ls=PUBLISHED_LS, lw=1.0, label=mpl_text(lab))
                for lab, _, ri in P.overlays if ri is not None]
    fig.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 1 - 0.32 / height),
               ncols=min(len(handles), 6), fontsize=10, frameon=False)


def _title(P: PanelContext) -> str:
    # random weights say nothing about a trained model: the title says so
    shown = [lab + (" (random weights)" if r.random_weights else "") for r, lab in zip(P.runs, P.labels)]
    title = ("Comparison: " + ", ".join(shown)) if P.multi else shown[0]
    return title + f"  ({len(P.layers)} layers)"


def quantitative_figure(runs: Sequence[AuditResults | Mapping[str, Any]], paper: Overlays = None,
                        title: str | None = None, resolutions: Sequence[int] | None = None) -> Figure:
    """The paper's Fig. 2/4/5 for one or several runs.

    ``runs``: :class:`~sdaudit.audit_results.AuditResults` (or results.json dicts) or ``{"label": ..., "table": rows}``. Runs are
    aligned on layer names (the union, in the first run's order); a layer a run lacks is a gap.
    ``paper``: published rows (:func:`sdaudit.report.paper.load_paper_results`) drawn thin and
    dashed as "published", or a :class:`~.paper.PublishedCurves` labelled with its published model
    ("published SD-1.5 (Loos & Linhardt 2025)"); or a mapping run label -> either, one overlay per run.

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
    runs = [AuditResults.coerce(r) for r in runs]
    labels = unique_labels([run_label(r, f"run {i + 1}") for i, r in enumerate(runs)])
    overlays = _overlays(paper, labels)
    tables = [r.table for r in runs] + [rows for _, rows, _ in overlays]
    layers = align_layers(tables)
    kinds, blocks = _kinds_and_blocks(tables, layers)
    P = _context(runs, labels, overlays, layers, resolutions)
    fig, axes, width, height = _frame(len(layers), P.multi, blocks)
    probe_panel(axes[0], P)
    border_panel(axes[1], P)
    anomaly_panel(axes[2], P)
    for ax in axes:
        ax.tick_params(axis="y", labelsize=9)
        ax.yaxis.label.set_size(10)
    for ax in axes[:-1]:
        ax.tick_params(axis="x", length=0, labelbottom=False)
    layer_axis(fig, axes[2], kinds, blocks, width)
    if P.multi:
        _run_legend(fig, P, height)
    fig.suptitle(mpl_text(_title(P) if title is None else title), fontsize=12, x=0.1 / width, y=1 - 0.08 / height,
                 ha="left", va="top")
    fig.sdaudit_layers = list(layers)  # type: ignore[attr-defined]  (for callers and tests)
    fig.sdaudit_labels = list(labels)  # type: ignore[attr-defined]
    return fig


def save_figure(fig: Figure, path_without_suffix: str | Path, dpi: int = PNG_DPI) -> list[Path]:
    """Write ``<path>.svg`` and ``<path>.png`` (``dpi``); returns both paths."""
    base = Path(path_without_suffix)
    base.parent.mkdir(parents=True, exist_ok=True)
    svg, png = base.with_name(base.name + ".svg"), base.with_name(base.name + ".png")
    with rc_context({"svg.hashsalt": "sdaudit"}):  # stable ids: the same results give the same svg
        fig.savefig(svg, format="svg", metadata={"Date": None})
    fig.savefig(png, format="png", dpi=dpi)
    return [svg, png]
