"""Position mitigations on a planted positional code: both remove it (probe to chance), each keeps what it says."""

from __future__ import annotations

import numpy as np
import pytest

from sdaudit.analyses import position_probe
from sdaudit.analyses.synthetic import positional_features
from sdaudit.mitigations import PositionMean, PositionSubspace, fit_mitigation

N = 8


@pytest.fixture(scope="module")
def planted():
    """240 images of an 8x8 grid with a strong additive row + column code: fit on A (200), test on B (40)."""
    x = positional_features(n_images=240, channels=32, rows=N, strength=1.0, seed=0).features
    return x[:200], x[200:]


def _probe(x):
    r = position_probe(x, resolutions=(N,))
    return r.accuracy[N], r.chance[N], r.intervals[N]


@pytest.mark.parametrize("name", ["position", "position-subspace"])
def test_a_planted_code_is_removed_probe_falls_to_chance(planted, name):
    a, b = planted
    acc, chance, _ = _probe(b)
    assert acc > 0.95  # the code is there
    acc, chance, interval = _probe(fit_mitigation(name, a, layer="L").transform(b, layer="L"))
    assert interval.low <= chance <= interval.high, (name, acc, interval)
    assert acc < chance + 0.05


def test_position_mean_keeps_content_and_global_mean(planted):
    a, b = planted
    m = PositionMean().fit(a)
    out = m.transform(b)
    shift = out - b  # one fixed offset per position, the same in every image: content is kept exactly
    np.testing.assert_allclose(shift, np.broadcast_to(shift[:1], shift.shape), atol=1e-5)
    brute = a.astype(np.float64).mean(axis=0)
    np.testing.assert_allclose(m.position_mean_, brute, atol=1e-10)
    np.testing.assert_allclose(shift[0], -(brute - brute.mean(axis=(1, 2), keepdims=True)), atol=1e-5)
    np.testing.assert_allclose(out.mean(axis=(0, 2, 3)), b.mean(axis=(0, 2, 3)), atol=1e-5)
    zeroed = PositionMean(keep_global_mean=False).fit(a).transform(a)
    np.testing.assert_allclose(zeroed.mean(axis=0), 0, atol=1e-5)  # every position's mean removed


def test_position_subspace_keeps_the_orthogonal_complement(planted):
    a, b = planted
    m = PositionSubspace().fit(a)
    v = m.components_
    assert v.shape == (2 * (N - 1), 32)  # rank rows - 1 + cols - 1 of the centred class means
    np.testing.assert_allclose(v @ v.T, np.eye(len(v)), atol=1e-10)
    out = m.transform(b)
    complement = np.eye(32) - v.T @ v
    np.testing.assert_allclose(np.einsum("dc,nchw->ndhw", complement, out),
                               np.einsum("dc,nchw->ndhw", complement, b), atol=1e-4)
    np.testing.assert_allclose(np.einsum("kc,nchw->nkhw", v, out), 0, atol=1e-4)
    fitted = m.transform(a)  # on the fitted images every row and column class has the same mean
    row_means = fitted.mean(axis=(0, 3))
    col_means = fitted.mean(axis=(0, 2))
    np.testing.assert_allclose(row_means, np.broadcast_to(row_means[:, :1], row_means.shape), atol=1e-4)
    np.testing.assert_allclose(col_means, np.broadcast_to(col_means[:, :1], col_means.shape), atol=1e-4)
    top = PositionSubspace(n_components=4).fit(a)
    assert top.components_.shape == (4, 32)
    np.testing.assert_allclose(top.components_ @ v.T @ v, top.components_, atol=1e-8)  # the strongest 4


@pytest.mark.parametrize("cls", [PositionMean, PositionSubspace])
def test_a_planted_code_hurts_flip_matching_and_its_removal_restores_it(cls):
    rows, c = N, 32
    code = positional_features(n_images=200, channels=c, rows=rows, strength=3.0, seed=1).features
    code_only = code - positional_features(n_images=200, channels=c, rows=rows, strength=0.0, seed=1).features
    content = np.random.default_rng(5).standard_normal((60, c, rows, rows)).astype(np.float32)
    pairs = np.concatenate([content, content[:, :, :, ::-1]])  # each image, then its horizontally flipped view
    views = pairs + code_only[:1]  # the same absolute positional code added to both views
    clean = _flip_match_accuracy(pairs)
    plain = _flip_match_accuracy(views)
    mitigated = _flip_match_accuracy(cls().fit(code).transform(views))
    assert clean == 1.0 and plain < 0.5 and mitigated > 0.95


def _flip_match_accuracy(views):
    """Nearest-neighbour (cosine) matching of every token of image i (first half) to its flipped view (second
    half): the share matched to its true place (r, n-1-c)."""
    half = len(views) // 2
    hits = 0
    for a, b in zip(views[:half], views[half:]):
        c, h, w = a.shape
        src = a.reshape(c, -1).T / np.linalg.norm(a.reshape(c, -1).T, axis=1, keepdims=True)
        tgt = b.reshape(c, -1).T / np.linalg.norm(b.reshape(c, -1).T, axis=1, keepdims=True)
        best = np.argmax(src @ tgt.T, axis=1)
        r, col = np.divmod(np.arange(h * w), w)
        hits += int((best == r * w + (w - 1 - col)).sum())
    return hits / (half * views.shape[2] * views.shape[3])
