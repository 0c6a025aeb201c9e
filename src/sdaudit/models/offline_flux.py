"""FLUX.1 models that need no download: ``tiny-flux`` and the ``arch:flux`` / ``arch:flux-schnell`` twins.

``tiny-flux`` has FLUX.1-dev's layout at tiny widths: a ``FluxTransformer2DModel`` with 2 double-stream
and 4 single-stream blocks (FLUX.1: 19 and 38), 2 heads of 16 (rotary axes 4 + 6 + 6, as FLUX's
16 + 56 + 56 split one head), 16 latent channels packed 2x2 (``in_channels`` 64) and the guidance
embedding of FLUX-dev; a 16-channel VAE with 8x downsampling and FLUX's shift and scale; a tiny CLIP
text encoder (its pooled output is the pooled prompt) with the byte-level tokenizer of ``tiny``, and a
tiny T5 encoder with a character-level T5 tokenizer built in memory; FLUX-dev's scheduler (dynamic
resolution shift). Deterministic (fixed seed), weights rounded to float16.

``arch:flux`` (FLUX.1-dev) and ``arch:flux-schnell`` are the bundled diffusers configs
(``configs/flux*``). Their layer tables come from the family's meta-device pass; the models
themselves have 12 B (transformer) + 4.7 B (T5-XXL) parameters, about 34 GB in bfloat16, so
:func:`build_flux_arch` builds them only on a CUDA device, in bfloat16, and refuses elsewhere with
one line (a CPU build would need ~68 GB of float32 memory).
"""

from __future__ import annotations

import torch

from ..errors import UsageError
from .offline_common import (ARCH_SEED, TINY_SEED, TINY_TEXT_CONFIG, TINY_VAE_CONFIG, load_tokenizer_tiny,
                             read_arch_config, round_to_half, tiny_t5_tokenizer)

FLUX_ARCHS = ("flux", "flux-schnell")

TINY_FLUX_TRANSFORMER_CONFIG = {
    "patch_size": 1,
    "in_channels": 64,  # 16 latent channels x 2x2 packing
    "num_layers": 2,
    "num_single_layers": 4,
    "attention_head_dim": 16,
    "num_attention_heads": 2,
    "joint_attention_dim": 32,  # the tiny T5's width
    "pooled_projection_dim": 32,  # the tiny CLIP's width (its pooled output)
    "guidance_embeds": True,  # a tiny FLUX-dev
    "axes_dims_rope": [4, 6, 6],
}
TINY_FLUX_VAE_CONFIG = {**TINY_VAE_CONFIG, "latent_channels": 16, "scaling_factor": 0.3611,  # FLUX's scale, shift
                        "shift_factor": 0.1159, "use_quant_conv": False, "use_post_quant_conv": False}
TINY_FLUX_T5_CONFIG = {
    "d_model": 32,
    "d_kv": 8,
    "d_ff": 64,
    "num_layers": 2,
    "num_heads": 4,
    "feed_forward_proj": "gated-gelu",  # T5 v1.1, as FLUX's T5-XXL
    "is_encoder_decoder": False,
    "use_cache": False,
    "pad_token_id": 0,
    "eos_token_id": 1,
}
# FLUX.1-dev's scheduler: flow matching with the dynamic resolution shift
FLUX_DEV_SCHEDULER_CONFIG = {"num_train_timesteps": 1000, "shift": 3.0, "use_dynamic_shifting": True,
                             "base_shift": 0.5, "max_shift": 1.15, "base_image_seq_len": 256,
                             "max_image_seq_len": 4096}


def build_tiny_flux() -> dict:
    """Components of ``tiny-flux``: transformer, vae, text_encoder (CLIP), text_encoder_2 (T5), both
    tokenizers, scheduler (FLUX-dev's)."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED)
        transformer = FluxTransformer2DModel.from_config(TINY_FLUX_TRANSFORMER_CONFIG)
        vae = AutoencoderKL.from_config(TINY_FLUX_VAE_CONFIG)
        text_encoder = CLIPTextModel(CLIPTextConfig(**TINY_TEXT_CONFIG))
        text_encoder_2 = T5EncoderModel(T5Config(**TINY_FLUX_T5_CONFIG))
    round_to_half(transformer, vae, text_encoder, text_encoder_2)
    return {"transformer": transformer, "vae": vae, "text_encoder": text_encoder, "tokenizer": load_tokenizer_tiny(),
            "text_encoder_2": text_encoder_2, "tokenizer_2": tiny_t5_tokenizer(),
            "scheduler": FlowMatchEulerDiscreteScheduler.from_config(FLUX_DEV_SCHEDULER_CONFIG)}


def flux_arch_parts(arch: str, device: str | torch.device, dtype: torch.dtype = torch.bfloat16) -> dict:
    """The full-size components of ``arch:<arch>`` built directly on ``device`` in ``dtype`` (``"meta"``: no
    memory), deterministic random weights; the text encoders use the tiny tokenizers (ids below their vocabularies)."""
    import diffusers
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    dropped = ("architectures", "torch_dtype")
    clip = {k: v for k, v in read_arch_config(arch, "text_encoder").items() if k not in dropped}
    clip.update(bos_token_id=512, eos_token_id=513, pad_token_id=513)  # the tiny byte-level tokenizer's ids
    t5 = {k: v for k, v in read_arch_config(arch, "text_encoder_2").items() if k not in dropped}
    default_dtype = torch.get_default_dtype()
    with torch.random.fork_rng(devices=[]), torch.device(device):
        torch.manual_seed(ARCH_SEED)
        torch.set_default_dtype(dtype)
        try:
            parts = {"transformer": diffusers.FluxTransformer2DModel.from_config(read_arch_config(arch, "transformer")),
                     "vae": diffusers.AutoencoderKL.from_config(read_arch_config(arch, "vae")),
                     "text_encoder": CLIPTextModel(CLIPTextConfig(**clip)),
                     "text_encoder_2": T5EncoderModel(T5Config(**t5))}
        finally:
            torch.set_default_dtype(default_dtype)
    for part in parts.values():
        part.eval().requires_grad_(False)
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler.from_config(read_arch_config(arch, "scheduler"))
    return {**parts, "tokenizer": load_tokenizer_tiny(), "tokenizer_2": tiny_t5_tokenizer(), "scheduler": scheduler}


def build_flux_arch(arch: str) -> dict:
    """Components of ``arch:flux`` / ``arch:flux-schnell``: on CUDA in bfloat16; refused without a GPU."""
    if not torch.cuda.is_available():
        raise UsageError(f"arch:{arch} has 12 B + 4.7 B (T5) parameters and is built only on a CUDA GPU (about "
                         f"34 GB in bfloat16); 'sdaudit layers --model arch:{arch}' lists its layers without weights")
    return flux_arch_parts(arch, "cuda")
