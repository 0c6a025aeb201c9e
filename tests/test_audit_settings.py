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
    with pytest.warns(RuntimeWarning, match="checkpoint format 1; this sdaudit writes format 2: it is ignored"):
        again = audit(tiny, folder, out, settings, report=False, progress=False)
    assert again["run"]["passes"][0]["resumed_at"] == 0
    assert again["table"][0]["probe_acc_8"] == pytest.approx(resumed["table"][0]["probe_acc_8"])
