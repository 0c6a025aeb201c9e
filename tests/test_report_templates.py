"""The report's templates and CSS are package files: found by jinja2's PackageLoader and shipped in a wheel."""

from __future__ import annotations

import fnmatch
import tomllib
from importlib import resources
from pathlib import Path

from sdaudit.report.html import template_environment

TEMPLATES = {"base.html.j2", "report.html.j2", "compare.html.j2", "macros.html.j2", "report.css", "_mitigations.html.j2",
             "_matching.html.j2"}
ROOT = Path(__file__).resolve().parents[1]


def test_the_loader_finds_every_template_in_the_installed_package():
    env = template_environment()
    assert TEMPLATES <= set(env.list_templates())
    folder = resources.files("sdaudit") / "report" / "templates"
    assert {p.name for p in folder.iterdir()} == TEMPLATES
    for name in ("report.html.j2", "compare.html.j2"):
        assert env.get_template(name).blocks.keys() >= {"title", "main"}  # both pages extend base.html.j2
    assert "--fg:#1d2327" in env.get_template("report.css").render()


def test_package_data_ships_the_templates():
    """A wheel or clean install holds what the loader needs: every template file matches a package-data pattern."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["sdaudit"]
    for name in TEMPLATES:
        path = f"report/templates/{name}"
        assert any(fnmatch.fnmatch(path, pattern) for pattern in patterns), path
