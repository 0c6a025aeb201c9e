"""What the offline models (``tiny*``, ``arch:*``) share: seeds, the bundled configs, the tiny tokenizers,
and the float16 rounding that makes a model the same in float16 and float32.

:mod:`~sdaudit.models.offline` (SD-1.x/2.x and SDXL, and the registry of every offline model),
:mod:`~sdaudit.models.offline_sd3` and :mod:`~sdaudit.models.offline_flux` build on it.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import torch

TINY_SEED = 0
ARCH_SEED = 0

#: the tiny VAE and CLIP text encoder that the tiny models share (widths changed where a family needs it)
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


def configs_dir() -> Path:
    """The folder of bundled configs (``sd15/``, ``sd21/``, ``sdxl/``, ``sd3/``, ``flux/``, ``tiny_tokenizer/``, ...)."""
    return Path(str(resources.files("sdaudit.models") / "configs"))


def load_tokenizer_tiny():
    """The byte-level CLIP tokenizer of ``tiny`` (every byte is a token; no merges)."""
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(configs_dir() / "tiny_tokenizer"))


def tiny_t5_tokenizer():
    """A character-level T5 tokenizer built in memory (transformers' own Unigram T5 tokenizer with a tiny vocabulary):
    ``<pad>`` 0, ``</s>`` 1, ``<unk>`` 2, the word-start marker, then the printable ASCII characters (98 ids)."""
    from transformers import T5TokenizerFast

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    vocab += [(chr(c), -3.0) for c in range(33, 127)]
    return T5TokenizerFast(vocab=vocab, extra_ids=0, model_max_length=512)


def round_to_half(*modules: torch.nn.Module) -> None:
    """Eval mode, no gradients, weights rounded to float16 values: the same model in float16 and float32."""
    with torch.no_grad():
        for module in modules:
            module.eval().requires_grad_(False)
            for p in module.parameters():
                p.copy_(p.half().float())


def read_arch_config(arch: str, component: str) -> dict:
    """A bundled component config of a full-size architecture (``sd15``, ``sd21``, ``sdxl``, ...); ``denoiser``
    reads whichever of ``unet`` and ``transformer`` the architecture has."""
    if component == "denoiser":
        component = "transformer" if (configs_dir() / arch / "transformer").is_dir() else "unet"
    name = "scheduler_config.json" if component == "scheduler" else "config.json"
    return json.loads((configs_dir() / arch / component / name).read_text())


def arch_text_config(arch: str, component: str) -> dict:
    """A bundled CLIP text-encoder config with the tiny tokenizer's special token ids (its vocabulary is 514)."""
    config = read_arch_config(arch, component)
    config = {k: v for k, v in config.items() if k not in ("architectures", "model_type", "torch_dtype")}
    config.update(bos_token_id=512, eos_token_id=513, pad_token_id=513)
    return config
