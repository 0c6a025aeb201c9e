"""Extraction protocols: clean is batch-independent and deterministic; paper equals sdhelper 1.0.0."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from sdaudit.extraction import ExtractionSettings, Extractor
from tests.conftest import require

LAYERS = ["conv_in", "down_blocks[1].attentions[0]", "mid_block.resnets[1]", "up_blocks[1].upsamplers[0]", "conv_out"]


def run_batched(extractor, images, batch_size):
    out = {name: [] for name in extractor.layers}
    for start in range(0, len(images), batch_size):
        part = images[start:start + batch_size]
        reps = extractor.run(part, list(range(start, start + len(part))))
        for name in out:
            out[name].append(reps[name])
    return {name: torch.cat(parts) for name, parts in out.items()}


def test_clean_protocol_is_independent_of_batch_size(tiny, images5):
    extractor = Extractor(tiny, LAYERS, ExtractionSettings(size=64))
    one = run_batched(extractor, images5, 1)
    three = run_batched(extractor, images5, 3)
    five = run_batched(extractor, images5, 5)
    for name in LAYERS:
        scale = one[name].abs().max().item()
        # Same random draws whatever the batch; only float32 summation order differs.
        assert torch.allclose(one[name], three[name], rtol=0, atol=1e-5 * max(scale, 1.0)), name
        assert torch.allclose(one[name], five[name], rtol=0, atol=1e-5 * max(scale, 1.0)), name


def test_paper_protocol_depends_on_batch_size(tiny, images5):
    """Quirk 3 of the published code, reproduced on purpose: shared noise per batch."""
    extractor = Extractor(tiny, ["conv_in"], ExtractionSettings(size=64, protocol="paper"))
    one = run_batched(extractor, images5, 1)["conv_in"]
    five = run_batched(extractor, images5, 5)["conv_in"]
    assert not torch.allclose(one[1], five[1], atol=1e-2)


def test_deterministic_and_seeded(tiny, images5):
    settings = ExtractionSettings(size=64)
    a = Extractor(tiny, LAYERS, settings).run(images5[:2], [0, 1])
    b = Extractor(tiny, LAYERS, settings).run(images5[:2], [0, 1])
    c = Extractor(tiny, LAYERS, ExtractionSettings(size=64, seed=7)).run(images5[:2], [0, 1])
    for name in LAYERS:
        assert torch.equal(a[name], b[name])
        assert not torch.allclose(a[name], c[name])


def test_clean_noise_is_independent_per_image(tiny, images5):
    same = [images5[0], images5[0]]
    reps = Extractor(tiny, ["conv_in"], ExtractionSettings(size=64)).run(same, [0, 1])["conv_in"]
    assert not torch.allclose(reps[0], reps[1], atol=1e-3)
    paper = Extractor(tiny, ["conv_in"], ExtractionSettings(size=64, protocol="paper", timestep=999)).run(same, [0, 1])
    # the paper's shared noise dominates at t=999: both images get nearly the same input
    assert (paper["conv_in"][0] - paper["conv_in"][1]).abs().mean() < (reps[0] - reps[1]).abs().mean()


def test_noise_averaging_and_posterior_sample(tiny, images5):
    base = Extractor(tiny, ["conv_in"], ExtractionSettings(size=64)).run(images5[:1], [0])["conv_in"]
    avg = Extractor(tiny, ["conv_in"], ExtractionSettings(size=64, noise_samples=3)).run(images5[:1], [0])["conv_in"]
    sampled = Extractor(tiny, ["conv_in"], ExtractionSettings(size=64, latent="sample")).run(images5[:1], [0])["conv_in"]
    assert not torch.allclose(base, avg) and not torch.allclose(base, sampled)
    # conv_in is linear in its input: the average of 3 noised passes is conv_in of the average input
    assert avg.shape == base.shape


def test_model_config_is_not_mutated(tiny, images5):
    before = copy.deepcopy(dict(tiny.unet.config))
    scheduler_before = copy.deepcopy(dict(tiny.scheduler.config))
    Extractor(tiny, "all", ExtractionSettings(size=64, protocol="paper")).run(images5[:1], [0])
    assert dict(tiny.unet.config) == before and dict(tiny.scheduler.config) == scheduler_before


def test_forward_pass_stops_after_last_requested_layer(tiny, images5):
    calls = []
    handle = tiny.unet.up_blocks[0].register_forward_hook(lambda *a: calls.append(1))
    try:
        Extractor(tiny, "down_blocks[0]", ExtractionSettings(size=64)).run(images5[:1], [0])
        assert not calls
        Extractor(tiny, "conv_out", ExtractionSettings(size=64)).run(images5[:1], [0])
        assert calls
    finally:
        handle.remove()


@pytest.mark.parametrize("kwargs,needle", [
    ({"protocol": "fancy"}, "unknown protocol"), ({"timestep": 1000}, "outside"), ({"size": 100}, "multiple of 64"),
    ({"protocol": "paper", "latent": "mean"}, "samples the VAE posterior"), ({"noise_samples": 0}, "noise_samples"),
    ({"crop_px": 40}, "crop_px"),
])
def test_bad_settings(kwargs, needle, tiny):
    with pytest.raises(ValueError, match=needle):
        Extractor(tiny, ["conv_in"], ExtractionSettings(**{"size": 64, **kwargs}))


def test_paper_protocol_equals_sdhelper(tiny_folder, images5):
    """Same saved pipeline, images, seed and batch size: sdaudit's 'paper' protocol equals sdhelper 1.0.0."""
    sdhelper = require("sdhelper", "sdhelper 1.0.0, the authors' helper, is not installed (pip install sdhelper==1.0.0)")
    from sdaudit.models import load_model

    reference = sdhelper.SD(str(tiny_folder), device="cpu", disable_progress_bar=True, local_files_only=True)
    expected = reference.img2repr(images5, LAYERS, 50, seed=42, batch_size=2)
    model = load_model(str(tiny_folder), device="cpu")
    ours = run_batched(Extractor(model, LAYERS, ExtractionSettings(size=64, protocol="paper")), images5, 2)
    for name in LAYERS:
        ref = torch.stack([r[name][0] for r in expected]).float()
        # Bitwise equal for full batches; a lone last batch may differ by float32 rounding (~1e-6) because
        # sdhelper's pipeline holds its weights in freshly cast tensors and BLAS picks other kernels.
        np.testing.assert_allclose(ours[name].numpy(), ref.numpy(), rtol=0, atol=1e-5)
        assert torch.equal(ours[name][:4], ref[:4]), name


