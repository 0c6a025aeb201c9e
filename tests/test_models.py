"""Model registry, spellings, offline models, local folders, and clear errors for unavailable models."""

from __future__ import annotations

import pytest
import torch

from sdaudit.models import ModelNotAvailableError, ModelSpecError, load_model, load_denoiser_config, parse_model_spec
from sdaudit.models.hashing import state_dict_sha256


@pytest.mark.parametrize("spelling,key", [
    ("sd15", "sd15"), ("SD1.5", "sd15"), ("sd-1.5", "sd15"), ("SD_15", "sd15"), ("Stable Diffusion 1.5", "sd15"),
    ("stable-diffusion-v1-5/stable-diffusion-v1-5", "sd15"), ("runwayml/stable-diffusion-v1-5", "sd15"),
    ("SD2.1", "sd21"), ("sd-2.1", "sd21"), ("SD-Turbo", "sd-turbo"), ("sdturbo", "sd-turbo"), ("sd_turbo", "sd-turbo"),
    ("SD1.4", "sd14"), ("sd20", "sd20"), ("SDXL", "sdxl"), ("sdxl-turbo", "sdxl-turbo"),
])
def test_registry_spellings(spelling, key):
    spec = parse_model_spec(spelling)
    assert spec.kind == "hub" and spec.name == key


def test_offline_and_path_specs(tmp_path, tiny_folder):
    assert parse_model_spec("tiny").kind == "tiny"
    assert parse_model_spec("arch:sd15").name == "arch:sd15"
    assert parse_model_spec("ARCH:SD-2.1").name == "arch:sd21"
    assert parse_model_spec(str(tiny_folder)).kind == "folder"
    ckpt = tmp_path / "model.safetensors"
    ckpt.write_bytes(b"")
    assert parse_model_spec(str(ckpt)).kind == "file"
    assert parse_model_spec("someone/some-model").kind == "hub"


@pytest.mark.parametrize("spec,needle", [
    ("sd9000", "known models: tiny, arch:sd15"),
    ("arch:sd9000", "arch:sd15, arch:sd21, arch:sdxl"),
    ("/no/such/model.safetensors", "does not exist"),
    ("", "empty model name"),
])
def test_unknown_specs_are_clear(spec, needle):
    with pytest.raises(ModelSpecError, match=needle.replace(".", r"\.")):
        parse_model_spec(spec)


def test_folder_without_unet_is_refused(tmp_path):
    with pytest.raises(ModelSpecError, match=r"no 'unet' \(or 'transformer'\) subfolder"):
        parse_model_spec(str(tmp_path))


def test_tiny_is_deterministic_and_half_exact(tiny):
    again = load_model("tiny", device="cpu")
    assert state_dict_sha256(again.unet) == state_dict_sha256(tiny.unet) == tiny.weights_sha256
    for p in tiny.unet.parameters():
        assert torch.equal(p, p.half().float())
    assert tiny.vae_scale_factor == 8 and tiny.default_size == 256


def test_load_from_local_folder_equals_tiny(tiny, tiny_folder):
    loaded = load_model(str(tiny_folder), device="cpu")
    assert loaded.spec.kind == "folder"
    for a, b in ((tiny.unet, loaded.unet), (tiny.vae, loaded.vae), (tiny.text_encoder, loaded.text_encoder)):
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys()
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert type(loaded.scheduler).__name__ == "PNDMScheduler"
    assert loaded.weights_sha256 and loaded.identity()["kind"] == "folder"


def test_unavailable_hub_model_gives_instructions(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    with pytest.raises(ModelNotAvailableError) as info:
        load_model("sd15", device="cpu", local_files_only=True)
    message = str(info.value)
    assert "stable-diffusion-v1-5/stable-diffusion-v1-5" in message
    assert "huggingface-cli download" in message and "tiny, arch:sd15" in message


def test_unet_configs_offline():
    assert load_denoiser_config("sd15")["cross_attention_dim"] == 768
    assert load_denoiser_config("sd-turbo")["cross_attention_dim"] == 1024
    assert load_denoiser_config("arch:sd21")["attention_head_dim"] == [5, 10, 20, 20]
    assert load_denoiser_config("tiny")["block_out_channels"] == [32, 64, 64, 64]




def test_the_offline_models_table_agrees_with_the_spec_parser():
    """`sdaudit models` lists OFFLINE_MODELS: each must parse, at the size the table says, without a download."""
    from sdaudit.models import parse_model_spec
    from sdaudit.models.registry import OFFLINE_MODELS, known_model_names

    for name, _, _, size in OFFLINE_MODELS:
        spec = parse_model_spec(name)
        assert spec.default_size == size and spec.kind in ("tiny", "arch") and name in known_model_names()
