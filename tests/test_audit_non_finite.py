"""A model whose layers produce NaN/Inf: the audit finishes, names those layers and reports the rest."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sdaudit.audit import AuditSettings, audit
from sdaudit.layer_names import norm_key

SIZE = 64
FIRST_BAD = "up_blocks[1].upsamplers[0]"  # the default anomaly layer: every layer from it on is non-finite


def poison(model):
    """Make the output of FIRST_BAD (and so of every later layer) NaN; returns the hook handle."""
    module = dict(model.unet.named_modules())["up_blocks.1.upsamplers.0"]
    return module.register_forward_hook(lambda _module, _inputs, output: output * float("nan"))


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    from tests.conftest import photo_folder

    return photo_folder(tmp_path_factory.mktemp("nan-images"), 5, first_seed=60)


def test_audit_of_a_model_with_non_finite_layers_finishes_and_names_them(tiny, folder, tmp_path):
    handle = poison(tiny)
    try:
        results = audit(tiny, folder, tmp_path, AuditSettings(size=SIZE, layers="all"), progress=False)
    finally:
        handle.remove()
    saved = json.loads((tmp_path / "results.json").read_text())
    assert (tmp_path / "report.html").is_file() and (tmp_path / "figures" / "qualitative.png").is_file()
    names = [layer["name"] for layer in saved["layers"]]
    bad = names[names.index(FIRST_BAD):]
    assert sorted(saved["non_finite"]) == sorted(bad) == sorted(results["non_finite"])
    assert all(f"'{name}'" in message for name, message in saved["non_finite"].items())  # each names its layer
    rows = {row["layer"]: row for row in saved["table"]}
    assert all("error" in rows[n] for n in bad) and not any("error" in rows[n] for n in names if n not in bad)
    assert rows["down_blocks[0].attentions[0]"]["probe_acc_8"] is not None  # the rest is reported
    # the anomaly layer is non-finite: no detection, no labels; the maps and figures skip every bad layer
    assert "anomalies" not in saved and not (tmp_path / "anomalies.npy").exists()
    shown = [e["layer"] for e in saved["maps"]["examples"]] + saved["maps"]["norm_layers"]
    assert shown and not set(shown) & set(bad) and saved["maps"]["anomaly_layer"] is None
    with np.load(tmp_path / "maps.npz") as maps:
        assert not {norm_key(n) for n in bad} & set(maps.files)
        assert all(np.isfinite(maps[k]).all() for k in maps.files)
    html = (tmp_path / "report.html").read_text()
    assert f"features of layer &#39;{FIRST_BAD}&#39; contain" in html  # the verdict table names the failure


def test_cli_audit_names_the_non_finite_layers(tiny, folder, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    import sdaudit.models
    from sdaudit.cli import app

    handles = []

    def load_poisoned(*args, **kwargs):
        handles.append(poison(tiny))  # the session's tiny model: the hook is removed below
        return tiny

    monkeypatch.setattr(sdaudit.models, "load_model", load_poisoned)
    try:
        result = CliRunner().invoke(app, ["audit", "--model", "tiny", "--images", str(folder), "--out",
                                          str(tmp_path), "--size", str(SIZE), "--analyses", "position,anomalies,maps"])
    finally:
        for handle in handles:
            handle.remove()
    assert result.exit_code == 0, result.output
    assert "NaN/Inf" in result.output and FIRST_BAD in result.output and "conv_out" in result.output


def test_anomaly_layer_turning_non_finite_late_reports_no_partial_anomalies(tiny, folder, tmp_path):
    module = dict(tiny.unet.named_modules())["up_blocks.1.upsamplers.0"]
    calls = {"n": 0}

    def second_batch_nan(_module, _inputs, output):
        calls["n"] += 1
        return output * float("nan") if calls["n"] == 2 else output  # the full pass's second batch only

    handle = module.register_forward_hook(second_batch_nan)
    # a low threshold: the first batch surely has detections (and so anomaly norms on every layer)
    settings = AuditSettings(size=SIZE, layers="all", batch_size=2, analyses=["anomalies"],
                             detector={"z_threshold": 0.5, "ratio_threshold": 1.0})
    try:
        saved = audit(tiny, folder, tmp_path, settings, report=False, progress=False)
    finally:
        handle.remove()
    assert FIRST_BAD in saved["non_finite"] and "anomalies" not in saved
    assert all(row.get("anomaly_rel_norm_mean") is None for row in saved["table"])


def test_audit_with_every_layer_non_finite_still_writes_results_and_report(tiny, folder, tmp_path):
    handle = dict(tiny.unet.named_modules())["conv_in"].register_forward_hook(
        lambda _module, _inputs, output: output * float("inf"))
    try:
        saved = audit(tiny, folder, tmp_path, AuditSettings(size=SIZE, layers="mid_block"), progress=False)
    finally:
        handle.remove()
    assert sorted(saved["non_finite"]) == sorted(layer["name"] for layer in saved["layers"])
    assert "maps" not in saved and not (tmp_path / "maps.npz").exists()
    assert (tmp_path / "results.json").is_file() and (tmp_path / "report.html").is_file()
