"""Models: the registry of known models, loading from any source, and the offline models."""

from .families import ModelFamily, family_for_config, layer_infos
from .devices import resolve_device, resolve_dtype
from .load import load_model, load_denoiser_config
from .loaded import LoadedModel
from .registry import REGISTRY, ModelNotAvailableError, ModelSpec, ModelSpecError, known_model_names, parse_model_spec

__all__ = [
    "REGISTRY",
    "LoadedModel",
    "ModelFamily",
    "ModelNotAvailableError",
    "ModelSpec",
    "ModelSpecError",
    "family_for_config",
    "known_model_names",
    "layer_infos",
    "load_model",
    "load_denoiser_config",
    "parse_model_spec",
    "resolve_device",
    "resolve_dtype",
]
