"""What the CLI prints after a command: the extraction's and the audit's summaries, the caveats that qualify the
numbers, the closing summary and the images skipped (the commands themselves are in :mod:`sdaudit.cli`)."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.markup import escape

from .cli_contract import err_console

console = Console()


def print_extraction(report, out: Path, elapsed: float) -> None:
    """What an extraction did: images added and present, skipped, repaired and left damaged."""
    store = report.store
    console.print(f"[green]store[/] {store.path}: {store.num_images} images x {len(store.layers)} layers "
                  f"({report.added} added, {report.already_present} already present) in {elapsed:.1f} s")
    print_errors(report.errors)
    if report.repaired:
        console.print(f"repaired {len(report.repaired)} damaged image(s) in place: {report.repaired[:20]}")
    if report.unrepaired:
        err_console.print(f"[yellow]{len(report.unrepaired)} damaged image(s) not repaired[/] (their images were not "
                          f"given): {list(report.unrepaired)[:20]}; see 'sdaudit verify {out}'", highlight=False)


def print_audit(written: dict, out: Path, elapsed: float) -> None:
    """The audit's summary: what ran, what qualifies the numbers, what was skipped, where the report is."""
    from .audit_results import AuditResults

    results = AuditResults.coerce(written)
    per_run = f" in each of {results.n_runs} runs (timesteps, noise seeds, controls)" if results.n_runs > 1 else ""
    when = f"on {results.created}" if written_before(results.created, elapsed) else f"in {elapsed:.1f} s"
    console.print(f"[green]audited[/] {len(results.images)} images x {len(results.layers)} layers "
                  f"with {results.unet_passes_per_image} denoiser passes per image{per_run} {when}")
    print_caveats(results)
    print_errors(results.skipped())
    if results.non_finite:  # named here too: these layers have no numbers, maps or figures
        err_console.print(f"[yellow]{len(results.non_finite)} layer(s) with NaN/Inf values, not analysed:[/] "
                          + escape(", ".join(results.non_finite)), highlight=False)
    print_closing(results)
    console.print(f"report: [bold]{Path(out) / 'report.html'}[/]")


def written_before(created: str | None, elapsed: float) -> bool:
    """Whether results created at ``created`` (ISO, UTC) predate this command: a finished audit found again."""
    from datetime import datetime, timedelta, timezone

    try:
        written = datetime.strptime(created or "", "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
    except ValueError:
        return False
    return written < datetime.now(timezone.utc) - timedelta(seconds=elapsed + 1)


def print_closing(results) -> None:
    """The closing summary: verdict counts, the strongest layer per artifact, warnings (part of _print_audit)."""
    from .terminal import closing_summary

    for line in closing_summary(results):
        console.print(line, markup=False, highlight=False, soft_wrap=True)


def print_caveats(results) -> None:
    """What qualifies every number (an :class:`~sdaudit.audit_results.AuditResults`): random weights, controls
    run, the audit's own warnings."""
    from .audit.caveats import caveats

    for line in caveats(results):
        err_console.print(line, markup=False, highlight=False, soft_wrap=True)


def print_errors(errors) -> None:
    """The images skipped (``--skip-bad``), one line each, their names printed as they are."""
    if errors:
        err_console.print(f"[yellow]{len(errors)} image(s) skipped:[/]")
        for source, reason in errors:
            err_console.print(f"  {escape(str(source))}: {escape(str(reason))}", highlight=False)
