"""The FLUX.1 family (FLUX.1-dev, FLUX.1-schnell): a ``FluxTransformer2DModel`` on packed 2x2 latent patches.

Layers (named like the U-Net families' module paths, in execution order):

* ``x_embedder``: the input embedding of the packed latents (a linear map of each 2x2 patch);
* ``transformer_blocks[i]``: the double-stream (MMDiT) blocks, 19 in FLUX.1; each returns
  (text stream, image stream) and the layer is the image stream (``output[1]``), as the published
  helper takes it;
* ``single_transformer_blocks[i]``: the single-stream blocks, 38 in FLUX.1, which the helper never
  exposes. diffusers changed what they return: before 0.35 one tensor, text tokens first, then image
  tokens; since 0.35 a (text, image) pair. :meth:`FluxFamily.to_grid` takes both and keeps the image
  tokens (the text-token count is the prompt's T5 length);
* ``norm_out``: the final adaptive layer norm, before the output projection.

Every layer is an (N, C, rows, cols) grid of the packed tokens: FLUX's VAE downsamples 8x and the
pipeline packs 2x2 latents into one token (diffusers' ``FluxPipeline._pack_latents``, positions from
``_prepare_latent_image_ids``), so the grid is (H / 16, W / 16) and sizes must be multiples of 16 px
(the audit's border crops, one token = size / n px per side, keep that). The ``paper`` set is the
helper's: the ``transformer_blocks`` only. What FLUX shares with SD3 (skeleton, channels, grid, hooks)
lives in :mod:`~sdaudit.models.families.transformer`; here are its own parts: the 2x2 packing, the
guidance embedding and the single-stream blocks' two output forms.

Conditioning (:meth:`FluxFamily.encode_prompt`) is ``FluxPipeline.encode_prompt``'s: CLIP's pooled
embedding, T5's hidden states (:data:`T5_TOKENS` tokens, the pipeline's default) and zero text ids,
computed once per prompt. FLUX-dev embeds a guidance scale (``guidance_embeds``): sdaudit passes
:data:`DEV_GUIDANCE`, the pipeline's default 3.5, under both protocols (sdaudit has no guidance
setting); schnell embeds none and gets none.

Noise: ``clean`` is :mod:`~sdaudit.models.families.flow_noise` (posterior mean, independent noise per
image, sigma from the model's 1000-step schedule with its resolution shift: FLUX-dev's dynamic ``mu``
for the packed token count; the transformer gets that schedule's timestep / 1000). ``paper`` is the
published helper's FLUX branch (``sdhelper`` 1.0.0, ``SD._img2repr``), which on diffusers 0.42 runs
only where the schedule is unshifted and the model has no guidance embedding (FLUX.1-schnell): a
posterior sample and one noise tensor shared by the batch drawn from one generator seeded with
``seed``, ``scale_noise`` on the unshifted 1000-step schedule at timestep ``step + 1``, and the
transformer called with timestep (step + 1) / 1000. Two places where the helper cannot run are
defined here, as documented deviations: FLUX-dev (its ``set_timesteps(1000)`` without ``mu`` fails
for a dynamic-shift scheduler, and ``guidance=None`` fails on a guidance-embedding transformer) gets
the same unshifted sigma and the guidance of ``clean``; and the ten timesteps whose float schedule
value is not exactly step + 1 (the helper's lookup raises there, e.g. 126, 250) use the entry the
helper means, index 999 - step.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from ...layer_names import block_of
from . import flow_noise
from .base import Sink
from .transformer import TransformerFamily, run_hooked, tokens_to_grid

#: the guidance scale FLUX-dev's guidance embedding gets (``FluxPipeline``'s default ``guidance_scale``)
DEV_GUIDANCE = 3.5
#: T5 tokens of a prompt (``FluxPipeline.encode_prompt``'s default ``max_sequence_length``)
T5_TOKENS = 512
PACK = 2  # latents are packed 2x2 into one token
META_TEXT_TOKENS = 8  # text tokens of the meta-device shape pass (shapes do not depend on it)


@dataclass(frozen=True)
class FluxConditioning:
    """One prompt's conditioning for the FLUX transformer (batch of 1).

    Attributes:
        prompt_embeds: (1, L, D) T5 hidden states.
        pooled: (1, P) CLIP's pooled embedding.
        text_ids: (L, 3) the text tokens' position ids (zeros).
        protocol: ``clean`` or ``paper``: how the transformer's timestep is made from sdaudit's t.
    """

    prompt_embeds: torch.Tensor
    pooled: torch.Tensor
    text_ids: torch.Tensor
    protocol: str = "clean"


def flux_pipeline(model):
    """A diffusers ``FluxPipeline`` around a loaded model's components (nothing copied), for its helpers."""
    from diffusers import FluxPipeline

    return FluxPipeline(**model.components())


