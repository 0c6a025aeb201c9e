"""The terminal of an audit: stage lines with times, images/s, the closing summary, degenerate-grid
warnings, and a finished audit that is not redone."""

from __future__ import annotations

import io
import json
import time

import pytest
from rich.console import Console

from sdaudit.audit import AuditSettings, audit
from sdaudit.audit.outputs import grid_warnings
from sdaudit.constants import DEGENERATE_GRID
from sdaudit.extraction import Extractor
from sdaudit.terminal import RateColumn, RemainingColumn, Stages, closing_summary

SIZE = 128
LAYERS = ["mid_block.resnets[0]", "up_blocks[3].resnets[0]"]  # a 2x2 and a 16x16 grid at 128 px


def _console() -> tuple[Console, io.StringIO]:
    buffer = io.StringIO()
    return Console(file=buffer, width=200, force_terminal=False), buffer


def _row(layer, grid, acc, chance, corner, norm):
    return {"layer": layer, "block": layer.split(".")[0], "kind": "resnet", "grid": grid,
            "probe_acc_8": acc, "probe_chance_8": chance, "corner_rel_sim": corner, "border_rel_sim": 1.0,
            "other_rel_sim": 1.0, "anomaly_rel_norm_mean": norm, "anomaly_rel_norm_std": 0.1}


def test_closing_summary_names_the_strongest_layers():
    """Verdict counts, then per artifact the strongest layer: position by accuracy over chance (a 2x2 grid's
    trivial 100 % is not taken for a positional code), corners by ratio, anomalies by relative norm."""
    table = [_row("mid_block.resnets[0]", 2, 1.0, 0.5, 1.0, 1.0),
             _row("up_blocks[1].resnets[0]", 8, 0.9, 0.125, 1.1, 3.5),
             _row("up_blocks[3].resnets[0]", 8, 0.4, 0.125, 2.6, 1.2)]
    borders = {r["layer"]: {"full": {"corner": 0.5, "border": 0.5, "other": 0.5}} for r in table}
    results = {"table": table, "borders": borders, "model": {"random_weights": True},
               "images": [{"source": f"{i}.png", "index": i, "sha256": "0" * 64, "width": 64, "height": 64}
                          for i in range(9)],
               "warnings": ["only 9 images (fewer than 100)", DEGENERATE_GRID + "1 layer(s) at 2x2"]}
    lines = closing_summary(results)
    assert 3 <= len(lines) <= 6
    assert lines[0].startswith("verdicts: ") and "(of 3 layers)" in lines[0]
    assert "position: strongest up_blocks[1].resnets[0]" in lines[1] and "90.0 % vs 12.5 % chance" in lines[1]
    assert "corners: largest ratio up_blocks[3].resnets[0] 2.60" in lines[2]
    assert "anomalies: largest relative norm up_blocks[1].resnets[0] 3.50x" in lines[3]
    assert lines[-1] == "warnings: random weights, small N (9 images), degenerate grids (1 warning)"
    none_found = {**results, "anomalies": {"layer": "up_blocks[1].resnets[0]", "count": 0, "images_with": 0,
                                           "n_images": 9}, "table": [{**r, "anomaly_rel_norm_mean": None}
                                                                     for r in table]}
    assert "anomalies: none found on up_blocks[1].resnets[0] (9 images)" in closing_summary(none_found)


def test_grid_warnings_name_degenerate_grids_and_sizes():
    at_128 = grid_warnings([("mid_block.resnets[0]", 2), ("up_blocks[3].resnets[0]", 16)], 128)
    assert all(w.startswith(DEGENERATE_GRID) for w in at_128) and len(at_128) == 2
    assert "mid_block.resnets[0]" in at_128[0] and "chance 50 %" in at_128[0] and "at 256 px" in at_128[0]
    assert "s = 32, s = 64" in at_128[1] and "at 512 px" in at_128[1]
    # the paper's size: every grid resolves its classes and some layer reaches s = 64
    assert grid_warnings([("a", 64), ("b", 32), ("c", 8)], 512) == []


def test_stages_print_a_line_with_its_time_and_are_quiet_when_disabled():
    console, buffer = _console()
    stages = Stages(console)
    with stages("loading the model", done="model loaded (tiny)"):
        pass
    with stages("checking the images") as stage:
        stage.done = "3 images checked"
    lines = buffer.getvalue().splitlines()
    assert lines[0].startswith("✓ model loaded (tiny) ") and lines[0].endswith(" s")
    assert lines[1].startswith("✓ 3 images checked ")
    quiet_console, quiet = _console()
    with Stages(quiet_console, enabled=False)("x"):
        pass
    assert quiet.getvalue() == ""


