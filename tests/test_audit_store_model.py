"""`audit --store` refuses a store that another model made (it would mix two models' numbers)."""

from __future__ import annotations

import copy
import dataclasses
import json

import pytest
import torch

from sdaudit.audit import AuditSettings, audit
from sdaudit.extraction import extract
from sdaudit.models.hashing import state_dict_sha256
from sdaudit.store import StoreConfigMismatch

SIZE = 64
SETTINGS = dict(size=SIZE, layers="mid_block", analyses=["position", "anomalies"])


@pytest.fixture(scope="module")
def tiny_store(tiny, tmp_path_factory):
    from tests.conftest import photo_folder

    folder = photo_folder(tmp_path_factory.mktemp("store-model-images"), 4, first_seed=40)
    store = tmp_path_factory.mktemp("store-model") / "store"
    extract(tiny, folder, store, layers="mid_block", size=SIZE, progress=False)
    return store


def perturbed(model):
    """A copy of ``model`` with one U-Net weight changed (and the weights hash that goes with it)."""
    unet = copy.deepcopy(model.unet)
    with torch.no_grad():
        next(unet.parameters()).view(-1)[0] += 1.0
    return dataclasses.replace(model, denoiser=unet, weights_sha256=state_dict_sha256(unet))


def test_audit_refuses_a_store_made_by_other_weights(tiny, tiny_store, tmp_path):
    other = perturbed(tiny)
    with pytest.raises(StoreConfigMismatch) as caught:
        audit(other, None, tmp_path, AuditSettings(**SETTINGS), store=tiny_store, report=False, progress=False)
    message = str(caught.value)
    assert "\n" not in message and str(tiny_store) in message
    assert tiny.weights_sha256[:12] in message and other.weights_sha256[:12] in message
    assert not (tmp_path / "results.json").exists()


def test_cli_audit_refuses_another_models_store_in_one_line(tiny_store, tiny_folder, tmp_path):
    from typer.testing import CliRunner

    from sdaudit.cli import app

    # the same architecture saved as a folder: another source, hashed otherwise -> not provably the same weights
    out = tmp_path / "folder-audit"
    result = CliRunner().invoke(app, ["audit", "--model", str(tiny_folder), "--store", str(tiny_store), "--out",
                                      str(out), "--size", str(SIZE), "--layers", "mid_block", "--analyses", "position"])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and result.output.count("error:") == 1, result.output
    message = result.output[result.output.index("error:"):].replace("\n", "")  # rich wraps the one line
    assert str(tiny_folder) in message and "tiny (tiny" in message and str(tiny_store) in message
    assert not (out / "results.json").exists()


def test_audit_of_the_stores_own_model_records_the_check(tiny, tiny_store, tmp_path):
    results = audit(tiny, None, tmp_path, AuditSettings(**SETTINGS), store=tiny_store, report=False, progress=False)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["model"] == results["model"] == {**tiny.identity(), "random_weights": True,
                                                       "compute_dtype": "float32"}
    assert saved["store"]["model_check"].startswith("weights sha256")


def test_without_weights_hash_the_names_decide_and_the_note_says_so(tiny, tiny_store, tmp_path):
    from sdaudit.audit.checks import check_store_model
    from sdaudit.store import open_store

    unhashed = dataclasses.replace(tiny, weights_sha256=None)
    assert "compared name, kind, location, revision only" in check_store_model(open_store(tiny_store), unhashed)
    renamed = dataclasses.replace(unhashed, revision="other")
    with pytest.raises(StoreConfigMismatch, match="revision other"):
        check_store_model(open_store(tiny_store), renamed)


def test_a_store_records_its_compute_dtype_and_refuses_another(tiny, tiny_store, tmp_path):
    """A store extracted in float32 (the CPU) is neither continued nor audited in bfloat16: the representations
    would mix two precisions (regression: the compute dtype was not part of a store's identity)."""
    from sdaudit.models import load_model
    from sdaudit.store import open_store
    from tests.conftest import photo_folder

    assert open_store(tiny_store).config["compute_dtype"] == "float32"
    half = load_model("tiny", device="cpu", dtype="bfloat16")
    with pytest.raises(StoreConfigMismatch, match="bfloat16") as caught:
        audit(half, None, tmp_path / "audit", AuditSettings(**SETTINGS), store=tiny_store, report=False,
              progress=False)
    assert "--precision float32" in str(caught.value)
    more = photo_folder(tmp_path / "more", 1, first_seed=90)
    with pytest.raises(StoreConfigMismatch, match="compute_dtype"):
        extract(half, more, tiny_store, layers="mid_block", size=SIZE, progress=False)
    assert len(open_store(tiny_store)) == 4


def test_cli_precision_reaches_the_model(tmp_path):
    """``--precision`` is the compute dtype the CLI loads the model in (recorded in the store)."""
    from sdaudit.store import open_store
    from tests.cli_helpers import runner
    from tests.conftest import photo_folder

    from sdaudit.cli import app

    images = photo_folder(tmp_path / "images", 3, first_seed=91)
    result = runner.invoke(app, ["extract", "--model", "tiny", "--images", str(images), "--out",
                                   str(tmp_path / "store"), "--size", "64", "--layers", "mid_block",
                                   "--device", "cpu", "--precision", "bfloat16"])
    assert result.exit_code == 0, result.output
    assert open_store(tmp_path / "store").config["compute_dtype"] == "bfloat16"
    audited = runner.invoke(app, ["audit", "--model", "tiny", "--store", str(tmp_path / "store"), "--out",
                                  str(tmp_path / "audit"), "--layers", "mid_block", "--analyses", "position",
                                  "--device", "cpu", "--precision", "bfloat16"])
    assert audited.exit_code == 0, audited.output
    assert json.loads((tmp_path / "audit" / "results.json").read_text())["model"]["compute_dtype"] == "bfloat16"
    bad = runner.invoke(app, ["extract", "--model", "tiny", "--images", str(images), "--out",
                                str(tmp_path / "other"), "--precision", "float8"])
    assert bad.exit_code == 2 and "dtype" in bad.output.lower()


def test_the_checkpoint_fingerprint_names_the_stores_storage_dtype(tiny, tiny_store, tmp_path):
    """A float16 and a float32 store of the same images give differently rounded full passes: an audit
    interrupted on one must not resume on the other (regression: the fingerprint said only 'from a store')."""
    from sdaudit.audit.checkpoint import fingerprint, store_key
    from sdaudit.audit.sources import AuditInputs
    from sdaudit.store import open_store

    wide = tmp_path / "store32"
    images = [open_store(tiny_store).images[i].source for i in range(4)]
    extract(tiny, images, wide, layers="mid_block", size=SIZE, dtype="float32", progress=False)
    settings = AuditSettings(**SETTINGS)
    keys = []
    for store in (tiny_store, wide):
        inputs = AuditInputs.from_store(store, tiny, settings)
        assert store_key(inputs.full_source) == open_store(store).config["dtype"]
        keys.append(fingerprint(tiny, inputs.settings, inputs.items, from_store=store_key(inputs.full_source)))
    assert [i.sha256 for i in AuditInputs.from_store(wide, tiny, settings).items] == \
        [i.sha256 for i in AuditInputs.from_store(tiny_store, tiny, settings).items]  # the same images
    assert keys[0] != keys[1]
