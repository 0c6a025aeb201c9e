"""The paper's Fig. 1/3: similarity maps to marked tokens and token-norm maps over the shown images.

Split from :mod:`.figures`; :mod:`sdaudit.report` exports :func:`qualitative_figure`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from ..layer_names import norm_key
from .figures import mpl_text, run_label


def _load_maps(maps_npz: Any) -> Mapping[str, np.ndarray]:
    if maps_npz is None:
        return {}
    if isinstance(maps_npz, (str, Path)):
        with np.load(maps_npz, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    if hasattr(maps_npz, "files"):  # an open NpzFile
        return {k: maps_npz[k] for k in maps_npz.files}
    return maps_npz


def _layer_grid(results: Mapping[str, Any], layer: str | None) -> int | None:
    if not layer:
        return None
    anomalies = results.get("anomalies") or {}
    if anomalies.get("layer") == layer and anomalies.get("grid"):
        grid = anomalies["grid"]
        return int(grid[0] if isinstance(grid, (list, tuple)) else grid)
    for info in results.get("layers") or []:
        if info.get("name") == layer:
            h = info.get("height") or info.get("width")
            return int(h) if h else None
    for row in results.get("table") or []:
        if row.get("layer") == layer and row.get("grid"):
            return int(row["grid"])
    return None


def anomaly_layer(results: Mapping[str, Any]) -> str | None:
    return (results.get("anomalies") or {}).get("layer") or (results.get("settings") or {}).get("anomaly_layer")


def qualitative_figure(results: Mapping[str, Any], maps_npz: Any, max_images: int = 8) -> Figure | None:
    """The paper's Fig. 1/3: the shown images (top row), then one row per similarity example
    (position, corner, anomaly, semantic, ...) and per norm layer; columns are the shown images.

    Each map row shares one colour scale (colour bar on the right). The reference token of an
    example is marked with a red square in its image's column; on the anomaly layer's norm row
    the detected anomalies are outlined as 2x2-token rectangles. ``maps_npz``: a path, an open
    ``np.load`` result or a dict of arrays. Returns None when there is nothing to show.
    """
    maps = _load_maps(maps_npz)
    info = results.get("maps") or {}
    inputs = maps.get("inputs")
    rows: list[dict[str, Any]] = []
    for ex in info.get("examples") or []:
        key = ex.get("key")
        if key and key in maps:
            rows.append({"kind": "example", "data": np.asarray(maps[key], dtype=np.float32), **ex})
    a_layer = anomaly_layer(results)
    for layer in info.get("norm_layers") or []:
        key = norm_key(layer)
        if key in maps:
            rows.append({"kind": "norm", "data": np.asarray(maps[key], dtype=np.float32), "layer": layer,
                         "title": "Token norm", "measure": "L2 norm"})
    if not rows and inputs is None:
        return None
    k = max([len(r["data"]) for r in rows] + ([len(inputs)] if inputs is not None else []))
    k = min(k, max_images)
    if inputs is not None:
        size = int(inputs.shape[1])
    else:
        size = int(results.get("settings", {}).get("size") or 512)
    shown = list(info.get("images") or range(k))
    sources = {int(im.get("index", -1)): im for im in results.get("images") or []}

    n_rows = len(rows) + (1 if inputs is not None else 0)
    # fixed layout (inches): row labels | k panels | colour bar with its label
    panel, gap, left, cb_gap, cb_w, right = 1.85, 0.08, 0.62, 0.1, 0.13, 0.85
    top, head = 0.42, (0.36 if inputs is not None else 0.0)
    width = left + k * panel + (k - 1) * gap + cb_gap + cb_w + right
    height = top + head + n_rows * panel + (n_rows - 1) * gap + 0.1
    fig = Figure(figsize=(width, height))
    axes = np.empty((n_rows, k), dtype=object)
    cb_axes: list[Any] = []
    for i in range(n_rows):
        y0 = height - top - head - (i + 1) * panel - i * gap
        for j in range(k):
            x0 = left + j * (panel + gap)
            axes[i, j] = fig.add_axes((x0 / width, y0 / height, panel / width, panel / height))
        x_cb = left + k * panel + (k - 1) * gap + cb_gap
        cb_axes.append(fig.add_axes((x_cb / width, (y0 + 0.08 * panel) / height, cb_w / width, 0.84 * panel / height)))
    extent = (0, size, size, 0)
    r0 = 0
    if inputs is not None:
        for j in range(k):
            ax = axes[0, j]
            if j < len(inputs):
                ax.imshow(inputs[j], extent=extent, interpolation="bilinear")
                idx = shown[j] if j < len(shown) else j
                src = sources.get(int(idx), {}).get("source")
                name = Path(str(src)).name if src else ""
                name = name if len(name) <= 22 else name[:10] + "…" + name[-10:]
                ax.set_title(mpl_text(f"image {idx}" + (f"\n{name}" if name else "")), fontsize=7.5)
        axes[0, 0].set_ylabel("input", fontsize=8.5)
        r0 = 1
    anomalies = maps.get("anomalies")
    a_grid = _layer_grid(results, a_layer)
    for i, row in enumerate(rows):
        data = row["data"][:k]
        finite = data[np.isfinite(data)]
        vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        cmap = "magma" if row["kind"] == "norm" else "viridis"
        im = None
        for j in range(k):
            ax = axes[r0 + i, j]
            if j >= len(data):
                continue
            im = ax.imshow(data[j], extent=extent, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
            n = data.shape[-1]
            ts = size / n
            ref = row.get("ref")
            if row["kind"] == "example" and ref is not None and len(ref) == 3 and int(ref[0]) == j:
                _, rr, cc = (int(v) for v in ref)
                if ts * 72 * panel / size > 9:  # big tokens: outline the token itself
                    for ec, lw in (("white", 2.8), ("red", 1.4)):
                        ax.add_patch(Rectangle((cc * ts, rr * ts), ts, ts, fill=False, ec=ec, lw=lw))
                else:  # small tokens: a square marker around the token, visible at any grid size
                    cx, cy = (cc + 0.5) * ts, (rr + 0.5) * ts
                    ax.plot([cx], [cy], marker="s", ms=9, mfc="none", mec="white", mew=2.6)
                    ax.plot([cx], [cy], marker="s", ms=9, mfc="none", mec="red", mew=1.4)
            if row["kind"] == "norm" and row["layer"] == a_layer and anomalies is not None and len(anomalies):
                ats = size / (a_grid or n)
                for pos, ax_x, ax_y in np.asarray(anomalies).reshape(-1, 3):
                    if int(pos) == j:
                        ax.add_patch(Rectangle((int(ax_x) * ats, int(ax_y) * ats), 2 * ats, 2 * ats, fill=False,
                                               ec="#00e5ff", lw=1.3))
        label = f"{row.get('title') or row.get('id') or ''}\n{row.get('layer', '')}"
        axes[r0 + i, 0].set_ylabel(mpl_text(label), fontsize=7.5)
        if im is not None:
            cb = fig.colorbar(im, cax=cb_axes[r0 + i])
            cb.ax.tick_params(labelsize=7)
            measure = row.get("measure") or ""
            if row["kind"] == "norm" and row["layer"] == a_layer and anomalies is not None:
                measure += f"\n(□ {len(anomalies)} anomalies)"
            cb.set_label(mpl_text(measure), fontsize=7.5)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
        for sp in ax.spines.values():
            sp.set_linewidth(0.5)
            sp.set_color("0.6")
        ax.set_xlim(0, size)
        ax.set_ylim(size, 0)
    for i, cax in enumerate(cb_axes):
        if not cax.collections and not cax.images:  # a row without a colour bar (the inputs)
            cax.set_visible(False)
    model = run_label(results, "model")
    fig.suptitle(mpl_text(f"{model}: similarity maps (red square: reference token) and token norms"),
                 fontsize=10, x=0.1 / width, y=1 - 0.08 / height, ha="left", va="top")
    return fig
