"""Parity on SDXL: sdaudit's ``paper`` protocol equals the published helper (``sdhelper`` 1.0.0) on a saved
``tiny-sdxl`` pipeline, every layer, same images, seed, timestep and batch size, offline.

The helper runs the tiny SDXL pipeline unpatched: a folder path is not one of its known model names,
so ``SD.__init__`` loads it with ``AutoPipelineForText2Image`` (sdhelper.py:300, a
``StableDiffusionXLPipeline``) and ``SD._img2repr`` takes its U-Net branch (sdhelper.py:597-623):
pixels / 255, a VAE posterior sample, one noise shared by the batch, DDIM ``add_noise``, the Euler
scheduler's ``scale_model_input``, ``encode_prompt`` of the empty prompt, and the U-Net called with
``addition_embed_type = 'nothing_at_all'`` and no ``added_cond_kwargs``. Its hard-coded channel counts
(1536, 3072) are only in the SD3 and FLUX branches; nothing downloads (``DDIMScheduler.from_pretrained``
reads the folder).

One difference is not the protocol's but PyTorch's: the helper's pipeline leaves ``requires_grad``
on (``from_pretrained`` does), sdaudit's is off. ``torch.matmul`` folds a 3-d input into one ``mm``
when the weight requires grad and otherwise does not (``should_fold`` in
aten/src/ATen/native/LinearAlgebra.cpp), so every ``Linear`` on a non-contiguous token sequence (the
``use_linear_projection`` ``proj_in`` of SDXL's transformers, from ``down_blocks[2].attentions[0]`` on)
rounds differently: up to ~2e-6 here. With the helper's U-Net flag matched to sdaudit's (the
helper runs under ``no_grad``, so the flag changes nothing else) the two are bitwise equal.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sdaudit.extraction import ExtractionSettings, Extractor
from sdaudit.models import load_model
from tests.conftest import random_photo, require
from tests.test_extraction import run_batched

BATCH_SIZE = 2  # 5 images: two full batches and a lone last one


@pytest.fixture(scope="module")
def sdxl_folder(tmp_path_factory):
    """The built-in tiny-sdxl model saved as a diffusers pipeline folder."""
    folder = tmp_path_factory.mktemp("tiny-sdxl-pipeline")
    load_model("tiny-sdxl", device="cpu").save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def ours(sdxl_folder):
    """sdaudit's ``paper`` protocol on the saved folder: (images, settings, {layer: (5, C, h, w)})."""
    images = [random_photo(i, size=(64, 64)) for i in range(5)]
    model = load_model(str(sdxl_folder), device="cpu")
    settings = ExtractionSettings(size=64, protocol="paper")
    return images, settings, run_batched(Extractor(model, model.family.layer_names(), settings), images, BATCH_SIZE)


def helper_reps(sdxl_folder, images, settings, layers, *, requires_grad: bool) -> dict[str, torch.Tensor]:
    """sdhelper's ``img2repr`` on the same folder and images: {layer: (5, C, h, w)}."""
    sdhelper = require("sdhelper", "sdhelper 1.0.0, the authors' helper, is not installed (pip install sdhelper==1.0.0)")
    reference = sdhelper.SD(str(sdxl_folder), device="cpu", disable_progress_bar=True, local_files_only=True)
    assert type(reference.pipeline).__name__ == "StableDiffusionXLPipeline"
    reference.pipeline.unet.requires_grad_(requires_grad)
    expected = reference.img2repr(images, layers, settings.timestep, seed=settings.seed, batch_size=BATCH_SIZE)
    return {name: torch.stack([r[name][0] for r in expected]).float() for name in layers}


def test_paper_protocol_equals_sdhelper_bitwise_on_tiny_sdxl(sdxl_folder, ours):
    """All 34 layers, all 5 images (full batches and the lone last one): bitwise equal."""
    images, settings, got = ours
    assert len(got) == 34
    expected = helper_reps(sdxl_folder, images, settings, list(got), requires_grad=False)
    for name, value in got.items():
        assert value.shape == expected[name].shape and torch.equal(value, expected[name]), name


def test_paper_protocol_equals_sdhelper_as_published_on_tiny_sdxl(sdxl_folder, ours):
    """The helper exactly as it loads the pipeline: equal to float32 rounding (the SD parity test's tolerance),
    and bitwise up to the first layer the ``requires_grad`` flag reaches (``down_blocks[2].attentions[0]``)."""
    images, settings, got = ours
    expected = helper_reps(sdxl_folder, images, settings, list(got), requires_grad=True)
    first_affected = list(got).index("down_blocks[2].attentions[0]")
    for i, (name, value) in enumerate(got.items()):
        np.testing.assert_allclose(value.numpy(), expected[name].numpy(), rtol=0, atol=1e-5, err_msg=name)
        if i < first_affected:
            assert torch.equal(value, expected[name]), name
