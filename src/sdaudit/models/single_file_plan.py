"""Where each component's config comes from when loading a single checkpoint file (never from the network).

* ``config='sd15'`` / ``'sd21'`` (or ``'tiny'``): the configs bundled with sdaudit;
* ``config=<folder>``: a local diffusers pipeline folder (``unet/config.json`` required; ``vae/``,
  ``text_encoder/``, ``scheduler/`` and ``tokenizer/`` used when present);
* ``config=<owner/name>``: a diffusers repo already in the Hugging Face cache (never fetched);
* ``config=None``: diffusers' own model-type inference (``infer_diffusers_model_type``: ``v1`` is
  SD-1.x, ``v2`` SD-2.x) names the bundled config to try first; the shapes must fit it (diffusers
  calls any CLIP-conditioned file ``v1``, the tiny model too), else the other known architectures
  are tried, and shapes of no known model get a config inferred from the shapes, with the
  hyperparameters that no shape reveals (attention heads, GroupNorm groups) guessed by SD's
  conventions and a warning.
"""

from __future__ import annotations

import inspect
import json
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import UsageError
from .checkpoint import check_sd_checkpoint, infer_text, infer_unet, infer_vae, text_layout, vae_prefix
from .registry import ModelNotAvailableError

_FAMILY_ALIASES = {"sd15": "sd15", "sd1": "sd15", "sd14": "sd15", "v1": "sd15",
                   "sd21": "sd21", "sd2": "sd21", "sd20": "sd21", "v2": "sd21", "tiny": "tiny"}
CONFIG_HELP = "'sd15', 'sd21', 'tiny', a local diffusers pipeline folder, or a diffusers repo id in the Hugging Face cache"
_TEXT_CONFIG_DROP = ("architectures", "model_type", "torch_dtype", "dtype", "transformers_version", "_name_or_path",
                     "_commit_hash")

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

        full, names = CLIPTextConfig(**text_kwargs(config)).to_dict(), _TEXT_SIGNATURE
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


def text_kwargs(config: Mapping) -> dict:
    config = config.get("text_config", config) if isinstance(config.get("text_config"), Mapping) else config
    return {k: v for k, v in config.items() if k not in _TEXT_CONFIG_DROP}


def _templates() -> dict[str, dict]:
    """The architectures sdaudit knows exactly: bundled SD-1.5 / SD-2.1 configs and the tiny model."""
    from .offline import SD15_SCHEDULER_CONFIG, TINY_UNET_CONFIG
    from .offline_common import TINY_TEXT_CONFIG, TINY_VAE_CONFIG, read_arch_config

    out = {arch: {c: read_arch_config(arch, c) for c in ("unet", "vae", "text_encoder", "scheduler")}
           for arch in ("sd15", "sd21")}
    out["tiny"] = {"unet": dict(TINY_UNET_CONFIG), "vae": dict(TINY_VAE_CONFIG), "text_encoder": dict(TINY_TEXT_CONFIG),
                   "scheduler": {"_class_name": "PNDMScheduler", **SD15_SCHEDULER_CONFIG}}
    return out


def read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _cached_repo_folder(repo_id: str) -> Path:
    """The folder of a diffusers repo in the local Hugging Face cache; never downloads."""
    from huggingface_hub import snapshot_download

    try:
        folder = Path(snapshot_download(repo_id, local_files_only=True))
    except Exception as error:  # noqa: BLE001 - not cached, in whatever way the hub says it
        raise ModelNotAvailableError(
            f"single-file config '{repo_id}' is not in the local Hugging Face cache ({type(error).__name__}); sdaudit "
            f"never downloads configs for single files. Pass {CONFIG_HELP}.") from None
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
            raise UsageError(f"single-file config '{text}' is a file; expected {CONFIG_HELP}")
        if not (path / "unet" / "config.json").is_file():
            raise UsageError(f"single-file config folder '{text}' has no unet/config.json; expected a diffusers pipeline "
                             "folder (model_index.json, unet/, vae/, text_encoder/, scheduler/, tokenizer/)")
        return None, path.resolve()
    if re.fullmatch(r"[\w.\-]+/[\w.\-]+", text) and not text.startswith((".", "/", "~")):
        return None, _cached_repo_folder(text)
    raise UsageError(f"unknown single-file config '{text}'; expected {CONFIG_HELP}")


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


KNOWN = ("sd15", "sd21", "tiny")
_DIFFUSERS_MODEL_TYPES = {"v1": "sd15", "v2": "sd21"}  # diffusers' names for SD-1.x / SD-2.x checkpoints


def _known_order(shapes: Mapping[str, tuple]) -> list[str]:
    """The known architectures, the one diffusers' model-type inference names first.

    ``infer_diffusers_model_type`` reads key names and shapes only, so meta tensors (no memory) stand in
    for the weights. It calls every CLIP-conditioned file ``v1``, so the shapes still decide.
    """
    from diffusers.loaders.single_file_utils import infer_diffusers_model_type

    first = _DIFFUSERS_MODEL_TYPES.get(infer_diffusers_model_type({k: torch.empty(v, device="meta")
                                                                    for k, v in shapes.items()}))
    return ([first] if first else []) + [f for f in KNOWN if f != first]


@dataclass
class Plan:
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


@dataclass
class _Base:
    """The U-Net side of a plan: where its configs come from, the family, and what the other components must fit."""

    where: str  # for messages: "config folder '...'", "the bundled 'sd15' config", ...
    family: str | None
    unet: dict
    given: dict  # {"vae": config | None, "text_encoder": config | None}: configs the checkpoint must fit
    scheduler: dict | None


