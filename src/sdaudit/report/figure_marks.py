"""Uncertainty marks of the per-layer curves: interval bands, control curves, edge markers.

Each mark carries a ``gid`` (:data:`BAND_GID`, :data:`CONTROL_GID`, :data:`EDGE_GID`) so that
callers and tests can find them without relying on drawing order.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.lines import Line2D

from ..audit_results import AuditResults, ControlRun, LayerRow
from .intervals import controls_of
from .verdicts import meaningful_mask

BAND_GID = "interval-band"
CONTROL_GID = "control"
EDGE_GID = "not-meaningful"
CONTROL_COLOR = "0.5"
CONTROL_LS = (0, (4, 2))
NOT_MEANINGFUL_LABEL = "not meaningful /\nnot defined"


def series(table: Sequence[LayerRow], layers: Sequence[str], key: str) -> np.ndarray:
    """``key``'s values at ``layers`` (NaN where a layer is missing or has no finite value)."""
    by = {r.layer: r for r in table}
    values = [by[name].value(key) if name in by else None for name in layers]
    return np.array([np.nan if v is None else v for v in values], dtype=float)


def band(ax, x: np.ndarray, table: Sequence[LayerRow], layers: Sequence[str], metric: str, *, color,
         keep: np.ndarray | None = None, log: bool = False, alpha: float = 0.22) -> list[np.ndarray]:
    """Shade the 95 % interval of ``metric`` where the table has one; returns the bounds drawn (for
    the axis limits), [] when there is no interval. ``keep``: mask of the layers to draw at all."""
    lo, hi = series(table, layers, f"{metric}_low"), series(table, layers, f"{metric}_high")
    ok = np.isfinite(lo) & np.isfinite(hi)
    if keep is not None:
        ok &= keep
    if log:
        # a log axis cannot show <= 0: a band reaching below 0 is cut at 1/8 of its top (drawn as "far down")
        ok &= hi > 0
        lo = np.where(lo > 0, lo, hi / 8)
    if not ok.any():
        return []
    ax.fill_between(x, np.where(ok, lo, np.nan), np.where(ok, hi, np.nan), color=color, alpha=alpha, lw=0,
                    zorder=2, gid=BAND_GID)
    return [np.where(ok, lo, np.nan), np.where(ok, hi, np.nan)]


def edge_marks(ax, x: np.ndarray, mask: np.ndarray, color, slot: int = 0) -> bool:
    """Open triangles at the top edge for layers whose number is not meaningful or not defined: drawn
    in axes coordinates, so that they never rescale the axis."""
    if not mask.any():
        return False
    ax.plot(x[mask], np.full(int(mask.sum()), 0.965 - 0.05 * slot), ls="none", marker="^", ms=5.5, mfc="white",
            mec=color, mew=1.1, transform=ax.get_xaxis_transform(), clip_on=False, zorder=5, gid=EDGE_GID)
    return True


def readable_ratios(run: AuditResults | ControlRun, layers: Sequence[str], group: str) -> tuple[np.ndarray, np.ndarray]:
    """(values to plot, mask of layers to mark at the edge) of a corner / border ratio series: a
    ratio over a near-zero reference or on a grid too small is marked, not plotted."""
    y = series(run.table, layers, f"{group}_rel_sim")
    ok = np.array(meaningful_mask(run, layers, group), dtype=bool)
    by = {r.layer: r for r in run.table}
    undefined = np.array([bool(by[n].borders_undefined) if n in by else False for n in layers], dtype=bool)
    # values <= 0 are marked at the bottom (off scale) by the caller; these go to the top edge
    mark = undefined | (np.isfinite(y) & (y > 0) & ~ok)
    return np.where(ok, y, np.where(np.isfinite(y) & (y <= 0), y, np.nan)), mark


def control_runs(runs: Sequence[AuditResults], labels: Sequence[str]) -> list[tuple[int, str, ControlRun]]:
    """(run index, legend label, control) for every control of every run."""
    out = []
    for ri, (run, lab) in enumerate(zip(runs, labels)):
        for c in controls_of(run):
            name = f"control: {c.label}" if len(runs) == 1 else f"{lab} control:\n{c.label}"
            out.append((ri, name, c))
    return out


def control_line(ax, x: np.ndarray, y: np.ndarray, shade: float = 0.5) -> None:
    ax.plot(x, y, color=str(round(0.25 + 0.45 * shade, 2)), ls=CONTROL_LS, lw=1.2, zorder=2.6, gid=CONTROL_GID)


def control_handle(label: str) -> Line2D:
    return Line2D([], [], color=CONTROL_COLOR, ls=CONTROL_LS, lw=1.2, label=label)


def edge_handle() -> Line2D:
    return Line2D([], [], color="0.3", ls="none", marker="^", ms=5.5, mfc="white", mew=1.1, label=NOT_MEANINGFUL_LABEL)


def band_handle(color, label: str = "95 % interval"):
    from matplotlib.patches import Patch

    return Patch(color=color, alpha=0.25, lw=0, label=label)


_PROBES = {"lda": "closed-form LDA", "ridge": "closed-form ridge"}


def published_label(runs: Sequence[AuditResults], name: str = "published") -> str:
    """Legend label of a published overlay (``name``): says when this audit's probe is not the paper's trained one."""
    # runs that do not record their probe (bare tables) say nothing either way
    methods = {m for r in runs if (m := r.probe_method)} - {"paper"}
    if not methods:
        return name.replace(" (", "\n(")
    used = ", ".join(sorted(_PROBES.get(str(m), str(m)) for m in methods))
    return f"{name.replace(' (', chr(10) + '(')}\n(trained probe;\nthis audit:\n{used} probe)"
