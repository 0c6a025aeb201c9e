"""Keypoint PCK: exact recovery with unique one-hot features, a brute-force oracle, chance with noise,
coordinate mapping through the centre crop, regions, streaming."""

import numpy as np
import pytest

from sdaudit.analyses import NonFiniteInputError
from sdaudit.analyses.keypoints import (KEYPOINT_REGIONS, KeypointMatchingAccumulator, KeypointMatchingResult,
                                        PairKeypoints, keypoint_tokens, match_keypoints, predict_keypoints,
                                        token_centres)

GRID = (8, 8)


def one_hot_pair(size_a=(300, 200), size_b=(240, 320), k=6, seed=0, bbox_b=None):
    """Features where source keypoint j's token in A and target keypoint j's token in B share a unique
    one-hot code (every other token its own code); targets at their tokens' centres."""
    rng = np.random.default_rng(seed)
    t = GRID[0] * GRID[1]
    src, trg = rng.choice(t, k, replace=False), rng.choice(t, k, replace=False)
    a = np.eye(t, dtype=np.float32).reshape(t, *GRID)
    codes = np.full(t, -1)
    codes[trg] = src
    codes[codes < 0] = np.setdiff1d(np.arange(t), src)[:t - k]
    b = np.eye(t, dtype=np.float32)[:, codes].reshape(t, *GRID)
    src_rc, trg_rc = np.stack(np.divmod(src, GRID[1]), -1), np.stack(np.divmod(trg, GRID[1]), -1)
    kps_a = token_centres(src_rc, size_a, GRID) + rng.uniform(-5, 5, (k, 2))  # anywhere inside the token (25 px)
    kps_b = token_centres(trg_rc, size_b, GRID)
    return a, b, PairKeypoints(kps_a, kps_b, size_a, size_b, bbox_b)


def test_unique_one_hot_features_recover_keypoints_exactly():
    a, b, pair = one_hot_pair()
    pred, inside = predict_keypoints(a, b, pair)
    assert inside.all()
    np.testing.assert_allclose(pred, pair.keypoints_b, atol=1e-9)
    acc = KeypointMatchingAccumulator(n_boot=200)
    for s in range(6):
        acc.update(*one_hot_pair(seed=s))
    res = acc.result()
    assert res.n_pairs == 6 and res.keypoints["all"] == 36 and res.skipped == 0
    assert all(iv.estimate == 1.0 for iv in res.pck["all"])
    assert res.keypoints["ring"] + res.keypoints["interior"] == 36


def test_coordinates_follow_the_centre_crop():
    # 300x200: the model sees x in [50, 250); x=60 is the first token, x=40 is outside
    tokens, inside = keypoint_tokens(np.array([[60.0, 10.0], [40.0, 10.0], [249.0, 199.0]]), (300, 200), GRID)
    assert inside.tolist() == [True, False, True]
    assert tokens[0].tolist() == [0, 0] and tokens[2].tolist() == [7, 7]
    np.testing.assert_allclose(token_centres(np.array([[0, 0]]), (300, 200), GRID), [[62.5, 12.5]])
    np.testing.assert_allclose(token_centres(np.array([[0, 0]]), (300, 200), GRID, square_crop=False),
                               [[18.75, 12.5]])


