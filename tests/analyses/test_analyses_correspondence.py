"""Known views and view matching: views against their correspondences, a brute-force oracle, streaming,
and planted positional codes (flip matching falls and the bias rate rises; pure noise sits at chance)."""

import numpy as np
import pytest
from PIL import Image

from sdaudit.analyses import NonFiniteInputError, accumulator_class
from sdaudit.analyses.correspondence import (REGIONS, ViewMatchingAccumulator, ViewMatchingResult,
                                             chance_bias_rate, match_views)
from sdaudit.analyses.views import (Correspondence, KnownView, central_box, crop_correspondence, flip_correspondence,
                                    shift_correspondence)


def block_image(rows, cols, ppt, seed=0):
    """An RGB image whose every token is one random colour: token (r, c) covers ppt x ppt pixels."""
    colours = np.random.default_rng(seed).integers(0, 256, (rows, cols, 3), dtype=np.uint8)
    return Image.fromarray(np.repeat(np.repeat(colours, ppt, axis=0), ppt, axis=1)), colours


def token_colours(image, ppt):
    a = np.asarray(image, np.float64)
    h, w = a.shape[0] // ppt, a.shape[1] // ppt
    return a.reshape(h, ppt, w, ppt, 3).mean(axis=(1, 3))


@pytest.mark.parametrize("view", [KnownView("flip"), KnownView("shift", shift=(1, -2)),
                                  KnownView("shift", shift=(0, 3))])
def test_flip_and_shift_views_move_tokens_as_their_correspondence_says(view):
    rows, cols, ppt = 5, 7, 4
    image, colours = block_image(rows, cols, ppt)
    seen = token_colours(view.apply(image, ppt), ppt)
    corr = view.correspondence(rows, cols, ppt)
    assert corr.grid == (rows, cols) and corr.kind == view.kind
    for r in range(rows):
        for c in range(cols):
            if corr.valid[r, c]:
                tr, tc = corr.target[r, c].astype(int)
                np.testing.assert_array_equal(seen[tr, tc], colours[r, c])
    matched = np.zeros((rows, cols), bool)
    matched[tuple(corr.target[corr.valid].astype(int).T)] = True
    fill = np.asarray(image, np.float64).reshape(-1, 3).mean(axis=0).round()
    np.testing.assert_array_equal(seen[~matched], np.broadcast_to(fill, seen[~matched].shape))  # no content there


def test_shift_validity_and_flip_targets():
    corr = shift_correspondence(4, 5, (1, 2))
    assert corr.valid.sum() == 3 * 3 and not corr.valid[0].any() and not corr.valid[:, :2].any()
    np.testing.assert_array_equal(corr.target[2, 3], [1, 1])
    np.testing.assert_array_equal(flip_correspondence(3, 4).target[1, 0], [1, 3])


def test_crop_view_lands_where_the_crop_correspondence_says():
    rows, cols, ppt, f = 8, 8, 8, 0.5
    y, x = np.mgrid[0:rows * ppt, 0:cols * ppt]
    ramp = np.stack([x * 4, y * 4, np.zeros_like(x)], axis=-1).astype(np.uint8)  # a smooth image of the coordinates
    view = KnownView("crop", fraction=f).apply(Image.fromarray(ramp), ppt)
    corr = crop_correspondence(rows, cols, f, ppt)
    assert central_box(64, 64, f) == (16, 16, 48, 48)
    assert corr.valid.sum() == 4 * 4 and corr.valid[2:6, 2:6].all()
    np.testing.assert_allclose(corr.target[2, 2], [0.5, 0.5])  # centre at pixel 20 -> B pixel 8 -> token 0.5
    b = np.asarray(view, np.float64)
    for r, c in zip(*np.nonzero(corr.valid)):
        by, bx = ((corr.target[r, c] + 0.5) * ppt).round().astype(int)
        np.testing.assert_allclose(b[by, bx, :2], [((c + 0.5) * ppt) * 4, ((r + 0.5) * ppt) * 4], atol=6)


def test_correspondence_round_trips_and_rejects_bad_shapes():
    corr = crop_correspondence(6, 6, 0.6, 8)
    back = Correspondence.from_dict(corr.to_dict())
    np.testing.assert_array_equal(back.valid, corr.valid)
    np.testing.assert_allclose(back.target[back.valid], corr.target[corr.valid])
    with pytest.raises(ValueError, match="target must be"):
        Correspondence(np.zeros((3, 3)), np.ones((3, 3), bool))
    with pytest.raises(ValueError, match="unknown view"):
        KnownView("rotate")


