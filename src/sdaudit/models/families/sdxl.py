"""The SDXL family (SDXL base, SDXL-Turbo, SDXL-Lightning): a ``UNet2DConditionModel`` with added conditioning.

SDXL differs from SD-1.x/2.x in three ways that matter here:

* **two text encoders** (CLIP ViT-L and OpenCLIP ViT-bigG): the prompt's conditioning is the
  concatenation of both encoders' penultimate hidden states, and the *pooled* embedding of the
  second (projected) encoder, as diffusers' ``StableDiffusionXLPipeline.encode_prompt`` makes them;
* **added time ids** (``addition_embed_type = "text_time"``): the original image size, the crop's
  top-left corner and the target size, embedded and added to the timestep embedding with the pooled
  prompt. Under ``clean`` sdaudit passes original = target = the image size (h, w) and crop (0, 0):
  the conditioning of an uncropped image of exactly that size;
* **layout**: 3 down blocks (the first without attention), transformer depth 1 / 2 / 10 in SDXL
  base, so each ``attentions[i]`` is a ``Transformer2DModel`` of several transformer blocks.

Hookable layers (same names and rule as the SD family, 34 for SDXL): ``conv_in``, every resnet,
attention, down- and upsampler, ``conv_out``. An ``attentions[i]`` layer is the output of the whole
``Transformer2DModel`` (all its transformer blocks, projection and residual), an (N, C, h, w) grid;
the individual ``transformer_blocks[j]`` inside it (token sequences) are not offered as layers.
There is no published SDXL layer figure, so the ``paper`` set is every layer.

Quirk of ``paper``: the published helper (``sdhelper`` 1.0.0, ``SD._img2repr``) sets
``unet.config.addition_embed_type`` to a non-value before its U-Net call and passes no
``added_cond_kwargs``, which switches the added conditioning (pooled prompt and time ids) off:
the U-Net sees the timestep embedding alone. ``paper`` reproduces this, for that pass only
(the config is restored afterwards); ``clean`` conditions properly. Noising is the SD family's
(:mod:`~sdaudit.models.families.sd_noise`), which is what the helper does for SDXL too.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from ..hooks import capture_layers, run_until_captured
from .base import Sink
from .unet import TEXT_TOKENS, UNetFamily

#: what ``paper`` sets ``addition_embed_type`` to, as the published helper does (any non-value works)
PAPER_ADDITION_OFF = "nothing_at_all"


@dataclass(frozen=True)
class SDXLConditioning:
    """One prompt's conditioning for the SDXL U-Net (batch of 1).

    Attributes:
        hidden_states: (1, 77, D1 + D2), both encoders' penultimate hidden states, concatenated.
        pooled: (1, P), the second encoder's projected pooled embedding.
        added: whether the added conditioning (pooled + time ids) is used; False under ``paper``.
    """

    hidden_states: torch.Tensor
    pooled: torch.Tensor
    added: bool = True


def time_ids(size_px: tuple[int, int], batch: int, device, dtype) -> torch.Tensor:
    """SDXL's added time ids (batch, 6): original size (h, w), crop top-left (0, 0), target size (h, w)."""
    h, w = size_px
    return torch.tensor([h, w, 0, 0, h, w], device=device, dtype=dtype).repeat(batch, 1)


@contextmanager
def added_conditioning_off(unet: torch.nn.Module):
    """The published helper's quirk, for one pass: ``addition_embed_type`` set to a non-value, then restored."""
    config = unet.config
    before = config.addition_embed_type
    # FrozenDict allows attribute assignment; the U-Net reads the attribute (``get_aug_embed``)
    config.addition_embed_type = PAPER_ADDITION_OFF
    try:
        yield
    finally:
        config.addition_embed_type = before


class SDXLFamily(UNetFamily):
    """SDXL (base, Turbo, Lightning): the SD U-Net family plus two text encoders and the added time ids.

    Args:
        config: the U-Net's config (``addition_embed_type`` is ``"text_time"``).
        vae_scale_factor: pixels per latent token (8).
    """

    name = "sdxl-unet"
    pipeline_class = "StableDiffusionXLPipeline"

    @classmethod
    def accepts(cls, config) -> bool:
        return is_sdxl_config(config)

    def paper_layers(self) -> list[str]:
        """Every layer: the paper shows no SDXL layer set, and the helper omits none."""
        return self.layer_names()

    def encode_prompt(self, model, prompt: str, *, protocol: str = "clean") -> SDXLConditioning:
        """Both encoders' penultimate hidden states (concatenated) and the second's pooled embedding, as
        ``StableDiffusionXLPipeline.encode_prompt`` makes them; ``added`` is off under ``paper`` (the quirk)."""
        states, pooled = [], None
        with torch.inference_mode():
            for tokenizer, encoder in ((model.tokenizer, model.text_encoder), (model.tokenizer_2, model.text_encoder_2)):
                max_length = min(int(getattr(tokenizer, "model_max_length", TEXT_TOKENS)), TEXT_TOKENS)
                ids = tokenizer(prompt, padding="max_length", max_length=max_length, truncation=True,
                                return_tensors="pt").input_ids.to(model.device)
                output = encoder(ids, output_hidden_states=True)
                states.append(output.hidden_states[-2])
                if output[0].ndim == 2:  # a projection model's text_embeds: the pooled prompt (the pipeline's rule)
                    pooled = output[0]
        if pooled is None:
            raise ValueError("the second text encoder gives no pooled embedding (expected CLIPTextModelWithProjection)")
        return SDXLConditioning(torch.cat(states, dim=-1).to(model.dtype), pooled.to(model.dtype),
                                added=protocol != "paper")

    def added_cond_kwargs(self, model, context: SDXLConditioning, sample: torch.Tensor) -> dict:
        """The U-Net's ``added_cond_kwargs`` for a batch of latents: pooled prompt and time ids of its size."""
        batch, size_px = sample.shape[0], tuple(d * self.vae_scale_factor for d in sample.shape[-2:])
        return {"text_embeds": context.pooled.expand(batch, -1).contiguous(),
                "time_ids": time_ids(size_px, batch, model.device, model.dtype)}

    def run_denoiser(self, model, sample: torch.Tensor, timestep: int, context: SDXLConditioning, *,
                     layers: Sequence[str], sink: Sink) -> None:
        t = torch.tensor(timestep, dtype=torch.long, device=model.device)
        states = context.hidden_states.expand(sample.shape[0], -1, -1).contiguous()

        def forward():
            if context.added:
                return model.denoiser(sample, t, encoder_hidden_states=states,
                                  added_cond_kwargs=self.added_cond_kwargs(model, context, sample))
            with added_conditioning_off(model.denoiser):  # the published helper's call: no added_cond_kwargs
                return model.denoiser(sample, t, encoder_hidden_states=states)

        with capture_layers(model.denoiser, layers, lambda name, output: sink(name, self.to_grid(name, output))):
            run_until_captured(forward)


def is_sdxl_config(config) -> bool:
    """Whether a U-Net config is SDXL's (the ``text_time`` added conditioning)."""
    get = config.get if hasattr(config, "get") else lambda key, default=None: getattr(config, key, default)
    return get("addition_embed_type", None) == "text_time"


__all__ = ["SDXLConditioning", "SDXLFamily", "added_conditioning_off", "is_sdxl_config", "time_ids"]
