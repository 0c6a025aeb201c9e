"""Model families: one interface (:class:`ModelFamily`) per kind of latent-diffusion model.

:func:`family_for_config` picks the family of a denoiser config: the first of :data:`FAMILIES` whose
``accepts(config)`` is true (the SD-1.x/2.x U-Net accepts any other U-Net config, so it comes last).
A new family is a new module here and one entry in :data:`FAMILIES`.
"""

from __future__ import annotations

from collections.abc import Mapping

from ...layer_names import LayerInfo
from .base import ModelFamily, Sink
from .flux import FluxConditioning, FluxFamily
from .sd3 import SD3Conditioning, SD3Family
from .sdxl import SDXLConditioning, SDXLFamily
from .unet import UNetFamily


#: the families, most specific first
FAMILIES: tuple[type[ModelFamily], ...] = (FluxFamily, SD3Family, SDXLFamily, UNetFamily)


def family_for_config(config: Mapping, vae_scale_factor: int = 8) -> ModelFamily:
    """The family of a denoiser config (a diffusers ``config.json`` as a mapping)."""
    for family in FAMILIES:
        if family.accepts(config):
            return family(config, vae_scale_factor)
    raise ValueError(f"no model family accepts this denoiser config (keys: {sorted(dict(config))})")


def layer_infos(config: Mapping, size: int, vae_scale_factor: int = 8) -> list[LayerInfo]:
    """Every hookable layer of a denoiser config with its shape at ``size`` px (no weights needed)."""
    return family_for_config(config, vae_scale_factor).layer_infos(size)


__all__ = ["FAMILIES", "FluxConditioning", "FluxFamily", "ModelFamily", "SD3Conditioning", "SD3Family",
           "SDXLConditioning", "SDXLFamily", "Sink", "UNetFamily", "family_for_config", "layer_infos"]
