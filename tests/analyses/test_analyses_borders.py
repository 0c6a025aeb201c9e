"""Group similarity (closed form vs brute force) and border artifacts (planted ratios)."""

import numpy as np
import pytest

from sdaudit.analyses import (Bootstrap, BorderArtifactsAccumulator, GroupSimilarityAccumulator, border_artifacts,
                              crop_box, crop_pixels, crop_plan, group_masks, group_similarity)
from sdaudit.analyses.synthetic import border_features


def brute_groups(x):
    """3x3 group similarity from the full pairwise cosine tensor (n^4), pooled over images."""
    n, c, h, w = x.shape
    masks = group_masks(h, w).reshape(3, -1)
    num, cnt = np.zeros((3, 3)), np.zeros((3, 3))
    for i in range(n):
        t = x[i].reshape(c, -1).T.astype(np.float64)
        nr = np.linalg.norm(t, axis=1)
        u = np.divide(t, nr[:, None], out=np.zeros_like(t), where=nr[:, None] > 0)
        sim = u @ u.T
        for a in range(3):
            for b in range(3):
                ia, ib = np.nonzero(masks[a])[0], np.nonzero(masks[b])[0]
                for p in ia:
                    for q in ib:
                        if p != q:
                            num[a, b] += sim[p, q]
                            cnt[a, b] += 1
    with np.errstate(invalid="ignore"):
        return num / cnt, cnt


@pytest.mark.parametrize("shape", [(3, 6, 5, 5), (2, 4, 4, 7), (2, 5, 3, 3), (2, 3, 2, 2)])
def test_group_similarity_equals_brute_force(shape):
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32) + 0.5
    x[0, :, 1, 1] = 0  # a zero token counts as cosine 0
    got = group_similarity(x)
    want, cnt = brute_groups(x)
    np.testing.assert_allclose(got.matrix, want, rtol=1e-5, atol=1e-6, equal_nan=True)
    np.testing.assert_array_equal(got.pair_counts, cnt)


def test_group_masks_and_counts():
    m = group_masks(6)
    assert m.sum(axis=(1, 2)).tolist() == [4, 16, 16]
    assert (m.sum(axis=0) == 1).all()
    r = group_similarity(np.random.default_rng(0).standard_normal((2, 3, 6, 6)))
    assert r.pair_counts.tolist() == [[24, 128, 128], [128, 480, 512], [128, 512, 480]]


def test_border_artifacts_recovers_planted_ratio():
    s = border_features(80, 512, 12, corner_ratio=2.0, border_ratio=1.5, seed=1)
    r = border_artifacts(s.features, s.cropped, layer="L")
    assert r.relative["corner"] == pytest.approx(2.0, rel=0.05)
    assert r.relative["border"] == pytest.approx(1.5, rel=0.03)
    assert r.relative["other"] == pytest.approx(1.0, rel=0.02)
    assert r.full["corner"] == pytest.approx(0.2, rel=0.05)
    # (b) is counted on the (n-2) x (n-2) grid: border k = 4 (n-4), other k = (n-4)^2
    k = np.diag(r.full_result.pair_counts) / 80
    assert k.tolist() == [4 * 3, 32 * 31, 64 * 63]
    assert r.full_result.grid == (10, 10) and r.cropped_result.grid == (10, 10)
    for g in ("corner", "border", "other"):  # the planted value lies inside each interval
        iv = r.intervals[g]
        assert iv.low <= s.info["expected"][g] <= iv.high and iv.n == 80 and iv.estimate == pytest.approx(r.relative[g], rel=1e-12)


def test_border_artifacts_is_one_without_plant():
    s = border_features(80, 512, 10, seed=2)
    r = border_artifacts(s.features.astype(np.float16), s.cropped)
    for g in ("corner", "border", "other"):
        assert r.relative[g] == pytest.approx(1.0, abs=0.05)


def test_border_artifacts_matches_brute_force():
    rng = np.random.default_rng(3)
    full = rng.standard_normal((3, 5, 7, 7)) + 0.4
    crop = rng.standard_normal((3, 5, 5, 5)) + 0.4  # the crop extracted at its own size: (n-2) x (n-2)
    r = border_artifacts(full, crop)
    a, _ = brute_groups(crop)
    b, _ = brute_groups(full[:, :, 1:-1, 1:-1])
    np.testing.assert_allclose([r.relative[g] for g in ("corner", "border", "other")], np.diag(a) / np.diag(b), rtol=1e-5)


