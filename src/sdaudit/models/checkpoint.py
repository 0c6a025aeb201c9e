"""What a single Stable Diffusion checkpoint file holds: its tensors, and what their shapes say.

A single ``.safetensors`` or ``.ckpt`` file as distributed for SD-1.x / SD-2.x holds the U-Net
(``model.diffusion_model.*``), the VAE (``first_stage_model.*``) and the text encoder
(``cond_stage_model.transformer.*`` for SD-1's CLIP ViT-L, ``cond_stage_model.model.*`` for SD-2's
OpenCLIP ViT-H). :class:`Checkpoint` reads names and shapes up front (a safetensors header only)
and tensors on demand; the ``infer_*`` functions read the config fields that shapes determine
(the shape-inference fallback for architectures diffusers' model-type inference does not know).
Every error names the file.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import torch

from ..errors import UsageError

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIXES = ("first_stage_model.", "vae.")
CLIP_PREFIX = "cond_stage_model.transformer."  # SD-1: Hugging Face CLIPTextModel
OPEN_CLIP_PREFIX = "cond_stage_model.model."  # SD-2: OpenCLIP text tower


class Checkpoint:
    """One checkpoint file: tensor names and shapes up front, tensors on demand.

    safetensors files are read lazily (the header gives the shapes); torch pickles are opened
    with ``torch.load(weights_only=True)`` (memory-mapped when they are zip archives) and
    unwrapped from nested ``"state_dict"`` entries.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path).expanduser()
        self.name = str(path)
        self.global_step: int | None = None
        self._state: dict[str, torch.Tensor] | None = None
        if not self.path.exists():
            raise UsageError(f"checkpoint file '{self.name}' does not exist")
        if self.path.is_dir():
            raise UsageError(f"'{self.name}' is a folder, not a checkpoint file (for a diffusers folder, pass the "
                             "folder itself as the model)")
        size = self.path.stat().st_size
        if size == 0:
            raise UsageError(f"checkpoint file '{self.name}' is empty")
        with open(self.path, "rb") as f:
            head = f.read(9)
        header_len = int.from_bytes(head[:8], "little") if len(head) >= 9 else -1
        if len(head) >= 9 and head[8:9] == b"{" and 0 < header_len <= size - 8:
            self.kind = "safetensors"
            self.shapes = self._safetensors_shapes()
        else:
            self.kind = "torch"
            self._state = self._torch_load(zipped=head[:4] == b"PK\x03\x04")
            self.shapes = {k: tuple(v.shape) for k, v in self._state.items()}
        if not self.shapes:
            raise UsageError(f"checkpoint file '{self.name}' holds no tensors; expected a Stable Diffusion checkpoint")

    def _safetensors_shapes(self) -> dict[str, tuple[int, ...]]:
        from safetensors import safe_open

        try:
            with safe_open(str(self.path), framework="pt") as f:
                return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
        except Exception as error:  # noqa: BLE001 - any parse error means a broken file
            raise UsageError(f"'{self.name}' is not a readable .safetensors file ({type(error).__name__}: {error}); "
                             "expected a Stable Diffusion checkpoint") from None

    def _torch_load(self, zipped: bool) -> dict[str, torch.Tensor]:
        try:
            obj = torch.load(str(self.path), map_location="cpu", weights_only=True, mmap=zipped)
        except Exception as error:  # noqa: BLE001 - unpickling fails in many ways
            text = str(error)
            if "weights only load failed" in text.lower() or "weights_only" in text:
                raise UsageError(
                    f"'{self.name}' holds Python objects besides tensors that torch.load(weights_only=True) refuses to "
                    "unpickle (sdaudit never unpickles arbitrary objects). If you trust the file, convert its weights "
                    "to .safetensors once, e.g.\n"
                    "    python -c \"import torch, safetensors.torch as st; c = torch.load('IN.ckpt', weights_only=False); "
                    "c = c.get('state_dict', c); st.save_file({k: v.contiguous() for k, v in c.items() "
                    "if isinstance(v, torch.Tensor)}, 'OUT.safetensors')\"\n"
                    f"({type(error).__name__}: {text.splitlines()[0] if text else ''})") from None
            raise UsageError(f"'{self.name}' is neither a safetensors file nor a PyTorch checkpoint that torch.load can "
                             f"read ({type(error).__name__}: {text.splitlines()[0] if text else ''}); expected a Stable "
                             "Diffusion .safetensors or .ckpt file") from None
        if isinstance(obj, Mapping) and isinstance(obj.get("global_step"), int):
            self.global_step = int(obj["global_step"])
        while isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
            obj = obj["state_dict"]
        if not isinstance(obj, Mapping):
            raise UsageError(f"'{self.name}' holds a {type(obj).__name__}, not a state dict of tensors; expected a "
                             "Stable Diffusion checkpoint")
        return {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}

    def tensors(self, prefix: str) -> dict[str, torch.Tensor]:
        """The tensors whose names start with ``prefix`` (names kept whole), as copies.

        Copies, because safetensors and zip-format torch checkpoints hand out views of a private
        memory map of the file, and no loaded parameter may change (or fault) when the file does.
        """
        keys = [k for k in self.shapes if k.startswith(prefix)]
        if self._state is not None:
            return {k: self._state[k].clone(memory_format=torch.contiguous_format) for k in keys}
        from safetensors import safe_open

        with safe_open(str(self.path), framework="pt") as f:
            return {k: f.get_tensor(k).clone(memory_format=torch.contiguous_format) for k in keys}



