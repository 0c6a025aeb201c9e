"""The report shows the audit's uncertainty honestly: 95 % intervals, controls, undefined ratios, warnings.

Fake results.json dicts in the contract of the audit (``M_low`` / ``M_high``, ``beyond_M*``, ``control`` /
``controls``, ``warnings``, ``recurrence``, ``model.random_weights``). No model, no torch.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
from matplotlib.collections import PolyCollection
from matplotlib.colors import to_rgb

from sdaudit.report import figures as F
from sdaudit.report.figure_marks import BAND_GID, CONTROL_GID, EDGE_GID, NOT_MEANINGFUL_LABEL
from sdaudit.report.html import layer_verdicts, render_comparison, render_report, summarize
from sdaudit.report.intervals import INTERVAL_METRICS
from sdaudit.report.verdicts import FEW_CHANNELS_NOTE, UNCERTAIN
from tests.test_report import fake_results, write_dir

CONTROL = "untrained (seed 0)"


def _row(layer, block, grid, *, acc, corner, border=1.0, anomaly=1.0, spread=0.05, **extra):
    row = {"layer": layer, "block": block, "kind": "res", "grid": grid, "probe_test_images": 20,
           "probe_chance_8": 1 / min(8, grid), "other_rel_sim": 1.0, "anomaly_rel_norm_std": 0.2}
    for key, value in (("probe_acc_8", acc), ("corner_rel_sim", corner), ("border_rel_sim", border),
                       ("other_rel_sim", 1.0), ("anomaly_rel_norm_mean", anomaly)):
        row[key], row[f"{key}_low"], row[f"{key}_high"] = value, value - spread, value + spread
    row.update(extra)
    return row


def iv_results(**model) -> dict:
    """Five layers with intervals: a clear corner artifact, one whose interval spans the thresholds, a
    2x2 grid (borders not defined), a near-zero-reference conv_out with 4 channels, a clear anomaly."""
    table = [
        _row("down_blocks[0].resnets[0]", "down_blocks[0]", 16, acc=0.82, corner=2.5, spread=0.03,
             probe_acc_8_low=0.79, probe_acc_8_high=0.85),
        _row("down_blocks[1].resnets[0]", "down_blocks[1]", 8, acc=0.9, corner=2.5, corner_rel_sim_low=1.2,
             corner_rel_sim_high=3.8, probe_acc_8_low=0.2),
        {"layer": "mid_block.resnets[0]", "block": "mid_block", "kind": "res", "grid": 2, "probe_acc_8": 0.6,
         "probe_acc_8_low": 0.5, "probe_acc_8_high": 0.7, "probe_chance_8": 0.5,
         "borders_undefined": "not defined (grid too small)", "anomaly_rel_norm_mean": 1.1,
         "anomaly_rel_norm_mean_low": 1.0, "anomaly_rel_norm_mean_high": 1.2},
        _row("up_blocks[0].resnets[0]", "up_blocks[0]", 16, acc=0.5, corner=1.0, anomaly=3.0, spread=0.2),
        _row("conv_out", "conv_out", 16, acc=0.3, corner=533.1, border=0.98),
    ]
    return {
        "format": "sdaudit-audit/1", "created": "2026-11-30T00:00:00Z",
        "model": {"name": "tiny", "kind": "tiny", "location": "builtin", **model},
        "settings": {"protocol": "clean", "probe_method": "lda", "train_fraction": 0.8, "size": 64},
        "images": [{"index": i, "source": f"/img{i}.png", "sha256": "0" * 64, "width": 64, "height": 64}
                   for i in range(9)],
        "layers": [{"name": r["layer"], "channels": 4 if r["layer"] == "conv_out" else 64, "height": r["grid"],
                    "width": r["grid"]} for r in table],
        "borders": {"conv_out": {"full": {"corner": 0.0007, "border": 0.2}}},
        "anomalies": {"layer": "up_blocks[0].resnets[0]", "count": 5, "images_with": 3, "n_images": 9},
        "table": table,
    }


def with_control(results: dict, beyond_low: float) -> dict:
    """The untrained control, and (model - control) intervals whose low end is ``beyond_low``."""
    r = copy.deepcopy(results)
    ctable = copy.deepcopy(r["table"])
    for crow in ctable:
        for key in ("probe_acc_8", "corner_rel_sim", "anomaly_rel_norm_mean"):
            if crow.get(key) is not None:
                crow[key] = crow[key] * 0.9
    r["control"] = {"kind": "untrained", "label": CONTROL, "model": {"name": "tiny [untrained]"}, "table": ctable}
    for row in r["table"]:
        for m in INTERVAL_METRICS:
            if row.get(m) is not None:
                row[f"beyond_{m}"], row[f"beyond_{m}_low"], row[f"beyond_{m}_high"] = 0.3, beyond_low, 0.51
    return r


def strip_intervals(results: dict) -> dict:
    r = copy.deepcopy(results)
    r["table"] = [{k: v for k, v in row.items() if not k.endswith(("_low", "_high"))} for row in r["table"]]
    return r


def _bands(ax) -> list:
    return [c for c in ax.collections if isinstance(c, PolyCollection) and c.get_gid() == BAND_GID]


def _legend_texts(ax) -> list[str]:
    return [t.get_text() for t in ax.get_legend().get_texts()] if ax.get_legend() else []


# ------------------------------------------------------------------------------------------------ figures


def test_interval_bands_drawn_only_when_intervals_are_given():
    fig = F.quantitative_figure([iv_results()])
    assert all(_bands(ax) for ax in fig.axes[:3])
    plain = F.quantitative_figure([strip_intervals(iv_results())])
    assert not any(_bands(ax) for ax in plain.axes[:3])
    assert "95 % interval" in _legend_texts(fig.axes[0]) and "95 % interval" not in _legend_texts(plain.axes[0])


def test_control_curve_is_grey_dashed_and_labelled():
    fig = F.quantitative_figure([with_control(iv_results(), 0.1)])
    for ax in fig.axes[:3]:
        lines = [ln for ln in ax.get_lines() if ln.get_gid() == CONTROL_GID]
        assert lines, ax.get_title()
        for ln in lines:
            r, g, b = to_rgb(ln.get_color())
            assert r == g == b and ln.get_linestyle() == "--"
        assert f"control: {CONTROL}" in _legend_texts(ax)
    assert not any(ln.get_gid() == CONTROL_GID for ax in F.quantitative_figure([iv_results()]).axes
                   for ln in ax.get_lines())


def test_not_meaningful_ratio_is_drawn_at_the_edge_without_rescaling_the_axis():
    """conv_out's corner ratio 533 over a reference of 0.0007 and the 2x2 grid's undefined ratios: marked
    with open triangles at the top edge, not plotted as numbers (the axis stays near the real ratios)."""
    fig = F.quantitative_figure([iv_results()])
    ax = fig.axes[1]
    assert ax.get_ylim()[1] < 8
    # the control's conv_out ratio (480) has the same near-zero reference: left out too
    assert F.quantitative_figure([with_control(iv_results(), 0.1)]).axes[1].get_ylim()[1] < 8
    marks = [ln for ln in ax.get_lines() if ln.get_gid() == EDGE_GID]
    xs = sorted(float(v) for ln in marks for v in ln.get_xdata())
    assert xs == [2.0, 2.0, 4.0]  # mid_block (corner and border undefined), conv_out's corner
    assert all(ln.get_transform() == ax.get_xaxis_transform() for ln in marks)
    assert NOT_MEANINGFUL_LABEL in _legend_texts(ax)
    for ln in ax.get_lines():  # no plotted curve carries the 533
        assert not np.any(np.asarray(ln.get_ydata(), dtype=float) > 100)


def test_title_says_random_weights():
    assert "random weights" in F.quantitative_figure([iv_results(random_weights=True)])._suptitle.get_text()
    assert "random weights" not in F.quantitative_figure([iv_results(random_weights=False)])._suptitle.get_text()


# ------------------------------------------------------------------------------------------------ verdicts


def test_flag_only_when_the_interval_clears_the_threshold():
    v = {x["layer"]: x for x in layer_verdicts(iv_results())}
    clear, spans = v["down_blocks[0].resnets[0]"], v["down_blocks[1].resnets[0]"]
    assert clear["border_level"] == 2 and clear["verdict"] == "affected" and UNCERTAIN not in clear["notes"]
    # corner 2.5 but its interval [1.2, 3.8] reaches below the mild threshold 1.5: no flag, said so
    assert spans["border_level"] == 0 and f"corner ratio {UNCERTAIN}" in spans["notes"]
    assert spans["verdict"] == "caution"  # not shown is not shown absent either
    # probe 90% but its low end 20% is near chance (12.5%): no position flag
    assert spans["pos_level"] == 0 and f"position code {UNCERTAIN}" in spans["notes"]
    assert v["up_blocks[0].resnets[0]"]["anomaly_level"] == 2


def test_interval_between_the_thresholds_gives_the_lower_flag():
    r = iv_results()
    r["table"][0]["corner_rel_sim_low"] = 1.6  # point 2.5 (strong), low end only mild
    v = layer_verdicts(r)[0]
    assert v["border_level"] == 1 and UNCERTAIN in v["notes"]


def test_finding_the_control_also_shows_is_not_a_finding():
    v = {x["layer"]: x for x in layer_verdicts(with_control(iv_results(), -0.1))}
    clear = v["down_blocks[0].resnets[0]"]
    assert clear["border_level"] == 0 and clear["verdict"] == "usable"
    assert f"corner ratio not distinguishable from the {CONTROL} control" in clear["notes"]
    assert v["up_blocks[0].resnets[0]"]["anomaly_level"] == 0
    beyond = {x["layer"]: x for x in layer_verdicts(with_control(iv_results(), 0.12))}
    assert beyond["down_blocks[0].resnets[0]"]["border_level"] == 2
    assert beyond["up_blocks[0].resnets[0]"]["anomaly_level"] == 2


def test_a_second_control_without_beyond_fields_is_compared_by_its_interval():
    r = with_control(iv_results(), 0.12)
    circular = copy.deepcopy(r["control"])
    circular.update(kind="circular-padding", label="circular padding")
    circular["table"][0].update(corner_rel_sim=2.5, corner_rel_sim_low=2.4, corner_rel_sim_high=2.6)
    r["controls"] = [r.pop("control"), circular]
    v = layer_verdicts(r)[0]
    assert v["border_level"] == 0 and "not distinguishable from the circular padding control" in v["notes"]


def test_old_results_keep_the_point_rules_labelled_no_interval():
    v = layer_verdicts(strip_intervals(iv_results()))
    assert v[1]["border_level"] == 2 and v[1]["label"] == "affected (no interval)"
    assert layer_verdicts(iv_results())[1]["label"] == "caution"


def test_few_channels_and_undefined_borders_are_noted():
    v = {x["layer"]: x for x in layer_verdicts(iv_results())}
    assert FEW_CHANNELS_NOTE in v["conv_out"]["notes"] and FEW_CHANNELS_NOTE not in v["up_blocks[0].resnets[0]"]["notes"]
    mid = v["mid_block.resnets[0]"]
    assert mid["border_text"] == "not defined (grid too small)" and mid["border_level"] == -1 and not mid["ill"]


def test_summary_counts_only_ratios_clearly_above_one():
    s = summarize(iv_results())
    # corner > 1 by the whole interval: layers 0 and 1 ([2.47, 2.53], [1.2, 3.8]); not layer 3 (1.0), nor conv_out
    # (not meaningful); with a control that shows the same, none
    assert s["borders"]["n_corner_above_1"] == 2 and s["borders"]["undefined"] == ["mid_block.resnets[0]"]
    assert summarize(with_control(iv_results(), -0.1))["borders"]["n_corner_above_1"] == 0


# ------------------------------------------------------------------------------------------------ page


@pytest.fixture(scope="module")
def iv_page(tmp_path_factory) -> str:
    r = with_control(iv_results(random_weights=True), 0.12)
    r["warnings"] = ["only 9 images: intervals are wide; the paper used 500"]
    r["recurrence"] = {"pairs": 12, "null_mean": 3.4, "null_q95": 7.0, "p_value": 0.002, "ratio": 3.5,
                       "n_anomalies": 5, "n_images": 9, "grid": 16, "null": "ring", "n_perm": 1000,
                       "top_positions": [{"x": 0, "y": 0, "images": 3}]}
    return render_report(write_dir(tmp_path_factory.mktemp("iv"), r)).read_text(encoding="utf-8")


def test_page_has_random_weights_badge_and_warnings(iv_page, tmp_path):
    assert 'class="badge rw">random weights</span>' in iv_page
    assert '<div class="warnings" role="alert">' in iv_page
    assert "<li>only 9 images: intervals are wide; the paper used 500</li>" in iv_page
    plain = render_report(write_dir(tmp_path / "p", iv_results(random_weights=False))).read_text()
    assert "badge rw" not in plain and "only 9 images" not in plain


def test_page_shows_intervals_and_beyond_control(iv_page):
    assert "82.0% [79.0%, 85.0%]" in iv_page  # the probe in the numbers table and the verdict badge
    assert "2.50 [2.47, 2.53]" in iv_page  # a corner ratio
    assert f"beyond control: {CONTROL}</th>" in iv_page
    assert f"<b>controls</b>{CONTROL} <span class=\"muted\">(tiny [untrained])</span>" in iv_page
    assert "corner +0.30 [+0.12, +0.51]" in iv_page
    assert '<td class="muted" colspan="3">not defined (grid too small)</td>' in iv_page


def test_page_states_the_recurrence_result(iv_page, tmp_path):
    assert "Anomalies recur at the same positions: 12 coincident pairs vs 3.4 expected (p = 0.002)." in iv_page
    r = iv_results()
    r["recurrence"] = {"pairs": 4, "null_mean": 3.9, "p_value": 0.41}
    page = render_report(write_dir(tmp_path / "n", r)).read_text()
    assert "do not recur at the same positions more often than chance: 4 coincident pairs vs 3.9 expected" in page
    assert "coincident pairs" not in render_report(write_dir(tmp_path / "a", iv_results())).read_text()


def test_old_results_page_says_no_interval(tmp_path):
    page = render_report(write_dir(tmp_path / "old", fake_results("sd21"))).read_text()
    assert "usable (no interval)" in page or "caution (no interval)" in page
    assert "These results have no intervals" in page and "beyond control" not in page


def test_compare_paper_says_the_probe_differs(tmp_path):
    page = render_report(write_dir(tmp_path / "lda", fake_results("sd15")), compare_paper=True).read_text()
    assert "this audit used the closed-form LDA probe" in page
    r = fake_results("sd15")
    r["settings"]["probe_method"] = "paper"
    assert 'class="probe-note"' in page
    assert 'class="probe-note"' not in render_report(write_dir(tmp_path / "paper", r), compare_paper=True).read_text()
    fig = F.quantitative_figure([fake_results("sd15")], paper=fake_results("sd15")["table"])
    assert any("closed-form LDA" in t for t in _legend_texts(fig.axes[0]))


def test_comparison_page_shows_intervals_and_badges(tmp_path):
    a = write_dir(tmp_path / "a", iv_results(random_weights=True))
    b = write_dir(tmp_path / "b", fake_results("sd15"))
    page = render_comparison([a, b], tmp_path / "cmp").read_text()
    assert "82.0% [79.0%, 85.0%]" in page and 'class="badge rw">random weights' in page


def test_comparison_figure_has_a_band_per_run_and_the_control_of_each():
    a = with_control(iv_results(), 0.1)
    b = dict(iv_results(), model={"name": "tiny-b", "kind": "tiny", "location": "builtin"})
    fig = F.quantitative_figure([a, b])
    assert len(_bands(fig.axes[0])) == 2 + 1  # one per run at s = 8 (the only resolution with numbers), the control's
    assert any(ln.get_gid() == CONTROL_GID for ln in fig.axes[0].get_lines())
    assert f"tiny control:\n{CONTROL}" in _legend_texts(fig.axes[0])


def test_beyond_fields_without_a_control_description_still_count():
    r = with_control(iv_results(), -0.1)
    del r["control"]
    v = layer_verdicts(r)[0]
    assert v["border_level"] == 0 and "not distinguishable from the control control" not in v["notes"]
    assert "corner ratio not distinguishable from the control" in v["notes"]


def test_a_single_warning_string_is_one_warning():
    r = iv_results()
    r["warnings"] = "only 9 images"
    assert summarize(r)["warnings"] == ["only 9 images"]


def test_a_second_control_uses_its_own_paired_beyond_fields_and_points_for_accuracy():
    """The audit writes beyond_* of (model - control) into each control's own rows: a second control uses them;
    accuracy differences read in percentage points."""
    from sdaudit.report.html import fmt_points
    from sdaudit.report.intervals import beyond

    from sdaudit.audit_results import ControlRun, LayerRow

    row = LayerRow.from_dict({"layer": "L", "corner_rel_sim": 1.5, "corner_rel_sim_low": 1.4, "corner_rel_sim_high": 1.6})
    control = ControlRun.from_dict({"label": "circular padding", "table": [{
        "layer": "L", "corner_rel_sim": 1.0, "corner_rel_sim_low": 0.9, "corner_rel_sim_high": 1.1,
        "beyond_corner_rel_sim": 0.5, "beyond_corner_rel_sim_low": 0.45, "beyond_corner_rel_sim_high": 0.55}]})
    assert beyond(row, "corner_rel_sim", control, first=False) == (0.5, 0.45, 0.55)  # not the wide (0.3, 0.7)
    assert fmt_points(0.3) == "30.0 pp"


def test_timesteps_get_one_figure_with_a_curve_family_each(tmp_path):
    """An audit of several timesteps: figures/timesteps.svg and a 'Per timestep' section."""
    import json

    from sdaudit.report import build_report
    from tests.test_report import fake_results

    r = fake_results("sd15")
    later = [dict(row, probe_acc_8=(row.get("probe_acc_8") or 0.5) * 0.5) for row in r["table"]]
    r["timesteps"] = [{"timestep": 50, "table": r["table"]}, {"timestep": 500, "table": later}]
    (tmp_path / "results.json").write_text(json.dumps(r))
    page = build_report([tmp_path]).read_text(encoding="utf-8")
    assert (tmp_path / "figures" / "timesteps.svg").is_file() and "Per timestep" in page and "t = 500" in page
    del r["timesteps"]
    (tmp_path / "results.json").write_text(json.dumps(r))
    (tmp_path / "figures" / "timesteps.svg").unlink()
    assert "Per timestep" not in build_report([tmp_path]).read_text(encoding="utf-8")
    assert not (tmp_path / "figures" / "timesteps.svg").exists()


def test_a_missing_interval_is_named_as_such_not_as_spanning_the_threshold():
    from sdaudit.audit_results import LayerRow
    from sdaudit.report.verdicts import _flag

    row = {"layer": "L", "probe_acc_64": 0.9, "probe_acc_64_low": None, "probe_acc_64_high": None}
    level, note = _flag(LayerRow.from_dict(row), "probe_acc_64", 0.9, None, mild=0.2, strong=0.5, controls=[],
                        what="position code")
    assert level == 0 and note == "position code unconfirmed (too few images for an interval)"
    level, note = _flag(LayerRow.from_dict({**row, "probe_acc_64_low": 0.3}), "probe_acc_64", 0.9, 0.3, mild=0.2,
                        strong=0.5, controls=[], what="position code")
    assert level == 1 and "spans the threshold" in note
