"""What an audit tells its user in the terminal: a line per finished stage with its time, images/s on the
passes' bars, and a closing summary of the findings (verdict counts, the strongest layer per artifact,
warnings).

A run of the U-Net can take minutes before the first bar appears (imports, model load, image checks) and
after the last one (probe fits, maps, figures): :class:`Stages` shows a spinner while a stage runs and a
line such as ``✓ model loaded (tiny) 2.1 s`` when it ends, so that nobody thinks the tool hung.
"""

from __future__ import annotations

import time
from contextlib import contextmanager

from rich.progress import ProgressColumn, TimeRemainingColumn
from rich.text import Text

from .audit_results import AuditResults
from .constants import DEGENERATE_GRID, MIN_PROBE_GRID


class Stages:
    """Spinners and ``✓ <stage> <seconds> s`` lines on ``console`` (a rich Console); silent when not ``enabled``.

    Use ``with stages("loading the model", done="model loaded (tiny)") as stage:``; the block may set
    ``stage.done`` to a line it only knows at its end; ``stages.note(text)`` prints a line.
    """

    def __init__(self, console=None, enabled: bool = True):
        if enabled and console is None:
            from rich.console import Console

            console = Console()
        self.console, self.enabled = console, enabled

    @contextmanager
    def __call__(self, doing: str, done: str | None = None):
        """A spinner saying ``doing ...`` while the block runs; ``✓ done 1.2 s`` after (nothing if it fails)."""
        stage = _Stage(done or doing)
        if not self.enabled:
            yield stage
            return
        start = time.perf_counter()
        with self.console.status(f"{doing} ..."):
            yield stage
        self.note(f"[green]✓[/] {stage.done} {time.perf_counter() - start:.1f} s")

    def note(self, text: str) -> None:
        """One line (rich markup) when enabled."""
        if self.enabled:
            self.console.print(text, highlight=False, soft_wrap=True)


class _Stage:
    """The line a stage ends with (``done``), settable from inside the stage."""

    def __init__(self, done: str):
        self.done = done


def images_per_second(task) -> float | None:
    """A rich task's speed in images per second: rich's own estimate, or, before it has one (it needs two
    updates, and one batch of images gives one), the images done in this run over its time; a task's
    ``resumed_at`` field counts the images a checkpoint held. None before anything was done."""
    speed = task.finished_speed or task.speed
    if speed is None and task.elapsed:
        speed = (task.completed - task.fields.get("resumed_at", 0)) / task.elapsed or None
    return speed


class RateColumn(ProgressColumn):
    """A progress column with the task's speed in images per second."""

    def render(self, task) -> Text:
        speed = images_per_second(task)
        return Text("- images/s" if speed is None else f"{speed:.2f} images/s", style="progress.data.speed")


class RemainingColumn(TimeRemainingColumn):
    """Rich's time remaining, from :func:`images_per_second` while rich has no estimate (after one batch)."""

    def render(self, task) -> Text:
        speed = images_per_second(task)
        if task.finished or task.time_remaining is not None or not speed or task.total is None:
            return super().render(task)
        minutes, seconds = divmod(int((task.total - task.completed) / speed), 60)
        return Text(f"{minutes // 60:d}:{minutes % 60:02d}:{seconds:02d}", style="progress.remaining")


def _position_line(results: AuditResults, verdicts: list[dict]) -> str | None:
    """The strongest positional code among layers whose grid can carry one (not a trivial 2x2)."""
    from .report.verdicts import finest_resolution

    s = finest_resolution(results.table)
    ranked = [v for v in verdicts if v.get("skill") is not None and (v.get("grid") or 0) >= MIN_PROBE_GRID]
    if s is None or not ranked:
        return None
    best = max(ranked, key=lambda v: v["skill"])
    return (f"position: strongest {best['layer']} ({best['grid']}x{best['grid']}): probe accuracy "
            f"{100 * best['acc']:.1f} % vs {100 * best['chance']:.1f} % chance at s = {s} "
            f"({min(s, best['grid'])} classes per axis)")


def _border_line(found: dict | None) -> str | None:
    """The largest readable corner and border ratios."""
    if not found or not (found["top_corner"] or found["top_border"]):
        return None
    parts = [f"{name}: largest ratio {top[0][0]} {top[0][1]:.2f}"
             for name, top in (("corners", found["top_corner"]), ("borders", found["top_border"])) if top]
    return "; ".join(parts)


def _anomaly_line(found: dict | None) -> str | None:
    """The layer with the largest relative norm of the anomaly patches, and what the detector found."""
    if found and not found["peak"] and found["count"] == 0:
        return f"anomalies: none found on {found['layer']} ({found['n_images']} images)"
    if not found or not found["peak"]:
        return None
    layer, value, _ = found["peak"]
    line = f"anomalies: largest relative norm {layer} {value:.2f}x"
    if found["count"] is not None:
        line += f" ({found['count']} found on {found['layer']} in {found['images_with']} of {found['n_images']} images)"
    return line


def _channel_line(found: dict | None) -> str | None:
    """The layer with the most massive channels (only when the "channels" analysis ran)."""
    if found is None:
        return None
    if found["top"] is None:
        return f"massive channels: none found ({found['n_measured']} layers)"
    top = found["top"]
    return (f"massive channels: most on {top['layer']} ({top['count']}: {', '.join(map(str, top['ids']))}"
            f"{', ...' if top['count'] > len(top['ids']) else ''}); {len(found['layers'])} of "
            f"{found['n_measured']} layers have some")


def _warning_line(results: AuditResults) -> str | None:
    """Random weights, few images and degenerate grids in a few words (the full warnings are printed above)."""
    words = ["random weights"] if results.random_weights else []
    if any(w.startswith("only ") for w in results.warnings):
        words.append(f"small N ({results.n_images} images)")
    degenerate = sum(w.startswith(DEGENERATE_GRID) for w in results.warnings)
    if degenerate:
        words.append(f"degenerate grids ({degenerate} warning{'s' * (degenerate > 1)})")
    return "warnings: " + ", ".join(words) if words else None


def closing_summary(results: AuditResults | dict) -> list[str]:
    """3-9 lines that end an audit's output: verdict counts, the strongest layer per artifact, warnings."""
    from .report.matching import matching_line
    from .report.mitigations import mitigation_line
    from .report.verdicts import summarize  # the report's rules (and its matplotlib) only when summarizing

    results = AuditResults.coerce(results)
    found = summarize(results)
    counts = f"verdicts: {found['n_usable']} usable, {found['n_caution']} caution, {found['n_affected']} affected"
    if found["n_failed"]:
        counts += f", {found['n_failed']} failed"
    lines = [counts + f" (of {found['n_layers']} layers)",
             _position_line(results, found["verdicts"]), _border_line(found["borders"]),
             _anomaly_line(found["anomalies"]), _channel_line(found["channels"]),
             matching_line(found["matching"]), mitigation_line(results.mitigations), _warning_line(results)]
    return [line for line in lines if line]
