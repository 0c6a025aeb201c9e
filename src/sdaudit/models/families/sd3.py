"""The SD3 / SD3.5 family (MMDiT): a diffusers ``SD3Transformer2DModel`` conditioned on CLIP-L, CLIP-G and T5.

Hookable layers, in execution order:

* ``pos_embed``: the patch embedding (a stride-``patch`` convolution) plus the absolute 2-D sin-cos
  position embedding, cropped from a ``pos_embed_max_size`` table to the input's token grid. The
  position code enters the network here, added rather than learned from zero padding as in the U-Net;
* ``transformer_blocks[i]``: the joint (MMDiT) blocks. Each returns (text stream, image stream); the
  layer is the image stream (``output[1]``), as in the published helper. The last block is
  ``context_pre_only`` (its text stream is ``None``), so that it is no exception here;
* ``norm_out``: the final adaptive layer norm on the image tokens, before the projection to patches.

Every layer is a token sequence (N, L, C), reshaped to (N, C, rows, cols) with rows = latent height /
patch and cols = latent width / patch, from the input's latent size (the helper searches divisors of
L instead, which is the same for square inputs). So an input side must be a multiple of the VAE factor
times the patch size (16 px for SD3). The paper set is the helper's: the ``transformer_blocks``.

Conditioning is ``StableDiffusion3Pipeline.encode_prompt``'s, run once per prompt: both CLIP encoders'
penultimate hidden states, concatenated, zero-padded to T5's width and followed by T5's hidden
states, and both CLIP pooled embeddings concatenated. T5 (``text_encoder_3``) is optional: without it
its part is zeros, as diffusers does. sdaudit conditions on the empty prompt, for which T5 adds one
constant; leaving T5-XXL out (4.7 B parameters, about 9 GB in float16) changes that constant only.

Noise is flow matching (:mod:`~sdaudit.models.families.flow_noise`). ``clean``: [-1, 1] pixels,
posterior mean, independent noise per image, sigma from the model's scheduler at sdaudit's timestep.
``paper`` reproduces the helper's SD3 branch (``sdhelper`` 1.0.0, ``SD._img2repr``): [-1, 1] pixels
(its ``image_processor.preprocess``), a generator seeded with ``seed`` that draws the posterior sample
and then one noise tensor for the whole batch, ``scheduler.set_timesteps(1000)``,
``timesteps[999 - step]`` and ``scale_noise``.
"""

from __future__ import annotations

import copy
import functools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from ...layer_names import LayerError, LayerInfo, kind_of
from ..hooks import capture_layers, compile_layers, run_until_captured
from . import flow_noise
from .base import ModelFamily, Sink

BLOCKS = "transformer_blocks"
TEXT_TOKENS = 77  # CLIP's context length


@dataclass(frozen=True)
class SD3Conditioning:
    """One prompt's conditioning for the SD3 transformer (batch of 1).

    Attributes:
        prompt_embeds: (1, 77 + T5 tokens, joint_attention_dim): CLIP states (padded) followed by T5's (or zeros).
        pooled: (1, pooled_projection_dim): both CLIP encoders' pooled embeddings, concatenated.
    """

    prompt_embeds: torch.Tensor
    pooled: torch.Tensor


