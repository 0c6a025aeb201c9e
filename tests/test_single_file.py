"""Tests for sdaudit.models.single_file: one original-layout (LDM) checkpoint file -> the five components.

The tiny model's diffusers weights are written back into the original Stable Diffusion key layout
(the inverse of diffusers' single-file conversion, below), saved as .safetensors / .ckpt and loaded
again. Full-size SD-1.5 / SD-2.1 detection runs on meta-device shapes (no weights needed).
"""

from __future__ import annotations

import re
import socket
import warnings

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from sdaudit.models import ModelNotAvailableError, load_model
from sdaudit.models import single_file, single_file_plan
from sdaudit.models.offline import TINY_UNET_CONFIG
from sdaudit.models.offline_common import TINY_TEXT_CONFIG, TINY_VAE_CONFIG, read_arch_config
from sdaudit.models.single_file import load_single_file, single_file_unet_config

# --------------------------------------------------------------------------------------------
# diffusers -> original (LDM / CompVis) layout: the inverse of diffusers' single-file conversion
# --------------------------------------------------------------------------------------------

_UNET_TOP = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
             "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}
_UNET_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "norm2": "out_layers.0", "conv2": "out_layers.3",
                "time_emb_proj": "emb_layers.1", "conv_shortcut": "skip_connection"}
_VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _resnet(rest: str, table: dict) -> str:
    name, leaf = rest.rsplit(".", 1)
    return f"{table.get(name, name)}.{leaf}"


