"""The SD-1.x/2.x U-Net family (diffusers ``UNet2DConditionModel``): layers, shapes, prompt, denoiser pass.

Layers are named by their module path with list indices in brackets, as in the paper: ``conv_in``,
``down_blocks[1].attentions[0]``, ``mid_block.resnets[1]``, ``up_blocks[1].upsamplers[0]``,
``conv_out``. The hookable layers are every resnet, attention, down- and upsampler of every block,
plus ``conv_in`` and ``conv_out``: 46 for SD-1.5 / SD-2.1. The paper's figures use 45 of them (its
list leaves out ``up_blocks[0].resnets[2]``): the ``paper`` set. Lists are in execution order.

Structure and shapes come from a skeleton built on PyTorch's "meta" device from the config alone
(no weights, no computation), cached per (config, input size), so listing layers or planning a
store never runs the real U-Net.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping, Sequence

import torch

from ...constants import PAPER_ANOMALY_LAYER
from ...layer_names import LayerError, LayerInfo, block_of, kind_of
from ..hooks import capture_layers, compile_layers, run_until_captured
from . import sd_noise
from .base import ModelFamily, Sink

PAPER_OMITTED = ("up_blocks[0].resnets[2]",)
TEXT_TOKENS = 77  # CLIP's context length: the prompt's hidden states are (1, 77, D)


class UNetFamily(ModelFamily):
    """Stable Diffusion 1.x / 2.x (and SD-Turbo): a ``UNet2DConditionModel`` conditioned on one CLIP text encoder.

    Args:
        config: the U-Net's config (a ``unet/config.json`` as a mapping).
        vae_scale_factor: pixels per latent token (8 for every SD VAE).
    """

    name = "sd-unet"
    denoiser_component = "unet"
    pipeline_class = "StableDiffusionPipeline"
    anomaly_layer = PAPER_ANOMALY_LAYER

    def __init__(self, config: Mapping, vae_scale_factor: int = 8):
        self.config_key = json.dumps({k: v for k, v in dict(config).items() if not k.startswith("_")},
                                     sort_keys=True, default=str)
        self.vae_scale_factor = int(vae_scale_factor)

    # ---- structure ----------------------------------------------------------------------------

    @classmethod
    def accepts(cls, config) -> bool:
        """Any U-Net config (one with ``down_block_types``); SDXL's is claimed by its own family first."""
        return "down_block_types" in dict(config)

    def layer_names(self) -> list[str]:
        return list(_layer_names(self.config_key))

    def paper_layers(self) -> list[str]:
        return [n for n in self.layer_names() if n not in PAPER_OMITTED]

    def semantic_layers(self, layers: Sequence[str]) -> list[str]:
        """The decoder's middle blocks, ``up_blocks[1]`` and ``up_blocks[2]`` (semantic correspondence works best
        there: DIFT, and the paper's Fig. 1)."""
        return [n for n in layers if block_of(n) in ("up_blocks[1]", "up_blocks[2]")]

    def default_anomaly_layer(self, layers: Sequence[str]) -> str:
        """The paper's layer (the second up-block's upsampler) when audited; else the second audited up-block
        upsampler (the first when there is one), else the middle layer."""
        if self.anomaly_layer in layers:
            return self.anomaly_layer
        ups = [n for n in layers if n.startswith("up_blocks") and n.split(".")[-1].startswith("upsamplers")]
        return ups[1] if len(ups) > 1 else (ups[0] if ups else list(layers)[len(layers) // 2])

    def layer_infos(self, size: int) -> list[LayerInfo]:
        """Shapes from a forward pass on the meta device (nothing computed), cached per (config, size).

        Any whole number of latent tokens runs: the U-Net pads odd sizes when it downsamples and
        upsamples to its skip connections' sizes (the border experiment's crops, e.g. 496 px, are
        no multiples of 64).
        """
        if size % self.vae_scale_factor or size < self.vae_scale_factor:
            raise LayerError(f"size {size} px is not a positive multiple of {self.vae_scale_factor} (the VAE's factor)")
        return list(_layer_infos(self.config_key, size // self.vae_scale_factor))

    # ---- computation --------------------------------------------------------------------------

    def noised_inputs(self, model, pixels: torch.Tensor, indices: Sequence[int], settings) -> list[torch.Tensor]:
        return sd_noise.noised_inputs(model, pixels, indices, settings)

    def encode_prompt(self, model, prompt: str, *, protocol: str = "clean") -> torch.Tensor:
        """Text-encoder hidden states (1, 77, D), as diffusers' StableDiffusionPipeline makes them (both protocols)."""
        tokenizer = model.tokenizer
        max_length = min(int(getattr(tokenizer, "model_max_length", TEXT_TOKENS)), TEXT_TOKENS)
        tokens = tokenizer(prompt, padding="max_length", max_length=max_length, truncation=True, return_tensors="pt")
        ids = tokens.input_ids.to(model.device)
        use_mask = getattr(model.text_encoder.config, "use_attention_mask", False)
        mask = tokens.attention_mask.to(model.device) if use_mask else None
        with torch.inference_mode():
            return model.text_encoder(ids, attention_mask=mask)[0].to(model.dtype)

    def run_denoiser(self, model, sample: torch.Tensor, timestep: int, context: torch.Tensor, *,
                     layers: Sequence[str], sink: Sink) -> None:
        t = torch.tensor(timestep, dtype=torch.long, device=model.device)
        context = context.expand(sample.shape[0], -1, -1).contiguous()
        with capture_layers(model.denoiser, layers, lambda name, output: sink(name, self.to_grid(name, output))):
            run_until_captured(lambda: model.denoiser(sample, t, encoder_hidden_states=context))

    def to_grid(self, name: str, output) -> torch.Tensor:
        """U-Net outputs are already (N, C, h, w); a module that returns a tuple contributes its first element."""
        return _first_tensor(output)

    def compile_layers(self, model, names: Sequence[str]) -> int:
        return compile_layers(model.denoiser, names)


def _first_tensor(output) -> torch.Tensor:
    """A module's output as one tensor: the first element of a tuple, the ``sample`` of a diffusers output."""
    if isinstance(output, (tuple, list)):
        output = output[0]
    if hasattr(output, "sample") and not isinstance(output, torch.Tensor):  # diffusers output dataclasses
        output = output.sample
    return output


def extra_inputs(config, batch: int, size_px: int, device, dtype) -> dict:
    """Placeholder added conditioning for the meta-device shape pass of a U-Net that requires it (SDXL's
    ``text_time``): zero pooled embedding, size ids of the input size. Shapes do not depend on these
    values; the real conditioning is :class:`~sdaudit.models.families.sdxl.SDXLFamily`'s.
    """
    if getattr(config, "addition_embed_type", None) != "text_time":
        return {}
    n_time = 6
    text_dim = config.projection_class_embeddings_input_dim - n_time * config.addition_time_embed_dim
    time_ids = torch.tensor([size_px, size_px, 0, 0, size_px, size_px], device=device, dtype=dtype).repeat(batch, 1)
    text_embeds = torch.zeros(batch, text_dim, device=device, dtype=dtype)
    return {"added_cond_kwargs": {"text_embeds": text_embeds, "time_ids": time_ids}}


@functools.lru_cache(maxsize=16)
def _skeleton(config_key: str) -> torch.nn.Module:
    """The U-Net of a config on the meta device: structure and shapes, no memory, no weights."""
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        return UNet2DConditionModel.from_config(json.loads(config_key))


def _block_layers(prefix: str, block: torch.nn.Module, mid: bool = False) -> list[str]:
    resnets = list(getattr(block, "resnets", None) or [])
    attentions = list(getattr(block, "attentions", None) or [])
    names: list[str] = []
    if mid:  # mid blocks run resnets[0], then (attentions[i], resnets[i+1]) pairs
        names.append(f"{prefix}.resnets[0]")
        for i in range(len(attentions)):
            names.append(f"{prefix}.attentions[{i}]")
            if i + 1 < len(resnets):
                names.append(f"{prefix}.resnets[{i + 1}]")
        return names
    for i in range(len(resnets)):
        names.append(f"{prefix}.resnets[{i}]")
        if i < len(attentions):
            names.append(f"{prefix}.attentions[{i}]")
    for attr in ("downsamplers", "upsamplers"):
        for i in range(len(getattr(block, attr, None) or [])):
            names.append(f"{prefix}.{attr}[{i}]")
    return names


@functools.lru_cache(maxsize=16)
def _layer_names(config_key: str) -> tuple[str, ...]:
    unet = _skeleton(config_key)
    names = ["conv_in"]
    for i, block in enumerate(unet.down_blocks):
        names += _block_layers(f"down_blocks[{i}]", block)
    if getattr(unet, "mid_block", None) is not None:
        names += _block_layers("mid_block", unet.mid_block, mid=True)
    for i, block in enumerate(unet.up_blocks):
        names += _block_layers(f"up_blocks[{i}]", block)
    names.append("conv_out")
    return tuple(names)


@functools.lru_cache(maxsize=64)
def _layer_infos(config_key: str, latent_size: int) -> tuple[LayerInfo, ...]:
    unet, names = _skeleton(config_key), _layer_names(config_key)
    config = unet.config
    cross_dim = config.cross_attention_dim
    cross_dim = cross_dim[0] if isinstance(cross_dim, (list, tuple)) else cross_dim
    with torch.device("meta"):
        sample = torch.zeros(1, config.in_channels, latent_size, latent_size)
        context = torch.zeros(1, TEXT_TOKENS, cross_dim)
        timestep = torch.tensor([1])
    extra = extra_inputs(config, 1, latent_size * 8, "meta", torch.float32)
    shapes: dict[str, tuple[int, ...]] = {}

    def sink(name, output):
        shapes[name] = tuple(_first_tensor(output).shape[1:])

    with torch.no_grad(), capture_layers(unet, names, sink):
        run_until_captured(lambda: unet(sample, timestep, encoder_hidden_states=context, **extra))
    return tuple(LayerInfo(n, block_of(n), kind_of(n), *shapes[n]) for n in names)
