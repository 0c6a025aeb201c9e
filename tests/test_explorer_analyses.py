"""The explorer's corner preset and label snapping reuse the analyses' functions; here they are checked
against the explorer's former hand-written versions (kept below as oracles) on planted arrays."""

from __future__ import annotations

import numpy as np
import pytest

from sdaudit.analyses import detect_in_map, group_similarity
from sdaudit.analyses.anomalies import best_patch
from sdaudit.analyses.similarity import typical_corner
from sdaudit.explorer.presets import corner_score


# ----------------------------------------------------------------------------------------- oracles
def _old_units(x):
    n, c, h, w = x.shape
    t = x.reshape(n, c, h * w).transpose(0, 2, 1).astype(np.float64)
    norms = np.linalg.norm(t, axis=2, keepdims=True)
    u = np.divide(t, norms, out=np.zeros_like(t), where=norms > 0)
    return u, (norms[..., 0] > 0).astype(np.float64)


def _old_mean_pair_cos(u, sq, idx):
    k = len(idx)
    s = u[:, idx].sum(axis=1)
    return float(((s ** 2).sum(axis=1) - sq[:, idx].sum(axis=1)).sum()) / (u.shape[0] * k * (k - 1))


def old_corner_score(x):
    """The explorer's corner score and corner choice before it reused the analyses."""
    n, c, h, w = x.shape
    u, sq = _old_units(x)
    corners = [(0, 0), (0, w - 1), (h - 1, 0), (h - 1, w - 1)]
    cidx = np.array([r * w + q for r, q in corners])
    inner = np.array([r * w + q for r in range(1, h - 1) for q in range(1, w - 1)])
    score = _old_mean_pair_cos(u, sq, cidx) - _old_mean_pair_cos(u, sq, inner)
    cu = u[:, cidx]
    sims = np.einsum("nac,nbc->ab", cu, cu) / n
    np.fill_diagonal(sims, 0)
    return score, corners[int(np.argmax(sims.sum(axis=1)))]


def old_snap(norms, x, y):
    """The explorer's 2x2 patch for a new label at token (x, y), as (x0, y0), before it used best_patch."""
    h, w = norms.shape
    xs = sorted({min(max(x - 1, 0), max(w - 2, 0)), min(x, max(w - 2, 0))})
    ys = sorted({min(max(y - 1, 0), max(h - 2, 0)), min(y, max(h - 2, 0))})
    best = max(((float(norms[y0:y0 + 2, x0:x0 + 2].sum()), -y0, -x0) for y0 in ys for x0 in xs))
    return -best[2], -best[1]


# ----------------------------------------------------------------------------------------- planted arrays
def planted_corners(n=3, c=16, h=8, w=8, typical=(0, 7), seed=0):
    """Random tokens; the four corners share one direction, one corner (``typical``) most of all; one
    interior token is zero (cosine 0 with everything)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, c, h, w)).astype(np.float32)
    shared = rng.normal(size=c).astype(np.float32) * 3
    for r, q in [(0, 0), (0, w - 1), (h - 1, 0), (h - 1, w - 1)]:
        weight = 3.0 if (r, q) == typical else 1.0
        x[:, :, r, q] += weight * shared
    x[:, :, h // 2, w // 2] = 0
    return x


@pytest.mark.parametrize("typical", [(0, 0), (0, 7), (7, 0), (7, 7)])
def test_corner_preset_equals_the_former_explorer_code(typical):
    x = planted_corners(typical=typical, seed=sum(typical))
    old_score, old_corner = old_corner_score(x)
    within = group_similarity(x).within
    assert within["corner"] - within["other"] == pytest.approx(old_score, rel=1e-5, abs=1e-6)
    assert typical_corner(x) == old_corner == typical
    score, corner = corner_score(x)
    assert score == pytest.approx(old_score, rel=1e-5, abs=1e-6) and score > 0.1 and corner == typical


def test_corner_preset_on_rectangular_grids_and_noise():
    for shape in [(2, 8, 5, 9), (4, 3, 6, 4), (1, 32, 16, 16)]:
        x = np.random.default_rng(shape[2]).normal(size=shape).astype(np.float32)
        old_score, old_corner = old_corner_score(x)
        score, corner = corner_score(x)
        assert score == pytest.approx(old_score, rel=1e-4, abs=1e-6) and corner == old_corner
    assert np.isnan(corner_score(np.ones((2, 4, 3, 3), np.float32))[0])  # needs a 4x4 grid


def test_label_snapping_equals_the_former_explorer_code():
    rng = np.random.default_rng(1)
    maps = [rng.random((8, 8)), rng.random((5, 9)), np.ones((6, 6)), rng.integers(0, 3, (7, 7)).astype(float),
            rng.random((1, 5)), rng.random((2, 2))]
    for norms in maps:
        h, w = norms.shape
        for y in range(h):
            for x in range(w):
                y0, x0 = best_patch(norms, y, x)
                assert (x0, y0) == old_snap(norms, x, y), (norms.shape, x, y)
                assert y0 <= y <= y0 + 1 and x0 <= x <= x0 + 1  # the patch holds the token


def test_best_patch_takes_the_strongest_window_around_a_planted_anomaly():
    norms = np.ones((8, 8))
    norms[3, 4], norms[4, 5] = 9.0, 5.0  # the patch at rows 3-4, cols 4-5 holds both
    for y, x in [(3, 4), (4, 5), (4, 4), (3, 5)]:
        assert best_patch(norms, y, x) == (3, 4)
    assert best_patch(norms, 7, 7) == (6, 6) and best_patch(norms, 0, 0) == (0, 0)  # clipped to the grid
    found = detect_in_map(norms)
    assert [(x, y) for x, y, _, _ in found] == [(4, 3)]  # the detector's patch is the same window