class _Planner:
    """Decides a checkpoint's component configs (see :func:`plan_components`)."""

    def __init__(self, shapes: Mapping[str, tuple], source: str):
        check_sd_checkpoint(shapes, source)
        self.unet_inferred = infer_unet(shapes, source)
        self.shapes, self.source, self.templates = shapes, source, _templates()
        self.guessed: list[str] = []

    def mismatch(self, component: str, differences: list[str], where: str) -> ValueError:
        return ValueError(f"'{self.source}' does not fit the {component} config of {where}: " + "; ".join(differences)
                          + f". Pass a matching config ({CONFIG_HELP}), or none to infer it from the file.")

    def _checked_unet(self, unet: dict, where: str) -> dict:
        if diffs := _differences("unet", unet, self.unet_inferred):
            raise self.mismatch("U-Net", diffs, where)
        return unet

    def from_folder(self, folder: Path) -> _Base:
        """The configs of a diffusers folder; the family is the known one its U-Net matches, if any."""
        where = f"config folder '{folder}'"
        unet = self._checked_unet(read_json(folder / "unet" / "config.json"), where)
        given = {"vae": read_json(folder / "vae" / "config.json"),
                 "text_encoder": read_json(folder / "text_encoder" / "config.json")}
        family = next((f for f in _known_order(self.shapes)
                       if not _differences("unet", self.templates[f]["unet"], self.unet_inferred)), None)
        return _Base(where, family, unet, given, read_json(folder / "scheduler" / "scheduler_config.json"))

    def from_bundled(self, family: str) -> _Base:
        """The bundled configs of ``family`` ('sd15', 'sd21', 'tiny'), named by the user."""
        where, template = f"the bundled '{family}' config", self.templates[family]
        unet = self._checked_unet(dict(template["unet"]), where)
        given = {"vae": template["vae"], "text_encoder": template["text_encoder"]}
        return _Base(where, family, unet, given, dict(template["scheduler"]))

    def inferred(self) -> _Base:
        """No config given: the known architecture the shapes fit (in/out channels may differ), else a guess."""
        core = [f for f in _UNET_SIGNATURE if f not in ("in_channels", "out_channels")]
        family = next((f for f in _known_order(self.shapes)
                       if not _differences("unet", self.templates[f]["unet"], self.unet_inferred, core)), None)
        given = {"vae": None, "text_encoder": None}
        if family is None:
            self.guessed.append("U-Net attention heads, GroupNorm groups and sample size")
            return _Base("a config inferred from the weights", None, _guess_unet(self.unet_inferred), given, None)
        unet = dict(self.templates[family]["unet"])
        for key in ("in_channels", "out_channels"):  # e.g. inpainting models: 9 input channels
            if _signature("unet", unet, [key])[key] != self.unet_inferred[key]:
                unet[key] = self.unet_inferred[key]
        return _Base(f"the bundled '{family}' config (inferred from the weights)", family, unet, given, None)

    def pick(self, base: _Base, component: str, inferred: dict | None, guess) -> dict | None:
        """A VAE or text-encoder config: the given one (which must fit), else the first known one that fits
        (the family's first), else guessed from the shapes."""
        if inferred is None:
            return None
        if base.given[component] is not None:
            if diffs := _differences(component, base.given[component], inferred):
                raise self.mismatch({"vae": "VAE", "text_encoder": "text-encoder"}[component], diffs, base.where)
            return dict(base.given[component])
        order = [base.family] + [f for f in KNOWN if f != base.family] if base.family else list(KNOWN)
        for name in order:
            if not _differences(component, self.templates[name][component], inferred):
                return dict(self.templates[name][component])
        self.guessed.append({"vae": "VAE GroupNorm groups and scaling factor",
                             "text_encoder": "text-encoder attention heads and token ids"}[component])
        return guess(inferred)

    def scheduler(self, base: _Base, global_step: int | None) -> dict:
        if base.scheduler is not None:
            return base.scheduler
        scheduler = dict(self.templates[base.family or "sd15"]["scheduler"])
        if base.family == "sd21" and global_step == 875000:
            scheduler["prediction_type"] = "epsilon"  # SD-2-base, by the same global-step rule as diffusers
        return scheduler

    def warn_guesses(self) -> None:
        if self.guessed:
            warnings.warn(f"'{self.source}' does not match a known architecture (sd15, sd21, tiny); its config was "
                          f"inferred from the tensor shapes and these hyperparameters were guessed by Stable Diffusion's "
                          f"conventions: {'; '.join(self.guessed)}. The representations may differ from the original "
                          f"model's: pass the model's diffusers folder as the single-file config to be exact.",
                          UserWarning, stacklevel=4)


def plan_components(shapes: Mapping[str, tuple], config=None, source: str = "<checkpoint>", global_step: int | None = None) -> Plan:
    """Decide every component's config from the checkpoint's shapes and the ``config`` argument."""
    planner = _Planner(shapes, source)
    vae_key, layout = vae_prefix(shapes), text_layout(shapes)
    vae_inferred = infer_vae(shapes, vae_key, source) if vae_key else None
    text_inferred = infer_text(shapes, layout, source) if layout else None
    family, folder = _config_source(config)
    if folder is not None:
        base = planner.from_folder(folder)
    elif family is not None:
        base = planner.from_bundled(family)
    else:
        base = planner.inferred()
    vae = planner.pick(base, "vae", vae_inferred, _guess_vae)
    text = planner.pick(base, "text_encoder", text_inferred, lambda inferred: _guess_text(inferred, layout))
    planner.warn_guesses()
    return Plan(source=base.where, family=base.family, folder=folder, unet=base.unet, vae=vae, text=text,
                text_layout=layout, vae_prefix=vae_key, scheduler=planner.scheduler(base, global_step),
                guessed=planner.guessed)
