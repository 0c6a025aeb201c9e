"""Control models: untrained weights and circular padding (design.md section 9)."""

import numpy as np
import pytest
import torch
from PIL import Image

from sdaudit.analyses import position_probe
from sdaudit.extraction import ExtractionSettings, Extractor
from sdaudit.models.controls import circular_padding, control_model, is_random_weights
from sdaudit.models.hashing import state_dict_sha256

LAYER = "up_blocks[1].upsamplers[0]"


@pytest.fixture(scope="module")
def noise_images():
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (128, 128, 3), dtype=np.uint8)) for _ in range(30)]  # 6 test images


def _probe(model, images):
    x = Extractor(model, [LAYER], ExtractionSettings(size=128)).run(images, list(range(len(images))))[LAYER]
    return position_probe(x.numpy(), resolutions=(8,))


def test_position_signal_comes_from_zero_padding(tiny, noise_images):
    """On pure-noise images the random-weight tiny model's probe is far above chance with zero padding and
    at chance (inside the interval) once the same weights pad circularly."""
    zero = _probe(tiny, noise_images)
    circ = _probe(control_model(tiny, "circular-padding"), noise_images)
    assert zero.intervals[8].low > 4 * zero.chance[8]
    assert circ.intervals[8].low <= circ.chance[8] <= circ.intervals[8].high


def test_controls_are_new_models_with_their_own_identity(tiny):
    before = state_dict_sha256(tiny.unet)
    untrained = control_model(tiny, "untrained", seed=3)
    circular = control_model(tiny, "circular-padding")
    assert state_dict_sha256(tiny.unet) == before and tiny.identity()["name"] == "tiny"  # original untouched
    assert untrained.identity()["name"] == "tiny [untrained (seed 3)]" and untrained.weights_sha256 != before
    assert control_model(tiny, "untrained", seed=3).weights_sha256 == untrained.weights_sha256  # seeded
    assert circular.weights_sha256 == before and circular.identity() != tiny.identity()
    assert untrained.extra["control"]["of"] == tiny.identity() and is_random_weights(untrained)
    with pytest.raises(ValueError, match="unknown control 'x'"):
        control_model(tiny, "x")


def test_untrained_control_differs_from_trained_weights(tiny, images5):
    """On a model whose weights were changed (a stand-in for training), the untrained control gives other
    representations: the control re-initialises what the change put there."""
    import copy
    import dataclasses

    unet = copy.deepcopy(tiny.unet)
    with torch.no_grad():
        generator = torch.Generator().manual_seed(5)
        for p in unet.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=generator))
    changed = dataclasses.replace(tiny, denoiser=unet)
    untrained = control_model(changed, "untrained", seed=0)
    a = Extractor(changed, [LAYER], ExtractionSettings(size=64)).run(images5, list(range(5)))[LAYER]
    b = Extractor(untrained, [LAYER], ExtractionSettings(size=64)).run(images5, list(range(5)))[LAYER]
    assert a.shape == b.shape and not torch.allclose(a, b, atol=1e-3)


def test_circular_padding_switches_only_padded_convolutions():
    net = torch.nn.Sequential(torch.nn.Conv2d(2, 2, 3, padding=1), torch.nn.Conv2d(2, 2, 1))
    out = circular_padding(net)
    assert [m.padding_mode for m in out] == ["circular", "zeros"] and net[0].padding_mode == "zeros"
    x = torch.randn(1, 2, 5, 5)
    rolled = torch.roll(x, shifts=(2, 3), dims=(2, 3))  # circular padding makes the map translation-equivariant
    assert torch.allclose(torch.roll(out(x), shifts=(2, 3), dims=(2, 3)), out(rolled), atol=1e-6)
    with pytest.raises(ValueError, match="no zero-padded convolution"):
        circular_padding(torch.nn.Conv2d(2, 2, 1))


def test_default_untrained_control_is_not_tinys_own_draw(tiny):
    """tiny is itself drawn with seed 0: its default untrained control (seed 1) must be other weights."""
    untrained = control_model(tiny, "untrained")
    assert untrained.identity()["name"] == "tiny [untrained (seed 1)]"
    assert untrained.weights_sha256 != state_dict_sha256(tiny.unet)
    same_draw = control_model(tiny, "untrained", seed=0)
    diff = max(float((a - b).abs().max()) for a, b in zip(same_draw.unet.parameters(), tiny.unet.parameters()))
    assert diff < 1e-3  # seed 0 would repeat tiny's draw (up to its float16 rounding)
