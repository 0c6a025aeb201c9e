"""`audit` end to end on the tiny model: outputs, agreement with the analyses, resume, stores."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sdaudit.analyses import border_artifacts, detect_anomalies, load_labels, position_probe
from sdaudit.audit import AuditSettings, audit, pass_plan
from sdaudit.extraction import ExtractionSettings, Extractor, prepare_for_model
from sdaudit.images import iter_images
from sdaudit.store import open_store
from tests.conftest import interrupt_extraction

SIZE = 128


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    from tests.conftest import photo_folder

    return photo_folder(tmp_path_factory.mktemp("audit-images"), 6, first_seed=10, height=96, widen=8, prefix="photo")


@pytest.fixture(scope="module")
def audited(tiny, folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("audit")
    results = audit(tiny, folder, out, AuditSettings(size=SIZE, layers="all"), report=False, progress=False)
    return out, results


def full_and_cropped(tiny, folder, layers, crop):
    images = [r.image for r in iter_images(folder)]
    settings = ExtractionSettings(size=SIZE, crop_px=crop)
    prepared = [prepare_for_model(im, SIZE, crop) for im in images]
    return Extractor(tiny, layers, settings).run(prepared, list(range(len(images))))


def test_outputs_exist_and_are_consistent(audited):
    out, results = audited
    for name in ("results.json", "results.csv", "anomalies.npy", "maps.npz"):
        assert (out / name).is_file(), name
    saved = json.loads((out / "results.json").read_text())
    assert saved["table"] == json.loads(json.dumps(results["table"]))
    assert len(saved["layers"]) == len(saved["table"]) == 46
    assert saved["settings"]["size"] == SIZE and saved["model"]["name"] == "tiny"
    assert len(saved["images"]) == 6 and all(len(i["sha256"]) == 64 for i in saved["images"])
    assert {"sdaudit", "diffusers", "torch"} <= set(saved["versions"])
    # one full pass and one cropped pass per grid size n >= 5, extracted at its own size: 16 and 8 at 128 px
    # (crops of 112 and 96 px); grids 4 and 2 have no (n-2) grid with a border and an interior
    assert saved["run"]["unet_passes_per_image"] == 3
    assert saved["run"]["full_pass_equivalents_per_image"] == pytest.approx(1 + (112 ** 2 + 96 ** 2) / 128 ** 2)
    row = {r["layer"]: r for r in saved["table"]}
    assert row["up_blocks[3].resnets[0]"]["corner_rel_sim_low"] <= row["up_blocks[3].resnets[0]"]["corner_rel_sim"]
    assert row["mid_block.resnets[0]"]["borders_undefined"] == "not defined (grid too small)"
    assert row["mid_block.resnets[0]"].get("corner_rel_sim") is None
    rows = (out / "results.csv").read_text().splitlines()
    assert rows[0].startswith("model,timestep,layer_index,layer") and any(",probe_acc_8," in r for r in rows)
    labels = load_labels(out / "anomalies.npy")
    assert labels.shape[1] == 3 and len(labels) == saved["anomalies"]["count"]
    maps = np.load(out / "maps.npz")
    assert maps["inputs"].shape == (4, SIZE, SIZE, 3)
    for example in saved["maps"]["examples"]:
        assert maps[example["key"]].shape[0] == 4


def test_numbers_equal_the_analyses(tiny, folder, audited):
    _, results = audited
    layers = ["down_blocks[0].attentions[1]", "up_blocks[1].upsamplers[0]", "up_blocks[3].resnets[2]"]
    full = full_and_cropped(tiny, folder, layers, 0)
    rows = {r["layer"]: r for r in results["table"]}
    for layer in layers:
        probe = position_probe(full[layer], method="lda")
        assert rows[layer]["probe_acc_8"] == pytest.approx(probe.accuracy[8], abs=1e-9)
        grid = full[layer].shape[-1]
        cropped = full_and_cropped(tiny, folder, [layer], SIZE // grid)[layer]
        borders = border_artifacts(full[layer], cropped)
        assert rows[layer]["corner_rel_sim"] == pytest.approx(borders.relative["corner"], rel=1e-6)
        assert rows[layer]["border_rel_sim"] == pytest.approx(borders.relative["border"], rel=1e-6)
    detected = detect_anomalies(full["up_blocks[1].upsamplers[0]"])
    assert results["anomalies"]["rows"] == detected.rows.tolist()


def test_interrupted_audit_resumes_without_recomputing(tiny, folder, tmp_path, monkeypatch, audited):
    _, whole = audited
    calls = interrupt_extraction(monkeypatch, at_call=5)
    settings = AuditSettings(size=SIZE, layers="all", batch_size=2)
    with pytest.raises(KeyboardInterrupt):
        audit(tiny, folder, tmp_path, settings, report=False, progress=False, checkpoint_seconds=0)
    assert (tmp_path / ".checkpoint.npz").exists() and not (tmp_path / "results.json").exists()
    calls["n"] = -10_000
    resumed = audit(tiny, folder, tmp_path, settings, report=False, progress=False, checkpoint_seconds=0)
    # 3 batches per pass, 3 passes, + 1 maps pass = 10 calls in all; 4 were done before the interruption
    assert calls["n"] + 10_000 == 10 - 4
    assert resumed["run"]["passes"][1]["resumed_at"] == 2
    for a, b in zip(resumed["table"], whole["table"]):
        assert a == pytest.approx(b, rel=1e-5, abs=1e-6) if "error" not in a else a == b


def test_keep_store_and_reuse_it(tiny, folder, tmp_path, audited):
    _, whole = audited
    settings = AuditSettings(size=SIZE, layers="all", analyses=["position", "borders", "anomalies"])
    first = audit(tiny, folder, tmp_path / "a", settings, keep_store=True, report=False, progress=False)
    store = open_store(tmp_path / "a" / "store")
    assert store.num_images == 6 and len(store.layers) == 46
    again = audit(tiny, None, tmp_path / "b", settings, store=tmp_path / "a" / "store", report=False, progress=False)
    assert again["run"]["unet_passes_per_image"] == first["run"]["unet_passes_per_image"] - 1
    for a, b in zip(first["table"], again["table"]):
        for key in ("probe_acc_8", "corner_rel_sim", "anomaly_count"):
            if a.get(key) is not None:
                assert a[key] == pytest.approx(b[key], rel=2e-2, abs=2e-2)  # the store holds float16
    with pytest.raises(ValueError, match="timestep"):
        audit(tiny, None, tmp_path / "c", AuditSettings(size=SIZE, timestep=10), store=tmp_path / "a" / "store",
              report=False, progress=False)


def test_pass_plan_for_sd_at_512():
    grids = {"a": (64, 64), "b": (32, 32), "c": (16, 16), "d": (8, 8), "e": (64, 64)}
    plan = pass_plan(grids, 512, ["borders"])
    assert [p.name for p in plan] == ["full", "crop8", "crop16", "crop32", "crop64"]
    assert plan[1].layers == ("a", "e") and plan[1].crop_px == 8
    assert len(pass_plan(grids, 512, ["position"])) == 1


def test_bad_settings_are_refused(tiny, folder, tmp_path):
    with pytest.raises(ValueError, match="batch_size 0"):
        audit(tiny, folder, tmp_path, AuditSettings(protocol="paper", batch_size=0), report=False, progress=False)
    with pytest.raises(ValueError, match="unknown analyses"):
        audit(tiny, folder, tmp_path, AuditSettings(analyses=["fourier"]), report=False, progress=False)
    with pytest.raises(ValueError, match="anomaly layer"):
        audit(tiny, folder, tmp_path, AuditSettings(size=SIZE, anomaly_layer="conv_in", layers="up_blocks[1]"),
              report=False, progress=False)


def test_cli_audit_writes_report_with_one_position_per_layer(folder, tmp_path):
    from typer.testing import CliRunner

    from sdaudit.cli import app
    from sdaudit.report import quantitative_figure

    out = tmp_path / "cli-audit"
    result = CliRunner().invoke(app, ["audit", "--model", "tiny", "--images", str(folder), "--out", str(out),
                                      "--size", str(SIZE), "--analyses", "position,borders,anomalies"])
    assert result.exit_code == 0, result.output
    assert "report.html" in result.output
    for name in ("report.html", "figures/quantitative.svg", "figures/quantitative.png", "results.csv"):
        assert (out / name).is_file(), name
    results = json.loads((out / "results.json").read_text())
    figure = quantitative_figure([results])
    n_layers = len(results["layers"])
    assert n_layers == 45
    for axes in figure.axes[:3]:
        assert len(axes.get_xticks()) == n_layers
    html = (out / "report.html").read_text()
    assert "tiny" in html and "http://" not in html.replace("http://www.w3.org", "")


def test_batch_size_zero_uses_the_automatic_size(tiny, folder, tmp_path):
    settings = AuditSettings(size=SIZE, layers="mid_block", analyses=["anomalies"], batch_size=0)
    results = audit(tiny, folder, tmp_path, settings, report=False, progress=False)
    assert results["run"]["batch_size"] == 4  # the default batch on the CPU
    assert len(results["images"]) == 6
