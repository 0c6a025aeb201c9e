"""Loading a model from any source into one :class:`LoadedModel`.

Every source (Hugging Face repo id, local diffusers folder, single checkpoint file, ``tiny``,
``tiny-sdxl``, ``arch:*``) ends in one :class:`~sdaudit.models.loaded.LoadedModel`: the denoiser
(U-Net or transformer), VAE, text encoder(s), tokenizer(s) and the model's own scheduler. Nothing
here changes a component's config after loading.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from ..errors import UsageError
from .components import load_pipeline_components
from .devices import place, resolve_device, resolve_dtype
from .hashing import InBackground, file_sha256, folder_weights_sha256, state_dict_sha256
from .hub import hub_cache_dir, hub_offline, hub_reachable, is_cached
from .placement import apply_placement, resolve_placement
from .loaded import LoadedModel
from .registry import ModelNotAvailableError, ModelSpec, parse_model_spec
from .single_file import load_single_file, single_file_unet_config
from .unet_file import download_unet_file, load_with_unet_file


def _hub_revision(repo_id: str, revision: str | None) -> str | None:
    """The commit hash of the cached snapshot that was loaded, if it can be found offline."""
    try:
        from huggingface_hub import hf_hub_download

        path = Path(hf_hub_download(repo_id, "model_index.json", revision=revision, local_files_only=True))
        return path.parent.name  # .../snapshots/<commit>/model_index.json
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
        f"the hub. Offline models: tiny, arch:sd15, arch:sd21, arch:sdxl, tiny-sdxl, tiny-sd3, arch:sd3, "
        f"arch:sd35-medium, tiny-flux, arch:flux, arch:flux-schnell."
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
    denoiser = parts["unet"] if "unet" in parts else parts["transformer"]
    return _Components(parts, options.revision, state_dict_sha256(denoiser))


def _from_arch(spec: ModelSpec, options: _LoadOptions) -> _Components:
    from .offline import build_arch
    from .offline_common import ARCH_SEED

    return _Components(build_arch(spec.location), f"random-init seed={ARCH_SEED} torch={torch.__version__}")


def _from_folder(spec: ModelSpec, options: _LoadOptions) -> _Components:
    digest = InBackground(folder_weights_sha256, Path(spec.location))
    parts = load_pipeline_components(spec.location, revision=None, local_files_only=True, variant=options.variant,
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


def _from_unet_file(spec: ModelSpec, options: _LoadOptions) -> _Components:
    """A registry model published as U-Net weights over a base pipeline (SDXL-Lightning: models.unet_file)."""
    entry = spec.entry
    base = ModelSpec("hub", entry.base, entry.base) if not Path(entry.base).is_dir() else \
        ModelSpec("folder", entry.base, entry.base)
    try:
        path = download_unet_file(entry.repo_id, entry.unet_file, revision=options.revision,
                                  local_files_only=hub_offline(options.local_files_only))
    except Exception as error:  # noqa: BLE001 - hub errors of every kind: not on this machine
        raise ModelNotAvailableError(_not_available_message(spec, error)) from None
    load_base = (lambda _: _SOURCES[base.kind](base, replace(options, revision=None)).parts)
    parts, digest = load_with_unet_file(entry.base, path, load_base)
    return _Components(parts, path.parent.name, digest)


def _from_hub(spec: ModelSpec, options: _LoadOptions) -> _Components:
    if spec.entry is not None and spec.entry.unet_file is not None:
        return _from_unet_file(spec, options)
    _check_fetchable(spec, options)
    try:
        parts = load_pipeline_components(spec.location, revision=options.revision,
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
    denoiser = parts["unet"] if "unet" in parts else parts["transformer"]
    encoders = {}
    for i in ("", "_2", "_3"):
        if parts.get(f"text_encoder{i}") is not None:
            encoders[f"text_encoder{i}"] = place(parts[f"text_encoder{i}"], device, dtype)
            encoders[f"tokenizer{i}"] = parts.get(f"tokenizer{i}")
    return LoadedModel(spec=spec, denoiser=place(denoiser, device, dtype), vae=place(parts["vae"], device, vae_dtype),
                       scheduler=parts["scheduler"], device=device, dtype=dtype, vae_dtype=vae_dtype,
                       revision=loaded.revision, weights_sha256=loaded.weights_sha256, **encoders)


def load_model(
    model: str | ModelSpec,
    *,
    device: str | torch.device | None = "auto",
    dtype: str | torch.dtype | None = "auto",
    revision: str | None = None,
    local_files_only: bool = False,
    variant: str | None = None,
    single_file_config: str | None = None,
    placement: str | None = "auto",
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
        placement: which parts wait on the CPU between uses ('auto', 'keep', 'free-text-encoders',
            'offload'; see :mod:`sdaudit.models.placement`); 'auto' frees the text encoders on accelerators.
    """
    spec = model if isinstance(model, ModelSpec) else parse_model_spec(model)
    device = resolve_device(device)
    dtype = resolve_dtype(dtype, device)
    placement = resolve_placement(placement, device)  # a wrong name fails before the weights load
    if spec.kind not in _SOURCES:  # pragma: no cover - parse_model_spec only makes the kinds above
        raise UsageError(f"unknown model kind {spec.kind}")
    options = _LoadOptions(revision, local_files_only, variant, single_file_config,
                           torch.float16 if dtype == torch.float16 else torch.float32)
    return apply_placement(_placed(spec, _SOURCES[spec.kind](spec, options), device, dtype), placement)


def _denoiser_subfolder(index: dict) -> str:
    """The denoiser's subfolder named by a pipeline's ``model_index.json``: ``transformer`` (SD3, FLUX) or ``unet``."""
    return "transformer" if index.get("transformer") and index["transformer"][0] is not None else "unet"


def load_denoiser_config(model: str | ModelSpec, *, revision: str | None = None, local_files_only: bool = False,
                         single_file_config: str | None = None) -> dict:
    """The denoiser config (U-Net or transformer) of a model, without loading weights (for layer listings).

    Registry models with a bundled twin architecture (sd15, sd21, sd-turbo, sdxl, ...) answer offline.
    """
    from diffusers import ConfigMixin, DiffusionPipeline

    spec = model if isinstance(model, ModelSpec) else parse_model_spec(model)
    if spec.kind == "tiny":
        from .offline import TINY_MODELS

        return dict(TINY_MODELS[spec.location][1])
    if spec.kind == "arch" or (spec.entry is not None and spec.entry.arch is not None):
        from .offline_common import read_arch_config

        return read_arch_config(spec.location if spec.kind == "arch" else spec.entry.arch, "denoiser")
    if spec.kind == "folder":
        index_file = Path(spec.location) / "model_index.json"
        index = json.loads(index_file.read_text()) if index_file.is_file() else {}
        return json.loads((Path(spec.location) / _denoiser_subfolder(index) / "config.json").read_text())
    if spec.kind == "file":
        return single_file_unet_config(spec.location, config=single_file_config)
    _check_fetchable(spec, _LoadOptions(revision, local_files_only, None, None, torch.float32))
    common = {"revision": revision, "local_files_only": local_files_only}
    try:
        subfolder = _denoiser_subfolder(dict(DiffusionPipeline.load_config(spec.location, **common)))
        return dict(ConfigMixin.load_config(spec.location, subfolder=subfolder, **common))
    except OSError as error:
        raise ModelNotAvailableError(_not_available_message(spec, error)) from None
