"""Layer names, torch-free: spellings, blocks, kinds, storage keys, selection and the per-layer record.

Names follow the paper: module paths with list indices in brackets (``up_blocks[1].upsamplers[0]``,
``conv_in``, ``mid_block.resnets[1]``). Which layers a model has, and which of them make the
paper's set, is the model family's to say (:mod:`sdaudit.models.families`); everything here works
on the names alone, so reports, stores and the explorer can use it without importing torch.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .errors import UsageError
from .validation import did_you_mean


class LayerError(UsageError):
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

    def to_dict(self) -> dict:
        """The record results.json's ``"layers"`` holds (channels may be None for published results)."""
        return {"name": self.name, "block": self.block, "kind": self.kind, "channels": self.channels,
                "height": self.height, "width": self.width}

    @classmethod
    def from_dict(cls, data) -> LayerInfo:
        """Read :meth:`to_dict`'s record; block and kind follow from the name when absent."""
        name = str(data.get("name"))
        return cls(name, data.get("block") or block_of(name), data.get("kind") or kind_of(name),
                   data.get("channels"), data.get("height"), data.get("width"))


def block_of(name: str) -> str:
    """The block a layer belongs to: ``up_blocks[1].resnets[0]`` -> ``up_blocks[1]``; a layer that is itself
    an entry of a module list (a transformer's ``transformer_blocks[3]``) belongs to the list
    (``transformer_blocks``), so a diffusion transformer's blocks form one group, as a U-Net block's layers do."""
    if "." not in name:
        return re.sub(r"\[\d+\]$", "", name)
    return name.split(".")[0]


def kind_of(name: str) -> str:
    """Short layer kind used on plot axes: conv, res, attn, down, up (U-Nets); embed, joint, single, norm (SD3, FLUX:
    ``joint`` is a double-stream MMDiT block, ``single`` a FLUX single-stream block)."""
    last = name.split(".")[-1]
    for prefix, kind in (("resnets", "res"), ("attentions", "attn"), ("downsamplers", "down"), ("upsamplers", "up"),
                         ("single_transformer_blocks", "single"), ("transformer_blocks", "joint"),
                         ("x_embedder", "embed"), ("pos_embed", "embed"), ("norm_out", "norm")):
        if last.startswith(prefix):
            return kind
    return "conv"


def normalize_name(name: str) -> str:
    """Accept diffusers' dotted spelling too: ``down_blocks.1.attentions.0`` -> ``down_blocks[1].attentions[0]``."""
    name = name.strip().replace(" ", "")
    return re.sub(r"\.(\d+)(?=\.|$)", r"[\1]", name)


def store_key(name: str) -> str:
    """diffusers' dotted module path of a layer (``down_blocks.1.attentions.0``): its key in a store, and the
    path ``nn.Module.get_submodule`` takes."""
    return re.sub(r"\[(\d+)\]", r".\1", normalize_name(name))


def norm_key(layer: str) -> str:
    """Key of a layer's norm maps in an audit's maps.npz: ``"norm__"`` + the name with every run of
    ``[``, ``]``, ``.`` replaced by one ``_`` (``up_blocks[1].upsamplers[0]`` -> ``norm__up_blocks_1_upsamplers_0``)."""
    return "norm__" + re.sub(r"[\[\].]+", "_", layer).strip("_")


def select_layers(spec: str | Iterable[str], available: Sequence[str], *, paper: Sequence[str] = ()) -> list[str]:
    """Resolve a layer selection against the available layers, in execution order.

    ``spec`` is ``"all"``, ``"paper"`` (the layers in ``paper``: the model family's paper set), or
    names separated by commas (or an iterable of names). A block name (``up_blocks[1]``,
    ``mid_block``, ``down_blocks.2``) expands to its layers, a module list's name (``transformer_blocks``,
    ``up_blocks``) to all of its blocks' layers. Unknown names raise
    :class:`LayerError` naming the closest valid names.
    """
    items = [normalize_name(s) for s in (spec.split(",") if isinstance(spec, str) else spec) if s and s.strip()]
    if not items:
        raise LayerError("no layers selected; use 'all', 'paper', block names or layer names")
    blocks = list(dict.fromkeys(block_of(n) for n in available))
    chosen: set[str] = set()
    for item in items:
        if item == "all":
            chosen.update(available)
        elif item == "paper":
            if not paper:
                raise LayerError("this model has no 'paper' layer set; use 'all', block names or layer names")
            chosen.update(n for n in available if n in set(paper))
        elif item in available:
            chosen.add(item)
        elif item in blocks:
            chosen.update(n for n in available if block_of(n) == item)
        elif any(n.startswith(item + "[") for n in available):  # a whole module list: transformer_blocks, up_blocks
            chosen.update(n for n in available if n.startswith(item + "["))
        else:
            raise LayerError(f"unknown layer '{item}'{did_you_mean(item, ['all', 'paper', *blocks, *available])}; "
                             f"'sdaudit layers --model MODEL' lists the model's {len(available)} layers and "
                             f"{len(blocks)} blocks")
    return [n for n in available if n in chosen]
