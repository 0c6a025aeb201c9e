"""Model families: one interface (:class:`ModelFamily`) per kind of latent-diffusion model.

:func:`family_for_config` picks the family of a denoiser config: the SD-1.x/2.x U-Net, or SDXL's
(a U-Net with the ``text_time`` added conditioning). A new family (MMDiT, FLUX) is a new module here
and one line in that function.
"""

from __future__ import annotations

from collections.abc import Mapping

from ...layer_names import LayerInfo
from .base import ModelFamily, Sink
from .sdxl import SDXLConditioning, SDXLFamily, is_sdxl_config
from .unet import UNetFamily


def family_for_config(config: Mapping, vae_scale_factor: int = 8) -> ModelFamily:
    """The family of a denoiser config (a diffusers ``config.json`` as a mapping)."""
    if is_sdxl_config(config):
        return SDXLFamily(config, vae_scale_factor)
    return UNetFamily(config, vae_scale_factor)


def layer_infos(config: Mapping, size: int, vae_scale_factor: int = 8) -> list[LayerInfo]:
    """Every hookable layer of a denoiser config with its shape at ``size`` px (no weights needed)."""
    return family_for_config(config, vae_scale_factor).layer_infos(size)


__all__ = ["ModelFamily", "SDXLConditioning", "SDXLFamily", "Sink", "UNetFamily", "family_for_config", "layer_infos"]
