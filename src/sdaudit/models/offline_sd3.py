"""SD3 models that need no download: ``tiny-sd3`` and the ``arch:sd3`` / ``arch:sd35-medium`` builders.

``tiny-sd3`` has SD3-medium's layout: the patch embedding with its sin-cos position table, 24 joint
blocks (the last ``context_pre_only``), the final norm; 2 heads x 16 = 32 channels instead of 24 x 64.
Its VAE has 16 latent channels with SD3's shift and scale; its two CLIP encoders (with projection:
they give the pooled prompt) are the tiny byte-level ones of ``tiny``; the scheduler is SD3's
(flow-matching Euler, shift 3). ``build_tiny_sd3(t5=True)`` adds a tiny T5 encoder with a character-level
tokenizer built locally; ``tiny-sd3`` itself leaves T5 out, as sdaudit recommends for SD3 (see
:mod:`~sdaudit.models.families.sd3`).

``arch:sd3`` / ``arch:sd35-medium`` build the transformer, VAE and both CLIP encoders of the real models
from the bundled configs (``configs/sd3``, ``configs/sd35-medium``) with deterministic random weights;
T5-XXL (4.7 B parameters) is left out: with random weights it would only add a constant to the
conditioning, at 19 GB in float32.
"""

from __future__ import annotations

import torch

from .offline_common import (ARCH_SEED, TINY_SEED, TINY_TEXT_CONFIG, TINY_VAE_CONFIG, arch_text_config, load_tokenizer_tiny, read_arch_config,
                             round_to_half, tiny_t5_tokenizer)

TINY_SD3_TRANSFORMER_CONFIG = {
    "sample_size": 32,
    "patch_size": 2,
    "in_channels": 16,
    "out_channels": 16,
    "num_layers": 24,
    "attention_head_dim": 16,
    "num_attention_heads": 2,
    "joint_attention_dim": 64,  # T5's width; the two CLIP states (32 + 32) are padded to it
    "caption_projection_dim": 32,  # = heads x head dim, as in SD3 (1536)
    "pooled_projection_dim": 64,  # both CLIP projections (32 + 32)
    "pos_embed_max_size": 64,  # up to 1024 px
}
TINY_SD3_VAE_CONFIG = {**TINY_VAE_CONFIG, "latent_channels": 16, "scaling_factor": 1.5305, "shift_factor": 0.0609,
                       "use_quant_conv": False, "use_post_quant_conv": False}
TINY_SD3_TEXT_CONFIG = {**TINY_TEXT_CONFIG, "projection_dim": 32}
TINY_T5_CONFIG = {"vocab_size": 128, "d_model": 64, "d_kv": 16, "d_ff": 128, "num_layers": 2, "num_heads": 4,
                  "feed_forward_proj": "gated-gelu", "relative_attention_num_buckets": 8,
                  "relative_attention_max_distance": 32, "dropout_rate": 0.0, "pad_token_id": 0, "eos_token_id": 1,
                  "decoder_start_token_id": 0}
SD3_SCHEDULER_CONFIG = {"num_train_timesteps": 1000, "shift": 3.0}


def _tiny_t5() -> dict:
    from transformers import T5Config, T5EncoderModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED + 3)
        encoder = T5EncoderModel(T5Config(**TINY_T5_CONFIG))
    round_to_half(encoder)
    return {"text_encoder_3": encoder, "tokenizer_3": tiny_t5_tokenizer()}


def _components(transformer_config: dict, vae_config: dict, text_configs: tuple[dict, dict], seed: int) -> dict:
    """Transformer, VAE and both projected CLIP encoders, built from a fixed seed, rounded to float16."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = SD3Transformer2DModel.from_config(transformer_config)
        vae = AutoencoderKL.from_config(vae_config)
        encoders = [CLIPTextModelWithProjection(CLIPTextConfig(**c)) for c in text_configs]
    round_to_half(transformer, vae, *encoders)
    return {"transformer": transformer, "vae": vae, "text_encoder": encoders[0], "tokenizer": load_tokenizer_tiny(),
            "text_encoder_2": encoders[1], "tokenizer_2": load_tokenizer_tiny(),
            "scheduler": FlowMatchEulerDiscreteScheduler.from_config(SD3_SCHEDULER_CONFIG)}


def build_tiny_sd3(t5: bool = False) -> dict:
    """Components of ``tiny-sd3`` (see the module docstring); ``t5`` adds a tiny T5 encoder and its tokenizer."""
    parts = _components(TINY_SD3_TRANSFORMER_CONFIG, TINY_SD3_VAE_CONFIG, (TINY_SD3_TEXT_CONFIG,) * 2, TINY_SEED)
    return {**parts, **(_tiny_t5() if t5 else {})}


def build_arch_sd3(arch: str) -> dict:
    """Components of ``arch:sd3`` / ``arch:sd35-medium``: the bundled configs, random weights, no T5 (see above)."""
    import diffusers

    texts = (arch_text_config(arch, "text_encoder"), arch_text_config(arch, "text_encoder_2"))
    parts = _components(read_arch_config(arch, "transformer"), read_arch_config(arch, "vae"), texts, ARCH_SEED)
    scheduler_config = read_arch_config(arch, "scheduler")
    parts["scheduler"] = getattr(diffusers, scheduler_config["_class_name"]).from_config(scheduler_config)
    return parts


#: the ``arch:`` names built here
SD3_ARCHS = ("sd3", "sd35-medium")

__all__ = ["SD3_ARCHS", "TINY_SD3_TRANSFORMER_CONFIG", "build_arch_sd3", "build_tiny_sd3"]
