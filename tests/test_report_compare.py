"""The comparison page (`sdaudit report A B`): mismatch banner, labels, verdict columns, per-run chance
lines, axes that hold every point, published overlays by layer name; the explorer links of report.html."""

from __future__ import annotations

import copy
import re
import urllib.parse
from pathlib import Path

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_hex
from typer.testing import CliRunner

from sdaudit.cli import app
from sdaudit.report import build_report
from sdaudit.report import figures as F
from sdaudit.report.figure_panels import CHANCE_GID
from sdaudit.report.html import EXPLORER_URL, render_comparison, render_report
from sdaudit.report.paper import published_for
from sdaudit.audit_results import AuditResults
from tests.cli_helpers import fails_with_one_line
from tests.test_report import fake_results, write_dir

runner = CliRunner()


def _at_size(r: dict, size: int) -> dict:
    """``r`` as audited at ``size`` px: every grid scaled (so other chance levels), the size in the settings."""
    r = copy.deepcopy(r)
    r["settings"]["size"] = size
    for row in r["table"]:
        row["grid"] = max(1, row["grid"] * size // 512)
        for s in (8, 16, 32, 64):
            row[f"probe_chance_{s}"] = 1.0 / min(s, row["grid"])
    return r


@pytest.fixture()
def mismatched(tmp_path) -> tuple[Path, Path]:
    a = fake_results("sd15")
    b = _at_size(fake_results("sd15", n_images=4), 128)
    b["settings"]["seed"] = 7
    return write_dir(tmp_path / "tiny-a", _at_size(a, 256)), write_dir(tmp_path / "tiny-b", b)


def _banner(html: str) -> str:
    m = re.search(r'<div class="warnings mismatch"[^>]*>(.*?)</div>', html, re.S)
    assert m, "no mismatch banner"
    return re.sub(r"<[^>]+>", "", m.group(1))


def test_mismatched_runs_get_a_banner_naming_each_difference(tmp_path, mismatched):
    page = render_comparison(list(mismatched), tmp_path / "cmp").read_text()
    banner = _banner(page)
    assert "differ in 3 settings" in banner
    assert "image size: tiny-a = 256, tiny-b = 128" in banner
    assert "seed: tiny-a = 42, tiny-b = 7" in banner
    assert "images (N): tiny-a = 6, tiny-b = 4" in banner
    assert "timestep" not in banner and "protocol" not in banner and "probe method" not in banner


def test_matching_runs_have_no_banner(tmp_path):
    a, b = write_dir(tmp_path / "a", fake_results("sd15")), write_dir(tmp_path / "b", fake_results("sd15"))
    assert 'class="warnings mismatch"' not in render_comparison([a, b], tmp_path / "cmp").read_text()


def test_labels_default_to_folder_names_and_label_replaces_them(tmp_path, mismatched):
    out = tmp_path / "cmp"
    result = runner.invoke(app, ["report", *map(str, mismatched), "--out", str(out)])
    assert result.exit_code == 0, result.output
    page = (out / "report.html").read_text()
    assert "<b>tiny-a</b>" in page and "<b>tiny-b</b>" in page
    result = runner.invoke(app, ["report", *map(str, mismatched), "--out", str(out), "--label", "at 256 px",
                                 "--label", "at 128 px"])
    assert result.exit_code == 0, result.output
    page = (out / "report.html").read_text()
    assert "<b>at 256 px</b>" in page and "<b>at 128 px</b>" in page and "<b>tiny-a</b>" not in page
    assert "image size: at 256 px = 256, at 128 px = 128" in _banner(page)


def test_a_label_count_that_does_not_match_fails_before_writing(tmp_path, mismatched):
    out = tmp_path / "cmp"
    fails_with_one_line(["report", *mismatched, "--out", out, "--label", "only one"], "--label was given 1 time")
    assert not out.exists()
    fails_with_one_line(["report", mismatched[0], "--label", "x"], "--label names the runs of a comparison")


def test_verdict_columns_one_per_run(tmp_path):
    a = fake_results("sd15")
    b = copy.deepcopy(a)
    layer = "down_blocks[0].resnets[0]"
    for row in a["table"]:
        if row["layer"] == layer:
            row["corner_rel_sim"] = 1.0  # no border flag in run a
    for row in b["table"]:
        if row["layer"] == layer:
            row["corner_rel_sim"], row["anomaly_rel_norm_mean"] = 3.0, 5.0  # strong in run b
    page = render_comparison([write_dir(tmp_path / "a", a), write_dir(tmp_path / "b", b)], tmp_path / "cmp").read_text()
    head = re.search(r"<thead><tr><th rowspan=\"2\">layer</th>.*?</thead>", page, re.S).group(0)
    assert re.findall(r'<th class="verdict-col">([^<]+)</th>', head) == ["a", "b"]
    row = re.search(r"<tr><td><code>" + re.escape(layer) + r"</code></td>.*?</tr>", page, re.S).group(0)
    badges = re.findall(r'<td class="verdict"><span title="[^"]*"><span class="badge l(\d)">([^<]+)</span>', row)
    assert len(badges) == 2 and badges[1] == ("2", "affected (no interval)") and badges[0][0] != "2"


def test_each_run_draws_its_own_chance_lines_in_its_colour():
    a, b = _at_size(fake_results("sd15"), 256), _at_size(fake_results("sd15"), 128)
    a["label"], b["label"] = "a", "b"
    fig = F.quantitative_figure([a, b])
    lines = {ln.get_gid(): ln for ln in fig.axes[0].get_lines() if str(ln.get_gid()).startswith(CHANCE_GID)}
    assert set(lines) == {f"{CHANCE_GID}-{ri}-{s}" for ri in (0, 1) for s in (8, 64)}
    a64, b64 = lines[f"{CHANCE_GID}-0-64"], lines[f"{CHANCE_GID}-1-64"]
    assert to_hex(a64.get_color()) != to_hex(b64.get_color())
    assert not np.allclose(a64.get_ydata(), b64.get_ydata(), equal_nan=True)  # other grids: other chance
    assert all(ln.get_linestyle() == ":" for ln in lines.values())


def _points_outside(fig) -> list[str]:
    """Every finite data point of a data-space line whose marker (or, without one, whose point) is not
    wholly inside its axes: a point at the very edge is half clipped."""
    FigureCanvasAgg(fig)
    bad = []
    for i, ax in enumerate(fig.axes):
        box = ax.get_window_extent()
        for ln in ax.get_lines():
            if ln.get_transform() != ax.transData:
                continue  # reference lines (axhline) and edge marks live in axes coordinates
            xy = np.column_stack([ln.get_xdata(), ln.get_ydata()]).astype(float)
            xy = xy[np.isfinite(xy).all(axis=1)]
            if not len(xy):
                continue
            r = (ln.get_markersize() / 2 if ln.get_marker() not in (None, "None", "", " ") else 0) * fig.dpi / 72
            p = ax.transData.transform(xy)
            out = (p[:, 0] - r < box.x0) | (p[:, 0] + r > box.x1) | (p[:, 1] - r < box.y0) | (p[:, 1] + r > box.y1)
            bad += [f"axes {i} {ln.get_gid() or ln.get_label()}: {tuple(v)}" for v in xy[out]]
    return bad


def test_no_data_point_outside_the_axes_limits():
    a = fake_results("sd15")
    a["table"][0]["probe_acc_64"], a["table"][0]["probe_acc_8"] = 1.0, 0.0  # a 2x2 grid; a failed probe
    a["table"][1]["corner_rel_sim"] = 40.0
    a["table"][2]["anomaly_rel_norm_mean"], a["table"][2]["anomaly_rel_norm_std"] = 0.02, 0.001
    a["table"][3]["anomaly_rel_norm_mean"], a["table"][3]["anomaly_rel_norm_std"] = 60.0, 30.0
    b = _at_size(fake_results("sd21"), 128)
    for paper in (None, {"sd15": published_for(AuditResults.from_dict(a))}):
        fig = F.quantitative_figure([dict(a, label="sd15"), dict(b, label="sd21")], paper=paper)
        assert _points_outside(fig) == []
        fig = F.quantitative_figure([a], paper=None if paper is None else paper["sd15"])
        assert _points_outside(fig) == []


def _tiny_named(r: dict) -> dict:
    r = copy.deepcopy(r)
    r["model"] = {"name": "tiny", "kind": "builtin", "location": "builtin", "random_weights": True}
    return r


def test_compare_paper_overlays_sd15_on_a_model_with_its_layer_names(tmp_path):
    a = write_dir(tmp_path / "tiny-a", _tiny_named(fake_results("sd15")))
    b = write_dir(tmp_path / "tiny-b", _tiny_named(_at_size(fake_results("sd15"), 128)))
    page = render_comparison([a, b], tmp_path / "cmp", compare_paper=True).read_text()
    assert "tiny-a: published SD-1.5 (Loos &amp; Linhardt 2025)" in page
    svg = (tmp_path / "cmp" / "figures" / "comparison.svg").read_text()
    # one overlay for both runs (the same published model), named in the probe panel's legend
    assert svg.count("published SD-1.5") == 1 and "(Loos &amp; Linhardt 2025)" in svg
    single = render_report(a, compare_paper=True).read_text()
    assert "This audit is not of SD-1.5" in single and "No published numbers" not in single
    fig = F.quantitative_figure([_tiny_named(fake_results("sd15"))],
                                paper=published_for(AuditResults.from_dict(_tiny_named(fake_results("sd15")))))
    texts = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert any(t.replace("\n", " ").startswith("published SD-1.5 (Loos & Linhardt 2025)") for t in texts)


def test_no_published_overlay_without_a_matching_layer_name():
    r = _tiny_named(fake_results("sd15"))
    for row in r["table"]:
        row["layer"] = "blocks." + row["layer"]
    assert published_for(AuditResults.from_dict(r)) is None


def test_report_links_each_layer_to_the_explorer_when_the_store_was_kept(tmp_path):
    d = write_dir(tmp_path / "run", fake_results("sd15"))
    assert "a class=\"explore\"" not in render_report(d).read_text()
    (d / "store").mkdir()
    page = render_report(d).read_text()
    layer = "up_blocks[1].upsamplers[0]"
    url = EXPLORER_URL + "?" + urllib.parse.urlencode({"store": 0, "layer": layer})
    assert f'<code>{layer}</code> <a class="explore" href="{url.replace("&", "&amp;")}"' in page
    assert page.count('a class="explore"') == len(fake_results("sd15")["table"])
    assert f"sdaudit explore {(d / 'store').resolve()}" in page


def test_results_warnings_are_shown_on_both_pages(tmp_path):
    r = fake_results("sd15")
    r["warnings"] = ["mid_block: a 2x2 grid is too small for the position probe at s = 8"]
    d = write_dir(tmp_path / "run", r)
    assert r["warnings"][0] in build_report([d]).read_text()
    other = write_dir(tmp_path / "other", fake_results("sd15"))
    page = render_comparison([d, other], tmp_path / "cmp").read_text()
    assert "<b>run: read with care</b><ul><li>" + r["warnings"][0] in page
