"""Reporting: figures and a self-contained HTML page from an audit's output folder.

    from sdaudit.report import build_report
    build_report([Path("runs/sd15")])                          # runs/sd15/figures/*, runs/sd15/report.html
    build_report([Path("runs/sd15"), Path("runs/sd21")])       # runs/report-compare/report.html
    build_report([Path("runs/sd15")], compare_paper=True)      # overlay the published curves

Nothing here needs a model or torch: everything is redrawn from ``results.json`` and ``maps.npz``.
"""

from __future__ import annotations

from pathlib import Path

from ..audit_results import RESULTS_NAME, ResultsNotFoundError
from ..errors import UsageError
from .figures import norm_key, quantitative_figure, save_figure
from .qualitative import qualitative_figure
from .paper import load_paper_results, paper_as_results, paper_model_key

COMPARE_DIRNAME = "report-compare"


def default_compare_dir(result_dirs: list[Path]) -> Path:
    """Where a comparison goes without ``out``: ``report-compare/`` beside the first audit folder
    (in its parent), so that ``sdaudit report runs/sd15 runs/sd21`` writes ``runs/report-compare/``."""
    return Path(result_dirs[0]).resolve().parent / COMPARE_DIRNAME


def build_report(result_dirs: list[Path], out: Path | None = None, compare_paper: bool = False,
                 labels: list[str] | None = None) -> Path:
    """Turn audit folders into figures and pages; returns the path of the page written.

    One folder: redraws ``DIR/figures/quantitative.{svg,png}`` (and ``qualitative.*`` when
    ``DIR/maps.npz`` exists) and writes ``DIR/report.html``; ``out`` is not used. Several
    folders: one comparison figure (all runs aligned on layer names) at
    ``OUT/figures/comparison.{svg,png}`` and a page ``OUT/report.html``; ``out`` defaults to
    :func:`default_compare_dir`. ``compare_paper``: overlay the published curves of the same model
    (sd15, sd21, sd-turbo; SD-1.5's at the matching layer names of any other model) and compare the
    numbers. ``labels``: one name per folder for a comparison (default: the folder names).
    """
    from .html import render_comparison, render_report

    dirs = [Path(d) for d in result_dirs]
    if not dirs:
        raise UsageError("build_report needs at least one audit folder")
    for d in dirs:
        if not (d / RESULTS_NAME).is_file():
            raise ResultsNotFoundError(f"'{d}' is not an audit folder: it has no {RESULTS_NAME}")
    if len(dirs) == 1:
        if labels:
            raise UsageError("--label names the runs of a comparison: give it with several audit folders")
        return render_report(dirs[0], compare_paper=compare_paper)
    return render_comparison(dirs, Path(out) if out is not None else default_compare_dir(dirs),
                             compare_paper=compare_paper, labels=labels)


__all__ = [
    "build_report",
    "default_compare_dir",
    "load_paper_results",
    "norm_key",
    "paper_as_results",
    "paper_model_key",
    "qualitative_figure",
    "quantitative_figure",
    "save_figure",
]
