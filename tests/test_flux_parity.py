"""Parity on FLUX.1-schnell: sdaudit's ``paper`` protocol against the published helper (``sdhelper`` 1.0.0)
on a saved FLUX pipeline, offline.

The helper's FLUX branch (``SD._img2repr``, sdhelper.py:571-590) reshapes every layer to 3072 channels,
so the pipeline here has FLUX's real width (24 heads x 128) with one double and one single block;
its other parts are tiny (16-channel VAE with FLUX's shift and scale, tiny CLIP and T5) and its
scheduler is schnell's (shift 1, no dynamic shift; no guidance embedding): the helper cannot run
FLUX-dev on diffusers 0.42 (``set_timesteps(1000)`` without ``mu`` raises for a dynamic-shift
scheduler, and ``guidance=None`` fails on a guidance-embedding transformer). It is run as
``SD('FLUX-schnell', config={'name': folder}, local_files_only=True)``: the known model name picks the
FLUX branch, the config points it at the folder. Compared: ``transformer_blocks[0]`` (the only layer
the helper offers here), two 64 x 64 images in one batch, seed 42, timesteps 50 (the paper's) and 700. At the ten
timesteps where the float schedule holds no exact step + 1 (126, 250, ...) the helper raises, and
sdaudit uses the schedule entry it means (index 999 - step): checked below.

The helper's pipeline leaves ``requires_grad`` on, which for SDXL changes how ``torch.matmul`` rounds
``Linear`` layers on non-contiguous 3-d inputs (see test_sdxl_parity.py); here the two are bitwise
equal both with the flag matched to sdaudit's and with the helper exactly as it loads the pipeline.
"""

from __future__ import annotations

import pytest
import torch

from sdaudit.extraction import ExtractionSettings, Extractor
from sdaudit.models import load_model
from sdaudit.models.offline_flux import build_tiny_flux
from tests.conftest import random_photo, require

LAYER = "transformer_blocks[0]"
HELPER_WIDTH = 3072  # sdhelper's FLUX branch hard-codes 3072 channels (24 heads x 128)


@pytest.fixture(scope="module")
def schnell_folder(tmp_path_factory):
    """A FLUX-schnell-like pipeline of FLUX's width (1 double, 1 single block), float16 weights, saved."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    parts = build_tiny_flux()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        parts["transformer"] = FluxTransformer2DModel(
            in_channels=64, num_layers=1, num_single_layers=1, attention_head_dim=128, num_attention_heads=24,
            joint_attention_dim=32, pooled_projection_dim=32, guidance_embeds=False).half().eval()
    parts["scheduler"] = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0)
    folder = tmp_path_factory.mktemp("flux-schnell-pipeline")
    FluxPipeline(**parts).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def helper(schnell_folder):
    sdhelper = require("sdhelper",
                       "sdhelper 1.0.0, the authors' helper, is not installed (pip install sdhelper==1.0.0)")
    reference = sdhelper.SD("FLUX-schnell", device="cpu", disable_progress_bar=True,
                            config={"name": str(schnell_folder)}, local_files_only=True)
    assert type(reference.pipeline).__name__ == "FluxPipeline" and reference.available_extract_positions == [LAYER]
    return reference


@pytest.fixture(scope="module")
def ours(schnell_folder):
    return load_model(str(schnell_folder), device="cpu")


def _pair(ours, helper, timestep: int, *, requires_grad: bool):
    """Two 64 px images in one batch (the helper shares its noise over the batch, encodes the prompt per image)."""
    images = [random_photo(seed, size=(64, 64)) for seed in (3, 4)]
    settings = ExtractionSettings(size=64, protocol="paper", timestep=timestep)
    got = Extractor(ours, [LAYER], settings).run(images, [0, 1])[LAYER]
    helper.pipeline.transformer.requires_grad_(requires_grad)
    expected = helper.img2repr(images, [LAYER], timestep, seed=settings.seed, batch_size=2)
    return got, torch.cat([r[LAYER] for r in expected]).float()


@pytest.mark.parametrize("timestep", [50, 700])
def test_paper_protocol_equals_sdhelper_bitwise_on_flux_schnell(ours, helper, timestep):
    got, expected = _pair(ours, helper, timestep, requires_grad=False)
    assert ours.family.paper_layers() == [LAYER] and got.shape == expected.shape == (2, HELPER_WIDTH, 4, 4)
    assert torch.equal(got, expected)


def test_paper_protocol_equals_sdhelper_as_published_on_flux_schnell(ours, helper):
    got, expected = _pair(ours, helper, 50, requires_grad=True)
    assert torch.equal(got, expected) and expected.abs().max() > 0


def test_the_helper_cannot_run_where_the_schedule_misses_step_plus_one(ours, helper):
    """At t = 126 the helper's ``scale_noise`` finds no schedule value equal to 127 and fails; sdaudit's paper
    protocol runs there (schedule entry 999 - t)."""
    image = [random_photo(3, size=(64, 64))]
    with pytest.raises(IndexError):
        helper.img2repr(image, [LAYER], 126, seed=42, batch_size=1)
    got = Extractor(ours, [LAYER], ExtractionSettings(size=64, protocol="paper", timestep=126)).run(image, [0])[LAYER]
    assert got.shape == (1, HELPER_WIDTH, 4, 4) and torch.isfinite(got).all()
