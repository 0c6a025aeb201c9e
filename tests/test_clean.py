"""``sdaudit clean`` and :func:`sdaudit.clean.clean_store`: a saved mitigation applied to a store of the tiny
model, written as a new complete store that records the transform; the input store is never touched."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from cli_helpers import fails_with_one_line, runner
from sdaudit.clean import clean_store, fit_on_store, store_transforms
from sdaudit.cli import app
from sdaudit.errors import OutputPathError, UsageError
from sdaudit.extraction import extract
from sdaudit.mitigations import MitigationMismatchError, PositionMean, PositionSubspace, load_mitigation
from sdaudit.store import StoreConfigMismatch, open_store, verify_store

TARGET = "up_blocks[1].upsamplers[0]"
LAYERS = f"conv_in,{TARGET},conv_out"


@pytest.fixture(scope="module")
def raw(tiny, tmp_path_factory):
    """A 5-image store of the tiny model (64 px) and a position mitigation fitted on its target layer."""
    from conftest import photo_folder

    base = tmp_path_factory.mktemp("clean")
    images = photo_folder(base / "images", 5)
    extract(tiny, images, base / "raw", layers=LAYERS, size=64, batch_size=2, progress=False)
    mitigation = fit_on_store("position", base / "raw", layer=TARGET, batch_size=2)
    mitigation.save(base / "position.safetensors")
    return base, images


def _snapshot(folder):
    return {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_clean_store_transforms_its_layer_copies_the_rest_and_records_it(raw, tmp_path):
    base, _ = raw
    before = _snapshot(base / "raw")
    new = clean_store(base / "raw", base / "position.safetensors", tmp_path / "clean", batch_size=3)
    source = open_store(base / "raw")
    assert _snapshot(base / "raw") == before  # the input store is only read
    assert new.num_images == 5 and new.layers == source.layers
    assert [e.to_json() for e in new.images] == [e.to_json() for e in source.images]
    mitigation = load_mitigation(base / "position.safetensors")
    expected = mitigation.transform(source.read(TARGET)).astype(np.float16)
    np.testing.assert_array_equal(new.read(TARGET), expected)
    assert not np.array_equal(new.read(TARGET), source.read(TARGET))
    for layer in ("conv_in", "conv_out"):
        np.testing.assert_array_equal(new.read(layer), source.read(layer))
    np.testing.assert_array_equal(new.read_inputs(), source.read_inputs())
    [record] = store_transforms(new)
    sha = hashlib.sha256((base / "position.safetensors").read_bytes()).hexdigest()
    assert record == {"kind": "position", "params": {"keep_global_mean": True}, "layer": TARGET,
                      "file": str((base / "position.safetensors").resolve()), "sha256": sha, "fitted_images": 5}
    assert store_transforms(source) == []
    assert verify_store(tmp_path / "clean").intact


def test_fit_on_store_equals_fit_on_its_arrays(raw):
    base, _ = raw
    source = open_store(base / "raw")
    whole = PositionMean().fit(source.read(TARGET), layer=TARGET)  # the fixture's file: fitted in batches of 2
    np.testing.assert_allclose(load_mitigation(base / "position.safetensors").position_mean_, whole.position_mean_)
    streamed = fit_on_store("position-subspace", source, layer=TARGET, images=[4, 0, 2], batch_size=2)
    one_shot = PositionSubspace().fit(source.read(TARGET, [4, 0, 2]))
    np.testing.assert_allclose(streamed.components_.T @ streamed.components_,
                               one_shot.components_.T @ one_shot.components_, atol=1e-8)


def test_a_cleaned_store_refuses_raw_images_and_can_be_cleaned_again(raw, tiny, tmp_path):
    base, images = raw
    clean_store(base / "raw", base / "position.safetensors", tmp_path / "clean")
    with pytest.raises(StoreConfigMismatch, match="transforms"):
        extract(tiny, images, tmp_path / "clean", layers=LAYERS, size=64, batch_size=2, progress=False)
    again = clean_store(tmp_path / "clean", base / "position.safetensors", tmp_path / "twice",
                        layers=f"{TARGET}, conv_in")
    assert again.layers == ["conv_in", TARGET]  # the store's order, only the chosen layers
    assert [t["kind"] for t in store_transforms(again)] == ["position", "position"]


def test_refusals(raw, tmp_path):
    base, _ = raw
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(OutputPathError, match="exists and is not empty"):
        clean_store(base / "raw", base / "position.safetensors", tmp_path / "full")
    with pytest.raises(OutputPathError, match="lies in the input store"):
        clean_store(base / "raw", base / "position.safetensors", base / "raw" / "sub")
    with pytest.raises(UsageError, match=r"--layers leaves out 'up_blocks\[1\].upsamplers\[0\]'"):
        clean_store(base / "raw", base / "position.safetensors", tmp_path / "o", layers="conv_in")
    other = PositionMean().fit(np.ones((2, 7, 4, 4), np.float32), layer=TARGET)
    other.save(tmp_path / "other.safetensors")
    with pytest.raises(MitigationMismatchError, match=r"other\.safetensors' was fitted on 7 channels x 4x4"):
        clean_store(base / "raw", tmp_path / "other.safetensors", tmp_path / "o")
    PositionMean().fit(np.ones((2, 7, 4, 4), np.float32), layer="mid_block").save(tmp_path / "mid.safetensors")
    with pytest.raises(MitigationMismatchError, match="is for layer 'mid_block'"):
        clean_store(base / "raw", tmp_path / "mid.safetensors", tmp_path / "o")
    assert not (tmp_path / "o").exists()  # nothing left behind


def test_a_failure_while_writing_leaves_nothing(raw, tmp_path, monkeypatch):
    base, _ = raw
    (tmp_path / "empty").mkdir()

    def broken(self, X, *, layer=None):
        raise RuntimeError("simulated failure")

    monkeypatch.setattr(PositionMean, "transform", broken)
    with pytest.raises(RuntimeError, match="simulated"):
        clean_store(base / "raw", base / "position.safetensors", tmp_path / "empty")
    assert (tmp_path / "empty").is_dir() and not any((tmp_path / "empty").iterdir())
    assert not list(tmp_path.glob(".empty.creating-*"))


def test_cli_clean(raw, tmp_path):
    base, _ = raw
    result = runner.invoke(app, ["clean", str(base / "raw"), "--transform", str(base / "position.safetensors"),
                                 "--out", str(tmp_path / "c"), "--layers", f"conv_in,{TARGET}"])
    assert result.exit_code == 0, result.output
    assert "cleaned store" in result.output and "5 images x 2 layers" in result.output
    assert store_transforms(open_store(tmp_path / "c"))[0]["layer"] == TARGET
    fails_with_one_line(["clean", base / "raw", "--transform", base / "position.safetensors", "--out", tmp_path / "c"],
                        "exists and is not empty")
    fails_with_one_line(["clean", base / "raw", "--transform", tmp_path / "nope.safetensors", "--out", tmp_path / "d"],
                        "nope.safetensors' does not exist")
    (tmp_path / "junk.safetensors").write_text("junk")
    line = fails_with_one_line(["clean", base / "raw", "--transform", tmp_path / "junk.safetensors",
                                "--out", tmp_path / "d"], "junk.safetensors")
    assert "not an sdaudit mitigation file" in line
    fails_with_one_line(["clean", tmp_path / "missing", "--transform", base / "position.safetensors",
                         "--out", tmp_path / "d"], "does not exist")
    assert not (tmp_path / "d").exists()


def test_cli_clean_fits_saves_and_applies(raw, tmp_path):
    base, _ = raw
    result = runner.invoke(app, ["clean", str(base / "raw"), "--fit", "position", "--layers", TARGET,
                                 "--save", str(tmp_path / "p.safetensors")])
    assert result.exit_code == 0, result.output
    assert "fitted 'position'" in result.output and "5 images" in result.output
    assert not (tmp_path / "c").exists()
    fitted = load_mitigation(tmp_path / "p.safetensors")
    np.testing.assert_allclose(fitted.position_mean_, load_mitigation(base / "position.safetensors").position_mean_)
    result = runner.invoke(app, ["clean", str(base / "raw"), "--fit", "position-subspace", "--layers", TARGET,
                                 "--save", str(tmp_path / "s.safetensors"), "--out", str(tmp_path / "c")])
    assert result.exit_code == 0, result.output
    new, source = open_store(tmp_path / "c"), open_store(base / "raw")
    assert new.layers == source.layers and store_transforms(new)[0]["kind"] == "position-subspace"
    expected = load_mitigation(tmp_path / "s.safetensors").transform(source.read(TARGET)).astype(np.float16)
    np.testing.assert_array_equal(new.read(TARGET), expected)


def test_cli_clean_fit_refusals(raw, tmp_path):
    base, _ = raw
    store, save = base / "raw", tmp_path / "p.safetensors"
    fails_with_one_line(["clean", store, "--out", tmp_path / "c"], "either --fit NAME")
    fails_with_one_line(["clean", store, "--fit", "position", "--transform", base / "position.safetensors"],
                        "either --fit NAME")
    fails_with_one_line(["clean", store, "--fit", "position", "--layers", TARGET], "--fit needs --save")
    fails_with_one_line(["clean", store, "--transform", base / "position.safetensors"], "--transform needs --out")
    fails_with_one_line(["clean", store, "--fit", "position", "--save", save], "exactly one layer")
    fails_with_one_line(["clean", store, "--fit", "position", "--layers", f"conv_in,{TARGET}", "--save", save],
                        "exactly one layer")
    fails_with_one_line(["clean", store, "--fit", "blur", "--layers", TARGET, "--save", save], "unknown mitigation")
    fails_with_one_line(["clean", store, "--fit", "position", "--layers", TARGET, "--save", tmp_path / "no" / "p"],
                        "does not exist")
    fails_with_one_line(["clean", store, "--fit", "position", "--layers", TARGET, "--save", store / "p"],
                        "lies in the input store")
    assert not save.exists()


def test_an_audit_refuses_a_cleaned_store(raw, tiny, tmp_path):
    """A cleaned store is not a model's raw representation (and its transform was fitted on every image, the
    probe's test images too): `audit --store` refuses it in one line (regression: it was audited as raw)."""
    from sdaudit.audit import AuditSettings, audit

    base, _ = raw
    clean_store(base / "raw", base / "position.safetensors", tmp_path / "clean")
    settings = AuditSettings(size=64, layers=TARGET, analyses=("position",))
    with pytest.raises(StoreConfigMismatch, match="cleaned features") as caught:
        audit(tiny, None, tmp_path / "audit", settings, store=tmp_path / "clean", report=False, progress=False)
    assert "\n" not in str(caught.value) and "--mitigations" in str(caught.value)
    assert not (tmp_path / "audit" / "results.json").exists()
