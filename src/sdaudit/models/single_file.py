"""Loading one Stable Diffusion checkpoint file in the original (LDM / CompVis) layout.

A single ``.safetensors`` or ``.ckpt`` file as distributed for SD-1.x / SD-2.x holds the U-Net
(``model.diffusion_model.*``), the VAE (``first_stage_model.*``) and the text encoder
(``cond_stage_model.transformer.*`` for SD-1's CLIP ViT-L, ``cond_stage_model.model.*`` for SD-2's
OpenCLIP ViT-H). The weights are converted with diffusers' own single-file conversion functions
(``diffusers.loaders.single_file_utils``); the configs always come from this machine, so nothing
here touches the network:

* ``config='sd15'`` / ``'sd21'`` (or ``'tiny'``): the configs bundled with sdaudit;
* ``config=<folder>``: a local diffusers pipeline folder (``unet/config.json`` required; ``vae/``,
  ``text_encoder/``, ``scheduler/`` and ``tokenizer/`` used when present);
* ``config=<owner/name>``: a diffusers repo already in the Hugging Face cache (never fetched);
* ``config=None``: inferred from the checkpoint's tensor shapes. Shapes that match SD-1.x, SD-2.x or
  sdaudit's ``tiny`` model get that model's exact configs; other shapes get a config inferred from
  the shapes, with the hyperparameters that no shape reveals (attention heads, GroupNorm groups)
  guessed by SD's conventions and a warning.

The tokenizer is not in the file: it comes from the config folder's ``tokenizer/``, else from the
Hugging Face cache (offline), else the bundled byte-level tokenizer when the text encoder is
``tiny``'s; otherwise :class:`~sdaudit.models.load.ModelNotAvailableError` says what is missing.
"""

from __future__ import annotations

import inspect
import json
import logging
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import UsageError
from .load import ModelNotAvailableError

logger = logging.getLogger(__name__)

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIXES = ("first_stage_model.", "vae.")
CLIP_PREFIX = "cond_stage_model.transformer."  # SD-1: Hugging Face CLIPTextModel
OPEN_CLIP_PREFIX = "cond_stage_model.model."  # SD-2: OpenCLIP text tower
TINY_VOCAB_SIZE = 514

# Hugging Face repos whose cached copy holds the right tokenizer, tried in order (offline only).
SD1_TOKENIZER_SOURCES: list[tuple[str, str]] = [
    ("openai/clip-vit-large-patch14", ""),
    ("stable-diffusion-v1-5/stable-diffusion-v1-5", "tokenizer"),
    ("runwayml/stable-diffusion-v1-5", "tokenizer"),
    ("CompVis/stable-diffusion-v1-4", "tokenizer"),
]
SD2_TOKENIZER_SOURCES: list[tuple[str, str]] = [
    ("stabilityai/stable-diffusion-2-1", "tokenizer"),
    ("stabilityai/stable-diffusion-2", "tokenizer"),
    ("stabilityai/stable-diffusion-2-1-base", "tokenizer"),
    ("stabilityai/stable-diffusion-2-base", "tokenizer"),
    ("stabilityai/sd-turbo", "tokenizer"),
]

_FAMILY_ALIASES = {"sd15": "sd15", "sd1": "sd15", "sd14": "sd15", "v1": "sd15",
                   "sd21": "sd21", "sd2": "sd21", "sd20": "sd21", "v2": "sd21", "tiny": "tiny"}
_CONFIG_HELP = "'sd15', 'sd21', 'tiny', a local diffusers pipeline folder, or a diffusers repo id in the Hugging Face cache"
_TEXT_CONFIG_DROP = ("architectures", "model_type", "torch_dtype", "dtype", "transformers_version", "_name_or_path",
                     "_commit_hash")
# Converted text-encoder keys that CLIPTextModel has no parameter for (OpenCLIP's projection, old buffers).
_TEXT_KEYS_IGNORED = re.compile(r"(^|\.)(position_ids|text_projection\.weight|logit_scale)$")


# --------------------------------------------------------------------------------------------
# Reading the file
# --------------------------------------------------------------------------------------------


