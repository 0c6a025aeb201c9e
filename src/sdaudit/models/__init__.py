"""Models: the registry of known models, loading from any source, and the offline models."""

from .load import LoadedModel, ModelNotAvailableError, load_model, load_unet_config, resolve_device, resolve_dtype
from .registry import REGISTRY, ModelSpec, ModelSpecError, known_model_names, parse_model_spec

__all__ = [
    "REGISTRY",
    "LoadedModel",
    "ModelNotAvailableError",
    "ModelSpec",
    "ModelSpecError",
    "known_model_names",
    "load_model",
    "load_unet_config",
    "parse_model_spec",
    "resolve_device",
    "resolve_dtype",
]