def unet_key_to_ldm(key: str, lpb: int, up_attn: set[int]) -> str:
    for new, old in _UNET_TOP.items():
        if key.startswith(new + "."):
            return old + key[len(new):]
    if m := re.fullmatch(r"(down|up)_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
        kind, block, part, j, rest = m.groups()
        index = (1 if kind == "down" else 0) + int(block) * (lpb + 1) + int(j)
        prefix = f"{'input' if kind == 'down' else 'output'}_blocks.{index}"
        return f"{prefix}.0.{_resnet(rest, _UNET_RESNET)}" if part == "resnets" else f"{prefix}.1.{rest}"
    if m := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", key):
        return f"input_blocks.{(int(m[1]) + 1) * (lpb + 1)}.0.op.{m[2]}"
    if m := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", key):
        block = int(m[1])
        return f"output_blocks.{block * (lpb + 1) + lpb}.{2 if block in up_attn else 1}.conv.{m[2]}"
    if m := re.fullmatch(r"mid_block\.resnets\.(\d+)\.(.+)", key):
        return f"middle_block.{2 * int(m[1])}.{_resnet(m[2], _UNET_RESNET)}"
    if m := re.fullmatch(r"mid_block\.attentions\.0\.(.+)", key):
        return f"middle_block.1.{m[1]}"
    raise KeyError(key)


def unet_to_ldm(state: dict, config) -> dict:
    lpb = config["layers_per_block"]
    up_attn = {i for i, t in enumerate(config["up_block_types"]) if "CrossAttn" in t}
    return {"model.diffusion_model." + unet_key_to_ldm(k, lpb, up_attn): v for k, v in state.items()}


def vae_key_to_ldm(key: str, levels: int) -> str:
    if not (m := re.fullmatch(r"(encoder|decoder)\.(.+)", key)):
        return key  # quant_conv, post_quant_conv
    part, rest = m.groups()
    resnet = {"conv_shortcut": "nin_shortcut"}
    if rest.startswith("conv_norm_out."):
        rest = "norm_out." + rest.split(".", 1)[1]
    elif m := re.fullmatch(r"(down|up)_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", rest):
        level = int(m[2]) if m[1] == "down" else levels - 1 - int(m[2])
        rest = f"{m[1]}.{level}.block.{m[3]}.{_resnet(m[4], resnet)}"
    elif m := re.fullmatch(r"(down|up)_blocks\.(\d+)\.(down|up)samplers\.0\.conv\.(.+)", rest):
        level = int(m[2]) if m[1] == "down" else levels - 1 - int(m[2])
        rest = f"{m[1]}.{level}.{m[3]}sample.conv.{m[4]}"
    elif m := re.fullmatch(r"mid_block\.resnets\.(\d+)\.(.+)", rest):
        rest = f"mid.block_{int(m[1]) + 1}.{_resnet(m[2], resnet)}"
    elif m := re.fullmatch(r"mid_block\.attentions\.0\.(.+)\.(weight|bias)", rest):
        rest = f"mid.attn_1.{_VAE_ATTN[m[1]]}.{m[2]}"
    return f"{part}.{rest}"


def vae_to_ldm(state: dict, config) -> dict:
    levels = len(config["block_out_channels"])
    out = {}
    for k, v in state.items():
        new = vae_key_to_ldm(k, levels)
        if ".mid.attn_1." in new and new.endswith("weight") and v.ndim == 2:
            v = v[:, :, None, None]  # the original VAE attention uses 1x1 convolutions
        out["first_stage_model." + new] = v
    return out


def text_to_ldm_clip(state: dict) -> dict:
    """SD-1 layout: the Hugging Face CLIPTextModel under cond_stage_model.transformer.text_model."""
    out = {"cond_stage_model.transformer.text_model." + k.removeprefix("text_model."): v for k, v in state.items()}
    n_pos = state["embeddings.position_embedding.weight"].shape[0]
    out["cond_stage_model.transformer.text_model.embeddings.position_ids"] = torch.arange(n_pos)[None]
    return out


def text_to_ldm_open_clip(state: dict) -> dict:
    """SD-2 layout: an OpenCLIP text tower under cond_stage_model.model. (fused q/k/v in_proj)."""
    p = "cond_stage_model.model."
    s = {k.removeprefix("text_model."): v for k, v in state.items()}
    hidden = s["embeddings.token_embedding.weight"].shape[1]
    out = {p + "token_embedding.weight": s["embeddings.token_embedding.weight"],
           p + "positional_embedding": s["embeddings.position_embedding.weight"],
           p + "ln_final.weight": s["final_layer_norm.weight"], p + "ln_final.bias": s["final_layer_norm.bias"],
           p + "text_projection": torch.randn(hidden, hidden), p + "logit_scale": torch.tensor(4.6)}
    rename = {"self_attn.out_proj": "attn.out_proj", "layer_norm1": "ln_1", "layer_norm2": "ln_2",
              "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj"}
    layers = sorted({int(k.split(".")[2]) for k in s if k.startswith("encoder.layers.")})
    for i in layers:
        src, dst = f"encoder.layers.{i}.", f"{p}transformer.resblocks.{i}."
        for leaf in ("weight", "bias"):
            out[f"{dst}attn.in_proj_{leaf}"] = torch.cat([s[f"{src}self_attn.{x}_proj.{leaf}"] for x in "qkv"])
            for new, old in rename.items():
                out[f"{dst}{old}.{leaf}"] = s[f"{src}{new}.{leaf}"]
    return out


def to_ldm(model, text_layout: str = "clip") -> dict:
    """An original-layout SD checkpoint state dict of a LoadedModel (or of meta-device components)."""
    text = text_to_ldm_clip if text_layout == "clip" else text_to_ldm_open_clip
    return {**unet_to_ldm(model.unet.state_dict(), model.unet.config),
            **vae_to_ldm(model.vae.state_dict(), model.vae.config),
            **text(model.text_encoder.state_dict())}


def save_safetensors(state: dict, path) -> str:
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return str(path)


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module):
    sa, sb = a.state_dict(), b.state_dict()
    assert sorted(sa) == sorted(sb)
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]), k


# --------------------------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory, tiny):
    """The tiny model as one original-layout .safetensors file."""
    return save_safetensors(to_ldm(tiny), tmp_path_factory.mktemp("single") / "tiny.safetensors")


