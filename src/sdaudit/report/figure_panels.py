"""The three panels of the per-layer figure (the paper's Fig. 2/4/5), each drawn by its own function.

:func:`probe_panel` (probe accuracy per resolution, chance dotted), :func:`border_panel` (corner and
border relative similarity, log 2) and :func:`anomaly_panel` (anomaly relative norm, log 2) draw one
axes each from a :class:`PanelContext`: the runs, their aligned layers and their styles.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FixedLocator

from ..audit_results import AuditResults, ControlRun, LayerRow
from . import figure_marks as M
from .figure_axes import chance_series, fit_log_limits, log2_axis, mark_off_scale, mpl_text, no_data

PUBLISHED_LS = (0, (5, 1.5, 1, 1.5))  # published curves: thin dash-dot (the reference line at 1 is dashed)
SINGLE_COLORS = {"corner": "#c0392b", "border": "#e69f00", "anomaly": "#2e8b57"}
_GROUPS = (("corner", "corner_rel_sim", 0.85, "o"), ("border", "border_rel_sim", 0.5, "s"))
_LEGEND = {"loc": "upper left", "bbox_to_anchor": (1.005, 1.0), "fontsize": 8.5, "frameon": False}


@dataclass
class PanelContext:
    """What the three panels share: the runs, their aligned layers and their styles."""

    runs: Sequence[AuditResults]
    labels: list[str]
    overlays: list[tuple[str, Sequence[LayerRow], int | None]]  # (label, published rows, run index or None)
    layers: list[str]
    x: np.ndarray
    multi: bool
    families: list[Any]
    styles: list[Any]
    shade: dict[int, float]
    controls: list[tuple[int, str, ControlRun]]
    resolutions: list[int]

    def style(self, ri: int):
        return self.styles[ri] if self.multi else "-"


def series(rows: Sequence[LayerRow], P: PanelContext, key: str) -> np.ndarray:
    return M.series(rows, P.layers, key)


def control_handles(controls) -> list[Line2D]:
    """One legend entry per control name."""
    seen = []
    for _, name, _ in controls:
        if name not in seen:
            seen.append(name)
    return [M.control_handle(mpl_text(name)) for name in seen]


def _published_name(P: PanelContext) -> str:
    """The single overlay's own label ("published SD-1.5 (...)"); "published" beside several runs' overlays."""
    return P.overlays[0][0] if len(P.overlays) == 1 and P.overlays[0][2] is None else "published"


def _published_handle(label: str = "published") -> Line2D:
    return Line2D([], [], color="0.5", ls=PUBLISHED_LS, lw=0.9, label=label)


# -------------------------------------------------------------------------------------- panel 1: probe


CHANCE_GID = "chance"  # gid prefix of the chance lines: "chance-<run index>-<s>"


def _chance_line(ax, P: PanelContext, ri: int, s: int, color) -> None:
    """Run ``ri``'s chance at ``s``, dotted in the run's colour: runs at other sizes have other grids,
    so each run has its own chance levels."""
    c = chance_series(P.runs[ri].table, P.layers, s)
    if np.isfinite(c).any():
        ax.plot(P.x, c, color=color, ls=":", lw=1.1, drawstyle="steps-mid", zorder=2,
                gid=f"{CHANCE_GID}-{ri}-{s}")


def _probe_run(ax, P: PanelContext, ri: int) -> tuple[list[int], bool]:
    """One run's accuracy curves, interval bands and chance lines; (resolutions drawn, any band)."""
    table, drawn, any_band = P.runs[ri].table, [], False
    for s in P.resolutions:
        y = series(table, P, f"probe_acc_{s}")
        if not np.isfinite(y).any():
            continue
        drawn.append(s)
        color = P.families[ri](P.shade[s]) if P.multi else colormaps["Blues"](P.shade[s])
        ax.plot(P.x, y, color=color, ls=P.style(ri), lw=1.5, marker=".", ms=3.5,
                label=None if P.multi else f"{s}", zorder=3)
        any_band |= bool(M.band(ax, P.x, table, P.layers, f"probe_acc_{s}", color=color,
                                alpha=0.15 if P.multi else 0.2))
        _chance_line(ax, P, ri, s, color)
    return drawn, any_band


