"""Output folders that cannot be written: one line naming the path, exit status 2, nothing lost.

Tests run as root in CI, where permissions do not stop a write: "not writable" and "disk full" are
simulated by monkeypatching ``os.access`` and the writes themselves to fail with the real errno.
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest

from sdaudit.cli import app
from tests.cli_helpers import fails_with_one_line, runner
from sdaudit.errors import OutputPathError

@pytest.fixture
def images(tmp_path):
    from tests.conftest import photo_folder

    return photo_folder(tmp_path / "imgs", 3)


def commands(images, out, tmp_path):
    """Every command with an --out folder, writing to ``out``."""
    (tmp_path / "r1").mkdir(exist_ok=True)
    return {
        "extract": ["extract", "-m", "tiny", "-i", images, "--out", out, "--size", "64", "-l", "conv_in"],
        "audit": ["audit", "-m", "tiny", "-i", images, "--out", out, "--size", "64", "-l", "conv_in"],
        "dataset": ["dataset", "imagenet-subset", images, "--out", out],
        "demo": ["demo", "--out", out, "--size", "64"],
        "report": ["report", tmp_path / "r1", tmp_path / "r2", "--out", out],
    }


COMMANDS = ["extract", "audit", "dataset", "demo", "report"]


@pytest.mark.parametrize("command", COMMANDS)
def test_out_that_is_a_file_is_one_line(command, tmp_path, images):
    out = tmp_path / "thesis.pdf"
    out.write_bytes(b"%PDF precious")
    line = fails_with_one_line(commands(images, out, tmp_path)[command], "--out")
    assert str(out) in line and "is a file" in line
    assert out.read_bytes() == b"%PDF precious"


@pytest.mark.parametrize("command", COMMANDS)
def test_out_under_a_file_is_one_line(command, tmp_path, images):
    (tmp_path / "notes.txt").write_text("x")
    out = tmp_path / "notes.txt" / "run"
    line = fails_with_one_line(commands(images, out, tmp_path)[command], "--out")
    assert str(out) in line and "notes.txt is a file" in line


@pytest.mark.parametrize("command", COMMANDS)
def test_out_that_is_not_writable_is_one_line(command, tmp_path, images, monkeypatch):
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: (Path(path) != locked and real_access(path, mode, **kw)))
    line = fails_with_one_line(commands(images, locked / "run", tmp_path)[command], "--out")
    assert f"{locked} is not writable" in line
    assert list(locked.iterdir()) == []


def test_disk_full_during_audit_is_one_line_and_loses_nothing(tmp_path, images, monkeypatch):
    """results.json cannot be written (ENOSPC): one line naming the output, the checkpoint survives, and
    the rerun (space freed) finishes from it without running the model again."""
    out = tmp_path / "audit"
    args = ["audit", "-m", "tiny", "-i", images, "--out", out, "--size", "64", "-l", "conv_in,conv_out",
            "--analyses", "position,anomalies", "--anomaly-layer", "conv_out"]
    real_replace = os.replace

    def full_disk(src, dst, **kw):
        if Path(dst).name == "results.json":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # as a write() reports it: no file name
        return real_replace(src, dst, **kw)

    monkeypatch.setattr(os, "replace", full_disk)
    line = fails_with_one_line(args, "No space left on device")
    assert line.startswith("error: cannot write") and str(out) in line
    assert (out / ".checkpoint.npz").is_file() and not (out / "results.json").exists()
    monkeypatch.setattr(os, "replace", real_replace)
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    passes = json.loads((out / "results.json").read_text())["run"]["passes"]
    assert passes[0]["resumed_at"] == 3  # all three images came from the checkpoint


def test_disk_full_while_drawing_figures_is_one_line(tmp_path, monkeypatch):
    """The report's figures cannot be saved (ENOSPC from matplotlib): one line naming the file."""
    import matplotlib.figure

    from tests.test_report import fake_results

    run = tmp_path / "run"
    run.mkdir()
    (run / "results.json").write_text(json.dumps(fake_results()))

    def full_disk(self, fname, *args, **kw):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(fname))

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", full_disk)
    line = fails_with_one_line(["report", run], "No space left on device")
    assert f"cannot write {run}" in line


def test_only_output_errors_become_one_line():
    """Permission errors of files outside the outputs (an unreadable input) and other OSErrors are not
    disguised as output errors: they keep their type (and, for bugs, their traceback)."""
    from sdaudit.validation import output_errors

    out = Path("/tmp/some-out")
    with pytest.raises(OutputPathError, match="cannot write /tmp/some-out/figures/a.png: Permission denied"):
        with output_errors(out):
            raise PermissionError(errno.EACCES, "Permission denied", "/tmp/some-out/figures/a.png")
    with pytest.raises(OutputPathError, match="cannot write /tmp/some-out: Read-only file system"):
        with output_errors(out):
            raise OSError(errno.EROFS, "Read-only file system")
    with pytest.raises(PermissionError):
        with output_errors(out):
            raise PermissionError(errno.EACCES, "Permission denied", "/data/photos/private")
    with pytest.raises(ConnectionResetError):
        with output_errors(out):
            raise ConnectionResetError(errno.ECONNRESET, "reset")
