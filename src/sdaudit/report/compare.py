"""What a comparison page needs beyond one run's page: run labels, the settings that make runs
incomparable, and the verdicts of every run per layer.

Two audits are only comparable when they measured the same thing the same way: a different input
size gives other grids and so other chance levels, another timestep, protocol, seed or probe gives
other numbers for the same model, and fewer images give wider intervals. :func:`run_differences`
names each such difference with every run's value, so that the page can put it in a banner above
the numbers instead of leaving the reader to find it in the settings table.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..audit_results import AuditResults
from ..errors import UsageError
from .figure_axes import unique_labels

#: (what differs, how to read it from a run) for the comparison banner, in the banner's order
COMPARED: tuple[tuple[str, Callable[[AuditResults], Any]], ...] = (
    ("image size", lambda r: r.image_size),
    ("timestep", lambda r: r.settings.get("timestep")),
    ("protocol", lambda r: r.protocol),
    ("seed", lambda r: r.settings.get("seed")),
    ("model", lambda r: r.model_name),
    ("model kind", lambda r: r.model.kind),
    ("probe method", lambda r: r.probe_method),
    ("images (N)", lambda r: r.n_images),
)

#: why each difference matters, one clause (the banner's tooltip-free explanation)
WHY = {
    "image size": "other grids, so other chance levels and other degenerate layers",
    "timestep": "other noise level, other features",
    "protocol": "other preprocessing and latents",
    "seed": "other noise and probe splits",
    "model": "other weights",
    "model kind": "other weights or architecture",
    "probe method": "probes differ in the accuracy they reach on the same features",
    "images (N)": "intervals of different width",
}


def _shown(value: Any) -> str:
    return "—" if value is None or value == "" else str(value)


def run_differences(runs: Sequence[AuditResults], labels: Sequence[str]) -> list[dict[str, Any]]:
    """Each compared setting whose value is not the same in every run: ``{"name", "why", "runs":
    [(label, value text), ...], "text"}`` (``text``: e.g. ``image size: a = 128, b = 256``)."""
    out = []
    for name, read in COMPARED:
        values = [_shown(read(r)) for r in runs]
        if len(set(values)) > 1:
            pairs = list(zip(labels, values))
            out.append({"name": name, "why": WHY[name], "runs": pairs,
                        "text": f"{name}: " + ", ".join(f"{lab} = {v}" for lab, v in pairs)})
    return out


def comparison_labels(dirs: Sequence[Path], labels: Sequence[str] | None = None) -> list[str]:
    """One label per run: ``labels`` as given (one per folder), else each folder's name; repeats numbered."""
    if labels:
        if len(labels) != len(dirs):
            raise UsageError(f"--label was given {len(labels)} time(s) for {len(dirs)} audit folders: "
                             "give one label per folder, in the same order")
        return unique_labels([str(lab) for lab in labels])
    return unique_labels([Path(d).resolve().name for d in dirs])


def verdict_cells(verdicts_per_run: Sequence[Sequence[dict[str, Any]]], layers: Sequence[str]) -> list[list[Any]]:
    """Per layer of ``layers``, each run's verdict (the dict of :func:`.verdicts.layer_verdicts`), None where absent."""
    by_run = [{v["layer"]: v for v in verdicts} for verdicts in verdicts_per_run]
    return [[table.get(name) for table in by_run] for name in layers]
