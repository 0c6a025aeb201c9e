"""The extractor: prepared images in, per-layer representations out, one batch at a time."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch

from ..layers import all_layers, layer_infos, select_layers
from .hooks import capture_layers, run_until_captured, unet_extra_inputs
from .protocols import check_protocol, clean_latents, clean_noised, paper_noised_latents, pixels_to_tensor


@dataclass(frozen=True)
class ExtractionSettings:
    """Everything besides the model and the images that decides the representations.

    Attributes:
        protocol: 'clean' (default) or 'paper' (see :mod:`sdaudit.extraction.protocols`).
        timestep: diffusion timestep t in [0, 999] at which the latents are noised.
        seed: base seed of every random draw.
        size: side in pixels of the square model input (a multiple of 64 for SD).
        prompt: text prompt; '' is the paper's empty prompt.
        latent: 'mean' or 'sample' of the VAE posterior ('paper' always samples).
        noise_samples: noise draws averaged per image ('clean' only).
        crop_px: pixels cropped from each side of the prepared image before it is resized back
            to ``size`` (the border experiment's second pass); 0 for none.
    """

    protocol: str = "clean"
    timestep: int = 50
    seed: int = 42
    size: int = 512
    prompt: str = ""
    latent: str | None = None
    noise_samples: int = 1
    crop_px: int = 0

    def validated(self) -> ExtractionSettings:
        latent = check_protocol(self.protocol, self.latent)
        if not 0 <= int(self.timestep) <= 999:
            raise ValueError(f"timestep {self.timestep} is outside [0, 999]")
        if self.noise_samples < 1 or (self.protocol == "paper" and self.noise_samples != 1):
            raise ValueError("noise_samples must be >= 1, and 1 under protocol 'paper'")
        if self.size <= 0 or self.size % 64:
            raise ValueError(f"size {self.size} px is not a positive multiple of 64 (8 px per latent token, 3 U-Net downsamplings)")
        if not 0 <= self.crop_px < self.size // 2:
            raise ValueError(f"crop_px {self.crop_px} must be in [0, size/2)")
        return ExtractionSettings(self.protocol, int(self.timestep), int(self.seed), int(self.size), self.prompt, latent,
                                  int(self.noise_samples), int(self.crop_px))

    def to_dict(self) -> dict:
        return asdict(self)


def encode_prompt(model, prompt: str) -> torch.Tensor:
    """Text-encoder hidden states (1, 77, D) for ``prompt``, as diffusers' StableDiffusionPipeline makes them."""
    tokenizer = model.tokenizer
    max_length = min(int(getattr(tokenizer, "model_max_length", 77)), 77)
    tokens = tokenizer(prompt, padding="max_length", max_length=max_length, truncation=True, return_tensors="pt")
    ids = tokens.input_ids.to(model.device)
    mask = tokens.attention_mask.to(model.device) if getattr(model.text_encoder.config, "use_attention_mask", False) else None
    with torch.inference_mode():
        return model.text_encoder(ids, attention_mask=mask)[0].to(model.dtype)


class Extractor:
    """Runs the U-Net on batches of prepared images and returns the chosen layers' outputs.

    Args:
        model: a :class:`sdaudit.models.LoadedModel`.
        layers: 'all', 'paper', block or layer names (see :func:`sdaudit.layers.select_layers`).
        settings: :class:`ExtractionSettings`.
    """

    def __init__(self, model, layers: str | Sequence[str] = "paper", settings: ExtractionSettings | None = None):
        self.model = model
        self.settings = (settings or ExtractionSettings(size=model.default_size)).validated()
        self.available = all_layers(model.unet)
        self.layers = select_layers(layers, self.available)
        infos = {i.name: i for i in layer_infos(dict(model.unet.config), self.settings.size, model.vae_scale_factor)}
        self.shapes = {n: (infos[n].channels, infos[n].height, infos[n].width) for n in self.layers}
        self._context = encode_prompt(model, self.settings.prompt)

    def _noised_inputs(self, pixels: torch.Tensor, indices: Sequence[int]) -> list[torch.Tensor]:
        s = self.settings
        if s.protocol == "paper":
            return [paper_noised_latents(self.model, pixels, s.timestep, s.seed)]
        latents = clean_latents(self.model, pixels, indices, s.seed, s.latent)
        return [clean_noised(self.model, latents, indices, s.timestep, s.seed, k) for k in range(s.noise_samples)]

    def _unet_pass(self, sample: torch.Tensor) -> dict[str, torch.Tensor]:
        model, out = self.model, {}

        def sink(name, tensor):
            out[name] = tensor.detach().float().cpu()

        t = torch.tensor(self.settings.timestep, dtype=torch.long, device=model.device)
        context = self._context.expand(sample.shape[0], -1, -1).contiguous()
        extra = unet_extra_inputs(model.unet, sample.shape[0], self.settings.size, model.device, model.dtype)
        with capture_layers(model.unet, self.layers, sink):
            run_until_captured(lambda: model.unet(sample, t, encoder_hidden_states=context, **extra))
        return out

    @torch.no_grad()
    def run(self, images: Sequence, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        """Representations {layer: (B, C, h, w) float32 CPU tensor} of prepared ``size`` x ``size`` images.

        ``indices`` are the images' positions in the dataset/store: the clean protocol seeds each
        image's noise by them, so a result never depends on the batch an image falls in.
        """
        if len(images) != len(indices):
            raise ValueError("one index per image is needed")
        pixels = pixels_to_tensor(images, self.settings.protocol)
        expected = (self.settings.size, self.settings.size)
        if tuple(pixels.shape[-2:]) != expected:
            raise ValueError(f"images must be prepared to {expected} px, got {tuple(pixels.shape[-2:])}")
        total: dict[str, torch.Tensor] = {}
        inputs = self._noised_inputs(pixels, indices)
        for sample in inputs:
            for name, value in self._unet_pass(sample).items():
                total[name] = value if name not in total else total[name] + value
        if len(inputs) > 1:
            total = {k: v / len(inputs) for k, v in total.items()}
        return {n: total[n] for n in self.layers}
