"""Models that need no download: the deterministic ``tiny`` model and the ``arch:*`` random-init twins.

``tiny`` has Stable Diffusion 1.5's exact U-Net block layout (the same layer names, the same grid
sizes) with 32/64 channels instead of 320..1280, a small VAE with the same 8x downsampling and a
two-layer CLIP text encoder with a byte-level tokenizer. It is built in memory in about a second.

``arch:sd15`` / ``arch:sd21`` build the full-size architectures from the configs bundled in
``sdaudit/models/configs``: the compute of the real models, without their weights. They serve
benchmarks and as an "untrained" control.

Both are initialised from a fixed seed with the weights rounded to float16, so that the model is
the same whether it is held in float16 or float32 (and equal to a float16 checkpoint of itself).
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import torch

TINY_SEED = 0
ARCH_SEED = 0

TINY_UNET_CONFIG = {
    "sample_size": 32,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "block_out_channels": [32, 64, 64, 64],
    "layers_per_block": 2,
    "norm_num_groups": 8,
    "attention_head_dim": 4,
    "cross_attention_dim": 32,
}
TINY_VAE_CONFIG = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [8, 16, 16, 16],
    "layers_per_block": 1,
    "norm_num_groups": 8,
    "latent_channels": 4,
    "sample_size": 256,
    "scaling_factor": 0.18215,
}
TINY_TEXT_CONFIG = {
    "vocab_size": 514,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "max_position_embeddings": 77,
    "projection_dim": 32,
    "hidden_act": "quick_gelu",
    "bos_token_id": 512,
    "eos_token_id": 513,
    "pad_token_id": 513,
}
# The scheduler of SD-1.5 (PNDM with the scaled-linear beta schedule).
SD15_SCHEDULER_CONFIG = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "clip_sample": False,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
}


def configs_dir() -> Path:
    """The folder of bundled configs (``sd15/``, ``sd21/``, ``tiny_tokenizer/``)."""
    return Path(str(resources.files("sdaudit.models") / "configs"))


def load_tokenizer_tiny():
    """The byte-level CLIP tokenizer of ``tiny`` (every byte is a token; no merges)."""
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(configs_dir() / "tiny_tokenizer"))


def _round_to_half(*modules: torch.nn.Module) -> None:
    with torch.no_grad():
        for module in modules:
            for p in module.parameters():
                p.copy_(p.half().float())


def _build(unet_config: dict, vae_config: dict, text_config: dict, seed: int):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel.from_config(unet_config)
        vae = AutoencoderKL.from_config(vae_config)
        text_encoder = CLIPTextModel(CLIPTextConfig(**text_config))
    for m in (unet, vae, text_encoder):
        m.eval().requires_grad_(False)
    _round_to_half(unet, vae, text_encoder)
    return unet, vae, text_encoder


def build_tiny() -> dict:
    """Components of the ``tiny`` model: unet, vae, text_encoder, tokenizer, scheduler."""
    from diffusers import PNDMScheduler

    unet, vae, text_encoder = _build(TINY_UNET_CONFIG, TINY_VAE_CONFIG, TINY_TEXT_CONFIG, TINY_SEED)
    return {
        "unet": unet,
        "vae": vae,
        "text_encoder": text_encoder,
        "tokenizer": load_tokenizer_tiny(),
        "scheduler": PNDMScheduler.from_config(SD15_SCHEDULER_CONFIG),
    }


def read_arch_config(arch: str, component: str) -> dict:
    """A bundled component config of a full-size architecture (``sd15`` or ``sd21``)."""
    name = "scheduler_config.json" if component == "scheduler" else "config.json"
    return json.loads((configs_dir() / arch / component / name).read_text())


def build_arch(arch: str) -> dict:
    """Components of ``arch:<arch>``: the full-size architecture with deterministic random weights.

    The text encoder uses the tiny byte-level tokenizer (token ids below 514); with random
    weights, the vocabulary carries no meaning anyway.
    """
    import diffusers

    text_config = read_arch_config(arch, "text_encoder")
    text_config = {k: v for k, v in text_config.items() if k not in ("architectures", "model_type", "torch_dtype")}
    text_config.update(bos_token_id=512, eos_token_id=513, pad_token_id=513)
    unet, vae, text_encoder = _build(read_arch_config(arch, "unet"), read_arch_config(arch, "vae"), text_config, ARCH_SEED)
    scheduler_config = read_arch_config(arch, "scheduler")
    scheduler_cls = getattr(diffusers, scheduler_config["_class_name"])
    return {
        "unet": unet,
        "vae": vae,
        "text_encoder": text_encoder,
        "tokenizer": load_tokenizer_tiny(),
        "scheduler": scheduler_cls.from_config(scheduler_config),
    }
