"""The loaded model: the components sdaudit needs from a latent-diffusion model, on one device, and its family."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from .families import ModelFamily, family_for_config
from .registry import ModelSpec


@dataclass
class LoadedModel:
    """The components sdaudit needs from a latent-diffusion model, on one device.

    ``denoiser`` is the network the layers live in: the U-Net of SD-1.x/2.x and SDXL, the transformer of
    SD3 and FLUX (``unet`` and ``transformer`` name it by its diffusers component name). ``dtype`` is the
    compute dtype of the denoiser and text encoders; ``vae_dtype`` that of the VAE (float32 where the VAE's
    config asks to be upcast). ``family`` (:class:`~sdaudit.models.families.ModelFamily`) is what extraction
    talks to; it is derived from the denoiser's config when not given. Text encoders and tokenizers keep
    diffusers' pipeline names: SDXL adds ``text_encoder_2`` (projected CLIP), SD3 ``text_encoder_3`` (T5,
    optional), FLUX has CLIP as ``text_encoder`` and T5 as ``text_encoder_2``.
    """

    spec: ModelSpec
    denoiser: torch.nn.Module
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
    text_encoder_2: torch.nn.Module | None = None  # SDXL's second (projected) CLIP, FLUX's T5
    tokenizer_2: object = None
    text_encoder_3: torch.nn.Module | None = None  # SD3's T5 (optional there)
    tokenizer_3: object = None
    placement: str = "keep"  # which parts wait on the CPU between uses (models.placement)
    prompt_cache: dict = field(default_factory=dict, repr=False, compare=False)  # models.placement.prompt_conditioning

    def __post_init__(self):
        if self.family is None:
            self.family = family_for_config(self.denoiser.config, self.vae_scale_factor)

    @property
    def unet(self) -> torch.nn.Module:
        """The denoiser of a U-Net family (SD-1.x/2.x, SDXL)."""
        return self._denoiser_named("unet")

    @property
    def transformer(self) -> torch.nn.Module:
        """The denoiser of a transformer family (SD3, FLUX)."""
        return self._denoiser_named("transformer")

    def _denoiser_named(self, component: str) -> torch.nn.Module:
        if self.family.denoiser_component != component:
            raise AttributeError(f"a {self.family.name} model has no {component}; its denoiser is "
                                 f"'{self.family.denoiser_component}' (LoadedModel.denoiser)")
        return self.denoiser

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

    @property
    def shift_factor(self) -> float:
        """The VAE's latent shift (SD3, FLUX: latents = (z - shift) * scale); 0 for SD-1.x/2.x and SDXL."""
        return float(getattr(self.vae.config, "shift_factor", None) or 0.0)

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

    def components(self) -> dict:
        """The model's parts under their diffusers pipeline names (``unet`` or ``transformer``, ``vae``, ...)."""
        parts = {self.family.denoiser_component: self.denoiser, "vae": self.vae, "scheduler": self.scheduler}
        for i in ("", "_2", "_3"):
            encoder = getattr(self, f"text_encoder{i}")
            if encoder is not None:
                parts[f"text_encoder{i}"], parts[f"tokenizer{i}"] = encoder, getattr(self, f"tokenizer{i}")
        return parts

    def save_pretrained(self, path: str | Path) -> Path:
        """Write the model as a folder of the family's diffusers pipeline (``StableDiffusionPipeline``,
        ``StableDiffusionXLPipeline``, ...), loadable by diffusers and sdaudit."""
        import inspect

        import diffusers

        pipeline = getattr(diffusers, self.family.pipeline_class)
        accepted = inspect.signature(pipeline.__init__).parameters
        optional = {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False,
                    "image_encoder": None, "text_encoder_3": None, "tokenizer_3": None}
        parts = {**{k: v for k, v in optional.items() if k in accepted}, **self.components()}
        pipeline(**parts).save_pretrained(str(path))
        return Path(path)
