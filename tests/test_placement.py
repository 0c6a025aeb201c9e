"""Text encoders run once per audit, and the memory placements (keep, free-text-encoders, offload) move parts
between the CPU and the device without changing a number."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from sdaudit.audit import AuditSettings, audit
from sdaudit.cli import app
from sdaudit.errors import UsageError
from sdaudit.extraction import Extractor
from sdaudit.models import load_model
from sdaudit.models import placement as placement_module
from sdaudit.models.placement import PLACEMENTS, apply_placement, on_device, prompt_conditioning, resolve_placement
from sdaudit.settings import ExtractionSettings
from tests.cli_helpers import runner

SIZE = 64


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    from tests.conftest import photo_folder

    return photo_folder(tmp_path_factory.mktemp("placement-images"), 4, first_seed=50, height=48, widen=8)


def _count_calls(module: torch.nn.Module) -> dict:
    calls = {"n": 0}

    def hook(*_):
        calls["n"] += 1

    calls["handle"] = module.register_forward_hook(hook)
    return calls


# tiny: cropped passes (borders), a second timestep and a control, i.e. many extractors on two models;
# tiny-sdxl (two encoders): a second timestep (cheaper: its audit is the slow one)
@pytest.mark.parametrize("name, kwargs", [
    ("tiny", {"analyses": ("borders",), "timesteps": [50, 200], "controls": ("untrained",)}),
    ("tiny-sdxl", {"analyses": ("anomalies",), "timesteps": [50, 200]})])
def test_the_text_encoders_run_once_per_audit(name, kwargs, folder, tmp_path):
    model = load_model(name, device="cpu")
    encoders = [m for m in (model.text_encoder, model.text_encoder_2) if m is not None]
    counters = [_count_calls(m) for m in encoders]
    try:
        settings = AuditSettings(size=SIZE, layers="paper", batch_size=2, **kwargs)
        audit(model, folder, tmp_path, settings, report=False, progress=False)
    finally:
        for c in counters:
            c["handle"].remove()
    assert [c["n"] for c in counters] == [1] * len(encoders) and len(encoders) == (2 if name == "tiny-sdxl" else 1)


def _table(results: dict) -> list[dict]:
    return [{k: v for k, v in row.items()} for row in results["table"]]


def test_results_are_identical_under_every_placement(folder, tmp_path):
    settings = AuditSettings(size=SIZE, layers="paper", analyses=("position", "anomalies"), batch_size=2)
    tables = {}
    for name in PLACEMENTS:
        model = load_model("tiny", device="cpu", placement=name)
        assert model.placement == name
        tables[name] = _table(audit(model, folder, tmp_path / name, settings, report=False, progress=False))
    assert tables["free-text-encoders"] == tables["keep"] and tables["offload"] == tables["keep"]


def test_auto_keeps_on_the_cpu_and_frees_on_an_accelerator(folder, tmp_path):
    assert resolve_placement("auto", torch.device("cpu")) == "keep"
    assert resolve_placement(None, torch.device("cuda")) == "free-text-encoders"
    with pytest.raises(UsageError, match="did you mean 'offload'"):
        resolve_placement("ofload", torch.device("cpu"))
    result = runner.invoke(app, ["audit", "--model", "tiny", "--images", str(folder), "--out",
                                 str(tmp_path / "o"), "--memory", "ofload"])
    assert result.exit_code != 0 and "offload" in result.output


@pytest.fixture
def moves(monkeypatch):
    """Every move placement asks for, as (part, device type): the device here is the CPU, so a pretend
    accelerator ("meta") stands for it, and no module really moves."""
    log = []

    def move(module, device):
        if module is None:
            return False
        log.append((module.name_for_test, device.type))
        return True

    monkeypatch.setattr(placement_module, "_move", move)
    return log


def _fake_model(tiny, placement: str):
    model = dataclasses.replace(tiny, device=torch.device("meta"), placement=placement, prompt_cache={})
    for name in ("vae", "text_encoder"):
        getattr(model, name).name_for_test = name
    return model


@pytest.mark.parametrize("placement, during, after", [
    ("keep", [], []),
    ("free-text-encoders", [("text_encoder", "meta")], [("text_encoder", "cpu")]),
    ("offload", [("text_encoder", "meta")], [("text_encoder", "cpu")]),
])
def test_the_text_encoders_visit_the_device_and_are_parked_after(tiny, moves, monkeypatch, placement, during, after):
    model = _fake_model(tiny, placement)
    seen = {}

    def encode(model, prompt, *, protocol):
        seen["moves"] = list(moves)
        return torch.zeros(1)

    monkeypatch.setattr(model.family, "encode_prompt", encode)
    first = prompt_conditioning(model, "a prompt", "clean")
    assert seen["moves"] == during and moves == during + after
    assert prompt_conditioning(model, "a prompt", "clean") is first and moves == during + after  # cached: no run
    prompt_conditioning(model, "another", "clean")
    assert len(moves) == 2 * len(during + after)


@pytest.mark.parametrize("placement, expected", [
    ("keep", []), ("free-text-encoders", []), ("offload", [("vae", "meta"), ("vae", "cpu")])])
def test_only_offload_moves_the_vae(tiny, moves, placement, expected):
    model = _fake_model(tiny, placement)
    with on_device(model, ("vae",)):
        inside = list(moves)
    assert inside == expected[:1] and moves == expected


def test_offload_parks_the_text_encoders_and_vae_at_load(tiny, moves):
    model = _fake_model(tiny, "keep")
    apply_placement(model, "offload")
    assert moves == [("text_encoder", "cpu"), ("vae", "cpu")]


def test_a_copy_with_other_text_encoders_does_not_reuse_the_conditioning(tiny):
    import copy

    model = dataclasses.replace(tiny, prompt_cache={})
    settings = ExtractionSettings(size=SIZE)
    first = Extractor(model, "paper", settings)._context
    assert Extractor(model, "paper", settings)._context is first
    # a copy shares the cache dict (dataclasses.replace), but not the encoder: it encodes with its own
    other = dataclasses.replace(model, text_encoder=copy.deepcopy(model.text_encoder))
    calls = _count_calls(other.text_encoder)
    try:
        second = Extractor(other, "paper", settings)._context
    finally:
        calls["handle"].remove()
    assert calls["n"] == 1 and second is not first and len(model.prompt_cache) == 2
    torch.testing.assert_close(second, first)
