"""Loading a model from any source into one :class:`LoadedModel`.

Every source (Hugging Face repo id, local diffusers folder, single checkpoint file, ``tiny``,
``tiny-sdxl``, ``arch:*``) ends in the same five components: U-Net, VAE, text encoder, tokenizer and
the model's own scheduler, plus a DDIM scheduler built from the same beta schedule for noising; SDXL
pipelines add a second text encoder and tokenizer. Nothing here changes a component's config after
loading.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import UsageError
from ..validation import did_you_mean
from .families import ModelFamily, family_for_config
from .hashing import InBackground, file_sha256, folder_weights_sha256, state_dict_sha256
from .hub import hub_cache_dir, hub_offline, hub_reachable, is_cached
from .registry import ModelNotAvailableError, ModelSpec, parse_model_spec
from .single_file import load_single_file, single_file_unet_config


@dataclass
class LoadedModel:
    """The components sdaudit needs from a latent-diffusion model, on one device.

    ``dtype`` is the compute dtype of the U-Net and text encoder; ``vae_dtype`` that of the VAE
    (float32 where the VAE's config asks to be upcast). ``family`` (:class:`~sdaudit.models.families.ModelFamily`)
    is what extraction talks to; it is derived from the U-Net's config when not given.
    """

    spec: ModelSpec
    unet: torch.nn.Module
    vae: torch.nn.Module
    text_encoder: torch.nn.Module
    tokenizer: object
    scheduler: object
    device: torch.device
    dtype: torch.dtype
    vae_dtype: torch.dtype
    revision: str | None = None
    weights_sha256: str | None = None
    extra: dict = field(default_factory=dict)
    family: ModelFamily | None = None
    text_encoder_2: torch.nn.Module | None = None  # SDXL's second (projected) text encoder
    tokenizer_2: object = None

    def __post_init__(self):
        if self.family is None:
            self.family = family_for_config(self.unet.config, self.vae_scale_factor)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def default_size(self) -> int:
        """Image side in pixels the model is run at unless told otherwise."""
        return self.spec.default_size

    @property
    def vae_scale_factor(self) -> int:
        """Pixels per latent token (8 for every Stable Diffusion VAE)."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def scaling_factor(self) -> float:
        return float(self.vae.config.scaling_factor)

    def noise_scheduler(self):
        """A DDIM scheduler with the model's beta schedule: the paper noises latents with its ``add_noise``."""
        from diffusers import DDIMScheduler

        return DDIMScheduler.from_config(self.scheduler.config)

    def identity(self) -> dict:
        """What identifies the weights, for manifests: name, kind, location, revision, hash."""
        return {
            "name": self.spec.name,
            "kind": self.spec.kind,
            "location": self.spec.location,
            "revision": self.revision,
            "weights_sha256": self.weights_sha256,
        }

    def save_pretrained(self, path: str | Path) -> Path:
        """Write the model as a diffusers ``StableDiffusionPipeline`` folder (``StableDiffusionXLPipeline`` with a
        second text encoder), loadable by diffusers and sdaudit."""
        from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

        if self.text_encoder_2 is not None:
            pipe = StableDiffusionXLPipeline(vae=self.vae, text_encoder=self.text_encoder, tokenizer=self.tokenizer,
                                             text_encoder_2=self.text_encoder_2, tokenizer_2=self.tokenizer_2,
                                             unet=self.unet, scheduler=self.scheduler)
            pipe.save_pretrained(str(path))
            return Path(path)
        pipe = StableDiffusionPipeline(
            vae=self.vae, text_encoder=self.text_encoder, tokenizer=self.tokenizer, unet=self.unet,
            scheduler=self.scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False,
        )
        pipe.save_pretrained(str(path))
        return Path(path)


def available_devices() -> list[str]:
    """The device names this machine can run on: auto, cpu, then cuda, cuda:0, ... and mps when present."""
    names = ["auto", "cpu"]
    if torch.cuda.is_available():
        names += ["cuda"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if torch.backends.mps.is_available():
        names.append("mps")
    return names


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """'auto' picks CUDA when available, else the CPU; any other name must be a device of this machine.

    Checked here, before a model is loaded, because torch only fails at the first ``.to(device)`` (an
    AssertionError "Torch not compiled with CUDA enabled", or "invalid device ordinal" mid-run).
    """
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        resolved = None
    if resolved is not None and (resolved.type == "cpu" or str(resolved) in available_devices()):
        return resolved
    raise UsageError(f"device '{device}' is not available on this machine; available: "
                     f"{', '.join(available_devices())}")


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """'auto' is float16 on CUDA and float32 elsewhere (CPU half precision is slow and inexact)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is None or dtype == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    table = {"float16": torch.float16, "fp16": torch.float16, "half": torch.float16, "bfloat16": torch.bfloat16,
             "bf16": torch.bfloat16, "float32": torch.float32, "fp32": torch.float32, "float": torch.float32}
    if dtype not in table:
        names = ("auto", "float16", "bfloat16", "float32")
        raise UsageError(f"unknown dtype '{dtype}'{did_you_mean(dtype, names)}; use one of {', '.join(names)}")
    return table[dtype]


def diffusers_dtype_kwarg(dtype: torch.dtype) -> dict:
    """diffusers renamed ``torch_dtype`` to ``dtype``; pass whichever this version knows."""
    from diffusers.utils import deprecation_utils

    return {"dtype": dtype} if hasattr(deprecation_utils, "_TORCH_DTYPE_DEPRECATION_MESSAGE") else {"torch_dtype": dtype}


def place(module: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """Move a component to ``device`` and ``dtype`` for inference (eval mode, no gradients)."""
    from diffusers.utils import logging as diffusers_logging

    module = module.to(device)
    if next(module.parameters()).dtype != dtype:
        level = diffusers_logging.get_verbosity()
        diffusers_logging.set_verbosity_error()  # silence a warning about fp32 modules that these models lack
        try:
            module = module.to(dtype)
        finally:
            diffusers_logging.set_verbosity(level)
    return module.eval().requires_grad_(False)


def _has_second_text_encoder(location: str, common: dict) -> bool:
    """Whether the pipeline's ``model_index.json`` names a ``text_encoder_2`` (SDXL)."""
    from diffusers import DiffusionPipeline

    try:
        index = DiffusionPipeline.load_config(location, **common)
    except (OSError, ValueError):
        return False  # the component loaders give the precise error
    return bool(index.get("text_encoder_2")) and index["text_encoder_2"][0] is not None


def _load_second_text_encoder(location: str, *, variant, torch_dtype, common: dict) -> dict:
    """SDXL's ``text_encoder_2`` (with projection: it gives the pooled prompt) and ``tokenizer_2``."""
    from transformers import AutoTokenizer, CLIPTextModelWithProjection

    encoder = CLIPTextModelWithProjection.from_pretrained(location, subfolder="text_encoder_2", variant=variant,
                                                          dtype=torch_dtype, **common)
    return {"text_encoder_2": encoder, "tokenizer_2": AutoTokenizer.from_pretrained(location, subfolder="tokenizer_2",
                                                                                     **common)}


def _load_components_pretrained(location: str, *, revision, local_files_only, variant, torch_dtype) -> dict:
    """Load the five components of a diffusers Stable Diffusion pipeline (folder or repo id); seven for SDXL."""
    import diffusers
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import AutoTokenizer, CLIPTextModel

    common = {"revision": revision, "local_files_only": local_files_only}
    second = (_load_second_text_encoder(location, variant=variant, torch_dtype=torch_dtype, common=common)
              if _has_second_text_encoder(location, common) else {})
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


def _hub_revision(repo_id: str, revision: str | None) -> str | None:
    """The commit hash of the cached snapshot that was loaded, if it can be found offline."""
    try:
        from huggingface_hub import hf_hub_download

        path = Path(hf_hub_download(repo_id, "unet/config.json", revision=revision, local_files_only=True))
        return path.parent.parent.name  # .../snapshots/<commit>/unet/config.json
    except Exception:  # noqa: BLE001 - the revision is informative only
        return revision


def _not_available_message(spec: ModelSpec, error: Exception | str) -> str:
    repo = spec.location
    why = error if isinstance(error, str) else \
        f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
    return (
        f"model '{spec.name}' (Hugging Face repo '{repo}') is not available on this machine: {why}; "
        f"download it once where there is internet access ('huggingface-cli download {repo} --include "
        f"\"unet/*\" \"vae/*\" \"text_encoder/*\" \"tokenizer/*\" \"scheduler/*\" model_index.json') "
        f"and copy the Hugging Face cache (~/.cache/huggingface) here, or pass the downloaded folder "
        f"(or a single .safetensors checkpoint) as --model PATH; with --local-files-only sdaudit never contacts "
        f"the hub. Offline models: tiny, arch:sd15, arch:sd21, arch:sdxl, tiny-sdxl."
    )


@dataclass(frozen=True)
class _LoadOptions:
    """How to load a spec's components: ``load_model``'s arguments that the sources read."""

    revision: str | None
    local_files_only: bool
    variant: str | None
    single_file_config: str | None
    torch_dtype: torch.dtype  # the U-Net's and text encoder's dtype while loading (float16 or float32)


@dataclass(frozen=True)
class _Components:
    """What one source yields: the five components, and what identifies their weights."""

    parts: dict
    revision: str | None = None
    weights_sha256: str | None = None


def _from_tiny(spec: ModelSpec, options: _LoadOptions) -> _Components:
    from .offline import TINY_MODELS

    parts = TINY_MODELS[spec.location][0]()
    return _Components(parts, options.revision, state_dict_sha256(parts["unet"]))


def _from_arch(spec: ModelSpec, options: _LoadOptions) -> _Components:
    from .offline import ARCH_SEED, build_arch

    return _Components(build_arch(spec.location), f"random-init seed={ARCH_SEED} torch={torch.__version__}")


def _from_folder(spec: ModelSpec, options: _LoadOptions) -> _Components:
    digest = InBackground(folder_weights_sha256, Path(spec.location))
    parts = _load_components_pretrained(spec.location, revision=None, local_files_only=True, variant=options.variant,
                                        torch_dtype=options.torch_dtype)
    return _Components(parts, options.revision, digest.result())


def _from_file(spec: ModelSpec, options: _LoadOptions) -> _Components:
    digest = InBackground(file_sha256, spec.location)
    parts = load_single_file(spec.location, config=options.single_file_config, torch_dtype=options.torch_dtype)
    return _Components(parts, options.revision, digest.result())


def _check_fetchable(spec: ModelSpec, options: _LoadOptions) -> None:
    """Fail at once, before any hub call, when the weights are not cached and cannot be fetched."""
    if is_cached(spec.location, options.revision):
        return
    offline = hub_offline(options.local_files_only)
    if offline or not hub_reachable():
        why = (f"it is not in the local Hugging Face cache ({hub_cache_dir()}) and "
               + ("hub access is off (--local-files-only or HF_HUB_OFFLINE)" if offline
                  else "the hub cannot be reached"))
        raise ModelNotAvailableError(_not_available_message(spec, why))


def _from_hub(spec: ModelSpec, options: _LoadOptions) -> _Components:
    _check_fetchable(spec, options)
    try:
        parts = _load_components_pretrained(spec.location, revision=options.revision,
                                            local_files_only=options.local_files_only, variant=options.variant,
                                            torch_dtype=options.torch_dtype)
    except (OSError, ValueError, EnvironmentError) as error:
        from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

        if isinstance(error, (OSError, LocalEntryNotFoundError, HfHubHTTPError)) or "local" in str(error).lower():
            raise ModelNotAvailableError(_not_available_message(spec, error)) from None
        raise
    return _Components(parts, _hub_revision(spec.location, options.revision))


_SOURCES = {"tiny": _from_tiny, "arch": _from_arch, "folder": _from_folder, "file": _from_file, "hub": _from_hub}


def _placed(spec: ModelSpec, loaded: _Components, device: torch.device, dtype: torch.dtype) -> LoadedModel:
    """The components moved to ``device`` in their compute dtypes (the VAE in float32 where it asks to be upcast,
    and always on the CPU)."""
    parts = loaded.parts
    vae_dtype = dtype if not getattr(parts["vae"].config, "force_upcast", True) else torch.float32
    if device.type == "cpu":
        vae_dtype = torch.float32
    second = parts.get("text_encoder_2")
    return LoadedModel(spec=spec, unet=place(parts["unet"], device, dtype), vae=place(parts["vae"], device, vae_dtype),
                       text_encoder=place(parts["text_encoder"], device, dtype), tokenizer=parts["tokenizer"],
                       scheduler=parts["scheduler"], device=device, dtype=dtype, vae_dtype=vae_dtype,
                       revision=loaded.revision, weights_sha256=loaded.weights_sha256,
                       text_encoder_2=None if second is None else place(second, device, dtype),
                       tokenizer_2=parts.get("tokenizer_2"))


def load_model(
    model: str | ModelSpec,
    *,
    device: str | torch.device | None = "auto",
    dtype: str | torch.dtype | None = "auto",
    revision: str | None = None,
    local_files_only: bool = False,
    variant: str | None = None,
    single_file_config: str | None = None,
) -> LoadedModel:
    """Load a model by spec (see :mod:`sdaudit.models.registry`) onto ``device``.

    Args:
        model: spec string or parsed :class:`ModelSpec`.
        device: 'auto', 'cpu', 'cuda', 'cuda:1', ...
        dtype: compute dtype of U-Net and text encoder; 'auto' = float16 on CUDA, float32 on CPU.
            The VAE stays in float32 when its config has ``force_upcast`` (as SD's VAEs do).
        revision: Hugging Face revision (branch, tag or commit) for repo ids.
        local_files_only: never contact the Hugging Face hub.
        variant: weights variant of a hub repo or folder, e.g. 'fp16'.
        single_file_config: for a single checkpoint file, the architecture it holds ('sd15', 'sd21',
            a diffusers folder or repo id); inferred from the weights when omitted.
    """
    spec = model if isinstance(model, ModelSpec) else parse_model_spec(model)
    device = resolve_device(device)
    dtype = resolve_dtype(dtype, device)
    if spec.kind not in _SOURCES:  # pragma: no cover - parse_model_spec only makes the kinds above
        raise UsageError(f"unknown model kind {spec.kind}")
    options = _LoadOptions(revision, local_files_only, variant, single_file_config,
                           torch.float16 if dtype == torch.float16 else torch.float32)
    return _placed(spec, _SOURCES[spec.kind](spec, options), device, dtype)


def load_unet_config(model: str | ModelSpec, *, revision: str | None = None, local_files_only: bool = False,
                     single_file_config: str | None = None) -> dict:
    """The U-Net config of a model, without loading weights (for layer listings).

    Registry models with a bundled twin architecture (sd15, sd21, sd-turbo, ...) answer offline.
    """
    from diffusers import UNet2DConditionModel

    spec = model if isinstance(model, ModelSpec) else parse_model_spec(model)
    if spec.kind == "tiny":
        from .offline import TINY_MODELS

        return dict(TINY_MODELS[spec.location][1])
    if spec.kind == "arch" or (spec.entry is not None and spec.entry.arch is not None):
        from .offline import read_arch_config

        return read_arch_config(spec.location if spec.kind == "arch" else spec.entry.arch, "unet")
    if spec.kind == "folder":
        return json.loads((Path(spec.location) / "unet" / "config.json").read_text())
    if spec.kind == "file":
        return single_file_unet_config(spec.location, config=single_file_config)
    _check_fetchable(spec, _LoadOptions(revision, local_files_only, None, None, torch.float32))
    try:
        return dict(UNet2DConditionModel.load_config(spec.location, subfolder="unet", revision=revision,
                                                     local_files_only=local_files_only))
    except OSError as error:
        raise ModelNotAvailableError(_not_available_message(spec, error)) from None
