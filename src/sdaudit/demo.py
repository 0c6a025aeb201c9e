"""The offline demo: the bundled sample photos through the ``tiny`` model, summarised per layer."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np


def layer_summary(store) -> list[dict]:
    """Per layer: shape, mean token L2 norm, and the largest token norm relative to its image's median.

    Reads one layer at a time, so memory stays at one layer's worth of the store.
    """
    rows = []
    for layer in store.layers:
        x = store.read(layer).astype(np.float32)  # (N, C, h, w)
        norms = np.linalg.norm(x, axis=1)  # (N, h, w)
        median = np.median(norms.reshape(len(norms), -1), axis=1)
        peak = norms.reshape(len(norms), -1).max(axis=1) / np.maximum(median, 1e-12)
        c, h, w = store.layer_shape(layer)
        rows.append({"layer": layer, "channels": c, "grid": f"{h}x{w}", "mean_norm": float(norms.mean()),
                     "max_norm_over_median": float(peak.max())})
    return rows


def run_demo(out: str | Path, size: int = 256, console=None) -> Path:
    """Extract the demo photos with ``tiny`` into ``out/store`` (resumable) and print a per-layer table."""
    from rich.console import Console
    from rich.table import Table

    from .extraction import extract
    from .images import demo_image_paths
    from .models import load_model

    console = console or Console()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = demo_image_paths()
    console.print(f"sdaudit demo: {len(paths)} sample photographs -> tiny model at {size} px, all layers")
    start = time.perf_counter()
    model = load_model("tiny", device="cpu")
    report = extract(model, [str(p) for p in paths], out / "store", layers="all", size=size, batch_size=4)
    elapsed = time.perf_counter() - start
    table = Table(title=f"{report.store.num_images} images, {len(report.store.layers)} layers ({elapsed:.1f} s)")
    for column in ("layer", "channels", "grid", "mean token norm", "max norm / median"):
        if column == "layer":
            table.add_column(column, no_wrap=True, min_width=30)
        else:
            table.add_column(column, justify="right")
    for row in layer_summary(report.store):
        table.add_row(row["layer"], str(row["channels"]), row["grid"], f"{row['mean_norm']:.3f}",
                      f"{row['max_norm_over_median']:.2f}")
    console.print(table)
    console.print(f"representations stored in [bold]{report.store.path}[/] (open with sdaudit.open_store)")
    return report.store.path
