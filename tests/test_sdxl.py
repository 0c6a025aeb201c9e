"""The SDXL family on the offline ``tiny-sdxl`` model: layers, extraction shapes, and the added conditioning
(pooled prompt + time ids) under both protocols."""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

from sdaudit.cli import app
from sdaudit.extraction.extractor import Extractor
from sdaudit.models import family_for_config, load_model, load_denoiser_config
from sdaudit.models.families import SDXLConditioning, SDXLFamily
from sdaudit.settings import ExtractionSettings
from tests.cli_helpers import layer_table_rows

# SDXL's hookable layers: conv_in, 3 down blocks (the first without attention), mid, 3 up blocks, conv_out
SDXL_BLOCK_COUNTS = {"conv_in": 1, "down_blocks[0]": 3, "down_blocks[1]": 5, "down_blocks[2]": 4, "mid_block": 3,
                     "up_blocks[0]": 7, "up_blocks[1]": 7, "up_blocks[2]": 3, "conv_out": 1}


@pytest.fixture(scope="module")
def sdxl():
    return load_model("tiny-sdxl", device="cpu")


def _run(model, images, protocol: str, size: int = 64, layers="all"):
    return Extractor(model, layers, ExtractionSettings(size=size, protocol=protocol)).run(images, list(range(len(images))))


def test_layers_command_matches_a_real_forward_pass(sdxl, images5):
    result = CliRunner().invoke(app, ["layers", "--model", "tiny-sdxl", "--size", "64"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "34 layers" in result.output
    rows = layer_table_rows(result.output)
    assert list(rows) == sdxl.family.layer_names() and len(rows) == 34
    counts: dict[str, int] = {}
    for name in rows:
        block = name.split(".")[0]
        counts[block] = counts.get(block, 0) + 1
    assert counts == SDXL_BLOCK_COUNTS
    reps = _run(sdxl, images5[:1], "clean")
    assert {n: (v.shape[1], f"{v.shape[2]}x{v.shape[3]}") for n, v in reps.items()} == rows


def test_family_of_the_sdxl_config():
    family = family_for_config(load_denoiser_config("tiny-sdxl"))
    assert isinstance(family, SDXLFamily) and family.paper_layers() == family.layer_names()
    assert not isinstance(family_for_config(load_denoiser_config("tiny")), SDXLFamily)


@pytest.mark.parametrize("protocol", ["clean", "paper"])
def test_extraction_shapes_under_both_protocols(sdxl, images5, protocol):
    reps = _run(sdxl, images5[:3], protocol)
    infos = {i.name: i for i in sdxl.family.layer_infos(64)}
    assert list(reps) == sdxl.family.layer_names()
    for name, value in reps.items():
        info = infos[name]
        assert tuple(value.shape) == (3, info.channels, info.height, info.width), name
        assert torch.isfinite(value).all(), name
    assert sdxl.unet.config.addition_embed_type == "text_time"  # the paper quirk is undone after the pass


def test_prompt_encoding_equals_the_diffusers_pipeline(sdxl):
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline(vae=sdxl.vae, text_encoder=sdxl.text_encoder, tokenizer=sdxl.tokenizer,
                                     text_encoder_2=sdxl.text_encoder_2, tokenizer_2=sdxl.tokenizer_2, unet=sdxl.unet,
                                     scheduler=sdxl.scheduler)
    embeds, _, pooled, _ = pipe.encode_prompt("a red cube", device="cpu", do_classifier_free_guidance=False)
    context = sdxl.family.encode_prompt(sdxl, "a red cube")
    assert context.hidden_states.shape == (1, 77, 64) and context.pooled.shape == (1, 32) and context.added
    torch.testing.assert_close(context.hidden_states, embeds, rtol=0, atol=0)
    torch.testing.assert_close(context.pooled, pooled, rtol=0, atol=0)
    assert not sdxl.family.encode_prompt(sdxl, "a red cube", protocol="paper").added


def _unet_calls(model, images, protocol: str, size: int) -> list[dict]:
    """What the U-Net was called with: added_cond_kwargs and addition_embed_type during each pass."""
    calls = []

    def record(module, args, kwargs):
        calls.append({"added": kwargs.get("added_cond_kwargs"), "type": module.config.addition_embed_type})

    handle = model.unet.register_forward_pre_hook(record, with_kwargs=True)
    try:
        _run(model, images, protocol, size=size, layers="conv_in")
    finally:
        handle.remove()
    return calls


def test_clean_passes_time_ids_of_the_image_size(sdxl, images5):
    small, = _unet_calls(sdxl, images5[:2], "clean", 64)
    large, = _unet_calls(sdxl, [im.resize((128, 128)) for im in images5[:2]], "clean", 128)
    assert small["type"] == large["type"] == "text_time"
    assert small["added"]["time_ids"].tolist() == [[64, 64, 0, 0, 64, 64]] * 2
    assert large["added"]["time_ids"].tolist() == [[128, 128, 0, 0, 128, 128]] * 2
    pooled = sdxl.family.encode_prompt(sdxl, "").pooled
    torch.testing.assert_close(small["added"]["text_embeds"], pooled.expand(2, -1))


def test_paper_switches_the_added_conditioning_off(sdxl, images5):
    call, = _unet_calls(sdxl, images5[:2], "paper", 64)
    assert call["added"] is None and call["type"] == "nothing_at_all"
    assert sdxl.unet.config.addition_embed_type == "text_time"


def test_the_added_conditioning_changes_the_features(sdxl):
    """Same latents and prompt: with the added conditioning on or off (paper), the first resnet (which sees the
    timestep embedding the added conditioning is added to) differs; on twice, it does not."""
    family, sample = sdxl.family, torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    on = family.encode_prompt(sdxl, "")

    def first_resnet(context, latents):
        out = {}
        family.run_denoiser(sdxl, latents, 50, context, layers=["down_blocks[0].resnets[0]"],
                            sink=lambda name, value: out.__setitem__(name, value))
        return out["down_blocks[0].resnets[0]"]

    with torch.inference_mode():
        base = first_resnet(on, sample)
        off = first_resnet(SDXLConditioning(on.hidden_states, on.pooled, added=False), sample)
        again = first_resnet(on, sample)
    torch.testing.assert_close(base, again, rtol=0, atol=0)
    assert (base - off).abs().max() > 1e-4


def test_folder_round_trip(sdxl, tmp_path, images5):
    sdxl.save_pretrained(tmp_path / "tiny-sdxl")
    loaded = load_model(str(tmp_path / "tiny-sdxl"), device="cpu")
    assert isinstance(loaded.family, SDXLFamily) and loaded.text_encoder_2 is not None
    a, b = _run(sdxl, images5[:2], "clean"), _run(loaded, images5[:2], "clean")
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0)


def test_a_whole_audit_runs_on_tiny_sdxl(sdxl, tmp_path):
    """End to end through the family seam: the audit, its results and report know no SDXL specifics."""
    from sdaudit.audit import AuditSettings, audit
    from tests.conftest import photo_folder

    folder = photo_folder(tmp_path / "images", 5, height=64)
    results = audit(sdxl, folder, tmp_path / "out", AuditSettings(size=64), progress=False)
    assert len(results["table"]) == len(sdxl.family.paper_layers()) == 34
    assert results["model"]["name"] == "tiny-sdxl" and (tmp_path / "out" / "report.html").exists()
    assert any(row.get("probe_acc_8") is not None for row in results["table"])