@pytest.fixture
def no_network(monkeypatch):
    """Fail any attempt to open a network connection; run with HF_HUB_OFFLINE=1."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network access attempted during an offline test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    yield attempts
    assert not attempts, f"network was tried: {attempts}"


def image64():
    x = torch.linspace(0, 255, 64)
    rgb = torch.stack([x[None, :].expand(64, 64), x[:, None].expand(64, 64), (x[None, :] + x[:, None]) / 2], -1)
    return Image.fromarray(rgb.to(torch.uint8).numpy())


# --------------------------------------------------------------------------------------------
# Loading the tiny model from one file
# --------------------------------------------------------------------------------------------


def public(config) -> dict:
    """A diffusers config without its bookkeeping keys (``_use_default_values``, ``_name_or_path``, ...)."""
    return {k: v for k, v in dict(config).items() if not k.startswith("_")}


def test_safetensors_roundtrip_equal_weights_and_representations(tiny, tiny_file, no_network):
    from sdaudit.extraction import ExtractionSettings, Extractor

    loaded = load_model(tiny_file, device="cpu")
    assert loaded.spec.kind == "file"
    assert_same_weights(loaded.unet, tiny.unet)
    assert_same_weights(loaded.vae, tiny.vae)
    assert_same_weights(loaded.text_encoder, tiny.text_encoder)
    assert public(loaded.unet.config) == public(tiny.unet.config)
    assert public(loaded.vae.config) == public(tiny.vae.config)
    # save_pretrained (another test saves the shared tiny model) stamps 'architectures' and 'dtype'
    bookkeeping = {"architectures", "dtype", "torch_dtype", "transformers_version", "_name_or_path"}
    te_loaded, te_tiny = loaded.text_encoder.config.to_dict(), tiny.text_encoder.config.to_dict()
    assert {k: v for k, v in te_loaded.items() if k not in bookkeeping} == \
        {k: v for k, v in te_tiny.items() if k not in bookkeeping}
    assert type(loaded.scheduler) is type(tiny.scheduler)
    assert public(loaded.scheduler.config) == public(tiny.scheduler.config)
    assert loaded.tokenizer("a photo").input_ids == tiny.tokenizer("a photo").input_ids
    assert loaded.weights_sha256 and loaded.weights_sha256 != tiny.weights_sha256

    settings = ExtractionSettings(size=64)
    images = [image64()]
    want = Extractor(tiny, "all", settings).run(images, [0])
    got = Extractor(loaded, "all", settings).run(images, [0])
    assert sorted(got) == sorted(want) and len(want) > 10
    for name in want:
        assert got[name].shape == want[name].shape, name
        assert torch.allclose(got[name], want[name], atol=1e-6), name


def test_ckpt_nested_state_dict_fp16(tiny, tmp_path, no_network):
    """A Lightning-style .ckpt: weights under "state_dict" (fp16, as pruned checkpoints are), global_step beside."""
    state = {k: (v.half() if v.is_floating_point() else v) for k, v in to_ldm(tiny).items()}
    path = tmp_path / "tiny.ckpt"
    torch.save({"state_dict": state, "global_step": 1234, "epoch": 3}, path)
    parts = load_single_file(str(path))
    assert_same_weights(parts["unet"], tiny.unet)  # tiny's weights are float16-exact
    assert_same_weights(parts["vae"], tiny.vae)
    assert_same_weights(parts["text_encoder"], tiny.text_encoder)
    half = load_single_file(str(path), torch_dtype=torch.float16)
    assert next(half["unet"].parameters()).dtype == torch.float16
    assert next(half["text_encoder"].parameters()).dtype == torch.float16
    assert next(half["vae"].parameters()).dtype == torch.float32
    loaded = load_model(str(path), device="cpu")
    assert_same_weights(loaded.unet, tiny.unet)


def test_open_clip_text_layout(tiny, tmp_path, no_network):
    """The SD-2 text-encoder layout (OpenCLIP, fused in_proj) goes through diffusers' convert_open_clip_checkpoint."""
    path = save_safetensors(to_ldm(tiny, text_layout="open_clip"), tmp_path / "tiny-openclip.safetensors")
    parts = load_single_file(path)
    assert_same_weights(parts["text_encoder"], tiny.text_encoder)
    ids = torch.tensor([tiny.tokenizer("a cat", padding="max_length", max_length=77).input_ids])
    with torch.no_grad():
        assert torch.equal(parts["text_encoder"](ids)[0], tiny.text_encoder(ids)[0])


