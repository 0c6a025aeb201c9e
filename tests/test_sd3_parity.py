"""Parity on SD3: sdaudit's ``paper`` protocol equals the published helper (``sdhelper`` 1.0.0) on a saved SD3
pipeline, every joint block, same images, seed, timestep and batch size, offline.

The helper's SD3 branch (``SD._img2repr``, sdhelper.py:551-569) reshapes every block's image stream to
1536 channels, hard-coded (SD3-medium's width). ``tiny-sd3`` is 32 channels wide, so the compared
pipeline is ``tiny-sd3`` with its transformer swapped for one of SD3-medium's width (24 heads x 64 =
1536) and 2 joint blocks (the last ``context_pre_only``, as in SD3); VAE, CLIP encoders and scheduler
are tiny-sd3's, plus the tiny T5 encoder (``build_tiny_sd3(t5=True)``): diffusers' ``from_pretrained``,
which the helper calls with no extra arguments, cannot load an SD3 folder saved without T5. The helper
is run with a config override of its known model, ``SD('SD3', config={'name': folder})`` (its
``__init__`` takes ``config`` in place of the known model's), so that ``model_name`` is 'SD3' and
``_img2repr`` takes the SD3 branch; ``AutoPipelineForText2Image`` loads the folder as a
``StableDiffusion3Pipeline``. Nothing downloads.

Three differences are not the protocol's. (1) The helper loads every pipeline in float16 and casts it
to float32 on the CPU, which rounds the transformer's sin-cos position table (a float32 buffer, not a
weight: the weights here are float16-exact) by up to 2.4e-4; the helper's table is restored to the
model's float32 one (the fixture checks that this is the only change). (2) The pooled prompt (see the
last test). (3) The ``requires_grad`` flag's effect on ``torch.matmul`` that test_sdxl_parity
describes. With (1) restored the features are equal to 1e-5 (max 5e-7 seen); with all three out of
the way, bitwise equal.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from sdaudit.extraction import ExtractionSettings, Extractor
from sdaudit.models import load_model
from sdaudit.models.offline_sd3 import TINY_SD3_TRANSFORMER_CONFIG
from tests.conftest import random_photo, require
from tests.test_extraction import run_batched

BATCH_SIZE = 2  # 5 images: two full batches and a lone last one
HELPER_WIDTH = {"num_layers": 2, "num_attention_heads": 24, "attention_head_dim": 64, "caption_projection_dim": 1536}


@pytest.fixture(scope="module")
def sd3_folder(tmp_path_factory):
    """tiny-sd3 with a 1536-wide, 2-block transformer and the tiny T5, saved as a diffusers pipeline folder."""
    from diffusers import SD3Transformer2DModel

    from sdaudit.models.offline_sd3 import build_tiny_sd3

    tiny = load_model("tiny-sd3", device="cpu")
    t5 = build_tiny_sd3(t5=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        wide = SD3Transformer2DModel.from_config({**TINY_SD3_TRANSFORMER_CONFIG, **HELPER_WIDTH}).eval()
    with torch.no_grad():
        for p in wide.parameters():  # float16-exact, as every offline model (the helper loads in float16)
            p.copy_(p.half().float())
    folder = tmp_path_factory.mktemp("sd3-1536-pipeline")
    dataclasses.replace(tiny, denoiser=wide.requires_grad_(False), family=None, text_encoder_3=t5["text_encoder_3"],
                        tokenizer_3=t5["tokenizer_3"]).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def helper(sd3_folder):
    """The published helper on the folder, its position table restored to float32 (see the module docstring)."""
    sdhelper = require("sdhelper", "sdhelper 1.0.0, the authors' helper, is not installed (pip install sdhelper==1.0.0)")
    reference = sdhelper.SD("SD3", device="cpu", disable_progress_bar=True, local_files_only=True,
                            config={"name": str(sd3_folder)})
    assert type(reference.pipeline).__name__ == "StableDiffusion3Pipeline" and reference.model_name == "SD3"
    table = reference.pipeline.transformer.pos_embed.pos_embed
    exact = load_model(str(sd3_folder), device="cpu").denoiser.pos_embed.pos_embed
    assert 0 < (table - exact).abs().max() < 1e-3  # float16-rounded by the helper's loading
    with torch.no_grad():
        table.copy_(exact)
    return reference


def _helper_reps(helper, images, layers, settings, batch_size):
    expected = helper.img2repr(images, layers, settings.timestep, seed=settings.seed, batch_size=batch_size)
    return {name: torch.stack([r[name][0] for r in expected]).float() for name in layers}


def test_paper_protocol_equals_sdhelper_on_a_1536_wide_sd3(sd3_folder, helper):
    """Both joint blocks, all 5 images (full batches and the lone last one): equal to float32 rounding."""
    images = [random_photo(i, size=(64, 64)) for i in range(5)]
    model = load_model(str(sd3_folder), device="cpu")
    settings = ExtractionSettings(size=64, protocol="paper")
    layers = model.family.paper_layers()
    assert layers == ["transformer_blocks[0]", "transformer_blocks[1]"] == helper.available_extract_positions
    got = run_batched(Extractor(model, layers, settings), images, BATCH_SIZE)
    expected = _helper_reps(helper, images, layers, settings, BATCH_SIZE)
    for name in layers:
        assert got[name].shape == expected[name].shape == (5, 1536, 4, 4), name
        np.testing.assert_allclose(got[name].numpy(), expected[name].numpy(), rtol=0, atol=1e-5, err_msg=name)


def test_with_the_helpers_batch_conditioning_the_paper_protocol_is_bitwise_equal(sd3_folder, helper):
    """The one difference left is the pooled prompt: the helper encodes the prompt once per batch (a list of N
    empty prompts), sdaudit once per run; the CLIP projection of a batch of 2 rounds differently from one of 1
    (a matrix product against a vector product). Given the helper's batch-of-2 conditioning, and the helper's
    transformer flag ``requires_grad`` matched to sdaudit's (it decides whether ``torch.matmul`` folds a 3-d
    input into one matrix product; the helper runs under ``no_grad``, so the flag changes nothing else, see
    test_sdxl_parity), every image of full batches is bitwise equal."""
    from sdaudit.models.families.sd3 import SD3Conditioning

    images = [random_photo(i, size=(64, 64)) for i in range(4)]
    model = load_model(str(sd3_folder), device="cpu")
    settings = ExtractionSettings(size=64, protocol="paper")
    layers = model.family.paper_layers()
    extractor = Extractor(model, layers, settings)
    with torch.no_grad():  # as in the helper's _img2repr
        embeds, _, pooled, _ = helper.pipeline.encode_prompt(prompt=[""] * BATCH_SIZE, prompt_2=None, prompt_3=None)
    assert torch.equal(extractor._context.prompt_embeds, embeds[:1])
    extractor._context = SD3Conditioning(embeds[:1], pooled[:1])
    got = run_batched(extractor, images, BATCH_SIZE)
    helper.pipeline.transformer.requires_grad_(False)
    try:
        expected = _helper_reps(helper, images, layers, settings, BATCH_SIZE)
    finally:
        helper.pipeline.transformer.requires_grad_(True)
    for name in layers:
        assert torch.equal(got[name], expected[name]), (name, (got[name] - expected[name]).abs().max())