def test_streamed_and_merged_equal_one_shot(tmp_path):
    s = border_features(12, 32, 8, corner_ratio=1.8, seed=4)
    whole = border_artifacts(s.features, s.cropped)
    a, b = BorderArtifactsAccumulator(), BorderArtifactsAccumulator()
    for i in range(0, 12, 5):  # full and cropped from separate passes, in batches, over two shards
        (a if i < 5 else b).update(full=s.features[i:i + 5], image_indices=range(i, min(i + 5, 12)))
    for i in range(0, 12, 3):
        (a if i % 2 else b).update(cropped=s.cropped[i:i + 3], image_indices=range(i, i + 3))
    np.savez(tmp_path / "b.npz", **b.state_dict())
    b2 = BorderArtifactsAccumulator.from_state_dict(dict(np.load(tmp_path / "b.npz")))
    got = a.merge(b2).result()
    for g in whole.relative:
        assert got.relative[g] == pytest.approx(whole.relative[g], rel=1e-9)
        assert got.intervals[g].low == pytest.approx(whole.intervals[g].low, rel=1e-9)
    g1 = GroupSimilarityAccumulator()
    g1.update(s.features[:4])
    g2 = GroupSimilarityAccumulator()
    g2.update(s.features[4:])
    np.testing.assert_allclose(g1.merge(g2).result().matrix, group_similarity(s.features).matrix, rtol=1e-9)


def test_crop_helpers():
    assert [crop_pixels(512, n) for n in (64, 32, 16, 8)] == [8, 16, 32, 64]
    assert crop_box(512, 64) == (8, 8, 504, 504)
    plan = crop_plan({"a": 64, "b": 32, "c": (64, 64), "d": 8, "e": 2}, 512)
    assert plan == {8: ["a", "c"], 16: ["b"], 64: ["d"]}
    with pytest.raises(ValueError):
        crop_pixels(512, 2)
    acc = BorderArtifactsAccumulator(layer="x")
    acc.update(full=np.ones((1, 2, 8, 8)))
    with pytest.raises(ValueError, match="its own size, giving a 6x6 grid"):
        acc.update(cropped=np.ones((1, 2, 8, 8)))  # a crop resized back to the model size
    acc.update(cropped=np.ones((1, 2, 6, 6)))


@pytest.mark.parametrize("n", [3, 4])
def test_grids_under_five_are_not_defined(n):
    rng = np.random.default_rng(0)
    r = border_artifacts(rng.standard_normal((4, 3, n, n)) + 1, rng.standard_normal((4, 3, n - 2, n - 2)) + 1)
    assert r.undefined == "not defined (grid too small)"
    assert all(np.isnan(v) for v in r.relative.values()) and not r.intervals
    assert type(r).from_dict(r.to_dict()).undefined == r.undefined


def test_intervals_cover_the_planted_ratio_90_to_99_percent_of_the_time():
    hits = {"corner": 0, "border": 0, "other": 0}
    for rep in range(200):
        s = border_features(30, 16, 6, corner_ratio=2.0, border_ratio=1.5, seed=1000 + rep)
        r = border_artifacts(s.features, s.cropped, bootstrap=Bootstrap(n_boot=500, seed=rep))
        for g in hits:
            hits[g] += r.intervals[g].low <= s.info["expected"][g] <= r.intervals[g].high
    assert all(180 <= h <= 198 for h in hits.values()), hits


def test_intervals_shrink_as_images_grow():
    widths = []
    for n_images in (9, 36, 144):
        s = border_features(n_images, 16, 6, corner_ratio=2.0, seed=7)
        widths.append(border_artifacts(s.features, s.cropped).intervals["corner"].width)
    assert widths[0] > 1.6 * widths[1] > 1.6 * 1.6 * widths[2], widths


def test_interval_survives_checkpoint_and_merge(tmp_path):
    s = border_features(20, 16, 6, corner_ratio=1.5, seed=5)
    whole = border_artifacts(s.features, s.cropped)
    a, b = BorderArtifactsAccumulator(), BorderArtifactsAccumulator()
    a.update(full=s.features[:8], cropped=s.cropped[:8], image_indices=range(8))
    b.update(full=s.features[8:], cropped=s.cropped[8:], image_indices=range(8, 20))
    np.savez(tmp_path / "a.npz", **a.state_dict())
    a = BorderArtifactsAccumulator.from_state_dict(dict(np.load(tmp_path / "a.npz")))
    got = b.merge(a).result()  # merged in the other order: the interval does not depend on it
    for g in ("corner", "border", "other"):
        assert got.intervals[g] == whole.intervals[g]