def test_explicit_configs(tiny, tiny_file, tiny_folder, tmp_path, no_network):
    parts = load_single_file(tiny_file, config="tiny")
    assert_same_weights(parts["unet"], tiny.unet)
    parts = load_single_file(tiny_file, config=str(tiny_folder))  # a diffusers folder, tokenizer included
    assert_same_weights(parts["unet"], tiny.unet)
    assert_same_weights(parts["text_encoder"], tiny.text_encoder)
    assert parts["tokenizer"]("x").input_ids == tiny.tokenizer("x").input_ids
    assert single_file_unet_config(tiny_file, config=str(tiny_folder))["block_out_channels"] == [32, 64, 64, 64]
    with pytest.raises(ValueError, match=r"tiny\.safetensors.*block_out_channels"):
        single_file_unet_config(tiny_file, config="sd15")
    with pytest.raises(ValueError, match="does not fit"):
        load_single_file(tiny_file, config="sd21")
    with pytest.raises(ValueError, match="unknown single-file config"):
        load_single_file(tiny_file, config="not a config")
    with pytest.raises(ValueError, match="no unet/config.json"):
        load_single_file(tiny_file, config=str(tmp_path))
    with pytest.raises(ModelNotAvailableError, match="sdaudit-test/no-such-repo.*not in the local Hugging Face cache"):
        load_single_file(tiny_file, config="sdaudit-test/no-such-repo")  # a repo id: cache only, never fetched


def test_unet_config_from_shapes(tiny_file, tmp_path, tiny, no_network):
    config = single_file_unet_config(tiny_file)
    assert config == TINY_UNET_CONFIG
    for key in ("block_out_channels", "layers_per_block", "down_block_types", "up_block_types", "cross_attention_dim",
                "attention_head_dim", "norm_num_groups"):
        assert config[key] == TINY_UNET_CONFIG[key]
    # through load.py, and from a .ckpt
    from sdaudit.models import load_denoiser_config

    assert load_denoiser_config(tiny_file)["block_out_channels"] == [32, 64, 64, 64]
    path = tmp_path / "plain.ckpt"
    torch.save(to_ldm(tiny), path)
    assert single_file_unet_config(str(path)) == TINY_UNET_CONFIG


