"""How the SD-1.x/2.x family turns pixels into noised latents, under the two extraction protocols.

``paper`` reproduces the published code (``sdhelper`` 1.0.0, ``SD.img2repr``) exactly, quirks included:

1. pixels go to the VAE in [0, 1] (``/255``), not the [-1, 1] it was trained on
   (:func:`sdaudit.extraction.protocols.pixels_to_tensor` makes them so);
2. the latent is a sample of the VAE posterior, not its mean;
3. one noise tensor is shared by every image of a batch: a generator is seeded with ``seed`` for
   each batch, the posterior samples are drawn first (for the whole batch), then one noise tensor,
   which is expanded over the batch. Results therefore depend on the batch size;
4. the model's own scheduler's ``scale_model_input`` is applied after DDIM noising (a no-op for
   PNDM/DDIM, a division by sqrt(sigma^2 + 1) for Euler schedulers such as SD-Turbo's).

``clean`` (the default) fixes them: [-1, 1] input; the posterior mean (or, with ``latent="sample"``,
a sample seeded per image); independent noise per image from a generator seeded by
(seed, image index), drawn on the CPU so that it does not depend on the device or the batch;
no ``scale_model_input`` (DDIM's ``add_noise`` already gives the U-Net its training input).
``noise_samples`` > 1 averages each layer over several noise draws.
"""

from __future__ import annotations

import copy

import numpy as np
import torch


def image_generator(seed: int, index: int, stream: int) -> torch.Generator:
    """A CPU generator for one image and one purpose, seeded from (seed, image index, stream).

    Stream 0 draws the posterior sample, stream 1 + k the k-th noise sample. numpy's SeedSequence
    mixes the three numbers, so nearby seeds and indices give unrelated streams.
    """
    state = np.random.SeedSequence(entropy=int(seed), spawn_key=(int(index), int(stream))).generate_state(2, np.uint32)
    return torch.Generator("cpu").manual_seed(int(state[0]) << 32 | int(state[1]))


def paper_noised_latents(model, pixels: torch.Tensor, timestep: int, seed: int) -> torch.Tensor:
    """The published pipeline's U-Net input for one batch (see the module docstring)."""
    generator = torch.Generator(model.device).manual_seed(seed)
    posterior = model.vae.encode(pixels.to(model.device, model.vae_dtype)).latent_dist
    latents = posterior.sample(generator=generator).to(model.dtype) * model.scaling_factor
    # torch.randn_like(latents[None, 0]) as published: it fills the tensor in the latent's memory
    # order, which is channels-last when the VAE's convolutions return that layout.
    noise = torch.empty_like(latents[None, 0]).normal_(generator=generator).expand(latents.shape)
    t = torch.tensor(timestep, dtype=torch.long, device=model.device)
    noised = model.noise_scheduler().add_noise(latents, noise, t)
    # A copy, because schedulers such as Euler keep a step index once scale_model_input has run.
    return copy.deepcopy(model.scheduler).scale_model_input(noised, t)


def clean_latents(model, pixels: torch.Tensor, indices, seed: int, latent: str) -> torch.Tensor:
    """Clean VAE latents (scaled) for a batch: posterior mean, or a sample seeded per image."""
    posterior = model.vae.encode(pixels.to(model.device, model.vae_dtype)).latent_dist
    if latent == "mean":
        latents = posterior.mean
    else:
        eps = torch.stack([torch.randn(posterior.mean.shape[1:], generator=image_generator(seed, i, 0)) for i in indices])
        latents = posterior.mean + posterior.std * eps.to(posterior.mean.device, posterior.mean.dtype)
    return latents.to(model.dtype) * model.scaling_factor


def clean_noised(model, latents: torch.Tensor, indices, *, timestep: int, seed: int, sample: int = 0) -> torch.Tensor:
    """DDIM-noised latents with independent per-image noise (noise draw number ``sample``)."""
    noise = torch.stack([torch.randn(latents.shape[1:], generator=image_generator(seed, i, 1 + sample)) for i in indices])
    t = torch.tensor(timestep, dtype=torch.long, device=model.device)
    return model.noise_scheduler().add_noise(latents, noise.to(latents.device, latents.dtype), t)


def noised_inputs(model, pixels: torch.Tensor, indices, settings) -> list[torch.Tensor]:
    """The U-Net inputs of one batch under ``settings.protocol``: one tensor per noise sample."""
    s = settings
    if s.protocol == "paper":
        return [paper_noised_latents(model, pixels, s.timestep, s.seed)]
    latents = clean_latents(model, pixels, indices, s.seed, s.latent)
    return [clean_noised(model, latents, indices, timestep=s.timestep, seed=s.seed, sample=k)
            for k in range(s.noise_samples)]
