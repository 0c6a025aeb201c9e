"""The tests that prove the product never skip in CI: ``require`` skips on a developer's machine, fails under
``CI=true``."""

from __future__ import annotations

import os

import pytest

from tests.conftest import require


@pytest.mark.parametrize("ci,outcome", [("true", pytest.fail.Exception), ("false", pytest.skip.Exception),
                                        (None, pytest.skip.Exception)])
@pytest.mark.parametrize("missing", ["sdaudit_no_such_module", lambda: False, lambda: None])
def test_a_missing_dependency_fails_only_under_ci(ci, outcome, missing, monkeypatch):
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    with pytest.raises(outcome, match="needed for this test"):
        require(missing, "needed for this test")


@pytest.mark.parametrize("ci", ["true", None])
def test_a_present_dependency_is_returned(ci, monkeypatch):
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    assert require("os.path", "os.path") is os.path
    assert require(lambda: "/usr", "a folder") == "/usr"