def _probe_references(ax, P: PanelContext) -> None:
    """Published accuracies (thin dash-dot) and the controls' curves (grey dashed, with their bands)."""
    grey = colormaps["Greys"]
    for _, rows, ri in P.overlays:
        for s in P.resolutions:
            y = series(rows, P, f"probe_acc_{s}")
            if np.isfinite(y).any():
                color = grey(0.35 + 0.4 * P.shade[s]) if ri is None else P.families[ri](0.3 + 0.3 * P.shade[s])
                ax.plot(P.x, y, color=color, ls=PUBLISHED_LS, lw=0.9, zorder=2.5)
    for _, _, control in P.controls:
        for s in P.resolutions:
            y = series(control.table, P, f"probe_acc_{s}")
            if np.isfinite(y).any():
                M.control_line(ax, P.x, y, shade=1 - P.shade[s])
                M.band(ax, P.x, control.table, P.layers, f"probe_acc_{s}", color="0.5", alpha=0.1)


def _probe_legend(ax, P: PanelContext, present: list[int], any_band: bool) -> None:
    shades = colormaps["Greys"] if P.multi else colormaps["Blues"]
    handles = [Line2D([], [], color=shades(P.shade[s]), lw=1.6, label=f"s = {s}") for s in (present or P.resolutions)]
    handles.append(Line2D([], [], color="0.4", ls=":", lw=1.1,
                          label="chance 1/min(s, n)" + (",\nin each run's colour" if P.multi else "")))
    if any_band:
        handles.append(M.band_handle("0.4" if P.multi else colormaps["Blues"](0.7)))
    handles += control_handles(P.controls)
    if P.overlays:
        handles.append(_published_handle(M.published_label(P.runs, _published_name(P))))
    ax.legend(handles=handles, **_LEGEND, title="resolution" + (" (shade)" if P.multi else ""), title_fontsize=8.5,
              alignment="left")


def probe_panel(ax, P: PanelContext) -> None:
    """Panel 1: probe accuracy per resolution, chance dotted, interval bands, controls, overlays."""
    present: list[int] = []
    any_band = False
    for ri in range(len(P.runs)):
        drawn, band = _probe_run(ax, P, ri)
        present += [s for s in drawn if s not in present]
        any_band |= band
    _probe_references(ax, P)
    # a margin beyond [0, 1]: a layer at 0 % or 100 % (a 2x2 grid) must show its whole marker, not half of it
    ax.set_ylim(-0.04, 1.04)
    ax.yaxis.set_major_locator(FixedLocator([0, 0.2, 0.4, 0.6, 0.8, 1.0]))
    ax.set_ylabel("probe accuracy")
    ax.set_title("Position probe: test accuracy of a linear probe at comparison resolution s (dotted: chance)",
                 fontsize=10.5, loc="left")
    if not present:
        no_data(ax, "position probe not run")
    _probe_legend(ax, P, present, any_band)


# -------------------------------------------------------------------------------------- panel 2: borders


def _border_run(ax, P: PanelContext, ri: int, drawn: list) -> tuple[bool, bool, bool]:
    """One run's corner and border curves; (edge marks drawn, band drawn, values off scale)."""
    run, edge, band, off_scale = P.runs[ri], False, False, False
    for g, key, sh, mk in _GROUPS:
        # a ratio that is not meaningful (near-zero reference) or not defined (grid too small) is marked
        # at the top edge: plotted at its value it would rescale the axis and read as a finding
        y, mark = M.readable_ratios(run, P.layers, g)
        color = P.families[ri](sh) if P.multi else SINGLE_COLORS[g]
        edge |= M.edge_marks(ax, P.x, mark, color, slot=2 * ri + (g == "border"))
        if not np.isfinite(y).any():
            continue
        ax.plot(P.x, np.where(y > 0, y, np.nan), color=color, ls=P.style(ri), lw=1.5, marker=mk, ms=2.8, zorder=3)
        drawn.append(y)
        bounds = M.band(ax, P.x, run.table, P.layers, key, color=color, keep=np.isfinite(y) & (y > 0), log=True,
                        alpha=0.15 if P.multi else 0.2)
        drawn += bounds
        band |= bool(bounds)
        off_scale |= mark_off_scale(ax, P.x, y, color, slot=2 * ri + (g == "border"))
    return edge, band, off_scale