def test_unknown_architecture_is_inferred_with_a_warning(tmp_path, no_network):
    """Shapes of no known model: the config comes from the shapes, the rest guessed by SD's conventions."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from sdaudit.models.offline_common import load_tokenizer_tiny

    torch.manual_seed(0)
    unet_config = {**TINY_UNET_CONFIG, "block_out_channels": [32, 32, 64, 64], "norm_num_groups": 32,
                   "attention_head_dim": 8}
    text_config = {**TINY_TEXT_CONFIG, "hidden_size": 64, "num_attention_heads": 1, "intermediate_size": 128}
    model = type("M", (), {})()
    model.unet = UNet2DConditionModel.from_config({**unet_config, "cross_attention_dim": 64}).eval()
    model.vae = AutoencoderKL.from_config({**TINY_VAE_CONFIG, "block_out_channels": [32, 32, 64, 64],
                                           "norm_num_groups": 32}).eval()
    model.text_encoder = CLIPTextModel(CLIPTextConfig(**text_config)).eval()
    path = save_safetensors(to_ldm(model), tmp_path / "custom.safetensors")
    with pytest.warns(UserWarning, match="guessed"):
        parts = load_single_file(path)
    assert_same_weights(parts["unet"], model.unet)
    assert_same_weights(parts["vae"], model.vae)
    assert_same_weights(parts["text_encoder"], model.text_encoder)
    assert parts["unet"].config.norm_num_groups == 32 and parts["unet"].config.attention_head_dim == 8
    sample, t, context = torch.randn(1, 4, 8, 8), torch.tensor(10), torch.randn(1, 77, 64)
    with torch.no_grad():
        assert torch.allclose(parts["unet"](sample, t, context).sample, model.unet(sample, t, context).sample, atol=1e-6)
    assert len(parts["tokenizer"]) == len(load_tokenizer_tiny())


# --------------------------------------------------------------------------------------------
# Full-size SD-1.5 / SD-2.1 detection from shapes (meta device: no memory, no weights)
# --------------------------------------------------------------------------------------------


def meta_sd(arch: str):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    text_config = {k: v for k, v in read_arch_config(arch, "text_encoder").items()
                   if k not in ("architectures", "model_type", "torch_dtype")}
    model = type("M", (), {})()
    with torch.device("meta"):
        model.unet = UNet2DConditionModel.from_config(read_arch_config(arch, "unet"))
        model.vae = AutoencoderKL.from_config(read_arch_config(arch, "vae"))
        model.text_encoder = CLIPTextModel(CLIPTextConfig(**text_config))
    return model


@pytest.mark.parametrize("arch", ["sd15", "sd21"])
def test_full_size_architectures_detected(arch):
    model = meta_sd(arch)
    state = to_ldm(model, text_layout="clip" if arch == "sd15" else "open_clip")
    if arch == "sd21":  # ViT-H has 24 blocks; diffusers (and SD-2) drop the last
        last = "cond_stage_model.model.transformer.resblocks.22."
        state.update({k.replace(".resblocks.22.", ".resblocks.23."): v for k, v in state.items() if k.startswith(last)})
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    plan = single_file_plan.plan_components(shapes, None, f"{arch}.safetensors")
    assert plan.family == arch and not plan.guessed
    assert plan.unet == read_arch_config(arch, "unet")
    assert plan.vae == read_arch_config(arch, "vae")
    assert plan.text == read_arch_config(arch, "text_encoder")
    assert plan.text_layout == ("clip" if arch == "sd15" else "open_clip")
    assert plan.scheduler == read_arch_config(arch, "scheduler")
    cross = [v for k, v in shapes.items() if k.endswith("attn2.to_k.weight")][0][1]
    assert cross == (768 if arch == "sd15" else 1024)
    assert single_file_plan.plan_components(shapes, arch, "x").unet == read_arch_config(arch, "unet")
    if arch == "sd21":  # SD-2-base: epsilon prediction, by diffusers' global-step rule
        assert single_file_plan.plan_components(shapes, None, "x", global_step=875000).scheduler["prediction_type"] == "epsilon"
        with pytest.raises(ValueError, match="cross_attention_dim is 1024 in the checkpoint but 768"):
            single_file_plan.plan_components(shapes, "sd15", "x")
    # an inpainting variant (9 input channels) keeps the family config with the channels from the file
    shapes["model.diffusion_model.input_blocks.0.0.weight"] = (320, 9, 3, 3)
    assert single_file_plan.plan_components(shapes, None, "x").unet["in_channels"] == 9


def test_missing_sd_tokenizer_is_a_clear_error(tiny, tmp_path, monkeypatch, no_network):
    """A 49408-token CLIP text encoder needs the real tokenizer: from a config folder or the HF cache, never 'tiny'."""
    from transformers import CLIPTextConfig, CLIPTextModel

    from sdaudit.models.offline_common import load_tokenizer_tiny

    monkeypatch.setattr(single_file, "SD1_TOKENIZER_SOURCES", [("sdaudit-test/not-cached-anywhere", "")])
    torch.manual_seed(0)
    model = type("M", (), {})()
    model.unet, model.vae = tiny.unet, tiny.vae
    model.text_encoder = CLIPTextModel(CLIPTextConfig(**{**TINY_TEXT_CONFIG, "vocab_size": 49408}))
    path = save_safetensors(to_ldm(model), tmp_path / "bigvocab.safetensors")
    with pytest.raises(ModelNotAvailableError, match=r"tokenizer for '.*bigvocab\.safetensors'.*CLIP ViT-L") as info, \
            pytest.warns(UserWarning, match="text-encoder attention heads"):
        load_single_file(path)
    assert "single_file_config" in str(info.value) and "huggingface-cli download" in str(info.value)
    # a config folder with a tokenizer/ provides it
    folder = tmp_path / "cfg"
    (folder / "unet").mkdir(parents=True)
    (folder / "unet" / "config.json").write_text(__import__("json").dumps(TINY_UNET_CONFIG))
    load_tokenizer_tiny().save_pretrained(str(folder / "tokenizer"))
    with pytest.warns(UserWarning, match="guessed"):
        parts = load_single_file(path, config=str(folder))
    assert_same_weights(parts["text_encoder"], model.text_encoder)
    assert parts["tokenizer"]("ab").input_ids == load_tokenizer_tiny()("ab").input_ids


# --------------------------------------------------------------------------------------------
# Errors name the file
# --------------------------------------------------------------------------------------------


def test_errors_name_the_file(tmp_path, no_network):
    from sdaudit.models import ModelSpecError

    missing = tmp_path / "missing.safetensors"
    with pytest.raises(ValueError, match=r"missing\.safetensors.*does not exist"):
        load_single_file(str(missing))
    with pytest.raises(ModelSpecError, match=r"missing\.safetensors"):
        load_model(str(missing), device="cpu")

    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(bytes(range(256)) * 40)
    with pytest.raises(ValueError, match=r"garbage\.safetensors"):
        load_model(str(garbage), device="cpu")
    bad_header = tmp_path / "badheader.safetensors"
    bad_header.write_bytes((20).to_bytes(8, "little") + b"{not json at all!!!}" + b"\0" * 16)
    with pytest.raises(ValueError, match=r"badheader\.safetensors.*not a readable \.safetensors"):
        load_single_file(str(bad_header))
    garbage_ckpt = tmp_path / "garbage.ckpt"
    garbage_ckpt.write_bytes(b"\x80\x02garbage" * 100)
    with pytest.raises(ValueError, match=r"garbage\.ckpt"):
        load_single_file(str(garbage_ckpt))
    empty = tmp_path / "empty.ckpt"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match=r"empty\.ckpt.*empty"):
        load_single_file(str(empty))

    unrelated = tmp_path / "unrelated.safetensors"
    save_file({"encoder.layer.0.weight": torch.zeros(2, 2), "classifier.bias": torch.zeros(2)}, str(unrelated))
    for call in (load_single_file, single_file_unet_config):
        with pytest.raises(ValueError, match=r"unrelated\.safetensors.*not a Stable Diffusion checkpoint.*model\.diffusion_model"):
            call(str(unrelated))
    with pytest.raises(ValueError, match=r"unrelated\.safetensors"):
        load_model(str(unrelated), device="cpu")

    diffusers_layout = tmp_path / "diffusion_pytorch_model.safetensors"
    save_file({"down_blocks.0.resnets.0.conv1.weight": torch.zeros(1)}, str(diffusers_layout))
    with pytest.raises(ValueError, match="diffusers-format"):
        load_single_file(str(diffusers_layout))

    not_a_dict = tmp_path / "list.ckpt"
    torch.save([torch.zeros(1)], not_a_dict)
    with pytest.raises(ValueError, match=r"list\.ckpt.*not a state dict"):
        load_single_file(str(not_a_dict))

    unsafe = tmp_path / "unsafe.ckpt"
    torch.save({"state_dict": {"model.diffusion_model.x": torch.zeros(1)}, "cfg": warnings.WarningMessage}, unsafe)
    with pytest.raises(ValueError, match=r"unsafe\.ckpt.*weights_only=True"):
        load_single_file(str(unsafe))


def test_incomplete_checkpoint(tiny, tmp_path, no_network):
    state = {k: v for k, v in to_ldm(tiny).items() if not k.startswith("first_stage_model.")}
    path = save_safetensors(state, tmp_path / "novae.safetensors")
    with pytest.raises(ValueError, match=r"novae\.safetensors.*no VAE weights"):
        load_single_file(path)
    state = {k: v for k, v in to_ldm(tiny).items() if ".output_blocks.11." not in k}
    path = save_safetensors(state, tmp_path / "truncated.safetensors")
    with pytest.raises(ValueError, match=r"truncated\.safetensors"):
        load_single_file(path)
    gone = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight"
    state = {k: v for k, v in to_ldm(tiny).items() if k != gone}
    path = save_safetensors(state, tmp_path / "holey.safetensors")
    with pytest.raises(ValueError, match=r"holey\.safetensors.*U-Net weights do not fit.*Missing key.*attn1\.to_q"):
        load_single_file(path)


@pytest.mark.parametrize("suffix", [".safetensors", ".ckpt"])
def test_parameters_do_not_depend_on_the_file_afterwards(tiny, tmp_path, suffix, no_network):
    """Both formats are memory-mapped while read; the loaded parameters must be copies."""
    path = tmp_path / f"overwritten{suffix}"
    if suffix == ".ckpt":
        torch.save(to_ldm(tiny), path)
    else:
        save_safetensors(to_ldm(tiny), path)
    parts = load_single_file(str(path))
    size = path.stat().st_size
    with open(path, "r+b") as f:  # overwrite in place: a MAP_PRIVATE view would now read zeros
        f.write(b"\0" * size)
    assert_same_weights(parts["unet"], tiny.unet)
    assert_same_weights(parts["vae"], tiny.vae)
    assert_same_weights(parts["text_encoder"], tiny.text_encoder)
