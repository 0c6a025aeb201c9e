"""Flow-matching noise (SD3, FLUX): the schedule's sigma at sdaudit's timestep, and x_t as the schedulers make it."""

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from diffusers.pipelines.flux.pipeline_flux import calculate_shift

from sdaudit.models.families import flow_noise


def test_sigma_is_the_published_helpers_sd3_schedule_entry():
    """sdhelper (SD3): set_timesteps(1000), timestep = timesteps[999 - step]."""
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    scheduler.set_timesteps(28)  # a pipeline's inference schedule, which must survive
    reference = FlowMatchEulerDiscreteScheduler(shift=3.0)
    reference.set_timesteps(1000)
    for step in (0, 50, 261, 999):
        value, sigma = flow_noise.timestep_and_sigma(scheduler, step, image_seq_len=4096)
        assert value == float(reference.timesteps[999 - step])
        assert sigma == pytest.approx(value / 1000, rel=1e-6)
    assert flow_noise.timestep_and_sigma(scheduler, 999, 4096)[1] == 1.0
    assert len(scheduler.timesteps) == 28  # the model's scheduler is untouched


def test_dynamic_shift_grows_with_the_number_of_tokens_as_in_diffusers():
    config = {"base_shift": 0.5, "max_shift": 1.15, "base_image_seq_len": 256, "max_image_seq_len": 4096}
    for tokens in (256, 1024, 4096):
        assert flow_noise.resolution_mu(config, tokens) == pytest.approx(calculate_shift(tokens, 256, 4096, 0.5, 1.15))
    scheduler = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, **config)
    low = flow_noise.timestep_and_sigma(scheduler, 300, image_seq_len=256)[1]
    high = flow_noise.timestep_and_sigma(scheduler, 300, image_seq_len=4096)[1]
    assert 0 < low < high < 1  # more tokens (higher resolution) -> more noise at the same t


def test_noised_equals_the_schedulers_scale_noise():
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    scheduler.set_timesteps(1000)
    x, noise = torch.randn(2, 16, 4, 4), torch.randn(2, 16, 4, 4)
    t = scheduler.timesteps[999 - 120]
    expected = scheduler.scale_noise(x, t.unsqueeze(0), noise)
    _, sigma = flow_noise.timestep_and_sigma(FlowMatchEulerDiscreteScheduler(shift=3.0), 120, 4096)
    torch.testing.assert_close(flow_noise.noised(x, noise, sigma), expected)


def test_clean_noise_is_per_image_and_independent_of_the_batch():
    latents = torch.zeros(3, 16, 4, 4)
    together = flow_noise.clean_noise(latents, [4, 5, 6], seed=0)
    alone = flow_noise.clean_noise(latents[:1], [5], seed=0)
    torch.testing.assert_close(together[1:2], alone)
    assert not torch.equal(together[0], together[1])
    assert not torch.equal(flow_noise.clean_noise(latents[:1], [5], seed=0, sample=1), alone)