def _border_references(ax, P: PanelContext, drawn: list) -> None:
    """The controls' ratios (grey dashed) and the published ones (thin dash-dot)."""
    for ri, _, control in P.controls:
        for g, _, sh, _ in _GROUPS:
            y, mark = M.readable_ratios(control, P.layers, g)
            # a control may not carry its reference similarities: where the run's own ratio cannot be read,
            # the control's cannot either (same layer, same near-zero reference) and is left out
            y = np.where(mark | M.readable_ratios(P.runs[ri], P.layers, g)[1], np.nan, y)
            if np.isfinite(y).any():
                M.control_line(ax, P.x, np.where(y > 0, y, np.nan), shade=sh)
                drawn.append(y)
    for _, rows, ri in P.overlays:
        for g, key, sh, _ in _GROUPS:
            y = series(rows, P, key)
            if np.isfinite(y).any():
                color = ("0.35" if g == "corner" else "0.6") if ri is None else P.families[ri](0.3 + 0.25 * sh)
                ax.plot(P.x, np.where(y > 0, y, np.nan), color=color, ls=PUBLISHED_LS, lw=0.9, zorder=2.5)
                drawn.append(y)


def _border_legend(ax, P: PanelContext, edge: bool, band: bool, off_scale: bool) -> None:
    handles = [Line2D([], [], color=colormaps["Greys"](sh) if P.multi else SINGLE_COLORS[g], marker=mk, ms=3.5,
                      lw=1.5, label=g) for g, _, sh, mk in _GROUPS]
    handles.append(Line2D([], [], color="0.25", ls="--", lw=0.9, label="1 (no effect)"))
    if off_scale:
        handles.append(Line2D([], [], color="0.3", ls="none", marker="v", ms=5, label="value ≤ 0 (off scale)"))
    if edge:
        handles.append(M.edge_handle())
    if band:
        handles.append(M.band_handle("0.4"))
    handles += control_handles(P.controls)
    if P.overlays:
        handles.append(_published_handle())
    ax.legend(handles=handles, **_LEGEND, title="group" + (" (shade)" if P.multi else ""), title_fontsize=8.5,
              alignment="left")


def _ratio_limits(ax, drawn: list[np.ndarray], missing: str) -> None:
    """A ratio panel's parity line at 1 and its log limits around what was drawn (or ``missing`` when nothing was)."""
    ax.axhline(1.0, color="0.25", ls="--", lw=0.9, zorder=1)
    if drawn:
        fit_log_limits(ax, drawn)
    else:
        ax.set_ylim(0.5, 2)
        no_data(ax, missing)


def border_panel(ax, P: PanelContext) -> None:
    """Panel 2: corner / border relative similarity (log 2), unreadable ratios at the top edge."""
    log2_axis(ax)
    drawn: list[np.ndarray] = []
    edge = band = off_scale = False
    for ri in range(len(P.runs)):
        e, b, o = _border_run(ax, P, ri, drawn)
        edge, band, off_scale = edge | e, band | b, off_scale | o
    _border_references(ax, P, drawn)
    _ratio_limits(ax, drawn, "border analysis not run")
    ax.set_ylabel("relative similarity\n(cropped / full)")
    ax.set_title("Border artifacts: mean pairwise cosine of edge tokens relative to the same content "
                 "away from the edge (> 1: more alike at the edge)", fontsize=10.5, loc="left")
    _border_legend(ax, P, edge, band, off_scale)