class _Checkpoint:
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
        """The tensors whose names start with ``prefix`` (names kept whole)."""
        keys = [k for k in self.shapes if k.startswith(prefix)]
        if self._state is not None:
            return {k: self._state[k] for k in keys}
        from safetensors import safe_open

        with safe_open(str(self.path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in keys}


# --------------------------------------------------------------------------------------------
# What the shapes say
# --------------------------------------------------------------------------------------------


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


def _check_sd_checkpoint(shapes: Mapping[str, tuple], source: str) -> None:
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


def _infer_unet(shapes: Mapping[str, tuple], source: str) -> dict:
    """The U-Net config fields that tensor shapes determine (LDM ``model.diffusion_model.*`` keys)."""
    s = _strip(shapes, UNET_PREFIX)
    what = "U-Net"
    if any(k.startswith("label_emb.") for k in s):
        raise UsageError(f"'{source}': the U-Net has class or size embeddings (label_emb.*: SDXL, upscaler or "
                         "unCLIP); single-file loading supports Stable Diffusion 1.x/2.x only")
    conv_in = _need(s, "input_blocks.0.0.weight", what, source)
    n_in = len(_indices(s, r"input_blocks\.(\d+)\."))
    downs = [i for i in range(1, n_in) if f"input_blocks.{i}.0.op.weight" in s]
    lpb = (downs[0] - 1) if downs else n_in - 1
    levels = len(downs) + 1
    if lpb < 1 or n_in != 1 + levels * lpb + len(downs):
        raise UsageError(f"'{source}': unsupported U-Net layout ({n_in} input blocks, downsamplers at {downs})")
    block_out, down_types, depth = [], [], []
    for level in range(levels):
        i = 1 + level * (lpb + 1)
        block_out.append(int(_need(s, f"input_blocks.{i}.0.out_layers.3.weight", what, source)[0]))
        attn = f"input_blocks.{i}.1.proj_in.weight" in s
        down_types.append("CrossAttnDownBlock2D" if attn else "DownBlock2D")
        depth.append(len(_indices(s, rf"input_blocks\.{i}\.1\.transformer_blocks\.(\d+)\.")) if attn else 1)
    up_types = []
    n_out = len(_indices(s, r"output_blocks\.(\d+)\."))
    if n_out != levels * (lpb + 1):
        raise UsageError(f"'{source}': unsupported U-Net layout ({n_out} output blocks for {levels} levels of {lpb})")
    for level in range(levels):
        attn = f"output_blocks.{level * (lpb + 1)}.1.proj_in.weight" in s
        up_types.append("CrossAttnUpBlock2D" if attn else "UpBlock2D")
    _need(s, "middle_block.1.proj_in.weight", "U-Net mid-block attention", source)
    to_k = sorted(k for k in s if k.endswith("attn2.to_k.weight"))
    proj_in = sorted(k for k in s if k.endswith(".proj_in.weight"))
    if int(conv_in[0]) != block_out[0]:
        raise UsageError(f"'{source}': unsupported U-Net layout (conv_in has {conv_in[0]} channels, the first block "
                         f"{block_out[0]})")
    return {
        "in_channels": int(conv_in[1]),
        "out_channels": int(_need(s, "out.2.weight", what, source)[0]),
        "block_out_channels": block_out,
        "layers_per_block": lpb,
        "down_block_types": down_types,
        "up_block_types": up_types,
        "cross_attention_dim": int(s[to_k[0]][1]) if to_k else None,
        "use_linear_projection": len(s[proj_in[0]]) == 2 if proj_in else False,
        "transformer_layers_per_block": depth[0] if len(set(depth)) == 1 else depth,
    }


def _vae_prefix(shapes: Mapping[str, tuple]) -> str | None:
    for prefix in VAE_PREFIXES:
        if f"{prefix}encoder.conv_in.weight" in shapes:
            return prefix
    return None


def _infer_vae(shapes: Mapping[str, tuple], prefix: str, source: str) -> dict:
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


def _text_layout(shapes: Mapping[str, tuple]) -> str | None:
    if any(k.startswith(CLIP_PREFIX) for k in shapes):
        return "clip"
    if f"{OPEN_CLIP_PREFIX}token_embedding.weight" in shapes:
        return "open_clip"
    return None


def _infer_text(shapes: Mapping[str, tuple], layout: str, source: str) -> dict:
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


# --------------------------------------------------------------------------------------------
# Configs: templates, folders, comparison, guesses
# --------------------------------------------------------------------------------------------

_UNET_SIGNATURE = ("in_channels", "out_channels", "block_out_channels", "layers_per_block", "down_block_types",
                   "up_block_types", "cross_attention_dim", "use_linear_projection", "transformer_layers_per_block")
_VAE_SIGNATURE = ("in_channels", "out_channels", "block_out_channels", "layers_per_block", "latent_channels")
_TEXT_SIGNATURE = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "max_position_embeddings")