def test_rate_and_remaining_columns_show_images_per_second_after_one_batch():
    from rich.progress import Progress

    progress = Progress(RateColumn(), disable=True)
    task = progress.add_task("pass", total=10, start=False)
    assert RateColumn().render(progress.tasks[task]).plain == "- images/s"
    progress.tasks[task].finished_speed = 2.5
    assert RateColumn().render(progress.tasks[task]).plain == "2.50 images/s"
    # one batch done (rich has no estimate yet): the images done in this run over its time, not the resumed ones
    resumed = progress.add_task("pass", total=10, completed=4, resumed_at=4)
    progress.update(resumed, completed=8)
    progress.tasks[resumed].start_time = progress.get_time() - 2.0
    assert RateColumn().render(progress.tasks[resumed]).plain == "2.00 images/s"
    # and the time remaining from it, where rich's own column still says '-:--:--'
    assert RemainingColumn().render(progress.tasks[resumed]).plain == "0:00:01"


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    from tests.conftest import photo_folder

    return photo_folder(tmp_path_factory.mktemp("imgs"), 3)


def test_a_finished_audit_is_not_redone_and_leaves_no_checkpoint(tiny, folder, tmp_path, monkeypatch):
    settings = AuditSettings(size=SIZE, layers=LAYERS, analyses=["position", "borders"])
    console, buffer = _console()
    first = audit(tiny, folder, tmp_path, settings, report=False, console=console)
    assert not list(tmp_path.rglob(".checkpoint*.npz"))
    text = buffer.getvalue()
    assert "✓ 3 images checked" in text and "✓ probe fits and analyses" in text
    warnings = [w for w in first["warnings"] if w.startswith(DEGENERATE_GRID)]
    assert "mid_block.resnets[0]" in warnings[0] and "s = 32, s = 64" in warnings[1]

    def no_model(*args, **kwargs):
        raise AssertionError("a finished audit ran the model again")

    monkeypatch.setattr(Extractor, "run", no_model)
    console, buffer = _console()
    again = audit(tiny, folder, tmp_path, settings, report=False, console=console)
    assert again == json.loads((tmp_path / "results.json").read_text()) and again["table"] == first["table"]
    finished = [line for line in buffer.getvalue().splitlines() if "finished audit" in line]
    assert len(finished) == 1 and f"sdaudit report {tmp_path}" in finished[0]
    # other settings into the finished folder: audited again (here: the model runs)
    with pytest.raises(AssertionError, match="ran the model again"):
        audit(tiny, folder, tmp_path, AuditSettings(size=SIZE, layers=LAYERS, analyses=["position"]),
              report=False, progress=False)


def test_no_output_without_progress(tiny, folder, tmp_path):
    console, buffer = _console()
    audit(tiny, folder, tmp_path, AuditSettings(size=SIZE, layers=LAYERS[:1], analyses=["borders"]),
          report=False, progress=False, console=console)
    assert buffer.getvalue() == ""


def test_cli_audit_prints_stages_and_ends_with_the_closing_summary(folder, tmp_path):
    from tests.cli_helpers import runner
    from sdaudit.cli import app

    args = ["audit", "-m", "tiny", "-i", str(folder), "--out", str(tmp_path / "o"), "--size", str(SIZE),
            "-l", ",".join(LAYERS), "--analyses", "position,borders"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    for stage in ("✓ model loaded (tiny)", "✓ 3 images checked", "✓ passes prepared (2 layers, batch",
                  "✓ probe fits and analyses", "✓ figures and report page"):
        assert any(line.startswith(stage) for line in lines), result.output
    start = next(i for i, line in enumerate(lines) if line.startswith("verdicts: "))
    assert lines[start + 1].startswith("position: strongest up_blocks[3].resnets[0] (16x16)")
    assert lines[-1].startswith("report: ")
    time.sleep(1.1)  # results created in an earlier second than the rerun
    rerun = runner.invoke(app, args)
    assert rerun.exit_code == 0 and sum("finished audit" in line for line in rerun.output.splitlines()) == 1
    created = json.loads((tmp_path / "o" / "results.json").read_text())["created"]
    assert f"on {created}" in rerun.output and "denoiser passes per image in " in result.output
