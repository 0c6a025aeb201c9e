"""How flow-matching families (SD3 / SD3.5, FLUX.1) turn pixels into noised latents.

Flow matching noises a clean latent x_0 along a straight line: x_t = (1 - sigma) x_0 + sigma * noise,
sigma in (0, 1]. sdaudit's timestep t (0..999, as for the DDPM families: larger is noisier) picks
sigma from the model's own scheduler run as a 1000-step schedule: ``timesteps[999 - t]`` after
``set_timesteps(1000)``, as the published helper does for SD3. The scheduler applies the model's
resolution shift: SD3's static ``shift`` (3.0), or FLUX-dev's dynamic shift, whose ``mu`` grows
with the number of image tokens (:func:`resolution_mu`, diffusers' rule between
``base_image_seq_len`` and ``max_image_seq_len``). The denoiser is then called with that schedule's
``timestep`` value (sigma * 1000); a family converts it to what its transformer expects.

Latents are the VAE's, shifted and scaled: ``(z - shift_factor) * scaling_factor`` (16 channels).
``clean`` uses the posterior mean (or a sample seeded per image) and independent noise per image
(the same per-image generators as the SD families, :func:`sd_noise.image_generator`). ``paper``
(:func:`paper_noised`) is the published helper's transformer branch, shared by SD3 and FLUX: a generator
seeded with ``seed`` draws the posterior sample of the [-1, 1] pixels and then one noise tensor for the
whole batch, and the scheduler's ``scale_noise`` noises at ``timesteps[999 - t]`` of a 1000-step schedule
the family prepares (where the families differ: SD3's own shifted schedule, FLUX's unshifted one).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch

from .sd_noise import image_generator

SCHEDULE_STEPS = 1000


def resolution_mu(scheduler_config, image_seq_len: int) -> float:
    """The dynamic shift's ``mu`` for ``image_seq_len`` image tokens: linear from ``base_shift`` at
    ``base_image_seq_len`` to ``max_shift`` at ``max_image_seq_len`` (diffusers' FLUX pipelines' rule)."""
    c = scheduler_config
    slope = (c["max_shift"] - c["base_shift"]) / (c["max_image_seq_len"] - c["base_image_seq_len"])
    return float(image_seq_len * slope + c["base_shift"] - slope * c["base_image_seq_len"])


def schedule(scheduler, image_seq_len: int):
    """A copy of the model's flow-matching scheduler set to the 1000-step schedule (with the dynamic
    resolution shift when the model uses one); the model's own scheduler is left untouched."""
    scheduler = copy.deepcopy(scheduler)
    mu = resolution_mu(scheduler.config, image_seq_len) if scheduler.config.get("use_dynamic_shifting") else None
    scheduler.set_timesteps(SCHEDULE_STEPS, device="cpu", **({"mu": mu} if mu is not None else {}))
    return scheduler


def timestep_and_sigma(scheduler, timestep: int, image_seq_len: int) -> tuple[float, float]:
    """The schedule's timestep value (sigma * 1000 for these schedulers) and sigma at sdaudit's timestep t."""
    if not 0 <= int(timestep) < SCHEDULE_STEPS:
        raise ValueError(f"timestep {timestep} outside 0..{SCHEDULE_STEPS - 1}")
    s = schedule(scheduler, image_seq_len)
    index = SCHEDULE_STEPS - 1 - int(timestep)
    return float(s.timesteps[index]), float(s.sigmas[index])


def encode(model, pixels: torch.Tensor, *, indices: Sequence[int] = (), seed: int = 0, latent: str = "mean",
           generator: torch.Generator | None = None) -> torch.Tensor:
    """Shifted and scaled VAE latents of a batch of pixels in [-1, 1]: the posterior mean, a sample seeded
    per image (``latent="sample"``), or a sample from ``generator`` (the published helper's draw)."""
    posterior = model.vae.encode(pixels.to(model.device, model.vae_dtype)).latent_dist
    if generator is not None:
        z = posterior.sample(generator=generator)
    elif latent == "mean":
        z = posterior.mean
    else:
        eps = torch.stack([torch.randn(posterior.mean.shape[1:], generator=image_generator(seed, i, 0)) for i in indices])
        z = posterior.mean + posterior.std * eps.to(posterior.mean.device, posterior.mean.dtype)
    return ((z - model.shift_factor) * model.scaling_factor).to(model.dtype)


def clean_noise(latents: torch.Tensor, indices: Sequence[int], *, seed: int, sample: int = 0) -> torch.Tensor:
    """Independent noise per image, drawn on the CPU from (seed, image index, noise draw ``sample``)."""
    noise = torch.stack([torch.randn(latents.shape[1:], generator=image_generator(seed, i, 1 + sample))
                         for i in indices])
    return noise.to(latents.device, latents.dtype)


def noised(latents: torch.Tensor, noise: torch.Tensor, sigma: float) -> torch.Tensor:
    """x_t = (1 - sigma) x_0 + sigma * noise (what the schedulers' ``scale_noise`` computes)."""
    return (1.0 - sigma) * latents + sigma * noise


def paper_noised(model, pixels: torch.Tensor, timestep: int, seed: int, scheduler) -> torch.Tensor:
    """The published helper's noised latents for one batch of pixels in [0, 1], on ``scheduler`` (a copy the
    family set to :data:`SCHEDULE_STEPS` steps; ``scale_noise`` takes its timestep at index 999 - t)."""
    generator = torch.Generator(model.device).manual_seed(seed)  # the helper's seeded stream
    # its image_processor.preprocess: [0, 1] -> [-1, 1], computed as the processor does (2 x - 1)
    images = (2.0 * pixels - 1.0).to(model.device, model.vae_dtype)
    z = model.vae.encode(images).latent_dist.sample(generator=generator)
    latents = (z.to(model.dtype) - model.shift_factor) * model.scaling_factor
    # torch.randn_like(latents[None, 0]), drawn after the posterior sample from the same seeded stream
    noise = torch.empty_like(latents[None, 0]).normal_(generator=generator).expand(latents.shape)
    t = scheduler.timesteps[SCHEDULE_STEPS - 1 - int(timestep)]
    return scheduler.scale_noise(latents, timestep=t.unsqueeze(0), noise=noise)