def oracle_hits(a, b, pair, alphas, square_crop=True):
    """Loops: per keypoint, (inside, ring, hits per alpha)."""
    out = []
    w, h = pair.size_a
    s = min(w, h) if square_crop else None
    for (x, y), target in zip(pair.keypoints_a, pair.keypoints_b):
        left, top, sw, sh = ((w - s) // 2, (h - s) // 2, s, s) if square_crop else (0, 0, w, h)
        u, v = (x - left) / sw, (y - top) / sh
        if not (0 <= u <= 1 and 0 <= v <= 1):
            out.append((False, False, [False] * len(alphas)))
            continue
        r, c = min(int(v * GRID[0]), GRID[0] - 1), min(int(u * GRID[1]), GRID[1] - 1)
        src = a[:, r, c].astype(np.float64)
        best, arg = -np.inf, None
        for q in range(GRID[0]):
            for p in range(GRID[1]):
                cand = b[:, q, p].astype(np.float64)
                cos = src @ cand / np.linalg.norm(src) / np.linalg.norm(cand)
                if cos > best:
                    best, arg = cos, (q, p)
        wb, hb = pair.size_b
        sb = min(wb, hb) if square_crop else None
        lb, tb, swb, shb = ((wb - sb) // 2, (hb - sb) // 2, sb, sb) if square_crop else (0, 0, wb, hb)
        pred = np.array([lb + (arg[1] + 0.5) / GRID[1] * swb, tb + (arg[0] + 0.5) / GRID[0] * shb])
        length = max(pair.bbox_b[2] - pair.bbox_b[0], pair.bbox_b[3] - pair.bbox_b[1]) if pair.bbox_b else max(wb, hb)
        ring = r in (0, GRID[0] - 1) or c in (0, GRID[1] - 1)
        out.append((True, ring, [np.linalg.norm(pred - target) <= al * length for al in alphas]))
    return out


@pytest.mark.parametrize("square_crop", [True, False])
def test_counts_match_brute_force_oracle(square_crop):
    rng = np.random.default_rng(2)
    alphas = (0.05, 0.1, 0.3)
    acc = KeypointMatchingAccumulator(alphas=alphas, square_crop=square_crop)
    expected = np.zeros((3, 1 + len(alphas)))
    skipped = 0
    for p in range(4):
        a = rng.standard_normal((5, *GRID)).astype(np.float32)
        b = (0.7 * a + rng.standard_normal(a.shape)).astype(np.float32)
        size_a, size_b = (int(rng.integers(100, 300)), int(rng.integers(100, 300))), (220, 160)
        kps_a = rng.uniform(0, 1, (7, 2)) * size_a
        kps_b = rng.uniform(0, 1, (7, 2)) * size_b
        pair = PairKeypoints(kps_a, kps_b, size_a, size_b, (10, 20, 110, 90) if p % 2 else None)
        acc.update(a, b, pair)
        for inside, ring, hits in oracle_hits(a, b, pair, alphas, square_crop):
            skipped += not inside
            for region, member in enumerate((inside, inside and ring, inside and not ring)):
                expected[region] += [member, *[member and hit for hit in hits]]
    rows = acc.per_pair.arrays()[1].sum(axis=0)
    got = rows[:-1].reshape(3, 1 + 2 * len(alphas))[:, :1 + len(alphas)]
    np.testing.assert_array_equal(got, expected)
    assert rows[-1] == skipped and (skipped > 0) == square_crop


def test_noise_pck_sits_at_chance():
    """Random features predict a uniformly random token: PCK is the chance PCK (unbiased: checked over 4 draws
    of 300 pairs when written; one draw of 200 pairs here, each alpha's 95 % interval covering chance)."""
    rng = np.random.default_rng(0)
    acc = KeypointMatchingAccumulator(n_boot=500)
    for p in range(200):
        size = (256, 256)
        pair = PairKeypoints(rng.uniform(0, 256, (8, 2)), rng.uniform(0, 256, (8, 2)), size, size)
        acc.update(rng.standard_normal((16, *GRID)), rng.standard_normal((16, *GRID)), pair)
    res = acc.result()
    for j in range(3):
        iv, chance = res.pck["all"][j], res.chance_pck["all"][j]
        assert iv.low <= chance <= iv.high, (j, iv, chance)
    assert res.chance_pck["all"][0] < res.chance_pck["all"][2] < 0.15


def test_streamed_resumed_and_sharded_equal_one_shot():
    pairs = [one_hot_pair(seed=s, bbox_b=(0, 0, 120, 200)) for s in range(6)]
    noisy = [(a + np.random.default_rng(s).standard_normal(a.shape).astype(np.float32), b, p)
             for s, (a, b, p) in enumerate(pairs)]
    one = match_keypoints(np.stack([n[0] for n in noisy]), np.stack([n[1] for n in noisy]), [n[2] for n in noisy],
                          n_boot=200, layer="blk")
    acc = KeypointMatchingAccumulator(n_boot=200, layer="blk")
    for a, b, p in noisy[:3]:
        acc.update(a, b, p)
    acc = KeypointMatchingAccumulator.from_state_dict(acc.state_dict())
    shard = KeypointMatchingAccumulator(n_boot=200, layer="blk")
    for i, (a, b, p) in enumerate(noisy[3:]):
        shard.update(a, b, p, pair_index=3 + i)
    merged = acc.merge(shard).result()
    assert merged.to_dict() == one.to_dict()
    assert KeypointMatchingResult.from_dict(one.to_dict()).pck["ring"] == one.pck["ring"]
    assert set(one.pck) == set(KEYPOINT_REGIONS)


def test_rejects_bad_input():
    a, b, pair = one_hot_pair()
    acc = KeypointMatchingAccumulator(layer="blk")
    with pytest.raises(ValueError, match="expected shape"):
        acc.update(a[None], b, pair)
    bad = b.copy()
    bad[0, 0, 0] = np.inf
    with pytest.raises(NonFiniteInputError, match="features_b of layer 'blk'"):
        acc.update(a, bad, pair)
    with pytest.raises(ValueError, match="3 source keypoints but 2"):
        PairKeypoints(np.zeros((3, 2)), np.zeros((2, 2)), (10, 10), (10, 10))
