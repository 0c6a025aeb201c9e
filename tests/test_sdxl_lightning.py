"""SDXL-Lightning: registry entries whose U-Net weights file replaces the U-Net of a base pipeline. Offline, the
base is a saved tiny-sdxl folder and the "download" a locally saved U-Net file of the same layout."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from safetensors.torch import save_file

from sdaudit.extraction import Extractor
from sdaudit.models import REGISTRY, ModelNotAvailableError, ModelSpec, load_denoiser_config, load_model
from sdaudit.models import load as load_module
from sdaudit.models.hashing import file_sha256
from sdaudit.models.registry import ModelSpecError, parse_model_spec
from sdaudit.models.unet_file import LIGHTNING_REPO, UnetFileError
from sdaudit.settings import ExtractionSettings


@pytest.fixture(scope="module")
def tiny_sdxl():
    return load_model("tiny-sdxl", device="cpu")


@pytest.fixture(scope="module")
def base_folder(tiny_sdxl, tmp_path_factory):
    return tiny_sdxl.save_pretrained(tmp_path_factory.mktemp("lightning-base") / "tiny-sdxl")


@pytest.fixture(scope="module")
def unet_file(tiny_sdxl, tmp_path_factory):
    """Other U-Net weights of tiny-sdxl's layout (another draw), saved as a Lightning-style file."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(7)
        other = type(tiny_sdxl.unet).from_config(tiny_sdxl.unet.config)
    path = tmp_path_factory.mktemp("lightning-file") / "sdxl_lightning_4step_unet.safetensors"
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(path))
    return path, other.state_dict()


def _spec(base_folder) -> ModelSpec:
    entry = dataclasses.replace(REGISTRY["sdxl-lightning-4step"], base=str(base_folder))
    return ModelSpec("hub", entry.key, entry.repo_id, entry)


def _serve(monkeypatch, path, calls: list):
    def download(repo_id, filename, *, revision, local_files_only):
        calls.append((repo_id, filename, local_files_only))
        return path

    monkeypatch.setattr(load_module, "download_unet_file", download)


def test_registry_knows_the_four_step_counts_and_refuses_the_bare_repo():
    names = {parse_model_spec(f"SDXL-Lightning-{n}step").name: n for n in (1, 2, 4, 8)}
    assert sorted(names.values()) == [1, 2, 4, 8]
    entry = REGISTRY["sdxl-lightning-1step"]
    assert entry.repo_id == LIGHTNING_REPO and entry.unet_file == "sdxl_lightning_1step_unet_x0.safetensors"
    assert REGISTRY["sdxl-lightning-8step"].unet_file == "sdxl_lightning_8step_unet.safetensors"
    assert entry.base == "stabilityai/stable-diffusion-xl-base-1.0" and entry.default_size == 1024
    with pytest.raises(ModelSpecError, match="sdxl-lightning-1step, sdxl-lightning-2step"):
        parse_model_spec(LIGHTNING_REPO)
    # its layer table needs no download: the bundled SDXL architecture
    assert load_denoiser_config("sdxl-lightning-4step") == load_denoiser_config("arch:sdxl")


def test_the_file_replaces_the_base_unet(tiny_sdxl, base_folder, unet_file, monkeypatch):
    path, state = unet_file
    calls = []
    _serve(monkeypatch, path, calls)
    model = load_model(_spec(base_folder), device="cpu")
    assert [c[:2] for c in calls] == [(LIGHTNING_REPO, "sdxl_lightning_4step_unet.safetensors")]
    for key, value in model.unet.state_dict().items():
        torch.testing.assert_close(value, state[key])
    # everything else is the base pipeline's
    for key, value in model.text_encoder_2.state_dict().items():
        torch.testing.assert_close(value, tiny_sdxl.text_encoder_2.state_dict()[key])
    assert model.family.name == tiny_sdxl.family.name and model.weights_sha256 == file_sha256(path)
    out = Extractor(model, "all", ExtractionSettings(size=64)).run([_image()], [0])
    base = Extractor(tiny_sdxl, "all", ExtractionSettings(size=64)).run([_image()], [0])
    assert {k: v.shape for k, v in out.items()} == {k: v.shape for k, v in base.items()}
    assert not torch.allclose(out["conv_out"], base["conv_out"])  # other U-Net weights, other features


def _image():
    from PIL import Image

    return Image.new("RGB", (64, 64), (120, 90, 60))


def test_a_file_of_another_architecture_is_refused(base_folder, monkeypatch, tmp_path):
    tiny = load_model("tiny", device="cpu")
    path = tmp_path / "wrong.safetensors"
    save_file({k: v.contiguous() for k, v in tiny.unet.state_dict().items()}, str(path))
    _serve(monkeypatch, path, [])
    with pytest.raises(UnetFileError, match="do not fit the base pipeline's U-Net"):
        load_model(_spec(base_folder), device="cpu")


def test_a_missing_file_says_the_model_is_not_available(base_folder, monkeypatch):
    def download(repo_id, filename, *, revision, local_files_only):
        raise OSError("not in the cache")

    monkeypatch.setattr(load_module, "download_unet_file", download)
    with pytest.raises(ModelNotAvailableError, match="sdxl-lightning-4step"):
        load_model(_spec(base_folder), device="cpu", local_files_only=True)
