"""SDXL single-file checkpoints (original layout) through diffusers' StableDiffusionXLPipeline.from_single_file:
a tiny SDXL whose two text encoders differ in width (as SDXL's do) written in the original layout (the inverse of
diffusers' conversion) loads back with every weight equal and the same representations, offline."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from sdaudit.errors import UsageError
from sdaudit.extraction import ExtractionSettings, Extractor
from sdaudit.models import ModelNotAvailableError, load_denoiser_config, load_model
from sdaudit.models import single_file_sdxl
from tests.test_single_file import save_safetensors, text_to_ldm_open_clip, unet_key_to_ldm, vae_to_ldm

SECOND_WIDTH = 48  # the second (OpenCLIP-style) text encoder's width; the first is tiny's 32


def sdxl_to_ldm(model) -> dict:
    """An original-layout SDXL checkpoint of a LoadedModel: U-Net (with label_emb), VAE, CLIP-L, OpenCLIP-G."""
    config = model.unet.config
    lpb, up_attn = config["layers_per_block"], {i for i, t in enumerate(config["up_block_types"]) if "CrossAttn" in t}
    out = {}
    for key, value in model.unet.state_dict().items():
        if key.startswith("add_embedding.linear_"):
            key = f"label_emb.0.{0 if key[21] == '1' else 2}.{key.rsplit('.', 1)[1]}"
        else:
            key = unet_key_to_ldm(key, lpb, up_attn)
        out["model.diffusion_model." + key] = value
    out.update(vae_to_ldm(model.vae.state_dict(), model.vae.config))
    out.update({"conditioner.embedders.0.transformer.text_model." + k.removeprefix("text_model."): v
                for k, v in model.text_encoder.state_dict().items()})
    second = model.text_encoder_2.state_dict()
    tower = text_to_ldm_open_clip({k: v for k, v in second.items() if not k.startswith("text_projection")})
    out.update({k.replace("cond_stage_model.model.", "conditioner.embedders.1.model."): v for k, v in tower.items()})
    out["conditioner.embedders.1.model.text_projection"] = second["text_projection.weight"].T.contiguous()
    return out


@pytest.fixture(scope="module")
def wide_sdxl():
    """tiny-sdxl with a 48-wide second text encoder (the U-Net's cross-attention and added embedding to match)."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    from sdaudit.models.offline import TINY_SDXL_UNET_CONFIG, TINY_TEXT_CONFIG

    base = load_model("tiny-sdxl", device="cpu")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        second = CLIPTextModelWithProjection(CLIPTextConfig(**{**TINY_TEXT_CONFIG, "hidden_size": SECOND_WIDTH,
                                                               "projection_dim": SECOND_WIDTH}))
        unet = UNet2DConditionModel.from_config({**TINY_SDXL_UNET_CONFIG, "cross_attention_dim": 32 + SECOND_WIDTH,
                                                 "projection_class_embeddings_input_dim": SECOND_WIDTH + 6 * 8})
    return dataclasses.replace(base, text_encoder_2=second.eval(), denoiser=unet.eval(), prompt_cache={})


@pytest.fixture(scope="module")
def files(wide_sdxl, tmp_path_factory):
    root = tmp_path_factory.mktemp("sdxl-single-file")
    folder = wide_sdxl.save_pretrained(root / "folder")
    return folder, save_safetensors(sdxl_to_ldm(wide_sdxl), root / "wide-sdxl.safetensors")


def test_an_sdxl_file_loads_with_every_weight_and_representation_equal(wide_sdxl, files):
    folder, path = files
    model = load_model(path, device="cpu", single_file_config=str(folder))
    assert model.family.name == wide_sdxl.family.name and model.spec.kind == "file"
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        want = getattr(wide_sdxl, name).state_dict()
        got = getattr(model, name).state_dict()
        assert got.keys() == want.keys(), name
        for key in want:
            torch.testing.assert_close(got[key].float(), want[key].float(), msg=f"{name}.{key}")
    from PIL import Image

    image = Image.new("RGB", (64, 64), (140, 100, 70))
    settings = ExtractionSettings(size=64)
    got = Extractor(model, "all", settings).run([image], [0])
    want = Extractor(load_model(str(folder), device="cpu"), "all", settings).run([image], [0])
    for name in want:
        torch.testing.assert_close(got[name], want[name])
    assert load_denoiser_config(path, single_file_config=str(folder)) == dict(
        load_denoiser_config(str(folder)))


def test_equal_encoder_widths_are_refused(tmp_path):
    model = load_model("tiny-sdxl", device="cpu")
    path = save_safetensors(sdxl_to_ldm(model), tmp_path / "tiny-sdxl.safetensors")
    folder = model.save_pretrained(tmp_path / "folder")
    with pytest.raises(UsageError, match="both SDXL text encoders are 32 wide"):
        load_model(path, device="cpu", single_file_config=str(folder))


def test_an_sdxl_file_needs_an_sdxl_config(files, tiny_folder, monkeypatch):
    _, path = files

    def not_cached(repo_id):
        raise ModelNotAvailableError(f"{repo_id} not cached")

    monkeypatch.setattr(single_file_sdxl, "_cached_repo_folder", not_cached)
    with pytest.raises(ModelNotAvailableError, match="pass --single-file-config with a diffusers SDXL folder"):
        load_model(path, device="cpu")
    with pytest.raises(UsageError, match="is not an SDXL pipeline folder"):
        load_model(path, device="cpu", single_file_config=str(tiny_folder))