class SD3Family(ModelFamily):
    """SD3 / SD3.5 (medium, large): the MMDiT transformer, its joint blocks and the flow-matching noise.

    Args:
        config: the transformer's config (``transformer/config.json`` as a mapping).
        vae_scale_factor: pixels per latent value (8).
    """

    name = "sd3-mmdit"
    denoiser_component = "transformer"
    pipeline_class = "StableDiffusion3Pipeline"
    anomaly_layer = ""  # no published SD3 anomaly layer: the middle audited layer (ModelFamily's fallback)

    def __init__(self, config: Mapping, vae_scale_factor: int = 8):
        self.config_key = json.dumps({k: v for k, v in dict(config).items() if not k.startswith("_")},
                                     sort_keys=True, default=str)
        self.vae_scale_factor = int(vae_scale_factor)
        config = dict(config)
        self.patch_size = int(config.get("patch_size", 2))
        self.max_tokens = config.get("pos_embed_max_size")

    # ---- structure ----------------------------------------------------------------------------

    @classmethod
    def accepts(cls, config) -> bool:
        keys = dict(config)
        return all(k in keys for k in ("joint_attention_dim", "caption_projection_dim", "pos_embed_max_size"))

    def layer_names(self) -> list[str]:
        n = int(json.loads(self.config_key)["num_layers"])
        return ["pos_embed", *(f"{BLOCKS}[{i}]" for i in range(n)), "norm_out"]

    def paper_layers(self) -> list[str]:
        """The helper's layers: every joint block (its ``available_extract_positions`` for a transformer)."""
        return [n for n in self.layer_names() if n.startswith(BLOCKS)]

    @property
    def pixel_multiple(self) -> int:
        """Pixels per token: the VAE factor times the patch size (16 for SD3)."""
        return self.vae_scale_factor * self.patch_size

    def token_grid(self, height_px: int, width_px: int) -> tuple[int, int]:
        """The (rows, cols) token grid of an input, or a :class:`LayerError` for a size the model cannot take."""
        m = self.pixel_multiple
        for side in (height_px, width_px):
            if side % m or side < m:
                raise LayerError(f"size {side} px is not a positive multiple of {m} (VAE factor "
                                 f"{self.vae_scale_factor} x patch size {self.patch_size})")
            if self.max_tokens is not None and side // m > int(self.max_tokens):
                raise LayerError(f"size {side} px gives {side // m} tokens per side, more than the model's position "
                                 f"table (pos_embed_max_size {self.max_tokens}): at most {int(self.max_tokens) * m} px")
        return height_px // m, width_px // m

    def layer_infos(self, size: int) -> list[LayerInfo]:
        """Channels from a meta-device pass (no weights, nothing computed), cached per config; grid from the size."""
        rows, cols = self.token_grid(size, size)
        channels = _layer_channels(self.config_key)
        return [LayerInfo(n, BLOCKS if n.startswith(BLOCKS) else n, kind_of(n), channels[n], rows, cols)
                for n in self.layer_names()]

    # ---- computation --------------------------------------------------------------------------

    def noised_inputs(self, model, pixels: torch.Tensor, indices: Sequence[int], settings) -> list[torch.Tensor]:
        s = settings
        if s.protocol == "paper":
            return [paper_noised_latents(model, pixels, s.timestep, s.seed)]
        rows, cols = self.token_grid(*pixels.shape[-2:])
        latents = flow_noise.encode(model, pixels, indices=indices, seed=s.seed, latent=s.latent)
        _, sigma = flow_noise.timestep_and_sigma(model.scheduler, s.timestep, rows * cols)
        return [flow_noise.noised(latents, flow_noise.clean_noise(latents, indices, seed=s.seed, sample=k), sigma)
                for k in range(s.noise_samples)]

    def encode_prompt(self, model, prompt: str, *, protocol: str = "clean") -> SD3Conditioning:
        """``StableDiffusion3Pipeline.encode_prompt`` on the model's encoders (the same under both protocols)."""
        from diffusers import StableDiffusion3Pipeline

        # without T5 the pipeline gets None for it and uses zeros in its place
        pipe = StableDiffusion3Pipeline(**{"text_encoder_3": None, "tokenizer_3": None, **model.components()})
        with torch.inference_mode():
            embeds, _, pooled, _ = pipe.encode_prompt(prompt=prompt, prompt_2=None, prompt_3=None, device=model.device,
                                                      do_classifier_free_guidance=False)
        return SD3Conditioning(embeds.to(model.dtype), pooled.to(model.dtype))

    def run_denoiser(self, model, sample: torch.Tensor, timestep: int, context: SD3Conditioning, *,
                     layers: Sequence[str], sink: Sink) -> None:
        batch = sample.shape[0]
        grid = (sample.shape[-2] // self.patch_size, sample.shape[-1] // self.patch_size)
        value, _ = flow_noise.timestep_and_sigma(model.scheduler, timestep, grid[0] * grid[1])
        # the schedule's timestep value (sigma * 1000) in float32, as the pipeline passes it
        t = torch.full((batch,), value, dtype=torch.float32, device=model.device)
        kwargs = {"encoder_hidden_states": context.prompt_embeds.expand(batch, -1, -1).contiguous(),
                  "pooled_projections": context.pooled.expand(batch, -1).contiguous()}
        with capture_layers(model.denoiser, layers, lambda name, out: sink(name, self.to_grid(name, out, grid=grid))):
            run_until_captured(lambda: model.denoiser(hidden_states=sample, timestep=t, **kwargs))

    def to_grid(self, name: str, output, *, grid: tuple[int, int] | None = None) -> torch.Tensor:
        """Image tokens (N, L, C) as (N, C, rows, cols); a joint block contributes its image stream (``output[1]``).
        ``grid`` is (rows, cols); without it the grid is taken to be square."""
        tokens = output[1] if isinstance(output, (tuple, list)) else output
        n, length, channels = tokens.shape
        rows, cols = grid if grid is not None else (int(round(length ** 0.5)),) * 2
        if rows * cols != length:
            raise ValueError(f"{name}: {length} tokens do not make a {rows} x {cols} grid")
        return tokens.reshape(n, rows, cols, channels).permute(0, 3, 1, 2)

    def compile_layers(self, model, names: Sequence[str]) -> int:
        return compile_layers(model.denoiser, names)


def paper_noised_latents(model, pixels: torch.Tensor, timestep: int, seed: int) -> torch.Tensor:
    """The helper's transformer input for one batch (see the module docstring); ``pixels`` in [0, 1]."""
    generator = torch.Generator(model.device).manual_seed(seed)
    # image_processor.preprocess: [0, 1] -> [-1, 1], computed as the processor does (2 x - 1)
    pixels = (2.0 * pixels - 1.0).to(model.device, model.vae_dtype)
    z = model.vae.encode(pixels).latent_dist.sample(generator=generator)
    latents = (z.to(model.dtype) - model.shift_factor) * model.scaling_factor
    # torch.randn_like(latents[None, 0]), drawn after the posterior sample from the same seeded stream
    noise = torch.empty_like(latents[None, 0]).normal_(generator=generator).expand(latents.shape)
    scheduler = copy.deepcopy(model.scheduler)  # the helper sets its pipeline's scheduler; ours stays untouched
    scheduler.set_timesteps(flow_noise.SCHEDULE_STEPS, device=model.device)
    t = scheduler.timesteps[flow_noise.SCHEDULE_STEPS - 1 - int(timestep)]
    return scheduler.scale_noise(latents, timestep=t.unsqueeze(0), noise=noise)


@functools.lru_cache(maxsize=16)
def _skeleton(config_key: str) -> torch.nn.Module:
    """The transformer of a config on the meta device: structure and shapes, no memory, no weights."""
    from diffusers import SD3Transformer2DModel

    with torch.device("meta"):
        return SD3Transformer2DModel.from_config(json.loads(config_key))


@functools.lru_cache(maxsize=16)
def _layer_channels(config_key: str) -> dict[str, int]:
    """Each layer's channels from one meta-device forward pass at the smallest input (channels do not
    depend on the size)."""
    model = _skeleton(config_key)
    config = model.config
    names = ["pos_embed", *(f"{BLOCKS}[{i}]" for i in range(len(model.transformer_blocks))), "norm_out"]
    side = 2 * config.patch_size  # a 2 x 2 token grid
    with torch.device("meta"):
        sample = torch.zeros(1, config.in_channels, side, side)
        context = torch.zeros(1, TEXT_TOKENS, config.joint_attention_dim)
        pooled = torch.zeros(1, config.pooled_projection_dim)
        timestep = torch.ones(1)
    channels: dict[str, int] = {}

    def sink(name, output):
        channels[name] = int((output[1] if isinstance(output, tuple) else output).shape[-1])

    with torch.no_grad(), capture_layers(model, names, sink):
        run_until_captured(lambda: model(hidden_states=sample, timestep=timestep, encoder_hidden_states=context,
                                         pooled_projections=pooled))
    return channels


__all__ = ["SD3Conditioning", "SD3Family", "paper_noised_latents"]
