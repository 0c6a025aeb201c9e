"""Axes and labels shared by the report's figures: layer alignment, the layer axis, log-2 panels, text.

Nothing here knows which analysis a panel shows; :mod:`.figure_panels` draws the panels with these.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter, NullLocator

from ..audit_results import AuditResults, LayerRow

_NICE_TICKS = (0.125, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0)


def short_block(block: str) -> str:
    """``down_blocks[2]`` -> ``down2``, ``mid_block`` -> ``mid``, ``conv_in`` -> ``in``."""
    m = re.fullmatch(r"(down|up)_blocks\[(\d+)\]", block)
    if m:
        return f"{m.group(1)}{m.group(2)}"
    return {"mid_block": "mid", "conv_in": "in", "conv_out": "out"}.get(block, block)


def mpl_text(text: Any) -> str:
    """User text made safe for matplotlib: a ``$`` would start mathtext."""
    return str(text).replace("$", r"\$")


def run_label(run: AuditResults, default: str = "run") -> str:
    """A run's name in legends and titles: its label, else its model's name, else ``default``."""
    return str(run.label or run.model.name or default)


def unique_labels(labels: Sequence[str]) -> list[str]:
    """``labels`` with repeats numbered (``sd15``, ``sd15 #2``)."""
    seen: dict[str, int] = {}
    out = []
    for lab in labels:
        seen[lab] = seen.get(lab, 0) + 1
        out.append(lab if seen[lab] == 1 else f"{lab} #{seen[lab]}")
    return out


def align_layers(tables: Sequence[Sequence[LayerRow]]) -> list[str]:
    """Union of the layer names of several tables, in the first table's order.

    A layer only in a later table is put right after the layer that precedes it there (e.g.
    ``up_blocks[0].resnets[2]`` of the 46-layer set lands after ``up_blocks[0].resnets[1]``)."""
    order: list[str] = []
    for table in tables:
        names = [r.layer for r in table]
        for i, name in enumerate(names):
            if name in order:
                continue
            prev = next((names[j] for j in range(i - 1, -1, -1) if names[j] in order), None)
            order.insert(order.index(prev) + 1 if prev is not None else 0, name)
    return order


def chance_series(table: Sequence[LayerRow], layers: Sequence[str], s: int) -> np.ndarray:
    """Chance accuracy at ``s`` per layer (``probe_chance_s``, else 1 / min(s, grid)); NaN where unknown."""
    by = {r.layer: r for r in table}
    values = [by[name].chance(s) if name in by else None for name in layers]
    return np.array([np.nan if v is None else v for v in values], dtype=float)


def block_spans(blocks: Sequence[str]) -> list[tuple[str, int, int]]:
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


def log2_axis(ax) -> None:
    ax.set_yscale("log", base=2)
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())


def fit_log_limits(ax, arrays: Sequence[np.ndarray]) -> None:
    """y limits of a log-2 panel: cover the positive finite values and 1, with a margin; ticks at
    powers of two (and 0.75, 1.5, 3, ... when the range spans few octaves)."""
    vals = np.concatenate([a[np.isfinite(a) & (a > 0)] for a in arrays] + [np.array([1.0])])
    lo, hi = float(vals.min()), float(vals.max())
    # a margin that grows with the range: on a panel spanning many octaves 0.2 octave is less than a marker
    margin = max(0.2, 0.04 * (np.log2(hi) - np.log2(lo)))
    lo, hi = 2 ** (np.log2(lo) - margin), 2 ** (np.log2(hi) + margin)
    ax.set_ylim(lo, hi)
    octaves = np.log2(hi) - np.log2(lo)
    if octaves <= 3.0 and lo >= 0.1 and hi <= 16:
        ticks = [t for t in _NICE_TICKS if lo <= t <= hi]
    else:
        ticks = list(2.0 ** np.arange(np.ceil(np.log2(lo)), np.floor(np.log2(hi)) + 1))
    ax.yaxis.set_major_locator(FixedLocator(ticks))
    ax.yaxis.set_minor_locator(NullLocator())
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))


def mark_off_scale(ax, x: np.ndarray, values: np.ndarray, color, slot: int = 0) -> bool:
    """Values <= 0 cannot be drawn on a log axis: mark them at the bottom edge instead (one
    height ``slot`` per series, so that markers of several series stay visible)."""
    bad = np.isfinite(values) & (values <= 0)
    if bad.any():
        ax.plot(x[bad], np.full(bad.sum(), 0.035 + 0.055 * slot), ls="none", marker="v", ms=5, color=color,
                transform=ax.get_xaxis_transform(), clip_on=False, zorder=5)
    return bool(bad.any())


def no_data(ax, text: str) -> None:
    ax.text(0.5, 0.72, text, transform=ax.transAxes, ha="center", va="center", color="0.4", fontsize=10,
            bbox={"facecolor": "white", "edgecolor": "0.8", "boxstyle": "round,pad=0.4"})


def _block_labels(spans, per_layer_pt: float) -> tuple[list[str], float]:
    """Block names that fit under their layers: full names, else short ones (down2, mid, in), shrunk to fit."""
    size = 9.0

    def fits(labels):
        return all(_text_width_pt(lab, size) <= (e - s + 1) * per_layer_pt for lab, (_, s, e) in zip(labels, spans))
    labels = [b for b, _, _ in spans]
    if not fits(labels):
        labels = [short_block(b) for b, _, _ in spans]
    while not fits(labels) and size > 5.5:
        size -= 0.5
    return labels, size


def layer_axis(fig: Figure, ax, kinds: Sequence[str], blocks: Sequence[str], width_in: float) -> None:
    """Kind labels under every layer, block names centred under their layers, separators."""
    n = len(kinds)
    kind_size = 8.0
    ax.set_xticks(np.arange(n))
    ax.set_xticklabels(kinds, rotation=90, fontsize=kind_size)
    ax.tick_params(axis="x", length=2.5, pad=1.5)
    spans = block_spans(blocks)
    labels, size = _block_labels(spans, max(6.0, ax.get_position().width * width_in * 72 / max(n, 1)))
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
