"""One family of user errors, and the command line's contract for them.

A mistake the user can fix (a :class:`~sdaudit.errors.SdauditError`, or a path that is missing, unreadable
or of the wrong kind) prints one line and exits with status 2; ``--debug`` adds the traceback. Anything
else is a bug: it keeps its traceback, even when it happens to be a ``ValueError`` or ``KeyError``.
"""

from __future__ import annotations

import errno
import importlib
import inspect
import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import sdaudit
from sdaudit.cli import app
from sdaudit.errors import SdauditError
from tests.cli_helpers import fails_with_one_line, runner

SRC = Path(__file__).resolve().parents[1] / "src"

#: Exceptions that are not the user's to fix, each with the reason.
NOT_USER_ERRORS = {
    "sdaudit.models.hooks._StopForward": "control flow: ends a forward pass once every hook has fired",
    "sdaudit.explorer.limits.BodyError": "an HTTP 413/408 answered to the browser, never reaches the command line",
}


def _package_exceptions() -> dict[str, type]:
    """Every exception class defined in sdaudit's modules, by qualified name."""
    found = {}
    for info in pkgutil.walk_packages(sdaudit.__path__, prefix="sdaudit."):
        if info.name == "sdaudit.__main__":  # importing it runs the command line
            continue
        module = importlib.import_module(info.name)
        for name, obj in vars(module).items():
            if inspect.isclass(obj) and issubclass(obj, BaseException) and obj.__module__ == info.name:
                found[f"{info.name}.{name}"] = obj
    return found


def test_every_error_class_is_a_sdaudit_error():
    """New error classes join the family: each one defined in the package derives from SdauditError, except
    the listed internal ones; the old bases stay, so ``except ValueError`` in user code still works."""
    classes = _package_exceptions()
    outside = sorted(name for name, cls in classes.items() if not issubclass(cls, SdauditError))
    assert outside == sorted(NOT_USER_ERRORS), outside
    old_bases = {"LayerError": ValueError, "BadImageError": ValueError, "ModelSpecError": ValueError,
                 "ModelNotAvailableError": RuntimeError, "LabelFileError": ValueError, "NonFiniteInputError": ValueError,
                 "StoreError": RuntimeError, "UsageError": ValueError, "OutputPathError": OSError}
    by_name = {name.rsplit(".", 1)[1]: cls for name, cls in classes.items()}
    for name, base in old_bases.items():
        assert issubclass(by_name[name], SdauditError) and issubclass(by_name[name], base), name
    assert "ExplorerError" in by_name and "SourceChangedError" in by_name


@pytest.mark.parametrize("bug", [ValueError("a bug's message"), KeyError("a bug's key")])
def test_an_internal_bug_keeps_its_traceback(bug, monkeypatch):
    """A ValueError or KeyError from inside sdaudit is not taken for the user's mistake."""
    import sdaudit.models

    def broken(*args, **kwargs):
        raise bug

    monkeypatch.setattr(sdaudit.models, "load_denoiser_config", broken)
    result = runner.invoke(app, ["layers", "--model", "tiny"])
    assert result.exit_code == 1 and result.exception is bug, result.output
    assert "error:" not in result.output


def test_an_internal_bug_prints_its_traceback_in_a_real_process():
    """As a user sees it: the whole traceback on stderr, exit status 1 (not the user error's 2)."""
    script = ("import sdaudit.models as m\n"
              "def broken(*a, **k): raise KeyError('unet config key')\n"
              "m.load_denoiser_config = broken\n"
              "from sdaudit.cli import app\n"
              "app(['layers', '--model', 'tiny'], prog_name='sdaudit')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 1, done.stderr
    assert "Traceback (most recent call last)" in done.stderr and "in broken" in done.stderr
    assert "KeyError: 'unet config key'" in done.stderr and "error:" not in done.stderr


def test_a_user_error_is_one_line_and_debug_adds_its_traceback():
    line = fails_with_one_line(["layers", "--model", "nonsense-model"], "unknown model")
    assert line.startswith("error: ")
    result = runner.invoke(app, ["--debug", "layers", "--model", "nonsense-model"])
    assert result.exit_code == 2, result.output
    assert "Traceback (most recent call last)" in result.output and "ModelSpecError" in result.output
    assert result.output.rstrip().splitlines()[-1].startswith("error: ") and "unknown model" in result.output


@pytest.mark.parametrize("error", [
    FileNotFoundError(errno.ENOENT, "No such file or directory", "/data/missing.png"),
    PermissionError(errno.EACCES, "Permission denied", "/data/private.png"),
    NotADirectoryError(errno.ENOTDIR, "Not a directory", "/data/file.png/x"),
    IsADirectoryError(errno.EISDIR, "Is a directory", "/data/folder"),
])
def test_a_path_error_is_one_line_naming_the_path(error, monkeypatch, tmp_path):
    import sdaudit.report

    def raising(*args, **kwargs):
        raise error

    monkeypatch.setattr(sdaudit.report, "build_report", raising)
    line = fails_with_one_line(["report", tmp_path], error.filename)
    assert line.startswith("error: ") and error.strerror in line


def test_other_os_errors_are_not_taken_for_path_errors(monkeypatch, tmp_path):
    """A broken connection or an I/O error is not the user's to fix: its traceback stays."""
    import sdaudit.report

    def raising(*args, **kwargs):
        raise ConnectionResetError(errno.ECONNRESET, "Connection reset by peer")

    monkeypatch.setattr(sdaudit.report, "build_report", raising)
    result = runner.invoke(app, ["report", str(tmp_path)])
    assert result.exit_code == 1 and isinstance(result.exception, ConnectionResetError), result.output


def test_a_missing_input_folder_is_one_line(tmp_path):
    """A path error raised by sdaudit itself, without monkeypatching: report of a folder that has no results."""
    line = fails_with_one_line(["report", tmp_path / "no-such-run"], "no-such-run")
    assert "results.json" in line


def test_entry_point_and_module_run():
    """``sdaudit`` (the console script of pyproject.toml) is the typer app; ``python -m sdaudit --help`` works."""
    import tomllib

    pyproject = tomllib.loads((SRC.parent / "pyproject.toml").read_text(encoding="utf-8"))
    module, attribute = pyproject["project"]["scripts"]["sdaudit"].split(":")
    assert getattr(importlib.import_module(module), attribute) is app
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-m", "sdaudit", "--help"], capture_output=True, text=True, env=env,
                          timeout=300)
    assert done.returncode == 0 and "extract" in done.stdout and "--debug" in done.stdout, done.stderr
