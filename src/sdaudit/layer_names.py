"""Layer-name helpers that need no torch: block, kind, spellings and storage keys of a layer name.

Names follow the paper: module paths with list indices in brackets (``up_blocks[1].upsamplers[0]``).
"""

from __future__ import annotations

import re


def block_of(name: str) -> str:
    """The block a layer belongs to: ``up_blocks[1].resnets[0]`` -> ``up_blocks[1]``."""
    return name.split(".")[0]


def kind_of(name: str) -> str:
    """Short layer kind used on plot axes: conv, res, attn, down or up."""
    last = name.split(".")[-1]
    for prefix, kind in (("resnets", "res"), ("attentions", "attn"), ("downsamplers", "down"), ("upsamplers", "up")):
        if last.startswith(prefix):
            return kind
    return "conv"


def normalize_name(name: str) -> str:
    """Accept diffusers' dotted spelling too: ``down_blocks.1.attentions.0`` -> ``down_blocks[1].attentions[0]``."""
    name = name.strip().replace(" ", "")
    return re.sub(r"\.(\d+)(?=\.|$)", r"[\1]", name)


def store_key(name: str) -> str:
    """The layer's key in a store: diffusers' dotted module path (``down_blocks.1.attentions.0``)."""
    return re.sub(r"\[(\d+)\]", r".\1", name)


def norm_key(layer: str) -> str:
    """Key of a layer's norm maps in an audit's maps.npz: ``"norm__"`` + the name with every run of
    ``[``, ``]``, ``.`` replaced by one ``_`` (``up_blocks[1].upsamplers[0]`` -> ``norm__up_blocks_1_upsamplers_0``)."""
    return "norm__" + re.sub(r"[\[\].]+", "_", layer).strip("_")
