"""``arch:sd3`` / ``arch:sd35-medium``: the real models' architectures from the bundled configs. The layer table
comes from a meta-device pass (no weights: the transformers have 2.0 B and 2.2 B parameters, never built here)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from sdaudit.cli import app
from sdaudit.models import family_for_config, load_denoiser_config, parse_model_spec
from sdaudit.models.families import SD3Family
from sdaudit.models.offline_common import read_arch_config
from sdaudit.models.offline_sd3 import build_arch_sd3
from sdaudit.models.registry import OFFLINE_MODELS, REGISTRY, known_model_names
from tests.cli_helpers import layer_table_rows


def test_specs_registry_and_listing():
    for spelling, name in (("ARCH:SD3", "arch:sd3"), ("arch:sd3-medium", "arch:sd3"),
                           ("arch:SD3.5-medium", "arch:sd35-medium"), ("arch:sd35_medium", "arch:sd35-medium")):
        spec = parse_model_spec(spelling)
        assert (spec.kind, spec.name, spec.default_size) == ("arch", name, 1024), spelling
    assert parse_model_spec("tiny-sd3").kind == "tiny" and parse_model_spec("TinySD3").name == "tiny-sd3"
    assert {"arch:sd3", "arch:sd35-medium", "tiny-sd3", "sd3", "sd35-medium"} <= set(known_model_names())
    offline = {name: size for name, _, _, size in OFFLINE_MODELS}
    assert offline["arch:sd3"] == offline["arch:sd35-medium"] == 1024 and offline["tiny-sd3"] == 256
    assert REGISTRY["sd3"].repo_id == "stabilityai/stable-diffusion-3-medium-diffusers"
    assert REGISTRY["sd35-medium"].repo_id == "stabilityai/stable-diffusion-3.5-medium"
    assert parse_model_spec("SD3-medium").name == "sd3" and parse_model_spec("sd3.5 medium").name == "sd35-medium"
    # the registry's SD3 models list their layers offline from the bundled transformer configs
    assert load_denoiser_config("sd3") == read_arch_config("sd3", "transformer")
    assert load_denoiser_config("sd35-medium") == read_arch_config("sd35-medium", "transformer")


@pytest.mark.parametrize("arch", ["sd3", "sd35-medium"])
def test_layers_command_prints_the_table_without_weights(arch):
    result = CliRunner().invoke(app, ["layers", "--model", f"arch:{arch}"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert f"arch:{arch} at 1024x1024 px: 26 layers" in result.output
    rows = layer_table_rows(result.output)
    assert list(rows) == ["pos_embed", *(f"transformer_blocks[{i}]" for i in range(24)), "norm_out"]
    assert set(rows.values()) == {(1536, "64x64")}  # 1024 px / (8 x patch 2); 24 heads x 64


def test_published_transformer_values():
    sd3, sd35 = read_arch_config("sd3", "transformer"), read_arch_config("sd35-medium", "transformer")
    for config in (sd3, sd35):
        assert isinstance(family_for_config(config), SD3Family)
        assert (config["num_layers"], config["num_attention_heads"], config["attention_head_dim"]) == (24, 24, 64)
        assert config["joint_attention_dim"] == 4096 and config["caption_projection_dim"] == 1536
        assert config["pooled_projection_dim"] == 2048 and config["patch_size"] == 2 and config["in_channels"] == 16
    assert sd3["pos_embed_max_size"] == 192 and "qk_norm" not in sd3 and "dual_attention_layers" not in sd3
    assert sd35["pos_embed_max_size"] == 384 and sd35["qk_norm"] == "rms_norm"
    assert sd35["dual_attention_layers"] == list(range(13))
    # the largest input: 192 tokens of 16 px per side
    assert family_for_config(sd3).layer_infos(3072)[0].grid == (192, 192)


@pytest.mark.parametrize("arch", ["sd3", "sd35-medium"])
def test_bundled_components_fit_the_transformer(arch):
    """CLIP-L (768) and CLIP-G (1280): their projections make the pooled width (2048), their states side by side
    fit under T5-XXL's width (4096 = joint_attention_dim); the VAE has 16 channels, SD3's shift and scale."""
    transformer = read_arch_config(arch, "transformer")
    first, second = read_arch_config(arch, "text_encoder"), read_arch_config(arch, "text_encoder_2")
    t5 = read_arch_config(arch, "text_encoder_3")
    assert first["projection_dim"] + second["projection_dim"] == transformer["pooled_projection_dim"]
    assert first["hidden_size"] + second["hidden_size"] <= t5["d_model"] == transformer["joint_attention_dim"]
    vae = read_arch_config(arch, "vae")
    assert (vae["latent_channels"], vae["scaling_factor"], vae["shift_factor"]) == (16, 1.5305, 0.0609)
    scheduler = read_arch_config(arch, "scheduler")
    assert scheduler["_class_name"] == "FlowMatchEulerDiscreteScheduler" and scheduler["shift"] == 3.0


@pytest.mark.parametrize("arch, params", [("sd3", 2.03e9), ("sd35-medium", 2.24e9)])
def test_build_arch_makes_the_components_on_the_meta_device(arch, params):
    """Transformer, VAE and both CLIP encoders with their projections, on "meta" (accelerate's empty init); no T5."""
    from accelerate import init_empty_weights

    with init_empty_weights():
        parts = build_arch_sd3(arch)
    assert set(parts) == {"transformer", "vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2",
                          "scheduler"}
    for name in ("text_encoder", "text_encoder_2"):
        assert type(parts[name]).__name__ == "CLIPTextModelWithProjection", name
    assert type(parts["scheduler"]).__name__ == "FlowMatchEulerDiscreteScheduler"
    assert abs(sum(p.numel() for p in parts["transformer"].parameters()) - params) < 0.01e9
    assert parts["transformer"].device.type == parts["text_encoder_2"].device.type == "meta"
