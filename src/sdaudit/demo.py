"""The offline demo: the full audit of the bundled sample photos with the ``tiny`` model."""

from __future__ import annotations

import time
from pathlib import Path

from .audit_results import ANOMALY_MEAN, AuditResults
from .constants import RESOLUTIONS
from .terminal import Stages, closing_summary


def run_demo(out: str | Path = "sdaudit-demo", size: int = 256, console=None) -> Path:
    """Audit the demo photos with ``tiny`` at ``size`` px (all three analyses and the maps) into ``out``.

    Returns the path of ``report.html``. Rerunning resumes an interrupted demo or, when finished, says so
    and recomputes nothing. Every stage prints a line with its time; a closing summary ends the output.
    """
    from rich.console import Console

    from .images import demo_image_paths

    console = console or Console()
    stages = Stages(console)
    out = Path(out)
    paths = demo_image_paths()
    console.print(f"sdaudit demo: {len(paths)} sample photographs, tiny model (random weights, SD-1.5 layout) "
                  f"at {size} px, the paper's 45 layers")
    start = time.perf_counter()
    with stages("importing torch and diffusers", done="imports"):
        from .audit import AuditSettings, audit
        from .audit.caveats import caveats
        from .models import load_model
    with stages("loading the model", done="model loaded (tiny)"):
        model = load_model("tiny", device="cpu")
    written = audit(model, [str(p) for p in paths], out, AuditSettings(size=size, layers="paper"), console=console)
    results = AuditResults.coerce(written)
    console.print(_table(results, time.perf_counter() - start))
    tests = min((r.probe_test_images for r in results.table if r.probe_test_images), default=0)
    console.print("n.d.: not defined (the crop's grid is under 3x3); n.m.: not meaningful (reference similarity "
                  f"near zero); no interval from fewer than 5 images (the probe tests on {tests} here)",
                  highlight=False)
    for line in caveats(results):
        console.print(line, markup=False, highlight=False)
    for line in closing_summary(results):
        console.print(line, markup=False, highlight=False, soft_wrap=True)
    report = out / "report.html"
    console.print(f"report: [bold]{report.resolve()}[/]")
    return report


def _finest(grid: int) -> int:
    """The finest comparison resolution that a ``grid`` x ``grid`` layer resolves (at least the coarsest)."""
    return max(s for s in RESOLUTIONS if s <= max(min(RESOLUTIONS[-1], grid), RESOLUTIONS[0]))


def _table(results: AuditResults, elapsed: float):
    """The per-layer summary the demo prints: probe accuracy at the finest resolution, corner ratio, anomaly norm."""
    from rich.table import Table

    from .audit.caveats import ratio_text, with_interval

    table = Table(title=f"{len(results.images)} images, {len(results.layers)} layers, "
                        f"{results.unet_passes_per_image} denoiser passes per image ({elapsed:.0f} s); random weights")
    table.add_column("layer", no_wrap=True, min_width=30)
    for column in ("grid", "probe acc (finest)", "chance", "corner rel. sim. [95 % interval]", "anomaly rel. norm"):
        table.add_column(column, justify="right")
    for row in results.table:
        s = _finest(row.grid)
        table.add_row(row.layer, f"{row.grid}x{row.grid}",
                      with_interval(row.accuracy(s), *row.interval(f"probe_acc_{s}")),
                      with_interval(row.value(f"probe_chance_{s}"), None, None), ratio_text(results, row),
                      with_interval(row.value(ANOMALY_MEAN), *row.interval(ANOMALY_MEAN)))
    return table