def _norm(value):
    if isinstance(value, (list, tuple)):
        return [_norm(v) for v in value]
    return value


def _class_defaults(cls) -> dict:
    return {k: p.default for k, p in inspect.signature(cls.__init__).parameters.items()
            if p.default is not inspect.Parameter.empty}


def _signature(component: str, config: Mapping, fields=None) -> dict:
    """The shape-determined fields of a component config, with the class defaults filled in."""
    if component == "unet":
        from diffusers import UNet2DConditionModel

        full, names = {**_class_defaults(UNet2DConditionModel), **config}, _UNET_SIGNATURE
    elif component == "vae":
        from diffusers import AutoencoderKL

        full, names = {**_class_defaults(AutoencoderKL), **config}, _VAE_SIGNATURE
    else:
        from transformers import CLIPTextConfig

        full, names = CLIPTextConfig(**_text_kwargs(config)).to_dict(), _TEXT_SIGNATURE
    out = {k: _norm(full.get(k)) for k in (fields or names)}
    if "layers_per_block" in out and isinstance(out["layers_per_block"], list) and len(set(out["layers_per_block"])) == 1:
        out["layers_per_block"] = out["layers_per_block"][0]
    depth = out.get("transformer_layers_per_block")
    if isinstance(depth, list) and len(set(depth)) == 1:
        out["transformer_layers_per_block"] = depth[0]
    return out


def _differences(component: str, config: Mapping, inferred: Mapping, fields=None) -> list[str]:
    want = _signature(component, config, fields)
    have = {k: _norm(inferred[k]) for k in want}
    return [f"{k} is {have[k]} in the checkpoint but {want[k]} in the config" for k in want if have[k] != want[k]]


def _text_kwargs(config: Mapping) -> dict:
    config = config.get("text_config", config) if isinstance(config.get("text_config"), Mapping) else config
    return {k: v for k, v in config.items() if k not in _TEXT_CONFIG_DROP}


def _templates() -> dict[str, dict]:
    """The architectures sdaudit knows exactly: bundled SD-1.5 / SD-2.1 configs and the tiny model."""
    from .offline import SD15_SCHEDULER_CONFIG, TINY_TEXT_CONFIG, TINY_UNET_CONFIG, TINY_VAE_CONFIG, read_arch_config

    out = {arch: {c: read_arch_config(arch, c) for c in ("unet", "vae", "text_encoder", "scheduler")}
           for arch in ("sd15", "sd21")}
    out["tiny"] = {"unet": dict(TINY_UNET_CONFIG), "vae": dict(TINY_VAE_CONFIG), "text_encoder": dict(TINY_TEXT_CONFIG),
                   "scheduler": {"_class_name": "PNDMScheduler", **SD15_SCHEDULER_CONFIG}}
    return out


def _read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _cached_repo_folder(repo_id: str) -> Path:
    """The folder of a diffusers repo in the local Hugging Face cache; never downloads."""
    from huggingface_hub import snapshot_download

    try:
        folder = Path(snapshot_download(repo_id, local_files_only=True))
    except Exception as error:  # noqa: BLE001 - not cached, in whatever way the hub says it
        raise ModelNotAvailableError(
            f"single-file config '{repo_id}' is not in the local Hugging Face cache ({type(error).__name__}); sdaudit "
            f"never downloads configs for single files. Pass {_CONFIG_HELP}.") from None
    if not (folder / "unet" / "config.json").is_file():
        raise UsageError(f"single-file config '{repo_id}' (cached at {folder}) has no unet/config.json; expected a "
                         "diffusers Stable Diffusion pipeline repo")
    return folder


def _config_source(config) -> tuple[str | None, Path | None]:
    """('sd15' | 'sd21' | 'tiny' | None, diffusers folder | None) for the ``config`` argument."""
    if config is None:
        return None, None
    text = str(config).strip()
    family = _FAMILY_ALIASES.get(re.sub(r"[\s._\-]", "", text).lower())
    if family is not None:
        return family, None
    path = Path(text).expanduser()
    if path.exists():
        if not path.is_dir():
            raise UsageError(f"single-file config '{text}' is a file; expected {_CONFIG_HELP}")
        if not (path / "unet" / "config.json").is_file():
            raise UsageError(f"single-file config folder '{text}' has no unet/config.json; expected a diffusers pipeline "
                             "folder (model_index.json, unet/, vae/, text_encoder/, scheduler/, tokenizer/)")
        return None, path.resolve()
    if re.fullmatch(r"[\w.\-]+/[\w.\-]+", text) and not text.startswith((".", "/", "~")):
        return None, _cached_repo_folder(text)
    raise UsageError(f"unknown single-file config '{text}'; expected {_CONFIG_HELP}")


