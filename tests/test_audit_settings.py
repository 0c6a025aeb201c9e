"""The settings tree: immutable, validated into copies, one serialisation, and never written into by an audit."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from sdaudit.audit import AuditSettings, audit
from sdaudit.models.registry import ModelSpec, RegistryEntry
from sdaudit.settings import EXTRACTION_FIELDS, DetectorSettings, ExtractionSettings
from sdaudit.store import IDENTITY_FIELDS
from tests.conftest import photo_folder

QUICK = dict(layers="mid_block", analyses=["position"])


def test_settings_are_frozen_and_validated_into_a_copy():
    settings = AuditSettings(size=64, protocol="paper", timesteps=[200, 50], analyses=["position"], controls=[])
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.batch_size = 2
    checked = settings.validated()
    assert checked is not settings and checked.extraction.timestep == 200 and checked.extraction.latent == "sample"
    assert settings.extraction.timestep == 50 and settings.extraction.latent is None  # the original is untouched
    assert settings.analyses == ("position",) and settings.timesteps == (200, 50)  # lists kept as tuples
    assert AuditSettings(detector={"z_threshold": 1.0}).detector == DetectorSettings(z_threshold=1.0)
    with pytest.raises(TypeError, match="'sizes'"):
        AuditSettings(sizes=64)


def test_one_flat_serialisation_round_trips():
    settings = AuditSettings(extraction=ExtractionSettings(size=128, seed=7), layers=["conv_in", "conv_out"],
                             probe_method="paper", detector={"z_threshold": 2.0, "local_ratio": 1.2})
    data = settings.to_dict()
    assert json.loads(json.dumps(data)) == data  # JSON-ready as it is
    assert data["size"] == 128 and data["seed"] == 7 and data["layers"] == ["conv_in", "conv_out"]
    assert data["detector"] == {"z_threshold": 2.0, "ratio_threshold": 2.0, "local_ratio": 1.2}
    assert AuditSettings.from_dict(data) == settings
    assert ExtractionSettings.from_dict(data) == settings.extraction
    # the store's identity fields are the extraction's plus the store's own: one spelling of each
    assert set(EXTRACTION_FIELDS) <= set(IDENTITY_FIELDS)


def test_a_settings_object_reused_for_a_second_model_takes_that_models_size(tiny, tmp_path):
    """Regression: audit() used to write the first model's size into the caller's settings."""
    folder = photo_folder(tmp_path / "images", 3, first_seed=5)
    settings = AuditSettings(**QUICK)
    before = settings.to_dict()
    first = audit(tiny, folder, tmp_path / "a", settings, report=False, progress=False)
    small_spec = ModelSpec("tiny", "tiny", "tiny", RegistryEntry("tiny128", "none/none", 128, None, "tiny at 128 px"))
    smaller = dataclasses.replace(tiny, spec=small_spec)
    second = audit(smaller, folder, tmp_path / "b", settings, report=False, progress=False)
    assert first["settings"]["size"] == tiny.default_size == 256
    assert second["settings"]["size"] == 128 and second["layers"][0]["height"] == 128 // 64
    assert settings.to_dict() == before and settings.extraction.size is None


def _interrupted_before_the_outputs(tiny, folder, out, settings, monkeypatch) -> None:
    """An audit whose passes all ran (and were checkpointed) but whose outputs were never written (a finished
    audit leaves no checkpoint)."""
    from sdaudit.audit.results import ResultsWriter

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt("simulated interruption")

    (out / "results.json").unlink(missing_ok=True)  # else a finished audit is found and nothing runs
    with monkeypatch.context() as patch:
        patch.setattr(ResultsWriter, "write", interrupted)
        with pytest.raises(KeyboardInterrupt):
            audit(tiny, folder, out, settings, report=False, progress=False)


def test_a_checkpoint_of_an_older_format_is_ignored_and_the_audit_restarts(tiny, tmp_path, monkeypatch):
    folder = photo_folder(tmp_path / "images", 3, first_seed=5)
    settings = AuditSettings(size=64, **QUICK)
    out = tmp_path / "out"
    _interrupted_before_the_outputs(tiny, folder, out, settings, monkeypatch)
    resumed = audit(tiny, folder, out, settings, report=False, progress=False)
    assert resumed["run"]["passes"][0]["resumed_at"] == 3  # the current format resumes
    _interrupted_before_the_outputs(tiny, folder, out, settings, monkeypatch)
    checkpoint = out / ".checkpoint.npz"
    with np.load(checkpoint) as data:
        arrays = {key: data[key] for key in data.files}
    meta = json.loads(str(arrays["__meta__"]))
    del meta["format"]  # as format 1 wrote it
    arrays["__meta__"] = np.array(json.dumps(meta))
    np.savez(checkpoint, **arrays)
    with pytest.warns(RuntimeWarning, match="checkpoint format 1; this sdaudit writes format 3: it is ignored"):
        again = audit(tiny, folder, out, settings, report=False, progress=False)
    assert again["run"]["passes"][0]["resumed_at"] == 0
    assert again["table"][0]["probe_acc_8"] == pytest.approx(resumed["table"][0]["probe_acc_8"])


class _Model:
    """What the checkpoint key reads of a model."""

    def __init__(self, dtype="torch.float32", device="cpu"):
        self.dtype, self.device = dtype, type("Device", (), {"type": device})()

    def identity(self):
        return {"name": "tiny", "kind": "tiny", "weights_sha256": "0" * 64}


def test_the_checkpoint_key_covers_what_changes_the_numbers_and_nothing_else():
    """Review findings: n_show, batch_size (clean) and probe_max_tokens (closed-form probe) do not change the
    numbers, so they must not discard a checkpoint; the compute dtype and device and a full pass read from a
    store do."""
    from sdaudit.audit.checkpoint import fingerprint

    tiny = _Model()
    items = [type("Item", (), {"sha256": f"{i:064x}"})() for i in range(3)]
    base = AuditSettings(size=64, **QUICK)
    key = fingerprint(tiny, base, items)
    for same in (dataclasses.replace(base, n_show=2), dataclasses.replace(base, batch_size=2),
                 dataclasses.replace(base, probe_max_tokens=10)):
        assert fingerprint(tiny, same, items) == key
    paper = AuditSettings(size=64, protocol="paper", **QUICK)
    assert fingerprint(tiny, paper, items) != fingerprint(tiny, dataclasses.replace(paper, batch_size=2), items)
    assert fingerprint(tiny, base, items, from_store=True) != key
    assert fingerprint(_Model(dtype="torch.float16"), base, items) != key
    assert fingerprint(_Model(device="cuda"), base, items) != key
    assert fingerprint(tiny, base, items[:2]) != key


def test_crop_px_is_refused_as_an_audit_setting():
    from sdaudit.errors import UsageError

    with pytest.raises(UsageError, match="crop_px is not an audit setting"):
        AuditSettings(size=64, crop_px=8).validated()


def test_an_extractor_takes_the_models_size_when_its_settings_have_none(tiny):
    from sdaudit.extraction import Extractor

    assert Extractor(tiny, ["conv_in"], ExtractionSettings(timestep=100)).settings.size == tiny.default_size


def test_keep_store_with_an_existing_store_is_refused_before_any_work(tiny, tmp_path):
    from sdaudit.errors import UsageError

    with pytest.raises(UsageError, match="--keep-store with --store"):
        audit(tiny, None, tmp_path / "out", AuditSettings(size=64, **QUICK), store=tmp_path / "s", keep_store=True,
              report=False, progress=False)
    assert not (tmp_path / "out").exists()


def test_custom_probe_resolutions_reach_the_seed_average_and_the_csv(tiny, tmp_path):
    """Regression: resolutions other than the paper's crashed the seed average ('8 is not in list') and left
    results.csv without probe rows."""
    folder = photo_folder(tmp_path / "images", 4, first_seed=5)
    settings = AuditSettings(size=64, resolutions=(2, 4), noise_seeds=2, layers=["conv_in", "mid_block.resnets[0]"],
                             analyses=["position"])
    results = audit(tiny, folder, tmp_path / "out", settings, report=False, progress=False)
    row = results["table"][0]
    assert row["probe_acc_4"] is not None and "probe_acc_4_seed_sd" in row and "probe_acc_8" not in row
    csv_text = (tmp_path / "out" / "results.csv").read_text()
    assert ",probe_acc_4," in csv_text and ",probe_acc_2," in csv_text