def oracle_counts(a, b, corr, alphas):
    """Python loops, float64: per image and region (all, corner, border, other) the counts valid, hit, pck...,
    wrong-eligible, bias."""
    n, _, rows, cols = a.shape
    out = np.zeros((n, 4, 4 + len(alphas)))
    for i in range(n):
        for r in range(rows):
            for c in range(cols):
                if not corr.valid[r, c]:
                    continue
                u = a[i, :, r, c].astype(np.float64)
                best, pred = -np.inf, None
                for q in range(rows):
                    for p in range(cols):
                        v = b[i, :, q, p].astype(np.float64)
                        cos = u @ v / (np.linalg.norm(u) * np.linalg.norm(v))
                        if cos > best:
                            best, pred = cos, (q, p)
                tr, tc = corr.target[r, c]
                hit = max(abs(pred[0] - tr), abs(pred[1] - tc)) <= 1
                eligible = max(abs(r - tr), abs(c - tc)) > 1
                dist = np.hypot(pred[0] - tr, pred[1] - tc)
                row = [1, hit, *[dist <= al * max(rows, cols) for al in alphas], eligible and not hit,
                       eligible and not hit and pred == (r, c)]
                corner = r in (0, rows - 1) and c in (0, cols - 1)
                ring = r in (0, rows - 1) or c in (0, cols - 1)
                region = 1 if corner else 2 if ring else 3
                out[i, 0] += row
                out[i, region] += row
    return out


@pytest.mark.parametrize("corr", [flip_correspondence(5, 6), shift_correspondence(5, 6, (1, -1)),
                                  crop_correspondence(5, 6, 0.7, 4)], ids=["flip", "shift", "crop"])
def test_counts_match_brute_force_oracle(corr):
    rng = np.random.default_rng(1)
    a = rng.standard_normal((3, 6, 5, 6)).astype(np.float32)
    b = (0.6 * a[:, :, :, ::-1] + rng.standard_normal(a.shape)).astype(np.float32)  # some real matches
    acc = ViewMatchingAccumulator(corr, alphas=(0.1, 0.3))
    acc.update(a, b)
    expected = oracle_counts(a, b, corr, (0.1, 0.3))
    np.testing.assert_array_equal(acc.per_image.arrays()[1], expected.reshape(3, -1))


def planted(n=12, grid=(6, 7), c=32, alpha=0.0, noise_only=False, seed=0):
    """Features of images and their flips: unique content per token, plus ``alpha`` times a code of the
    token's own absolute position (the same in both views); ``noise_only``: independent noise."""
    rng = np.random.default_rng(seed)
    rows, cols = grid
    if noise_only:
        return (rng.standard_normal((n, c, rows, cols)).astype(np.float32),
                rng.standard_normal((n, c, rows, cols)).astype(np.float32))
    content = rng.standard_normal((n, c, rows, cols))
    code = rng.standard_normal((1, c, rows, cols))
    a = content + alpha * code
    b = content[:, :, :, ::-1] + alpha * code
    return a.astype(np.float32), b.astype(np.float32)


def test_unique_content_is_matched_exactly_without_positional_code():
    a, b = planted(alpha=0.0)
    res = match_views(a, b, flip_correspondence(6, 7), n_boot=300)
    for g in REGIONS:
        assert res.accuracy[g].estimate == 1.0 and res.bias_rate[g].n == 12
        assert all(iv.estimate == 1.0 for iv in res.pck[g][1:])
    assert np.isnan(res.bias_rate["all"].estimate)  # no wrong match at all
    assert res.tokens_per_image == {"all": 42, "corner": 4, "border": 18, "other": 20}
    assert res.eligible_per_image["all"] == 42 - 6  # the middle column of 7 is its own match


def test_a_strong_positional_code_pulls_matches_onto_their_own_position():
    weak = match_views(*planted(alpha=0.5), flip_correspondence(6, 7), n_boot=300)
    strong = match_views(*planted(alpha=4.0), flip_correspondence(6, 7), n_boot=300)
    assert strong.accuracy["all"].high < 0.5 < weak.accuracy["all"].low
    assert strong.bias_rate["all"].low > 0.9
    assert strong.bias_rate["all"].excludes(strong.chance_bias_rate["all"])