def test_out_of_memory_halves_the_batch_and_keeps_to_it(tiny, images5, monkeypatch):
    """A CUDA out-of-memory error splits the batch (clean protocol) and later batches keep the size that fitted."""
    extractor = Extractor(tiny, LAYERS, ExtractionSettings(size=64))
    one_by_one = [extractor.run([image], [i]) for i, image in enumerate(images5)]  # computed before faking CUDA
    sizes = []

    def fits_two(images, indices, device_output):
        sizes.append(len(images))
        if len(images) > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return {name: torch.cat([one_by_one[i][name] for i in indices]) for name in LAYERS}

    monkeypatch.setattr(extractor, "_run", fits_two)
    monkeypatch.setattr(tiny, "device", torch.device("cuda"))  # only run() looks at it; _run is replaced
    with pytest.warns(RuntimeWarning, match="out of memory with 5 images per pass; going on with 2"):
        got = extractor.run(images5, list(range(5)))
    assert sizes == [5, 2, 2, 1] and extractor.max_batch == 2
    for name in LAYERS:
        assert torch.equal(got[name], torch.cat([r[name] for r in one_by_one]))
    sizes.clear()
    extractor.run(images5[:4], list(range(4)))
    assert sizes == [2, 2]  # no new failed attempt at 4


def test_out_of_memory_under_paper_protocol_names_the_batch_size(tiny, images5, monkeypatch):
    extractor = Extractor(tiny, ["conv_in"], ExtractionSettings(size=64, protocol="paper"))

    def never_fits(images, indices, device_output):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")

    monkeypatch.setattr(extractor, "_run", never_fits)
    monkeypatch.setattr(tiny, "device", torch.device("cuda"))
    with pytest.raises(torch.cuda.OutOfMemoryError, match="3 image.*choose a smaller batch size"):
        extractor.run(images5[:3], [0, 1, 2])


def test_batch_size_zero_means_auto_and_is_refused_under_paper(tiny):
    from sdaudit.extraction.extractor import auto_batch_size
    from sdaudit.settings import check_batch_size

    assert check_batch_size(0, "clean") == 0 and check_batch_size(3, "paper") == 3
    for bad, protocol in ((0, "paper"), (-1, "clean")):
        with pytest.raises(ValueError, match=f"batch_size {bad}"):
            check_batch_size(bad, protocol)
    assert auto_batch_size(Extractor(tiny, ["conv_in"], ExtractionSettings(size=64)), default=4) == 4  # CPU
