"""Helpers shared by the command-line tests."""

from __future__ import annotations

from typer.testing import CliRunner

from sdaudit.cli import app

runner = CliRunner()


def fails_with_one_line(args, needle: str) -> str:
    """Run the CLI; assert exit 2, no traceback, and exactly one output line holding ``needle``."""
    result = runner.invoke(app, [str(a) for a in args])
    text = result.output
    assert result.exit_code == 2, text
    assert isinstance(result.exception, SystemExit) and "Traceback" not in text, text
    lines = [line for line in text.splitlines() if needle in line]
    assert len(lines) == 1, text
    return lines[0]


def layer_table_rows(output: str) -> dict[str, tuple[int, str]]:
    """{layer: (channels, grid)} from the rich table that ``sdaudit layers`` prints."""
    rows = {}
    for line in output.splitlines():
        cells = [c.strip() for c in line.split("│")[1:-1]]
        if len(cells) == 7 and cells[0].isdigit():
            rows[cells[1]] = (int(cells[4]), cells[5])
    return rows
