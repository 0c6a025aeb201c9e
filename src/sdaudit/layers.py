"""Layer names, layer sets and shapes of a diffusers ``UNet2DConditionModel``.

Layers are named by their module path with list indices in brackets, as in the paper:
``conv_in``, ``down_blocks[1].attentions[0]``, ``mid_block.resnets[1]``, ``up_blocks[1].upsamplers[0]``,
``conv_out``. The hookable layers are every resnet, attention, down- and upsampler of every block,
plus ``conv_in`` and ``conv_out``: 46 for SD-1.5 / SD-2.1. The paper's figures use 45 of them (its
list leaves out ``up_blocks[0].resnets[2]``): the ``paper`` set. Lists are in execution order.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch

from .errors import SdauditError
from .layer_names import block_of, kind_of, normalize_name, store_key  # noqa: F401  (re-exported)

PAPER_OMITTED = ("up_blocks[0].resnets[2]",)
_TOKEN = re.compile(r"^([A-Za-z_]\w*)((?:\[\d+\])*)$")


class LayerError(SdauditError, ValueError):
    """An unknown or malformed layer name."""


@dataclass(frozen=True)
class LayerInfo:
    """One hookable layer: its name, block, kind and output shape for a given input size."""

    name: str
    block: str  # conv_in, down_blocks[0], ..., mid_block, up_blocks[3], conv_out
    kind: str  # conv, res, attn, down, up
    channels: int
    height: int  # tokens
    width: int  # tokens

    @property
    def grid(self) -> tuple[int, int]:
        return (self.height, self.width)




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


def all_layers(unet: torch.nn.Module) -> list[str]:
    """Every hookable layer of a U-Net, in execution order."""
    names = ["conv_in"]
    for i, block in enumerate(unet.down_blocks):
        names += _block_layers(f"down_blocks[{i}]", block)
    if getattr(unet, "mid_block", None) is not None:
        names += _block_layers("mid_block", unet.mid_block, mid=True)
    for i, block in enumerate(unet.up_blocks):
        names += _block_layers(f"up_blocks[{i}]", block)
    names.append("conv_out")
    return names


def paper_layers(unet: torch.nn.Module) -> list[str]:
    """The paper's layer set: all layers but ``up_blocks[0].resnets[2]``."""
    return [n for n in all_layers(unet) if n not in PAPER_OMITTED]




def get_module(unet: torch.nn.Module, name: str) -> torch.nn.Module:
    """The module a layer name points at (parsed, never evaluated)."""
    module: object = unet
    for part in normalize_name(name).split("."):
        match = _TOKEN.match(part)
        if not match:
            raise LayerError(f"malformed layer name '{name}'")
        module = getattr(module, match.group(1), None)
        for index in re.findall(r"\[(\d+)\]", match.group(2)):
            if module is None:
                break
            try:
                module = module[int(index)]  # type: ignore[index]
            except (IndexError, TypeError):
                module = None
        if module is None:
            raise LayerError(f"layer '{name}' does not exist in this U-Net")
    assert isinstance(module, torch.nn.Module)
    return module


def select_layers(spec: str | Iterable[str], available: Sequence[str]) -> list[str]:
    """Resolve a layer selection against the available layers, in execution order.

    ``spec`` is ``"all"``, ``"paper"``, or names separated by commas (or an iterable of names).
    A block name (``up_blocks[1]``, ``mid_block``, ``down_blocks.2``) expands to its layers.
    Unknown names raise :class:`LayerError` listing the valid ones.
    """
    items = [s for s in (spec.split(",") if isinstance(spec, str) else spec)]
    items = [normalize_name(s) for s in items if s and s.strip()]
    if not items:
        raise LayerError("no layers selected; use 'all', 'paper', block names or layer names")
    chosen: set[str] = set()
    for item in items:
        if item == "all":
            chosen.update(available)
        elif item == "paper":
            chosen.update(n for n in available if n not in PAPER_OMITTED)
        elif item in available:
            chosen.add(item)
        elif any(block_of(n) == item for n in available):
            chosen.update(n for n in available if block_of(n) == item)
        else:
            blocks = sorted({block_of(n) for n in available}, key=lambda b: [block_of(n) for n in available].index(b))
            raise LayerError(
                f"unknown layer '{item}'. Valid: all, paper, the blocks {', '.join(blocks)}, or one of: "
                + ", ".join(available)
            )
    return [n for n in available if n in chosen]


def _meta_unet(config: dict) -> torch.nn.Module:
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        return UNet2DConditionModel.from_config(config)


def layer_infos(unet_or_config: torch.nn.Module | dict, size: int, vae_scale_factor: int = 8) -> list[LayerInfo]:
    """Name, block, kind, channels and token grid of every layer for ``size`` x ``size`` pixel input.

    Shapes come from a forward pass on PyTorch's "meta" device: nothing is computed and no weights
    are needed, so a config is enough. Results are cached per (config, size).
    """
    if isinstance(unet_or_config, dict):
        key = json.dumps({k: v for k, v in unet_or_config.items() if not k.startswith("_")}, sort_keys=True, default=str)
        return list(_layer_infos_cached(key, size, vae_scale_factor))
    return _layer_infos(unet_or_config, size, vae_scale_factor)


@functools.lru_cache(maxsize=64)
def _layer_infos_cached(config_json: str, size: int, vae_scale_factor: int) -> tuple[LayerInfo, ...]:
    return tuple(_layer_infos(_meta_unet(json.loads(config_json)), size, vae_scale_factor))


def _layer_infos(unet: torch.nn.Module, size: int, vae_scale_factor: int) -> list[LayerInfo]:
    from .extraction.hooks import capture_shapes
    # Any whole number of latent tokens runs: the U-Net pads odd sizes when it downsamples and upsamples to
    # its skip connections' sizes (the border experiment's crops, e.g. 496 px, are no multiples of 64).
    if size % vae_scale_factor or size < vae_scale_factor:
        raise LayerError(f"size {size} px is not a positive multiple of {vae_scale_factor} (the VAE's factor)")
    names = all_layers(unet)
    shapes = capture_shapes(unet, names, size // vae_scale_factor)
    return [LayerInfo(n, block_of(n), kind_of(n), s[0], s[1], s[2]) for n, s in zip(names, shapes)]
