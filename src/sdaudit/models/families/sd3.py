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
L instead, which is the same for square inputs); what SD3 shares with FLUX (skeleton, channels, grid,
hooks) lives in :mod:`~sdaudit.models.families.transformer`. So an input side must be a multiple of the VAE factor
times the patch size (16 px for SD3). The paper set is the helper's: the ``transformer_blocks``.

Conditioning is ``StableDiffusion3Pipeline.encode_prompt``'s, run once per prompt: both CLIP encoders'
penultimate hidden states, concatenated, zero-padded to T5's width and followed by T5's hidden
states, and both CLIP pooled embeddings concatenated. T5 (``text_encoder_3``) is optional: without it
its part is zeros, as diffusers does. sdaudit conditions on the empty prompt, for which T5 adds one
constant; leaving T5-XXL out (4.7 B parameters, about 9 GB in float16) changes that constant only.

Noise is flow matching (:mod:`~sdaudit.models.families.flow_noise`). ``clean``: [-1, 1] pixels,
posterior mean, independent noise per image, sigma from the model's scheduler at sdaudit's timestep.
``paper`` reproduces the helper's SD3 branch (``sdhelper`` 1.0.0, ``SD._img2repr``):
:func:`flow_noise.paper_noised` on a copy of the model's own (shifted) scheduler after
``set_timesteps(1000)``.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from ...layer_names import LayerError
from . import flow_noise
from .base import Sink
from .transformer import BLOCKS, TransformerFamily, run_hooked

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


class SD3Family(TransformerFamily):
    """SD3 / SD3.5 (medium, large): the MMDiT transformer, its joint blocks and the flow-matching noise.

    Args:
        config: the transformer's config (``transformer/config.json`` as a mapping).
        vae_scale_factor: pixels per latent value (8).
    """

    name = "sd3-mmdit"
    pipeline_class = "StableDiffusion3Pipeline"
    anomaly_layer = ""  # no published SD3 anomaly layer: the middle audited layer (ModelFamily's fallback)
    transformer_class = "SD3Transformer2DModel"
    required_keys = frozenset({"joint_attention_dim", "caption_projection_dim", "pos_embed_max_size"})

    def __init__(self, config: Mapping, vae_scale_factor: int = 8):
        super().__init__(config, vae_scale_factor)
        config = dict(config)
        self.patch = int(config.get("patch_size", 2))
        self.max_tokens = config.get("pos_embed_max_size")

    # ---- structure ----------------------------------------------------------------------------

    def layer_names(self) -> list[str]:
        n = int(json.loads(self.config_key)["num_layers"])
        return ["pos_embed", *(f"{BLOCKS}[{i}]" for i in range(n)), "norm_out"]

    def multiple_why(self) -> str:
        return f"VAE factor {self.vae_scale_factor} x patch size {self.patch}"

    def check_side(self, side: int) -> None:
        """A positive multiple of 16 px, within the position table's ``pos_embed_max_size`` tokens per side."""
        super().check_side(side)
        m = self.pixel_multiple
        if self.max_tokens is not None and side // m > int(self.max_tokens):
            raise LayerError(f"size {side} px gives {side // m} tokens per side, more than the model's position "
                             f"table (pos_embed_max_size {self.max_tokens}): at most {int(self.max_tokens) * m} px")

    def meta_inputs(self, config, side: int) -> tuple[dict, int]:
        with torch.device("meta"):
            return {"hidden_states": torch.zeros(1, config.in_channels, side * self.patch, side * self.patch),
                    "timestep": torch.ones(1),
                    "encoder_hidden_states": torch.zeros(1, TEXT_TOKENS, config.joint_attention_dim),
                    "pooled_projections": torch.zeros(1, config.pooled_projection_dim)}, TEXT_TOKENS

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
        grid = (sample.shape[-2] // self.patch, sample.shape[-1] // self.patch)
        value, _ = flow_noise.timestep_and_sigma(model.scheduler, timestep, grid[0] * grid[1])
        # the schedule's timestep value (sigma * 1000) in float32, as the pipeline passes it
        t = torch.full((batch,), value, dtype=torch.float32, device=model.device)
        kwargs = {"hidden_states": sample, "timestep": t,
                  "encoder_hidden_states": context.prompt_embeds.expand(batch, -1, -1).contiguous(),
                  "pooled_projections": context.pooled.expand(batch, -1).contiguous()}
        run_hooked(model, layers, self.hook_for(sink, grid), kwargs)


def paper_noised_latents(model, pixels: torch.Tensor, timestep: int, seed: int) -> torch.Tensor:
    """The helper's transformer input for one batch (see the module docstring); ``pixels`` in [0, 1]."""
    scheduler = copy.deepcopy(model.scheduler)  # the helper sets its pipeline's scheduler; ours stays untouched
    scheduler.set_timesteps(flow_noise.SCHEDULE_STEPS, device=model.device)
    return flow_noise.paper_noised(model, pixels, timestep, seed, scheduler)


__all__ = ["SD3Conditioning", "SD3Family", "paper_noised_latents"]
