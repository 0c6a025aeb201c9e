"""Massive channels dropped or normalised on planted channels; the border ring weighted or masked."""

from __future__ import annotations

import numpy as np
import pytest

from sdaudit.analyses import channel_magnitudes
from sdaudit.errors import UsageError
from sdaudit.mitigations import BorderWeight, MassiveChannels

MASSIVE = [3, 17]


def planted_channels(n_images=12, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n_images, 24, 6, 5)).astype(np.float32)
    x[:, MASSIVE] = 500.0 + 50 * x[:, MASSIVE]  # huge on every token, with some variation across tokens
    return x


def test_drop_sets_the_planted_channels_to_their_fitted_mean():
    x = planted_channels()
    m = MassiveChannels(mode="drop").fit(x)
    assert m.channels_.tolist() == MASSIVE
    out = m.transform(x)
    brute = x[:, MASSIVE].astype(np.float64).mean(axis=(0, 2, 3))
    np.testing.assert_allclose(out[:, MASSIVE], np.broadcast_to(brute[None, :, None, None], out[:, MASSIVE].shape),
                               rtol=1e-6)
    others = [c for c in range(24) if c not in MASSIVE]
    np.testing.assert_array_equal(out[:, others], x[:, others])
    assert out.shape == x.shape  # the channel count stays


def test_normalise_brings_the_planted_channels_to_the_median_magnitude():
    x = planted_channels()
    m = MassiveChannels(mode="normalise").fit(x)
    out = m.transform(x)
    after = np.median(channel_magnitudes(out), axis=0)
    np.testing.assert_allclose(after[MASSIVE], m.median_, rtol=1e-5)
    np.testing.assert_allclose(out[:, MASSIVE] / x[:, MASSIVE],  # a pure rescaling: the pattern is kept
                               np.broadcast_to((m.median_ / m.magnitudes_[MASSIVE])[None, :, None, None],
                                               out[:, MASSIVE].shape), rtol=1e-5)
    assert not MassiveChannels().fit(out).channels_.size


def test_no_massive_channel_leaves_the_features_unchanged():
    x = np.random.default_rng(1).standard_normal((5, 24, 6, 5)).astype(np.float32)
    for mode in ("drop", "normalise"):
        m = MassiveChannels(mode=mode).fit(x)
        assert m.channels_.size == 0
        np.testing.assert_array_equal(m.transform(x), x)


def test_channel_options_are_checked():
    with pytest.raises(UsageError, match="drop, normalise"):
        MassiveChannels(mode="remove")
    with pytest.raises(UsageError, match="ratio, mad"):
        MassiveChannels(rule="max")


@pytest.mark.parametrize("grid,ring", [((6, 5), 1), ((8, 8), 2), ((3, 7), 1)])
def test_border_weights_match_a_brute_force_ring(grid, ring):
    bw = BorderWeight(ring=ring, weight=0.25)
    brute = np.array([[0.25 if min(r, c, grid[0] - 1 - r, grid[1] - 1 - c) < ring else 1.0
                       for c in range(grid[1])] for r in range(grid[0])], np.float32)
    np.testing.assert_array_equal(bw.weights(grid), brute)
    x = np.random.default_rng(0).standard_normal((3, 4, *grid)).astype(np.float32)
    np.testing.assert_allclose(bw.fit(x).transform(x), x * brute, rtol=1e-7)


def test_border_mask_and_identity():
    x = np.random.default_rng(0).standard_normal((2, 4, 6, 6)).astype(np.float32)
    masked = BorderWeight(ring=1, weight=0.0).fit(x).transform(x)
    assert not masked[:, :, 0].any() and not masked[:, :, :, -1].any()
    np.testing.assert_array_equal(masked[:, :, 1:-1, 1:-1], x[:, :, 1:-1, 1:-1])
    np.testing.assert_array_equal(BorderWeight(weight=1.0).fit(x).transform(x), x)
    assert BorderWeight(ring=2).weights(4).sum() == 0  # a ring as wide as half the grid masks everything


@pytest.mark.parametrize("kwargs,match", [({"ring": 0}, "ring width"), ({"ring": 1.5}, "ring width"),
                                          ({"weight": 1.5}, r"\[0, 1\]"), ({"weight": -0.1}, r"\[0, 1\]")])
def test_border_options_are_checked(kwargs, match):
    with pytest.raises(UsageError, match=match):
        BorderWeight(**kwargs)
