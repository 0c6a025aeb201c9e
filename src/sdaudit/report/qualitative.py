"""The paper's Fig. 1/3: similarity maps to marked tokens and token-norm maps over the shown images.

:func:`qualitative_figure` lays out one row per map (and the inputs on top), one column per shown
image; each step (the rows, the layout, the inputs, a map row and its marks) is its own function.
:mod:`sdaudit.report` exports :func:`qualitative_figure`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from ..audit_results import AuditResults
from ..layer_names import norm_key
from .figure_axes import mpl_text, run_label

# fixed layout (inches): row labels | k panels | colour bar with its label
_PANEL, _GAP, _LEFT, _CB_GAP, _CB_W, _RIGHT, _TOP = 1.85, 0.08, 0.62, 0.1, 0.13, 0.85, 0.42
_DEFAULT_SIZE = 512


@dataclass
class _MapRow:
    """One row of maps: a similarity example (with its reference token) or a layer's token norms."""

    kind: str  # "example" or "norm"
    data: np.ndarray  # (images, n, n)
    layer: str
    title: str
    measure: str
    ref: list[int] | None = None


@dataclass
class _Layout:
    fig: Figure
    axes: np.ndarray  # (rows, k) map axes
    colorbars: list[Any]
    width: float
    height: float


def _load_maps(maps_npz: Any) -> Mapping[str, np.ndarray]:
    if maps_npz is None:
        return {}
    if isinstance(maps_npz, (str, Path)):
        with np.load(maps_npz, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    if hasattr(maps_npz, "files"):  # an open NpzFile
        return {k: maps_npz[k] for k in maps_npz.files}
    return maps_npz


def anomaly_layer(results: AuditResults | Mapping[str, Any]) -> str | None:
    """The layer whose anomalies the figure outlines."""
    return AuditResults.coerce(results).anomaly_layer


def _map_rows(results: AuditResults, maps: Mapping[str, np.ndarray]) -> list[_MapRow]:
    """The similarity examples, then the norm layers, that maps.npz holds."""
    info = results.maps
    if info is None:
        return []
    rows = [_MapRow("example", np.asarray(maps[ex.key], dtype=np.float32), ex.layer, ex.title or ex.id or "",
                    ex.measure or "", ex.ref) for ex in info.examples if ex.key and ex.key in maps]
    rows += [_MapRow("norm", np.asarray(maps[norm_key(layer)], dtype=np.float32), layer, "Token norm", "L2 norm")
             for layer in info.norm_layers if norm_key(layer) in maps]
    return rows


def _layout(n_rows: int, k: int, with_inputs: bool) -> _Layout:
    """Axes placed by hand (inches): the panels of each row, and a colour bar at the row's end."""
    head = 0.36 if with_inputs else 0.0
    width = _LEFT + k * _PANEL + (k - 1) * _GAP + _CB_GAP + _CB_W + _RIGHT
    height = _TOP + head + n_rows * _PANEL + (n_rows - 1) * _GAP + 0.1
    fig = Figure(figsize=(width, height))
    axes = np.empty((n_rows, k), dtype=object)
    colorbars: list[Any] = []
    for i in range(n_rows):
        y0 = height - _TOP - head - (i + 1) * _PANEL - i * _GAP
        for j in range(k):
            x0 = _LEFT + j * (_PANEL + _GAP)
            axes[i, j] = fig.add_axes((x0 / width, y0 / height, _PANEL / width, _PANEL / height))
        x_cb = _LEFT + k * _PANEL + (k - 1) * _GAP + _CB_GAP
        colorbars.append(fig.add_axes((x_cb / width, (y0 + 0.08 * _PANEL) / height, _CB_W / width,
                                       0.84 * _PANEL / height)))
    return _Layout(fig, axes, colorbars, width, height)


def _draw_inputs(axes_row, inputs: np.ndarray, results: AuditResults, size: int) -> None:
    """The top row: each shown image, titled with its index and file name."""
    shown = list(results.maps.images if results.maps is not None else [])
    for j, ax in enumerate(axes_row):
        if j >= len(inputs):
            continue
        ax.imshow(inputs[j], extent=(0, size, size, 0), interpolation="bilinear")
        idx = shown[j] if j < len(shown) else j
        src = results.image_source(idx)
        name = Path(str(src)).name if src else ""
        name = name if len(name) <= 22 else name[:10] + "…" + name[-10:]
        ax.set_title(mpl_text(f"image {idx}" + (f"\n{name}" if name else "")), fontsize=7.5)
    axes_row[0].set_ylabel("input", fontsize=8.5)


def _mark_reference(ax, ref: list[int], ts: float, size: int) -> None:
    """A red square on the example's reference token (row ``ref[1]``, column ``ref[2]``)."""
    _, rr, cc = (int(v) for v in ref)
    if ts * 72 * _PANEL / size > 9:  # big tokens: outline the token itself
        for ec, lw in (("white", 2.8), ("red", 1.4)):
            ax.add_patch(Rectangle((cc * ts, rr * ts), ts, ts, fill=False, ec=ec, lw=lw))
    else:  # small tokens: a square marker around the token, visible at any grid size
        cx, cy = (cc + 0.5) * ts, (rr + 0.5) * ts
        ax.plot([cx], [cy], marker="s", ms=9, mfc="none", mec="white", mew=2.6)
        ax.plot([cx], [cy], marker="s", ms=9, mfc="none", mec="red", mew=1.4)


def _mark_anomalies(ax, anomalies: np.ndarray, image: int, ats: float) -> None:
    """Cyan 2x2-token boxes on the detected anomalies of shown image ``image``."""
    for pos, ax_x, ax_y in np.asarray(anomalies).reshape(-1, 3):
        if int(pos) == image:
            ax.add_patch(Rectangle((int(ax_x) * ats, int(ax_y) * ats), 2 * ats, 2 * ats, fill=False, ec="#00e5ff",
                                   lw=1.3))


def _draw_row(axes_row, row: _MapRow, size: int, marks: tuple[np.ndarray | None, int | None]):
    """One row of maps on a shared colour scale; returns its last image (for the colour bar), or None."""
    data = row.data[:len(axes_row)]
    finite = data[np.isfinite(data)]
    vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    cmap = "magma" if row.kind == "norm" else "viridis"
    anomalies, a_grid = marks
    im = None
    for j, ax in enumerate(axes_row[:len(data)]):
        im = ax.imshow(data[j], extent=(0, size, size, 0), cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
        n = data.shape[-1]
        if row.kind == "example" and row.ref is not None and len(row.ref) == 3 and int(row.ref[0]) == j:
            _mark_reference(ax, row.ref, size / n, size)
        if anomalies is not None and len(anomalies):
            _mark_anomalies(ax, anomalies, j, size / (a_grid or n))
    axes_row[0].set_ylabel(mpl_text(f"{row.title}\n{row.layer}"), fontsize=7.5)
    return im


def _colorbar(layout: _Layout, i: int, im, label: str) -> None:
    cb = layout.fig.colorbar(im, cax=layout.colorbars[i])
    cb.ax.tick_params(labelsize=7)
    cb.set_label(mpl_text(label), fontsize=7.5)


def _finish_axes(layout: _Layout, size: int) -> None:
    """Bare panels with thin grey frames; colour-bar axes without a colour bar (the inputs' row) hidden."""
    for ax in layout.axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
        for sp in ax.spines.values():
            sp.set_linewidth(0.5)
            sp.set_color("0.6")
        ax.set_xlim(0, size)
        ax.set_ylim(size, 0)
    for cax in layout.colorbars:
        if not cax.collections and not cax.images:
            cax.set_visible(False)


def qualitative_figure(results: AuditResults | Mapping[str, Any], maps_npz: Any, max_images: int = 8) -> Figure | None:
    """The paper's Fig. 1/3: the shown images (top row), then one row per similarity example
    (position, corner, anomaly, semantic, ...) and per norm layer; columns are the shown images.

    Each map row shares one colour scale (colour bar on the right). The reference token of an
    example is marked with a red square in its image's column; on the anomaly layer's norm row
    the detected anomalies are outlined as 2x2-token rectangles. ``maps_npz``: a path, an open
    ``np.load`` result or a dict of arrays. Returns None when there is nothing to show.
    """
    results = AuditResults.coerce(results)
    maps = _load_maps(maps_npz)
    inputs, rows = maps.get("inputs"), _map_rows(results, maps)
    if not rows and inputs is None:
        return None
    k = min(max([len(r.data) for r in rows] + ([len(inputs)] if inputs is not None else [])), max_images)
    size = int(inputs.shape[1]) if inputs is not None else int(results.image_size or _DEFAULT_SIZE)
    layout = _layout(len(rows) + (inputs is not None), k, inputs is not None)
    r0 = 0
    if inputs is not None:
        _draw_inputs(layout.axes[0], inputs, results, size)
        r0 = 1
    a_layer, anomalies = results.anomaly_layer, maps.get("anomalies")
    for i, row in enumerate(rows):
        outlined = row.kind == "norm" and row.layer == a_layer and anomalies is not None
        marks = (anomalies, results.layer_grid(a_layer)) if outlined else (None, None)
        im = _draw_row(layout.axes[r0 + i], row, size, marks)
        if im is not None:
            _colorbar(layout, r0 + i, im, row.measure + (f"\n(□ {len(anomalies)} anomalies)" if outlined else ""))
    _finish_axes(layout, size)
    fig, width, height = layout.fig, layout.width, layout.height
    fig.suptitle(mpl_text(f"{run_label(results, 'model')}: similarity maps (red square: reference token) and token "
                          "norms"), fontsize=10, x=0.1 / width, y=1 - 0.08 / height, ha="left", va="top")
    return fig
