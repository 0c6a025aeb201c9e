"""The report layer: figures, the HTML page and the comparison, on fake audit folders.

The fake folders are the published numbers (paper_results.csv) in the results.json contract,
plus small random maps. No model, no torch.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from sdaudit.report import build_report, default_compare_dir, load_paper_results, norm_key, paper_as_results
from sdaudit.report import figures as F
from sdaudit.report.html import THRESHOLDS, fmt_pct, fmt_pm, fmt_ratio, render_report, summarize

EVIL = "<script>alert(1)</script>"


def fake_results(model: str = "sd15", n_images: int = 6, k: int = 3, source_dir: str = "/data/imgs") -> dict:
    """A results.json dict in the audit contract, numbers from the published csv."""
    r = paper_as_results(model)
    r["created"] = "2026-11-28T05:00:00Z"
    r["model"] = {"name": r["model"]["name"], "kind": "hub", "location": f"org/{model}", "revision": "abc123",
                  "weights_sha256": None}
    r["settings"] = {"protocol": "clean", "timestep": 50, "seed": 42, "size": 64, "prompt": "", "latent": "mean",
                     "noise_samples": 1, "layers": "paper", "analyses": ["position", "borders", "anomalies", "maps"],
                     "probe_method": "lda", "train_fraction": 0.8,
                     "detector": {"z_threshold": 3.5, "ratio_threshold": 2.0},
                     "anomaly_layer": "up_blocks[1].upsamplers[0]"}
    r["versions"] = {"sdaudit": "0.1.0", "diffusers": "0.x", "torch": "2.x"}
    r["images"] = [{"index": i, "source": f"{source_dir}/img{i}.png", "sha256": f"{i:064x}", "width": 640,
                    "height": 480} for i in range(n_images)]
    r["anomalies"] = {"layer": "up_blocks[1].upsamplers[0]", "count": 7, "images_with": 4, "n_images": n_images}
    for row in r["table"]:
        row["anomaly_count"] = 7
    r["maps"] = {"images": list(range(k)),
                 "examples": [
                     {"id": "position", "title": "Positional embedding", "layer": "up_blocks[1].resnets[1]",
                      "measure": "cosine", "ref": [0, 5, 9], "key": "ex_position"},
                     {"id": "corner", "title": "Corner", "layer": "down_blocks[1].resnets[1]", "measure": "cosine",
                      "ref": [1, 0, 0], "key": "ex_corner"},
                     {"id": "anomaly", "title": "Anomaly", "layer": "up_blocks[1].upsamplers[0]",
                      "measure": "cosine", "ref": [2, 3, 4], "key": "ex_anomaly"},
                     {"id": "semantic", "title": "Semantic", "layer": "up_blocks[2].attentions[1]",
                      "measure": "cosine", "ref": [0, 10, 10], "key": "ex_semantic"}],
                 "norm_layers": ["up_blocks[1].upsamplers[0]", "up_blocks[3].attentions[2]"]}
    return r


def fake_maps(results: dict, size: int = 64, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    k = len(results["maps"]["images"])
    grid = {L["name"]: L["height"] for L in results["layers"]}
    out: dict[str, np.ndarray] = {"inputs": rng.integers(0, 256, (k, size, size, 3), dtype=np.uint8)}
    for ex in results["maps"]["examples"]:
        n = grid[ex["layer"]]
        out[ex["key"]] = rng.uniform(-0.2, 1, (k, n, n)).astype(np.float32)
    for layer in results["maps"]["norm_layers"]:
        n = grid[layer]
        out[norm_key(layer)] = rng.uniform(50, 100, (k, n, n)).astype(np.float32)
    out["anomalies"] = np.array([[0, 3, 4], [1, 30, 0], [2, 10, 10]], dtype=np.int64)
    return out


def write_dir(path: Path, results: dict, maps: dict | None = None) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "results.json").write_text(json.dumps(results), encoding="utf-8")
    if maps is not None:
        np.savez(path / "maps.npz", **maps)
    return path


@pytest.fixture(scope="module")
def sd15_dir(tmp_path_factory) -> Path:
    r = fake_results("sd15", source_dir=f"/data/{EVIL}")
    return write_dir(tmp_path_factory.mktemp("sd15"), r, fake_maps(r))


@pytest.fixture(scope="module")
def sd15_page(sd15_dir) -> str:
    return render_report(sd15_dir).read_text(encoding="utf-8")


def _line_lengths(ax) -> set[int]:
    return {len(line.get_xdata()) for line in ax.get_lines() if len(line.get_xdata()) > 3}


# --------------------------------------------------------------------------------------------- paper


def test_paper_results_model_spellings_and_columns():
    rows = load_paper_results("sd15")
    assert len(rows) == 45 and rows[0]["layer"] == "conv_in" and rows[-1]["layer"] == "conv_out"
    for name in ("SD-Turbo", "sdturbo", "sd-turbo", "stabilityai/sd-turbo"):
        assert load_paper_results(name)[0]["probe_acc_64"] == load_paper_results("sd-turbo")[0]["probe_acc_64"]
    assert load_paper_results("SD1.5") == rows and load_paper_results("sd-2.1")[0]["grid"] == 64
    assert load_paper_results("arch:sd15") is None and load_paper_results("tiny") is None
    best = max(rows, key=lambda r: r["probe_acc_64"])
    assert best["layer"] == "up_blocks[1].resnets[1]" and best["probe_acc_64"] == pytest.approx(0.975527)
    # border/other: the corrected columns (sdaudit's fixed pair counts); the printed ones kept aside
    mid = next(r for r in rows if r["layer"] == "mid_block.resnets[1]")
    assert mid["corner_rel_sim"] == pytest.approx(2.1732)
    assert mid["border_rel_sim"] == pytest.approx(1.05935) and mid["border_rel_sim_published"] == pytest.approx(1.07446)
    assert mid["probe_chance_64"] == 1 / 8 and rows[0]["probe_chance_64"] == 1 / 64


def test_norm_key_rule():
    assert norm_key("up_blocks[1].upsamplers[0]") == "norm__up_blocks_1_upsamplers_0"
    assert norm_key("up_blocks.1.upsamplers.0") == "norm__up_blocks_1_upsamplers_0"
    assert norm_key("conv_in") == "norm__conv_in"


# --------------------------------------------------------------------------------------------- figures


def test_quantitative_figure_layout():
    rows = load_paper_results("sd15")
    fig = F.quantitative_figure([{"label": "sd15", "table": rows}])
    axes = fig.axes[:3]
    assert [ax.get_yscale() for ax in axes] == ["linear", "log", "log"]
    assert axes[1].yaxis.get_transform().base == 2 and axes[2].yaxis.get_transform().base == 2
    assert list(axes[2].get_xticks()) == list(range(45))
    assert [t.get_text() for t in axes[2].get_xticklabels()][:3] == ["conv", "res", "attn"]
    for ax in axes:
        assert _line_lengths(ax) == {45}
        assert any(np.allclose(line.get_ydata(), 1) for line in ax.get_lines()) or ax is axes[0]
    # panel 1: four accuracy lines (8..64) + chance lines
    curves = [ln for ln in axes[0].get_lines() if len(ln.get_xdata()) == 45]
    assert len([ln for ln in curves if ln.get_linestyle() == "-"]) == 4
    assert len([ln for ln in curves if ln.get_linestyle() == ":"]) == 4
    # the block names sit centred under their layers
    texts = [t.get_text() for ax in axes[2].child_axes for t in ax.get_xticklabels() if t.get_text()]
    assert {"in", "down0", "mid", "up1", "out"} <= set(texts) or {"conv_in", "mid_block"} <= set(texts)


def test_quantitative_figure_two_runs_aligned_with_legend():
    a = {"label": "sd15", "table": load_paper_results("sd15")}
    b_rows = load_paper_results("sd21")
    extra = dict(b_rows[22], layer="up_blocks[0].resnets[2]")  # a 46th layer only in run b
    b = {"label": "sd21-all", "table": b_rows[:23] + [extra] + b_rows[23:]}
    fig = F.quantitative_figure([a, b])
    assert fig.sdaudit_layers.index("up_blocks[0].resnets[2]") == fig.sdaudit_layers.index("up_blocks[0].resnets[1]") + 1
    assert len(fig.axes[0].get_xticks()) == 46
    legend = [t.get_text() for leg in fig.legends for t in leg.get_texts()]
    assert "sd15" in legend and "sd21-all" in legend
    ys = [ln.get_ydata() for ln in fig.axes[0].get_lines() if len(ln.get_xdata()) == 46]
    assert any(np.isnan(y).sum() == 1 for y in ys)  # run a has a gap at the layer it lacks


def test_quantitative_figure_published_overlay():
    rows = load_paper_results("sd15")
    plain = F.quantitative_figure([{"label": "sd15", "table": rows}])
    over = F.quantitative_figure([{"label": "sd15", "table": rows}], paper=rows)
    for i in range(3):
        assert len(over.axes[i].get_lines()) > len(plain.axes[i].get_lines())
    labels = [t.get_text() for ax in over.axes[:3] if ax.get_legend() for t in ax.get_legend().get_texts()]
    assert "published" in labels


def test_quantitative_figure_missing_analysis_is_gaps():
    rows = [{"layer": r["layer"], "block": r["block"], "kind": r["kind"], "grid": r["grid"],
             "probe_acc_64": r["probe_acc_64"]} for r in load_paper_results("sd21")]
    fig = F.quantitative_figure([{"label": "probe only", "table": rows}])
    assert "not run" in " ".join(t.get_text() for t in fig.axes[1].texts)


def test_qualitative_figure(sd15_dir):
    results = json.loads((sd15_dir / "results.json").read_text())
    from sdaudit.report import qualitative_figure

    fig = qualitative_figure(results, sd15_dir / "maps.npz")
    k = len(results["maps"]["images"])
    image_axes = [ax for ax in fig.axes if ax.get_images()]
    assert len(image_axes) == k * (1 + 4 + 2)
    # anomalies outlined on the anomaly layer's norm row: one rectangle per anomaly
    from matplotlib.patches import Rectangle

    rects = [p for ax in image_axes for p in ax.patches if isinstance(p, Rectangle)]
    assert len(rects) >= 3


def test_save_figure(tmp_path):
    fig = F.quantitative_figure([{"label": "x", "table": load_paper_results("sd15")[:5]}])
    svg, png = F.save_figure(fig, tmp_path / "sub" / "q")
    assert svg.read_text().lstrip().startswith("<?xml") and png.read_bytes()[:4] == b"\x89PNG"


# --------------------------------------------------------------------------------------------- html


def test_report_is_self_contained(sd15_page):
    assert "http://" not in sd15_page and "https://" not in sd15_page
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", sd15_page)
    assert "<link" not in sd15_page and "<script" not in sd15_page.lower().replace("&lt;script", "")
    assert sd15_page.count('src="data:image/') >= 2


def test_report_numbers_from_json(sd15_dir, sd15_page):
    results = json.loads((sd15_dir / "results.json").read_text())
    assert "sd15" in sd15_page and "org/sd15" in sd15_page
    best = max(results["table"], key=lambda r: r["probe_acc_64"])
    assert f"{best['layer']}</code>: <b>{fmt_pct(best['probe_acc_64'])}</b>" in sd15_page  # 97.6%
    assert fmt_pct(best["probe_acc_64"]) == "97.6%"
    peak_corner = max(results["table"], key=lambda r: r["corner_rel_sim"])
    assert fmt_ratio(peak_corner["corner_rel_sim"]) in sd15_page  # 2.17
    peak = max(results["table"], key=lambda r: r["anomaly_rel_norm_mean"])
    assert fmt_pm(peak["anomaly_rel_norm_mean"], peak["anomaly_rel_norm_std"]) in sd15_page  # 3.79 ± 1.54
    assert ">7</span> anomalies in <b>4</b> of 6 images" in sd15_page
    for row in results["table"]:
        assert row["layer"] in sd15_page
    # thresholds are stated
    t = THRESHOLDS
    assert f"strong ≥ {t['position_strong']}" in sd15_page and f"corner ≥ {t['corner_strong']}" in sd15_page


def test_report_escapes_user_strings(sd15_page):
    assert EVIL not in sd15_page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in sd15_page


def test_report_changes_with_the_json_and_compares_with_paper(tmp_path):
    r = fake_results("sd21")
    r["table"][10]["probe_acc_64"] = 0.123456
    r["anomalies"]["count"] = 4321
    d = write_dir(tmp_path / "x", r)  # no maps.npz: no maps section
    page = build_report([d], compare_paper=True).read_text()
    assert page == (d / "report.html").read_text()
    assert "12.3%" in page and "4,321" in page and 'id="maps"' not in page
    assert (d / "figures" / "quantitative.svg").is_file() and not (d / "figures" / "qualitative.svg").exists()
    # the published SD-2.1 numbers: agreement table and the hand-label statistics
    assert 'id="paper"' in page and "Pearson r" in page and "93 anomalies in 76 of 500" in page


def test_summary_flags():
    s = summarize(fake_results("sd15"))
    assert s["position"]["top"][0]["layer"] == "up_blocks[1].resnets[1]"
    assert s["borders"]["top_corner"][0][0] == "mid_block.resnets[1]"
    assert s["anomalies"]["peak"][0] == "up_blocks[1].upsamplers[0]"
    assert s["borders"]["ill"] == ["conv_out"]
    assert s["n_usable"] + s["n_caution"] + s["n_affected"] == 45


def test_ratio_over_a_near_zero_reference_raises_no_flag():
    """Regression: on the tiny model conv_out's corner tokens are near-orthogonal in the full image (reference
    0.0007), so the corner ratio was 533, flagged as the strongest border artifact and listed as the peak."""
    from sdaudit.report.html import THRESHOLDS, layer_verdicts

    r = fake_results("sd15")
    last = r["table"][-1]["layer"]
    r["table"][-1]["corner_rel_sim"], r["table"][-1]["border_rel_sim"] = 533.1, 0.98
    r["borders"] = {last: {"full": {"corner": 0.0007, "border": 0.12, "other": 0.12}},
                    "mid_block.resnets[1]": {"full": {"corner": THRESHOLDS["border_min_reference"], "border": 0.3}}}
    v = {x["layer"]: x for x in layer_verdicts(r)}
    assert not v[last]["corner_ok"] and v[last]["border_ok"] and v[last]["ill"]
    assert v[last]["border_level"] == 0 and "not meaningful" in v[last]["notes"]
    assert v[last]["verdict"] == "caution"  # not assessed is not a pass
    assert v["mid_block.resnets[1]"]["corner_ok"]  # at the threshold: readable
    s = summarize(r)
    assert s["borders"]["top_corner"][0][0] == "mid_block.resnets[1]" and s["borders"]["ill"] == [last]


def test_verdicts_failed_layer_and_no_anomalies():
    from sdaudit.report.html import layer_verdicts

    r = fake_results("sd21")
    r["anomalies"] = {"layer": "up_blocks[1].upsamplers[0]", "grid": [32, 32], "count": 0, "images_with": 0,
                      "n_images": 6}
    for row in r["table"]:
        row["anomaly_rel_norm_mean"] = row["anomaly_rel_norm_std"] = None
    r["table"][3] = {"layer": r["table"][3]["layer"], "grid": 64, "error": "out of memory"}
    v = layer_verdicts(r)
    assert v[3]["verdict"] == "failed" and "out of memory" in v[3]["notes"]
    # only the detector's layer was searched: "none found" there, "not searched" elsewhere
    searched = next(x for x in v if x["layer"] == "up_blocks[1].upsamplers[0]")
    assert searched["anomaly_text"] == "none found" and searched["anomaly_level"] == 0
    assert v[0]["anomaly_text"] == "not searched" and v[0]["anomaly_level"] == 0
    s = summarize(r)
    assert s["n_failed"] == 1 and s["anomalies"]["count"] == 0 and s["anomalies"]["peak"] is None
    fig = F.quantitative_figure([r])
    assert "no anomalies detected" in " ".join(t.get_text() for t in fig.axes[2].texts)


# --------------------------------------------------------------------------------------------- build_report


def test_build_report_comparison(tmp_path, sd15_dir):
    r21 = fake_results("sd21")
    d21 = write_dir(tmp_path / "runs" / "sd21", r21)
    out = tmp_path / "cmp"
    page = build_report([sd15_dir, d21], out=out)
    assert page == out / "report.html"
    assert (out / "figures" / "comparison.svg").is_file() and (out / "figures" / "comparison.png").is_file()
    html = page.read_text()
    assert "sd15" in html and "sd21" in html and "http://" not in html
    assert default_compare_dir([d21, sd15_dir]) == (tmp_path / "runs" / "report-compare").resolve()


def test_build_report_rejects_non_audit(tmp_path):
    with pytest.raises(FileNotFoundError):
        build_report([tmp_path])
