"""One SDXL checkpoint file in the original (Stability ``sgm``) layout, through diffusers' public single-file API.

An SDXL file holds the U-Net (``model.diffusion_model.*``, with ``label_emb`` for the added conditioning), the VAE
(``first_stage_model.*``), CLIP ViT-L (``conditioner.embedders.0.transformer.*``) and OpenCLIP ViT-bigG with its
projection (``conditioner.embedders.1.model.*``). ``StableDiffusionXLPipeline.from_single_file(path,
config=<folder>, local_files_only=True)`` converts all four; the folder gives the configs and both tokenizers (not
in the file), so it is required: a diffusers SDXL folder or a repo id in the local Hugging Face cache
(``--single-file-config``), else SDXL base 1.0 if it is cached. Nothing here touches the network.

diffusers tells the two text encoders apart by their width (768 and 1280 in SDXL): a file whose two encoders have
the same width (e.g. ``tiny-sdxl``'s, 32 and 32) converts the second from the first's weights, so such files are
refused here rather than loaded wrong.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch

from ..errors import UsageError
from .registry import REGISTRY, ModelNotAvailableError
from .single_file_plan import _cached_repo_folder

CLIP_L_POSITIONS = "conditioner.embedders.0.transformer.text_model.embeddings.position_embedding.weight"
OPEN_CLIP_POSITIONS = "conditioner.embedders.1.model.positional_embedding"
SDXL_BASE = REGISTRY["sdxl"].repo_id


def is_sdxl_checkpoint(shapes: Mapping[str, tuple]) -> bool:
    """Whether a checkpoint's tensors are an SDXL base file's (its second, OpenCLIP text encoder)."""
    return OPEN_CLIP_POSITIONS in shapes


def sdxl_config_folder(config: str | None) -> Path:
    """The diffusers SDXL folder that gives an SDXL file its configs and tokenizers (module docstring)."""
    if config is None:
        try:
            return _cached_repo_folder(SDXL_BASE)
        except ModelNotAvailableError:
            raise ModelNotAvailableError(
                f"an SDXL checkpoint file needs the configs and tokenizers of an SDXL pipeline, and {SDXL_BASE} is "
                "not in the local Hugging Face cache: pass --single-file-config with a diffusers SDXL folder (or a "
                "cached repo id)") from None
    path = Path(str(config)).expanduser()
    folder = path.resolve() if path.is_dir() else _cached_repo_folder(str(config))
    if not (folder / "text_encoder_2").is_dir() or not (folder / "tokenizer_2").is_dir():
        raise UsageError(f"single-file config '{config}' is not an SDXL pipeline folder (no text_encoder_2/ and "
                         "tokenizer_2/)")
    return folder


def _check_encoder_widths(shapes: Mapping[str, tuple], name: str) -> None:
    """diffusers needs the two encoders' widths to differ (module docstring)."""
    if CLIP_L_POSITIONS in shapes and shapes[CLIP_L_POSITIONS][-1] == shapes[OPEN_CLIP_POSITIONS][-1]:
        raise UsageError(f"'{name}': both SDXL text encoders are {shapes[OPEN_CLIP_POSITIONS][-1]} wide; diffusers "
                         "tells them apart by width (768 and 1280 in SDXL), so this file cannot be converted")


def load_sdxl_single_file(path: str, shapes: Mapping[str, tuple], config: str | None = None,
                          torch_dtype: torch.dtype = torch.float32) -> dict:
    """The components of an SDXL checkpoint file (``unet``, ``vae`` in float32, both text encoders and
    tokenizers, ``scheduler``), on the CPU in eval mode, without gradients."""
    from diffusers import StableDiffusionXLPipeline

    _check_encoder_widths(shapes, path)
    folder = sdxl_config_folder(config)
    pipe = StableDiffusionXLPipeline.from_single_file(path, config=str(folder), local_files_only=True,
                                                      torch_dtype=torch_dtype)
    parts = {name: getattr(pipe, name) for name in ("unet", "vae", "text_encoder", "tokenizer", "text_encoder_2",
                                                    "tokenizer_2", "scheduler")}
    parts["vae"] = parts["vae"].to(torch.float32)
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        parts[name].eval().requires_grad_(False)
    return parts


def sdxl_unet_config(config: str | None) -> dict:
    """The U-Net config of an SDXL file: its config folder's (layer listings need no weights)."""
    import json

    return json.loads((sdxl_config_folder(config) / "unet" / "config.json").read_text())