def latent_grid(sample: torch.Tensor) -> tuple[int, int]:
    """The token grid (rows, cols) of (N, C, h, w) unpacked latents: 2x2 latents per token."""
    return sample.shape[-2] // PACK, sample.shape[-1] // PACK


def pack(sample: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, C, h, w) latents as FLUX's (N, h/2 * w/2, 4C) tokens and their (h/2 * w/2, 3) position ids."""
    from diffusers import FluxPipeline

    n, c, h, w = sample.shape
    ids = FluxPipeline._prepare_latent_image_ids(n, h // PACK, w // PACK, sample.device, sample.dtype)
    return FluxPipeline._pack_latents(sample, n, c, h, w), ids


def image_tokens(name: str, output, text_tokens: int | None) -> torch.Tensor:
    """The (N, tokens, C) image tokens of a FLUX layer's output: the second of a (text, image) pair (double
    blocks, and single blocks since diffusers 0.35), or a lone tensor: ``x_embedder`` and ``norm_out`` as
    they are, a single block's of diffusers before 0.35 (text tokens first) without its ``text_tokens``."""
    if isinstance(output, (tuple, list)):
        return output[1]
    if block_of(name).startswith("single_transformer_blocks"):
        if text_tokens is None:
            raise ValueError(f"{name} returned text and image tokens in one tensor: the text-token count is needed")
        return output[:, text_tokens:]
    return output


class FluxFamily(TransformerFamily):
    """FLUX.1 (dev, schnell): a ``FluxTransformer2DModel``, CLIP (pooled) + T5 (sequence) conditioning.

    Args:
        config: the transformer's config (a ``transformer/config.json`` as a mapping).
        vae_scale_factor: pixels per latent (8); a token covers 2x2 latents.
    """

    name = "flux"
    pipeline_class = "FluxPipeline"
    transformer_class = "FluxTransformer2DModel"
    required_keys = frozenset({"num_single_layers", "guidance_embeds"})
    patch = PACK

    def __init__(self, config: Mapping, vae_scale_factor: int = 8):
        super().__init__(config, vae_scale_factor)
        self.guidance = DEV_GUIDANCE if dict(config).get("guidance_embeds") else None

    # ---- structure ----------------------------------------------------------------------------

    def layer_names(self) -> list[str]:
        model = self.skeleton()
        return ["x_embedder", *(f"transformer_blocks[{i}]" for i in range(len(model.transformer_blocks))),
                *(f"single_transformer_blocks[{i}]" for i in range(len(model.single_transformer_blocks))), "norm_out"]

    def multiple_why(self) -> str:
        return f"FLUX: the VAE's factor {self.vae_scale_factor} x the 2x2 latent packing"

    def meta_inputs(self, config, side: int) -> tuple[dict, int]:
        with torch.device("meta"):
            hidden, img_ids = pack(torch.zeros(1, config.in_channels // (PACK * PACK), side * PACK, side * PACK))
            return {"hidden_states": hidden, "img_ids": img_ids, "timestep": torch.ones(1),
                    "encoder_hidden_states": torch.zeros(1, META_TEXT_TOKENS, config.joint_attention_dim),
                    "pooled_projections": torch.zeros(1, config.pooled_projection_dim),
                    "txt_ids": torch.zeros(META_TEXT_TOKENS, 3),
                    "guidance": torch.ones(1) if config.guidance_embeds else None}, META_TEXT_TOKENS

    def image_tokens(self, name: str, output, text_tokens: int | None) -> torch.Tensor:
        """:func:`image_tokens`: a single block's output of diffusers before 0.35 holds the text tokens too."""
        return image_tokens(name, output, text_tokens)

    # ---- computation --------------------------------------------------------------------------

    def noised_inputs(self, model, pixels: torch.Tensor, indices: Sequence[int], settings) -> list[torch.Tensor]:
        """Noised (N, 16, h, w) latents (packed in :meth:`run_denoiser`): see the module docstring."""
        s = settings
        if s.protocol == "paper":
            return [paper_noised_latents(model, pixels, s.timestep, s.seed)]
        latents = flow_noise.encode(model, pixels, indices=indices, seed=s.seed, latent=s.latent)
        rows, cols = latent_grid(latents)
        _, sigma = flow_noise.timestep_and_sigma(model.scheduler, s.timestep, rows * cols)
        return [flow_noise.noised(latents, flow_noise.clean_noise(latents, indices, seed=s.seed, sample=k), sigma)
                for k in range(s.noise_samples)]

    def encode_prompt(self, model, prompt: str, *, protocol: str = "clean") -> FluxConditioning:
        """``FluxPipeline.encode_prompt`` of one prompt: T5 hidden states, CLIP pooled embedding, text ids."""
        with torch.inference_mode():
            embeds, pooled, text_ids = flux_pipeline(model).encode_prompt(
                prompt=[prompt], prompt_2=None, device=model.device, max_sequence_length=T5_TOKENS)
        return FluxConditioning(embeds.to(model.dtype), pooled.to(model.dtype), text_ids, protocol)

    def transformer_timestep(self, model, timestep: int, sample: torch.Tensor, protocol: str) -> torch.Tensor:
        """The transformer's timestep for a batch (schedule value / 1000, as ``FluxPipeline`` passes it):
        the shifted schedule's under ``clean``, the helper's (t + 1) / 1000 under ``paper``."""
        rows, cols = latent_grid(sample)
        value = (float(timestep + 1) if protocol == "paper"
                 else flow_noise.timestep_and_sigma(model.scheduler, timestep, rows * cols)[0])
        return torch.tensor([value], device=sample.device).expand(sample.shape[0]).to(sample.dtype) / 1000

    def run_denoiser(self, model, sample: torch.Tensor, timestep: int, context: FluxConditioning, *,
                     layers: Sequence[str], sink: Sink) -> None:
        n = sample.shape[0]
        hidden, img_ids = pack(sample)
        kwargs = {"hidden_states": hidden,
                  "timestep": self.transformer_timestep(model, timestep, sample, context.protocol),
                  "encoder_hidden_states": context.prompt_embeds.expand(n, -1, -1).contiguous(),
                  "pooled_projections": context.pooled.expand(n, -1).contiguous(),
                  "txt_ids": context.text_ids, "img_ids": img_ids, "guidance": None}
        # the transformer's own guidance (not the prompt's: a conditioning is cached per prompt, not per denoiser)
        if self.guidance is not None:  # FluxPipeline's guidance tensor: float32, one value per image
            kwargs["guidance"] = torch.full([n], self.guidance, device=sample.device, dtype=torch.float32)
        # the text-token count: cut off a single block's output of diffusers before 0.35
        run_hooked(model, layers, self.hook_for(sink, latent_grid(sample), context.prompt_embeds.shape[1]), kwargs)


def paper_noised_latents(model, pixels: torch.Tensor, timestep: int, seed: int) -> torch.Tensor:
    """The helper's FLUX-branch latents for one batch (pixels in [0, 1], as ``paper`` prepares them):
    :func:`flow_noise.paper_noised` on the unshifted 1000-step schedule (schnell's own; FLUX-dev's without its
    shift: a deviation), started where the schedule's value is step + 1."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    config = {**model.scheduler.config, "shift": 1.0, "use_dynamic_shifting": False}
    scheduler = FlowMatchEulerDiscreteScheduler.from_config(config)
    scheduler.set_timesteps(flow_noise.SCHEDULE_STEPS, device=model.device)
    scheduler.set_begin_index(flow_noise.SCHEDULE_STEPS - 1 - int(timestep))
    return flow_noise.paper_noised(model, pixels, timestep, seed, scheduler)


__all__ = ["DEV_GUIDANCE", "FluxConditioning", "FluxFamily", "T5_TOKENS", "image_tokens", "pack",
           "paper_noised_latents", "tokens_to_grid"]
