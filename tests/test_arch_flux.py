"""``arch:flux`` / ``arch:flux-schnell``: FLUX.1's architecture from the bundled diffusers configs. The layer table
comes from a meta-device pass (no weights: the real model has 12 B + 4.7 B parameters, never built on a CPU)."""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

from sdaudit.cli import app
from sdaudit.errors import UsageError
from sdaudit.models import family_for_config, load_denoiser_config, parse_model_spec
from sdaudit.models.families import FluxFamily
from sdaudit.models.offline import build_arch
from sdaudit.models.offline_common import read_arch_config
from sdaudit.models.offline_flux import flux_arch_parts
from sdaudit.models.registry import OFFLINE_MODELS, REGISTRY, known_model_names
from tests.cli_helpers import layer_table_rows


def test_spec_and_listing():
    spec = parse_model_spec("ARCH:FLUX")
    assert (spec.kind, spec.name, spec.location, spec.default_size) == ("arch", "arch:flux", "flux", 1024)
    assert parse_model_spec("arch:FLUX.1-dev").name == "arch:flux"
    assert parse_model_spec("arch:flux-schnell").name == "arch:flux-schnell"
    assert parse_model_spec("arch:FLUX.1 schnell").name == "arch:flux-schnell"
    assert parse_model_spec("Tiny-FLUX").name == "tiny-flux"
    assert {"arch:flux", "arch:flux-schnell", "tiny-flux", "flux-dev", "flux-schnell"} <= set(known_model_names())
    assert {("arch:flux", 1024), ("arch:flux-schnell", 1024), ("tiny-flux", 256)} <= \
        {(name, size) for name, _, _, size in OFFLINE_MODELS}
    assert REGISTRY["flux-dev"].repo_id == "black-forest-labs/FLUX.1-dev"
    assert REGISTRY["flux-schnell"].repo_id == "black-forest-labs/FLUX.1-schnell"
    assert parse_model_spec("FLUX.1-dev").name == "flux-dev"
    # the registry's FLUX models list their layers offline from the bundled transformer configs
    assert load_denoiser_config("flux-dev") == read_arch_config("flux", "transformer")
    assert load_denoiser_config("flux-schnell") == read_arch_config("flux-schnell", "transformer")


@pytest.mark.parametrize("model", ["arch:flux", "flux-schnell"])
def test_layers_command_prints_the_flux_table_without_weights(model):
    result = CliRunner().invoke(app, ["layers", "--model", model], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert f"{model} at 1024x1024 px: 59 layers" in result.output
    rows = layer_table_rows(result.output)
    names = ["x_embedder", *(f"transformer_blocks[{i}]" for i in range(19)),
             *(f"single_transformer_blocks[{i}]" for i in range(38)), "norm_out"]
    assert list(rows) == names and set(rows.values()) == {(3072, "64x64")}


def test_family_and_published_transformer_values():
    for arch, guidance in (("flux", True), ("flux-schnell", False)):
        config = load_denoiser_config(f"arch:{arch}")
        family = family_for_config(config)
        assert isinstance(family, FluxFamily) and family.name == "flux" and (family.guidance is not None) == guidance
        assert config["in_channels"] == 64 and config["patch_size"] == 1 and config["guidance_embeds"] is guidance
        assert (config["num_layers"], config["num_single_layers"]) == (19, 38)
        assert config["num_attention_heads"] * config["attention_head_dim"] == 24 * 128 == 3072
        assert config["joint_attention_dim"] == read_arch_config(arch, "text_encoder_2")["d_model"] == 4096
        assert config["pooled_projection_dim"] == read_arch_config(arch, "text_encoder")["hidden_size"] == 768
        vae = read_arch_config(arch, "vae")
        assert (vae["latent_channels"], vae["scaling_factor"], vae["shift_factor"]) == (16, 0.3611, 0.1159)
        assert family.paper_layers() == [f"transformer_blocks[{i}]" for i in range(19)]
        assert family.layer_infos(512)[0].grid == (32, 32)


def test_bundled_schedulers():
    dev, schnell = read_arch_config("flux", "scheduler"), read_arch_config("flux-schnell", "scheduler")
    assert dev["_class_name"] == schnell["_class_name"] == "FlowMatchEulerDiscreteScheduler"
    assert (dev["shift"], dev["use_dynamic_shifting"], dev["base_shift"], dev["max_shift"]) == (3.0, True, 0.5, 1.15)
    assert (dev["base_image_seq_len"], dev["max_image_seq_len"]) == (256, 4096)
    assert schnell["shift"] == 1.0 and not schnell.get("use_dynamic_shifting", False)


def test_build_arch_refuses_without_a_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UsageError, match="only on a CUDA GPU") as error:
        build_arch("flux")
    assert "\n" not in str(error.value) and "sdaudit layers --model arch:flux" in str(error.value)


def test_flux_arch_parts_on_the_meta_device():
    """Every component FLUX needs, full size, on "meta" (no memory): classes and parameter counts only."""
    parts = flux_arch_parts("flux", "meta")
    assert set(parts) == {"transformer", "vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2",
                          "scheduler"}
    assert type(parts["text_encoder_2"]).__name__ == "T5EncoderModel"
    assert parts["transformer"].config.guidance_embeds and parts["transformer"].dtype == torch.bfloat16
    assert 11.8e9 < sum(p.numel() for p in parts["transformer"].parameters()) < 12.0e9
    assert 4.6e9 < sum(p.numel() for p in parts["text_encoder_2"].parameters()) < 4.9e9
    assert parts["transformer"].device.type == parts["text_encoder_2"].device.type == "meta"
    assert parts["scheduler"].config.use_dynamic_shifting
