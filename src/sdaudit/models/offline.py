"""Models that need no download: the registry of every offline model (:data:`TINY_MODELS`, :func:`build_arch`), and
the U-Net ones themselves: the deterministic ``tiny`` and ``tiny-sdxl`` models and the ``arch:sd15/sd21/sdxl`` twins
(the SD3 and FLUX ones are built in :mod:`~sdaudit.models.offline_sd3` and :mod:`~sdaudit.models.offline_flux`).

``tiny`` has Stable Diffusion 1.5's exact U-Net block layout (the same layer names, the same grid
sizes) with 32/64 channels instead of 320..1280, a small VAE with the same 8x downsampling and a
two-layer CLIP text encoder with a byte-level tokenizer. It is built in memory in about a second.
``tiny-sdxl`` does the same for SDXL base: its block layout and transformer depths, two tiny text
encoders (the second with a projection, for the pooled prompt) sharing that tokenizer, SDXL's Euler
scheduler and VAE scale.

``arch:sd15`` / ``arch:sd21`` / ``arch:sdxl`` build the full-size architectures from the configs bundled in
``sdaudit/models/configs`` (SDXL base 1.0's from its diffusers ``model_index.json``, U-Net, VAE, both
text encoders and Euler scheduler): the compute of the real models, without their weights. They serve
benchmarks and as an "untrained" control.

Both are initialised from a fixed seed with the weights rounded to float16, so that the model is
the same whether it is held in float16 or float32 (and equal to a float16 checkpoint of itself).
"""

from __future__ import annotations

import torch

from .offline_common import (ARCH_SEED, TINY_SEED, TINY_TEXT_CONFIG, TINY_VAE_CONFIG, arch_text_config, configs_dir, load_tokenizer_tiny,
                             read_arch_config, round_to_half)
from .offline_flux import FLUX_ARCHS, TINY_FLUX_TRANSFORMER_CONFIG, build_flux_arch, build_tiny_flux
from .offline_sd3 import SD3_ARCHS, TINY_SD3_TRANSFORMER_CONFIG, build_arch_sd3, build_tiny_sd3

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
# ``tiny-sdxl``: SDXL base's U-Net layout (3 blocks, the first without attention, transformer depth
# 1 / 2 / 10, linear projections, text_time added conditioning) at tiny widths. Cross-attention
# dim = the two tiny text encoders' widths concatenated (32 + 32); added-embedding input = the
# second encoder's pooled projection (32) + 6 time ids x 8.
TINY_SDXL_UNET_CONFIG = {
    "sample_size": 32,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "block_out_channels": [32, 64, 64],
    "layers_per_block": 2,
    "transformer_layers_per_block": [1, 2, 10],
    "norm_num_groups": 8,
    "attention_head_dim": [2, 4, 4],
    "use_linear_projection": True,
    "cross_attention_dim": 64,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 8,
    "projection_class_embeddings_input_dim": 32 + 6 * 8,
}
TINY_SDXL_VAE_CONFIG = {**TINY_VAE_CONFIG, "scaling_factor": 0.13025}  # SDXL's VAE scale
# The scheduler of SDXL base (Euler with the scaled-linear beta schedule).
SDXL_SCHEDULER_CONFIG = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "interpolation_type": "linear",
    "timestep_spacing": "leading",
    "steps_offset": 1,
    "use_karras_sigmas": False,
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


def _build(unet_config: dict, vae_config: dict, text_config: dict, seed: int):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel.from_config(unet_config)
        vae = AutoencoderKL.from_config(vae_config)
        text_encoder = CLIPTextModel(CLIPTextConfig(**text_config))
    round_to_half(unet, vae, text_encoder)
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


def build_tiny_sdxl() -> dict:
    """Components of ``tiny-sdxl``: unet, vae, text_encoder, text_encoder_2 (with projection), both
    tokenizers (the tiny byte-level one), scheduler (SDXL's Euler)."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED)
        unet = UNet2DConditionModel.from_config(TINY_SDXL_UNET_CONFIG)
        vae = AutoencoderKL.from_config(TINY_SDXL_VAE_CONFIG)
        text_encoder = CLIPTextModel(CLIPTextConfig(**TINY_TEXT_CONFIG))
        text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**TINY_TEXT_CONFIG))
    round_to_half(unet, vae, text_encoder, text_encoder_2)
    return {
        "unet": unet,
        "vae": vae,
        "text_encoder": text_encoder,
        "tokenizer": load_tokenizer_tiny(),
        "text_encoder_2": text_encoder_2,
        "tokenizer_2": load_tokenizer_tiny(),
        "scheduler": EulerDiscreteScheduler.from_config(SDXL_SCHEDULER_CONFIG),
    }


#: every built-in tiny model: name -> (builder, denoiser config)
TINY_MODELS = {"tiny": (build_tiny, TINY_UNET_CONFIG), "tiny-sdxl": (build_tiny_sdxl, TINY_SDXL_UNET_CONFIG),
               "tiny-sd3": (build_tiny_sd3, TINY_SD3_TRANSFORMER_CONFIG),
               "tiny-flux": (build_tiny_flux, TINY_FLUX_TRANSFORMER_CONFIG)}


def _arch_text_encoder_2(arch: str) -> dict:
    """SDXL's second, projected text encoder (and its tokenizer) where the architecture has one, else nothing."""
    if not (configs_dir() / arch / "text_encoder_2").is_dir():
        return {}
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(ARCH_SEED)
        encoder = CLIPTextModelWithProjection(CLIPTextConfig(**arch_text_config(arch, "text_encoder_2")))
    round_to_half(encoder)
    return {"text_encoder_2": encoder, "tokenizer_2": load_tokenizer_tiny()}


def build_arch(arch: str) -> dict:
    """Components of ``arch:<arch>``: the full-size architecture with deterministic random weights
    (``arch:sdxl`` adds the second text encoder and tokenizer).

    The text encoders use the tiny byte-level tokenizer (token ids below 514); with random
    weights, the vocabulary carries no meaning anyway.
    """
    import diffusers

    if arch in FLUX_ARCHS:  # FLUX.1: a transformer, CLIP + T5 (offline_flux)
        return build_flux_arch(arch)
    if arch in SD3_ARCHS:  # SD3 / SD3.5: a transformer, two CLIPs, no T5 (offline_sd3)
        return build_arch_sd3(arch)
    unet, vae, text_encoder = _build(read_arch_config(arch, "unet"), read_arch_config(arch, "vae"),
                                     arch_text_config(arch, "text_encoder"), ARCH_SEED)
    scheduler_config = read_arch_config(arch, "scheduler")
    scheduler_cls = getattr(diffusers, scheduler_config["_class_name"])
    return {
        "unet": unet,
        "vae": vae,
        "text_encoder": text_encoder,
        "tokenizer": load_tokenizer_tiny(),
        "scheduler": scheduler_cls.from_config(scheduler_config),
        **_arch_text_encoder_2(arch),
    }