# -------------------------------------------------------------------------------------- panel 3: anomalies


def _anomaly_run(ax, P: PanelContext, ri: int, drawn: list) -> tuple[bool, bool]:
    """One run's mean relative norm with its band: the 95 % interval, else +/- 1 std; (band, std band)."""
    table = P.runs[ri].table
    m = series(table, P, "anomaly_rel_norm_mean")
    if not np.isfinite(m).any():
        return False, False
    color = P.families[ri](0.8) if P.multi else SINGLE_COLORS["anomaly"]
    # with an interval the band is the 95 % interval of the mean; without, the spread over anomalies
    bounds = M.band(ax, P.x, table, P.layers, "anomaly_rel_norm_mean", color=color, log=True,
                    alpha=0.18 if P.multi else 0.25)
    if bounds:
        drawn += bounds
    else:
        sd = np.nan_to_num(series(table, P, "anomaly_rel_norm_std"), nan=0.0)
        lo = np.maximum(m - sd, m / 8)  # a log axis cannot show <= 0; clip the band at 1/8 of the mean
        ax.fill_between(P.x, lo, m + sd, color=color, alpha=0.18 if P.multi else 0.25, lw=0, zorder=2)
        drawn.append(m + sd)
    ax.plot(P.x, np.where(m > 0, m, np.nan), color=color, ls=P.style(ri), lw=1.6, marker=".", ms=3.5, zorder=3)
    drawn.append(m)
    return bool(bounds), not bounds


def _anomaly_references(ax, P: PanelContext, drawn: list) -> None:
    for _, _, control in P.controls:
        m = series(control.table, P, "anomaly_rel_norm_mean")
        if np.isfinite(m).any():
            M.control_line(ax, P.x, np.where(m > 0, m, np.nan))
            drawn.append(m)
    for _, rows, ri in P.overlays:
        m = series(rows, P, "anomaly_rel_norm_mean")
        if np.isfinite(m).any():
            color = "0.45" if ri is None else P.families[ri](0.45)
            ax.plot(P.x, np.where(m > 0, m, np.nan), color=color, ls=PUBLISHED_LS, lw=0.9, zorder=2.5)
            drawn.append(m)


def _anomaly_legend(ax, P: PanelContext, band: bool, std: bool) -> None:
    color = "0.3" if P.multi else SINGLE_COLORS["anomaly"]
    handles = [Line2D([], [], color=color, lw=1.6, label="mean")]
    handles += [Patch(color=color, alpha=0.25, lw=0, label=t) for t, on in
                (("95 % interval", band), ("± 1 std", std or not band)) if on]
    handles += [Line2D([], [], color="0.25", ls="--", lw=0.9, label="1 (no effect)")] + control_handles(P.controls)
    if P.overlays:
        handles.append(_published_handle())
    ax.legend(handles=handles, **_LEGEND)


def anomaly_panel(ax, P: PanelContext) -> None:
    """Panel 3: anomaly relative norm (log 2), interval band (else +/- 1 std), controls."""
    log2_axis(ax)
    drawn: list[np.ndarray] = []
    band = std = False
    for ri in range(len(P.runs)):
        b, s = _anomaly_run(ax, P, ri, drawn)
        band, std = band | b, std | s
    _anomaly_references(ax, P, drawn)
    ran = any(r.anomalies is not None for r in P.runs)
    _ratio_limits(ax, drawn, "no anomalies detected" if ran else "anomaly analysis not run")
    ax.set_ylabel("relative norm\n(anomaly / map mean)")
    band_text = " / ".join(t for t, on in (("95 % interval", band), ("± 1 std over anomalies", std)) if on)
    ax.set_title("High-norm anomalies: norm of the anomaly patches relative to the mean token norm"
                 + (f" (band: {band_text})" if band_text else ""), fontsize=10.5, loc="left")
    _anomaly_legend(ax, P, band, std)
