"""Loading a diffusers pipeline's components from a folder or the hub.

SD-1.x/2.x and SDXL pipelines are loaded component by component (U-Net and text encoders in the
compute dtype, the VAE in float32, the pipeline's own scheduler). Transformer pipelines (SD3 /
SD3.5, FLUX.1: :data:`TRANSFORMER_PIPELINES`) are loaded by diffusers' ``DiffusionPipeline`` in one
call, and their components taken from it: they have more parts (up to three text encoders), which
diffusers' pipeline loader knows how to assemble.
"""

from __future__ import annotations

import torch

from .devices import diffusers_dtype_kwarg


#: diffusers pipeline classes whose denoiser is a ``transformer`` (loaded whole, see the module docstring)
TRANSFORMER_PIPELINES = ("StableDiffusion3Pipeline", "FluxPipeline")


def _model_index(location: str, common: dict) -> dict:
    """The pipeline's ``model_index.json`` ({} when it cannot be read: the component loaders give the precise error)."""
    from diffusers import DiffusionPipeline

    try:
        return dict(DiffusionPipeline.load_config(location, **common))
    except (OSError, ValueError):
        return {}


def _has_second_text_encoder(index: dict) -> bool:
    """Whether the pipeline's ``model_index.json`` names a ``text_encoder_2`` (SDXL)."""
    return bool(index.get("text_encoder_2")) and index["text_encoder_2"][0] is not None


def _load_transformer_pipeline(location: str, *, variant, torch_dtype, common: dict, absent: dict) -> dict:
    """The components of an SD3 / FLUX pipeline, loaded by diffusers (``None`` parts, such as a left-out T5, dropped).
    ``absent``: {name: None} for the parts the folder saved as null, which diffusers wants passed explicitly."""
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(location, variant=variant, **diffusers_dtype_kwarg(torch_dtype), **common,
                                             **absent)
    return {name: part for name, part in pipe.components.items() if part is not None}


def _load_second_text_encoder(location: str, *, variant, torch_dtype, common: dict) -> dict:
    """SDXL's ``text_encoder_2`` (with projection: it gives the pooled prompt) and ``tokenizer_2``."""
    from transformers import AutoTokenizer, CLIPTextModelWithProjection

    encoder = CLIPTextModelWithProjection.from_pretrained(location, subfolder="text_encoder_2", variant=variant,
                                                          dtype=torch_dtype, **common)
    return {"text_encoder_2": encoder, "tokenizer_2": AutoTokenizer.from_pretrained(location, subfolder="tokenizer_2",
                                                                                     **common)}


def load_pipeline_components(location: str, *, revision, local_files_only, variant, torch_dtype) -> dict:
    """Load the components of a diffusers pipeline (folder or repo id): five for Stable Diffusion, seven for SDXL,
    the pipeline's own set for SD3 and FLUX."""
    import diffusers
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import AutoTokenizer, CLIPTextModel

    common = {"revision": revision, "local_files_only": local_files_only}
    index = _model_index(location, common)
    if index.get("_class_name") in TRANSFORMER_PIPELINES:
        absent = {name: None for name, value in index.items() if isinstance(value, list) and value[0] is None}
        return _load_transformer_pipeline(location, variant=variant, torch_dtype=torch_dtype, common=common,
                                          absent=absent)
    second = (_load_second_text_encoder(location, variant=variant, torch_dtype=torch_dtype, common=common)
              if _has_second_text_encoder(index) else {})
    unet = UNet2DConditionModel.from_pretrained(location, subfolder="unet", variant=variant,
                                                **diffusers_dtype_kwarg(torch_dtype), **common)
    vae = AutoencoderKL.from_pretrained(location, subfolder="vae", variant=variant,
                                        **diffusers_dtype_kwarg(torch.float32), **common)
    text_encoder = CLIPTextModel.from_pretrained(location, subfolder="text_encoder", variant=variant, dtype=torch_dtype, **common)
    tokenizer = AutoTokenizer.from_pretrained(location, subfolder="tokenizer", **common)
    scheduler_config = diffusers.DDIMScheduler.load_config(location, subfolder="scheduler", **common)
    scheduler_cls = getattr(diffusers, scheduler_config.get("_class_name", "PNDMScheduler"), diffusers.PNDMScheduler)
    scheduler = scheduler_cls.from_config(scheduler_config)
    return {"unet": unet, "vae": vae, "text_encoder": text_encoder, "tokenizer": tokenizer, "scheduler": scheduler,
            **second}