def test_pure_noise_bias_rate_is_at_chance():
    corr = flip_correspondence(6, 6)
    res = match_views(*planted(n=40, grid=(6, 6), noise_only=True, seed=3), corr, n_boot=500)
    chance = chance_bias_rate(corr)
    assert res.bias_rate["all"].low <= chance["all"] <= res.bias_rate["all"].high
    assert 1 / 36 < chance["all"] < 1 / 20  # one of the tokens outside the true match's neighbourhood


def test_interval_coverage_over_draws():
    """Under pure noise the bias rate's estimand is the chance rate: the 95 % intervals cover it in most draws."""
    corr = flip_correspondence(5, 5)
    chance = chance_bias_rate(corr)["all"]
    covered = [match_views(*planted(n=20, grid=(5, 5), c=8, noise_only=True, seed=100 + s), corr, n_boot=300)
               .bias_rate["all"] for s in range(40)]
    share = np.mean([iv.low <= chance <= iv.high for iv in covered])
    assert share >= 0.85, share


def test_streamed_sharded_and_resumed_equal_one_shot():
    corr = shift_correspondence(6, 7, (0, 2))
    a, b = planted(n=10, alpha=1.0, seed=5)
    one = match_views(a, b, corr, n_boot=200).to_dict()
    acc = ViewMatchingAccumulator(corr, n_boot=200)
    acc.update(a[:3], b[:3])
    acc = accumulator_class(acc.state_dict()).from_state_dict(acc.state_dict())  # resumed from a checkpoint
    acc.update(a[3:6], b[3:6])
    shard = ViewMatchingAccumulator(corr, n_boot=200)
    shard.update(a[6:], b[6:], image_indices=range(6, 10))
    assert acc.merge(shard).result().to_dict() == one
    back = ViewMatchingResult.from_dict(one)
    assert back.accuracy["border"] == match_views(a, b, corr, n_boot=200).accuracy["border"]


def test_rejects_mismatched_shapes_settings_and_non_finite():
    corr = flip_correspondence(4, 4)
    acc = ViewMatchingAccumulator(corr, layer="blk")
    with pytest.raises(ValueError, match="correspondence's grid"):
        acc.update(np.ones((1, 3, 4, 5)), np.ones((1, 3, 4, 5)))
    bad = np.ones((1, 3, 4, 4))
    bad[0, 0, 1, 1] = np.nan
    with pytest.raises(NonFiniteInputError, match="features_b of layer 'blk'"):
        acc.update(np.ones((1, 3, 4, 4)), bad)
    with pytest.raises(ValueError, match="different settings"):
        acc.merge(ViewMatchingAccumulator(corr, layer="blk", alphas=(0.5,)))


def test_masked_zero_tokens_are_misses_never_hits_or_bias():
    """A border weight of 0 zeroes the ring: a zero source predicts nothing (a miss, not a bias) and a zero
    candidate is never chosen (regression: ties went to token 0, so the (0, 0) corner 'landed on its own
    position' and the (0, cols-1) corner 'hit' its flipped target)."""
    from sdaudit.analyses.correspondence import nearest_tokens, unit_tokens

    a, b = planted(n=8, grid=(6, 6), alpha=0.0)
    ring = ~np.pad(np.ones((4, 4), bool), 1)
    a[:, :, ring], b[:, :, ring] = 0.0, 0.0
    nn = nearest_tokens(unit_tokens(a), unit_tokens(b))
    assert (nn[:, ring.reshape(-1)] == -1).all()
    assert np.isin(nn[:, ~ring.reshape(-1)], np.flatnonzero(~ring.reshape(-1))).all()
    res = match_views(a, b, flip_correspondence(6, 6), n_boot=200)
    assert res.accuracy["corner"].estimate == 0.0 and res.accuracy["border"].estimate == 0.0
    assert res.bias_rate["corner"].estimate == 0.0 and res.bias_rate["border"].estimate == 0.0
    assert res.accuracy["other"].estimate == 1.0
    only = nearest_tokens(unit_tokens(a), unit_tokens(b), candidates=ring.reshape(-1))
    assert (only == -1).all()  # every allowed candidate is zero: nothing to predict