def _common_groups(channels) -> int:
    """The largest GroupNorm group count <= 32 that divides every channel count (SD uses 32)."""
    return max(g for g in range(1, 33) if all(c % g == 0 for c in channels))


def _guess_unet(inferred: dict) -> dict:
    heads = ([max(1, c // 64) for c in inferred["block_out_channels"]] if inferred["use_linear_projection"] else 8)
    return {"_class_name": "UNet2DConditionModel", **inferred, "sample_size": 64,
            "norm_num_groups": _common_groups(inferred["block_out_channels"]), "attention_head_dim": heads}


def _guess_vae(inferred: dict) -> dict:
    return {"_class_name": "AutoencoderKL", **inferred, "norm_num_groups": _common_groups(inferred["block_out_channels"]),
            "sample_size": 512, "scaling_factor": 0.18215}


def _guess_text(inferred: dict, layout: str) -> dict:
    vocab = inferred["vocab_size"]
    ids = (dict(bos_token_id=0, eos_token_id=2, pad_token_id=1) if vocab == 49408  # as in SD's diffusers configs
           else dict(bos_token_id=vocab - 2, eos_token_id=vocab - 1, pad_token_id=vocab - 1))
    return {**inferred, "num_attention_heads": max(1, inferred["hidden_size"] // 64), "layer_norm_eps": 1e-5,
            "hidden_act": "quick_gelu" if layout == "clip" else "gelu", "projection_dim": inferred["hidden_size"], **ids}


@dataclass
class _Plan:
    """Where each component's config (and, rarely, weights) comes from."""

    source: str
    family: str | None
    folder: Path | None
    unet: dict
    vae: dict | None
    text: dict | None
    text_layout: str | None
    vae_prefix: str | None
    scheduler: dict
    guessed: list[str] = field(default_factory=list)


def _plan(shapes: Mapping[str, tuple], config=None, source: str = "<checkpoint>", global_step: int | None = None) -> _Plan:
    """Decide every component's config from the checkpoint's shapes and the ``config`` argument."""
    _check_sd_checkpoint(shapes, source)
    unet_inferred = _infer_unet(shapes, source)
    vae_prefix = _vae_prefix(shapes)
    vae_inferred = _infer_vae(shapes, vae_prefix, source) if vae_prefix else None
    layout = _text_layout(shapes)
    text_inferred = _infer_text(shapes, layout, source) if layout else None
    templates = _templates()
    family, folder = _config_source(config)
    guessed: list[str] = []

    def mismatch(component: str, differences: list[str], where: str) -> ValueError:
        return ValueError(f"'{source}' does not fit the {component} config of {where}: " + "; ".join(differences)
                          + f". Pass a matching config ({_CONFIG_HELP}), or none to infer it from the file.")

    if folder is not None:
        where = f"config folder '{folder}'"
        unet = _read_json(folder / "unet" / "config.json")
        if diffs := _differences("unet", unet, unet_inferred):
            raise mismatch("U-Net", diffs, where)
        given = {"vae": _read_json(folder / "vae" / "config.json"),
                 "text_encoder": _read_json(folder / "text_encoder" / "config.json")}
        scheduler = _read_json(folder / "scheduler" / "scheduler_config.json")
        family = next((f for f in ("sd15", "sd21", "tiny") if not _differences("unet", templates[f]["unet"], unet_inferred)),
                      None)
    elif family is not None:
        where = f"the bundled '{family}' config"
        unet = dict(templates[family]["unet"])
        if diffs := _differences("unet", unet, unet_inferred):
            raise mismatch("U-Net", diffs, where)
        given = {"vae": templates[family]["vae"], "text_encoder": templates[family]["text_encoder"]}
        scheduler = dict(templates[family]["scheduler"])
    else:
        core = [f for f in _UNET_SIGNATURE if f not in ("in_channels", "out_channels")]
        family = next((f for f in ("sd15", "sd21", "tiny")
                       if not _differences("unet", templates[f]["unet"], unet_inferred, core)), None)
        if family is not None:
            where = f"the bundled '{family}' config (inferred from the weights)"
            unet = dict(templates[family]["unet"])
            for key in ("in_channels", "out_channels"):  # e.g. inpainting models: 9 input channels
                if _signature("unet", unet, [key])[key] != unet_inferred[key]:
                    unet[key] = unet_inferred[key]
        else:
            where = "a config inferred from the weights"
            unet = _guess_unet(unet_inferred)
            guessed.append("U-Net attention heads, GroupNorm groups and sample size")
        given = {"vae": None, "text_encoder": None}
        scheduler = None

    def pick(component: str, inferred: dict | None, guess):
        if inferred is None:
            return None
        if given[component] is not None:
            if diffs := _differences(component, given[component], inferred):
                raise mismatch({"vae": "VAE", "text_encoder": "text-encoder"}[component], diffs, where)
            return dict(given[component])
        order = [family] + [f for f in ("sd15", "sd21", "tiny") if f != family] if family else ["sd15", "sd21", "tiny"]
        for name in order:
            if not _differences(component, templates[name][component], inferred):
                return dict(templates[name][component])
        guessed.append({"vae": "VAE GroupNorm groups and scaling factor",
                        "text_encoder": "text-encoder attention heads and token ids"}[component])
        return guess(inferred)

    vae = pick("vae", vae_inferred, _guess_vae)
    text = pick("text_encoder", text_inferred, lambda inferred: _guess_text(inferred, layout))
    if scheduler is None:
        scheduler = dict(templates[family or "sd15"]["scheduler"])
        if family == "sd21" and global_step == 875000:
            scheduler["prediction_type"] = "epsilon"  # SD-2-base, by the same global-step rule as diffusers
    if guessed:
        warnings.warn(f"'{source}' does not match a known architecture (sd15, sd21, tiny); its config was inferred from "
                      f"the tensor shapes and these hyperparameters were guessed by Stable Diffusion's conventions: "
                      f"{'; '.join(guessed)}. The representations may differ from the original model's: pass the "
                      f"model's diffusers folder as the single-file config to be exact.", UserWarning, stacklevel=3)
    return _Plan(source=where, family=family, folder=folder, unet=unet, vae=vae, text=text, text_layout=layout,
                 vae_prefix=vae_prefix, scheduler=scheduler, guessed=guessed)


# --------------------------------------------------------------------------------------------
# Building the components
# --------------------------------------------------------------------------------------------


def _empty_init():
    """Parameters on the meta device while a model is constructed (buffers stay real), if accelerate is there."""
    try:
        from accelerate import init_empty_weights
    except ImportError:  # pragma: no cover - accelerate is optional
        from contextlib import nullcontext

        return nullcontext()
    return init_empty_weights()


def _assign(model: torch.nn.Module, state: dict[str, torch.Tensor], dtype: torch.dtype, what: str, plan: _Plan,
            ckpt: _Checkpoint) -> torch.nn.Module:
    """Load ``state`` into ``model`` strictly, floating tensors in ``dtype``.

    Every tensor is copied: safetensors and zip-format torch checkpoints hand out views of a
    private memory map of the file, and no parameter may change (or fault) when the file does.
    """
    source = ckpt.name

    def own(v: torch.Tensor) -> torch.Tensor:
        if v.is_floating_point():
            return v.to(dtype=dtype, copy=True, memory_format=torch.contiguous_format)
        return v.clone(memory_format=torch.contiguous_format)

    state = {k: own(v) for k, v in state.items()}
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as error:
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        raise UsageError(f"'{source}': the {what} weights do not fit {plan.source}: " + " ".join(lines[1:4])[:1500]
                         + f". Pass a matching config ({_CONFIG_HELP}).") from None
    return model.eval()


def _build_unet(ckpt: _Checkpoint, plan: _Plan, dtype: torch.dtype):
    from diffusers import UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    if any(k.startswith("model_ema.") for k in ckpt.shapes):
        logger.warning("'%s' holds EMA weights too; as diffusers' from_single_file does by default, the non-EMA U-Net "
                       "weights (model.diffusion_model.*) are loaded", ckpt.name)
    state = convert_ldm_unet_checkpoint(ckpt.tensors(UNET_PREFIX), dict(plan.unet))
    with _empty_init():
        model = UNet2DConditionModel.from_config(plan.unet)
    return _assign(model, state, dtype, "U-Net", plan, ckpt)


def _build_vae(ckpt: _Checkpoint, plan: _Plan):
    from diffusers import AutoencoderKL
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    if plan.vae is None:
        if plan.folder is not None and (plan.folder / "vae").is_dir():
            return AutoencoderKL.from_pretrained(str(plan.folder), subfolder="vae", local_files_only=True).eval()
        raise UsageError(f"'{ckpt.name}' has no VAE weights (keys starting with 'first_stage_model.'); pass a diffusers "
                         "folder with a vae/ subfolder as the single-file config to take the VAE from there")
    state = convert_ldm_vae_checkpoint(ckpt.tensors(plan.vae_prefix), dict(plan.vae))
    with _empty_init():
        model = AutoencoderKL.from_config(plan.vae)
    return _assign(model, state, torch.float32, "VAE", plan, ckpt)


def _build_text_encoder(ckpt: _Checkpoint, plan: _Plan, dtype: torch.dtype):
    from diffusers.loaders.single_file_utils import convert_ldm_clip_checkpoint, convert_open_clip_checkpoint
    from transformers import CLIPTextConfig, CLIPTextModel

    if plan.text is None:
        if plan.folder is not None and (plan.folder / "text_encoder").is_dir():
            model = CLIPTextModel.from_pretrained(str(plan.folder), subfolder="text_encoder", local_files_only=True)
            return model.to(dtype).eval()
        raise UsageError(f"'{ckpt.name}' has no text-encoder weights (keys starting with '{CLIP_PREFIX}' or "
                         f"'{OPEN_CLIP_PREFIX}'); pass a diffusers folder with a text_encoder/ subfolder as the "
                         "single-file config to take the text encoder from there")
    with _empty_init():
        model = CLIPTextModel(CLIPTextConfig(**_text_kwargs(plan.text)))
    if plan.text_layout == "clip":
        state = convert_ldm_clip_checkpoint(ckpt.tensors(CLIP_PREFIX))
    else:
        state = convert_open_clip_checkpoint(model, ckpt.tensors(OPEN_CLIP_PREFIX), prefix=OPEN_CLIP_PREFIX)
    # CLIPTextModel lost its `text_model` wrapper in recent transformers; match whichever this one has
    wrapped = hasattr(model, "text_model")
    state = {("text_model." if wrapped else "") + k.removeprefix("text_model."): v for k, v in state.items()}
    state = {k: v for k, v in state.items() if not _TEXT_KEYS_IGNORED.search(k)}
    return _assign(model, state, dtype, "text-encoder", plan, ckpt)


def _cached_tokenizer_folder(repo: str, subfolder: str) -> Path | None:
    """The folder of a CLIP tokenizer (vocab.json + merges.txt) in the local Hugging Face cache, if there."""
    from huggingface_hub import try_to_load_from_cache

    files = []
    for name in ("vocab.json", "merges.txt"):
        found = try_to_load_from_cache(repo, f"{subfolder}/{name}" if subfolder else name)
        if not isinstance(found, str):
            return None
        files.append(Path(found))
    return files[0].parent if files[0].parent == files[1].parent else None


def _load_tokenizer(plan: _Plan, source: str):
    """The tokenizer that goes with the text encoder, found offline, or a ModelNotAvailableError.

    (transformers 5's ``CLIPTokenizer.from_pretrained`` returns an empty 2-token tokenizer instead
    of failing when the files are absent, so every source is checked for its files and its size.)
    """
    from transformers import AutoTokenizer, CLIPTokenizer

    vocab = int(plan.text.get("vocab_size", 49408)) if plan.text else None
    folder = plan.folder / "tokenizer" if plan.folder is not None else None
    if folder is not None and folder.is_dir():
        if not any((folder / name).is_file() for name in ("tokenizer.json", "vocab.json")):
            raise UsageError(f"the tokenizer folder '{folder}' holds no tokenizer.json or vocab.json")
        tokenizer = AutoTokenizer.from_pretrained(str(plan.folder), subfolder="tokenizer", local_files_only=True)
        if vocab is not None and len(tokenizer) > vocab:
            raise UsageError(f"the tokenizer in '{folder}' has {len(tokenizer)} tokens but the text encoder of "
                             f"'{source}' only {vocab}; they do not belong together")
        return tokenizer
    if vocab == TINY_VOCAB_SIZE:
        from .offline import load_tokenizer_tiny

        return load_tokenizer_tiny()
    sd2 = plan.text_layout == "open_clip" or (plan.text is None and plan.family == "sd21")
    sources = SD2_TOKENIZER_SOURCES if sd2 else SD1_TOKENIZER_SOURCES
    tried = []
    for repo, subfolder in sources:
        label = f"{repo}{'/' + subfolder if subfolder else ''}"
        cached = _cached_tokenizer_folder(repo, subfolder)
        if cached is None:
            tried.append(f"{label} (not cached)")
            continue
        try:
            tokenizer = CLIPTokenizer.from_pretrained(str(cached), local_files_only=True)
        except Exception as error:  # noqa: BLE001 - a broken cache entry: try the next source
            tried.append(f"{label} ({type(error).__name__})")
            continue
        if vocab is None or len(tokenizer) == vocab:
            return tokenizer
        tried.append(f"{label} (has {len(tokenizer)} tokens, the text encoder {vocab})")
    kind = "SD-2 OpenCLIP ViT-H/14" if sd2 else "SD-1 CLIP ViT-L/14"
    repo, subfolder = sources[0]
    include = f"'{subfolder}/*'" if subfolder else "'*.json' '*.txt'"
    raise ModelNotAvailableError(
        f"the tokenizer for '{source}' is not on this machine: the checkpoint holds an {kind} text encoder "
        f"(vocabulary {vocab}) but no tokenizer, and none of these Hugging Face repos is in the local cache: "
        f"{', '.join(tried)}. Provide it in one of two ways:\n"
        f"  * pass a diffusers pipeline folder that has a tokenizer/ subfolder as the single-file config "
        f"(single_file_config=FOLDER), e.g. the model's own diffusers folder;\n"
        f"  * or download the tokenizer once where there is internet access,\n"
        f"        huggingface-cli download {repo} --include {include}\n"
        f"    and copy the Hugging Face cache (~/.cache/huggingface) to this machine.")


def _build_scheduler(plan: _Plan):
    import diffusers

    cls = getattr(diffusers, plan.scheduler.get("_class_name", "PNDMScheduler"), diffusers.PNDMScheduler)
    return cls.from_config({k: v for k, v in plan.scheduler.items() if not k.startswith("_")})


# --------------------------------------------------------------------------------------------
# Entry points (called from sdaudit.models.load)
# --------------------------------------------------------------------------------------------


def single_file_unet_config(path: str, config: str | None = None) -> dict:
    """The U-Net config of a single checkpoint file, read from tensor shapes (safetensors: header only).

    Args:
        path: ``.safetensors`` / ``.ckpt`` file in the original Stable Diffusion layout.
        config: 'sd15', 'sd21', 'tiny', a diffusers folder, a cached repo id, or None to infer.

    Raises:
        ValueError: the file is missing, unreadable, not an SD checkpoint, or does not fit ``config``.
    """
    ckpt = _Checkpoint(path)
    return dict(_plan(ckpt.shapes, config, ckpt.name, ckpt.global_step).unet)


def load_single_file(path: str, config: str | None = None, torch_dtype=torch.float32) -> dict:
    """Load the components of one original-layout Stable Diffusion checkpoint file, offline.

    Returns ``{"unet", "vae", "text_encoder", "tokenizer", "scheduler"}`` like
    :func:`sdaudit.models.offline.build_tiny`, on the CPU in eval mode. The U-Net and text encoder
    are in ``torch_dtype``, the VAE in float32 (as the folder loader makes it).

    Raises:
        ValueError: the file is missing, unreadable, not an SD checkpoint, or its weights do not
            fit ``config``.
        ModelNotAvailableError: the tokenizer (or a cached config repo) is not on this machine.
    """
    ckpt = _Checkpoint(path)
    plan = _plan(ckpt.shapes, config, ckpt.name, ckpt.global_step)
    tokenizer = _load_tokenizer(plan, ckpt.name)  # before the heavy part: fail fast
    parts = {
        "unet": _build_unet(ckpt, plan, torch_dtype),
        "vae": _build_vae(ckpt, plan),
        "text_encoder": _build_text_encoder(ckpt, plan, torch_dtype),
        "tokenizer": tokenizer,
        "scheduler": _build_scheduler(plan),
    }
    for module in (parts["unet"], parts["vae"], parts["text_encoder"]):
        module.requires_grad_(False)
    return parts