def _strip(shapes: Mapping[str, tuple], prefix: str) -> dict[str, tuple]:
    return {k[len(prefix):]: tuple(v) for k, v in shapes.items() if k.startswith(prefix)}


def _indices(keys, pattern: str) -> list[int]:
    """Sorted distinct integers captured by ``pattern`` (a regex with one group) at the start of keys."""
    rx = re.compile(pattern)
    return sorted({int(m.group(1)) for k in keys if (m := rx.match(k))})


def _need(s: Mapping[str, tuple], key: str, what: str, source: str) -> tuple:
    if key not in s:
        raise UsageError(f"'{source}': the {what} weights lack '{key}'; the file is incomplete or not a Stable "
                         "Diffusion 1.x/2.x checkpoint in the original layout")
    return s[key]


def check_sd_checkpoint(shapes: Mapping[str, tuple], source: str) -> None:
    """Raise a ValueError that says what the file is if it is not an SD-1/2 LDM checkpoint."""
    if any(k.startswith(UNET_PREFIX) for k in shapes):
        if any(k.startswith("conditioner.embedders.") for k in shapes):
            raise UsageError(f"'{source}' is an SDXL-style checkpoint (conditioner.embedders.*); single-file loading "
                             "supports Stable Diffusion 1.x/2.x only: convert it to a diffusers folder and pass that")
        return
    examples = ", ".join(sorted(shapes)[:3])
    if any(k.startswith(("down_blocks.", "up_blocks.", "mid_block.")) for k in shapes):
        hint = (" Its keys look like a diffusers-format model; pass the diffusers pipeline folder that holds it "
                "instead of the weights file.")
    elif any(k.startswith("input_blocks.") for k in shapes):
        hint = (" It looks like a bare U-Net without the 'model.diffusion_model.' prefix and without VAE and text "
                "encoder; single-file loading needs a full checkpoint.")
    else:
        hint = ""
    raise UsageError(f"'{source}' is not a Stable Diffusion checkpoint in the original (LDM/CompVis) layout: it has no "
                     f"U-Net weights (keys starting with '{UNET_PREFIX}'); its {len(shapes)} tensors are named like "
                     f"{examples}.{hint}")


def infer_unet(shapes: Mapping[str, tuple], source: str) -> dict:
    """The U-Net config fields that tensor shapes determine (LDM ``model.diffusion_model.*`` keys)."""
    s = _strip(shapes, UNET_PREFIX)
    if any(k.startswith("label_emb.") for k in s):
        raise UsageError(f"'{source}': the U-Net has class or size embeddings (label_emb.*: SDXL, upscaler or "
                         "unCLIP); single-file loading supports Stable Diffusion 1.x/2.x only")
    conv_in = _need(s, "input_blocks.0.0.weight", "U-Net", source)
    levels, lpb = _unet_levels(s, source)
    block_out, down_types, depth = _down_blocks(s, levels, lpb, source)
    up_types = _up_block_types(s, levels, lpb, source)
    _need(s, "middle_block.1.proj_in.weight", "U-Net mid-block attention", source)
    to_k = sorted(k for k in s if k.endswith("attn2.to_k.weight"))
    proj_in = sorted(k for k in s if k.endswith(".proj_in.weight"))
    if int(conv_in[0]) != block_out[0]:
        raise UsageError(f"'{source}': unsupported U-Net layout (conv_in has {conv_in[0]} channels, the first block "
                         f"{block_out[0]})")
    return {
        "in_channels": int(conv_in[1]),
        "out_channels": int(_need(s, "out.2.weight", "U-Net", source)[0]),
        "block_out_channels": block_out,
        "layers_per_block": lpb,
        "down_block_types": down_types,
        "up_block_types": up_types,
        "cross_attention_dim": int(s[to_k[0]][1]) if to_k else None,
        "use_linear_projection": len(s[proj_in[0]]) == 2 if proj_in else False,
        "transformer_layers_per_block": depth[0] if len(set(depth)) == 1 else depth,
    }


