"""``arch:sdxl``: SDXL base 1.0's architecture from the bundled configs. The layer table comes from a
meta-device pass (no weights: the real model has 2.6 B parameters, never built here)."""

from __future__ import annotations

from typer.testing import CliRunner

from sdaudit.cli import app
from sdaudit.models import family_for_config, load_denoiser_config, parse_model_spec
from sdaudit.models.families import SDXLFamily
from sdaudit.models.offline import build_arch
from sdaudit.models.offline_common import read_arch_config
from sdaudit.models.registry import OFFLINE_MODELS, known_model_names
from tests.cli_helpers import layer_table_rows


def test_spec_and_listing():
    spec = parse_model_spec("ARCH:SDXL")
    assert (spec.kind, spec.name, spec.location, spec.default_size) == ("arch", "arch:sdxl", "sdxl", 1024)
    assert parse_model_spec("arch:sdxl-base").name == "arch:sdxl"
    assert parse_model_spec("arch:sd15").default_size == 512
    assert "arch:sdxl" in known_model_names()
    assert ("arch:sdxl", 1024) in [(name, size) for name, _, _, size in OFFLINE_MODELS]
    # the registry's SDXL models list their layers offline from the same bundled U-Net config
    assert load_denoiser_config("sdxl") == load_denoiser_config("sdxl-turbo") == read_arch_config("sdxl", "unet")


def test_layers_command_prints_the_sdxl_table_without_weights():
    result = CliRunner().invoke(app, ["layers", "--model", "arch:sdxl"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "arch:sdxl at 1024x1024 px: 34 layers" in result.output
    rows = layer_table_rows(result.output)
    assert len(rows) == 34
    assert rows["conv_in"] == (320, "128x128")
    assert rows["down_blocks[2].attentions[1]"] == (1280, "32x32")
    assert rows["mid_block.attentions[0]"] == (1280, "32x32")
    assert rows["mid_block.resnets[1]"] == (1280, "32x32")
    assert rows["up_blocks[1].upsamplers[0]"] == (640, "128x128")
    assert rows["conv_out"] == (4, "128x128")
    assert not any(name.startswith("down_blocks[0].attentions") for name in rows)


def test_family_and_published_unet_values():
    config = load_denoiser_config("arch:sdxl")
    family = family_for_config(config)
    assert isinstance(family, SDXLFamily) and family.name == "sdxl-unet"
    assert config["transformer_layers_per_block"] == [1, 2, 10] and config["attention_head_dim"] == [5, 10, 20]
    assert config["block_out_channels"] == [320, 640, 1280] and config["sample_size"] * 8 == 1024
    assert {i.name: (i.channels, i.height) for i in family.layer_infos(1024)}["mid_block.resnets[0]"] == (1280, 32)


def test_bundled_components_fit_the_unet():
    """The two text encoders' widths make the cross-attention width; the second's projection plus six time
    ids make the added-embedding input, as in SDXL base."""
    unet = read_arch_config("sdxl", "unet")
    first, second = read_arch_config("sdxl", "text_encoder"), read_arch_config("sdxl", "text_encoder_2")
    assert first["hidden_size"] + second["hidden_size"] == unet["cross_attention_dim"] == 2048
    assert second["projection_dim"] + 6 * unet["addition_time_embed_dim"] == unet["projection_class_embeddings_input_dim"]
    assert read_arch_config("sdxl", "vae")["scaling_factor"] == 0.13025
    assert read_arch_config("sdxl", "scheduler")["_class_name"] == "EulerDiscreteScheduler"


def test_build_arch_makes_the_sdxl_components_on_the_meta_device():
    """Every component SDXL needs (second, projected text encoder included), with the weights on "meta"
    (accelerate's empty init): classes and sizes only, no memory."""
    from accelerate import init_empty_weights

    with init_empty_weights():
        parts = build_arch("sdxl")
    assert set(parts) == {"unet", "vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "scheduler"}
    assert type(parts["text_encoder_2"]).__name__ == "CLIPTextModelWithProjection"
    assert type(parts["scheduler"]).__name__ == "EulerDiscreteScheduler"
    assert parts["text_encoder_2"].config.projection_dim == 1280
    assert 2.5e9 < sum(p.numel() for p in parts["unet"].parameters()) < 2.7e9
    assert parts["unet"].device.type == parts["text_encoder_2"].device.type == "meta"