def _unet_levels(s: Mapping[str, tuple], source: str) -> tuple[int, int]:
    """(resolution levels, layers per block), from where the input blocks' downsamplers sit."""
    n_in = len(_indices(s, r"input_blocks\.(\d+)\."))
    downs = [i for i in range(1, n_in) if f"input_blocks.{i}.0.op.weight" in s]
    lpb = (downs[0] - 1) if downs else n_in - 1
    levels = len(downs) + 1
    if lpb < 1 or n_in != 1 + levels * lpb + len(downs):
        raise UsageError(f"'{source}': unsupported U-Net layout ({n_in} input blocks, downsamplers at {downs})")
    return levels, lpb


def _down_blocks(s: Mapping[str, tuple], levels: int, lpb: int, source: str) -> tuple[list, list, list]:
    """Per level: output channels, down-block type (with or without cross-attention), transformer depth."""
    block_out, down_types, depth = [], [], []
    for level in range(levels):
        i = 1 + level * (lpb + 1)
        block_out.append(int(_need(s, f"input_blocks.{i}.0.out_layers.3.weight", "U-Net", source)[0]))
        attn = f"input_blocks.{i}.1.proj_in.weight" in s
        down_types.append("CrossAttnDownBlock2D" if attn else "DownBlock2D")
        depth.append(len(_indices(s, rf"input_blocks\.{i}\.1\.transformer_blocks\.(\d+)\.")) if attn else 1)
    return block_out, down_types, depth


def _up_block_types(s: Mapping[str, tuple], levels: int, lpb: int, source: str) -> list[str]:
    n_out = len(_indices(s, r"output_blocks\.(\d+)\."))
    if n_out != levels * (lpb + 1):
        raise UsageError(f"'{source}': unsupported U-Net layout ({n_out} output blocks for {levels} levels of {lpb})")
    return ["CrossAttnUpBlock2D" if f"output_blocks.{level * (lpb + 1)}.1.proj_in.weight" in s else "UpBlock2D"
            for level in range(levels)]


def vae_prefix(shapes: Mapping[str, tuple]) -> str | None:
    for prefix in VAE_PREFIXES:
        if f"{prefix}encoder.conv_in.weight" in shapes:
            return prefix
    return None


def infer_vae(shapes: Mapping[str, tuple], prefix: str, source: str) -> dict:
    s = _strip(shapes, prefix)
    what = "VAE"
    conv_in = _need(s, "encoder.conv_in.weight", what, source)
    levels = len(_indices(s, r"encoder\.down\.(\d+)\."))
    return {
        "in_channels": int(conv_in[1]),
        "out_channels": int(_need(s, "decoder.conv_out.weight", what, source)[0]),
        "block_out_channels": [int(_need(s, f"encoder.down.{i}.block.0.conv1.weight", what, source)[0])
                               for i in range(levels)],
        "layers_per_block": len(_indices(s, r"encoder\.down\.0\.block\.(\d+)\.")),
        "latent_channels": int(_need(s, "decoder.conv_in.weight", what, source)[1]),
        "down_block_types": ["DownEncoderBlock2D"] * levels,
        "up_block_types": ["UpDecoderBlock2D"] * levels,
    }


def text_layout(shapes: Mapping[str, tuple]) -> str | None:
    if any(k.startswith(CLIP_PREFIX) for k in shapes):
        return "clip"
    if f"{OPEN_CLIP_PREFIX}token_embedding.weight" in shapes:
        return "open_clip"
    return None


def infer_text(shapes: Mapping[str, tuple], layout: str, source: str) -> dict:
    what = "text-encoder"
    if layout == "clip":
        s = _strip(shapes, CLIP_PREFIX)
        s = {k.removeprefix("text_model."): v for k, v in s.items()}
        vocab, hidden = _need(s, "embeddings.token_embedding.weight", what, source)
        max_pos = _need(s, "embeddings.position_embedding.weight", what, source)[0]
        layers = _indices(s, r"encoder\.layers\.(\d+)\.")
        inter = _need(s, "encoder.layers.0.mlp.fc1.weight", what, source)[0]
    else:
        s = _strip(shapes, OPEN_CLIP_PREFIX)
        vocab, hidden = _need(s, "token_embedding.weight", what, source)
        max_pos = _need(s, "positional_embedding", what, source)[0]
        # diffusers drops OpenCLIP's last block (index 23 of ViT-H): SD-2 conditions on the penultimate layer
        layers = [i for i in _indices(s, r"transformer\.resblocks\.(\d+)\.") if i != 23]
        inter = _need(s, "transformer.resblocks.0.mlp.c_fc.weight", what, source)[0]
    if layers != list(range(len(layers))) or not layers:
        raise UsageError(f"'{source}': unsupported text-encoder layout (layers {layers})")
    return {"vocab_size": int(vocab), "hidden_size": int(hidden), "intermediate_size": int(inter),
            "num_hidden_layers": len(layers), "max_position_embeddings": int(max_pos)}

