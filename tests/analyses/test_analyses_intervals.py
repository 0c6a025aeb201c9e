"""Bootstrap intervals over images: coverage of a known value, width, seeding, per-image state."""

import numpy as np
import pytest

from sdaudit.analyses.intervals import Interval, PerImageStats, bootstrap_interval, ratio, ratio_of_ratios


def _ratio_rows(rng, n):
    """Per-image (numerator, denominator) with population ratio E[a] / E[b] = 3 / 2 (skewed, varying sizes)."""
    b = rng.integers(20, 200, n).astype(float)  # e.g. tokens per image
    a = rng.gamma(2.0, 0.75, n) * b  # mean 1.5 per token
    return np.stack([a, b], axis=1)


def test_interval_covers_a_known_ratio_90_to_99_percent_of_the_time():
    rng = np.random.default_rng(0)
    hits = 0
    for k in range(200):
        iv = bootstrap_interval(_ratio_rows(rng, 40), ratio(0, 1), n_boot=1000, seed=k)
        hits += iv.low <= 1.5 <= iv.high
    assert 180 <= hits <= 198, hits


def test_no_signal_interval_contains_one():
    rng = np.random.default_rng(1)
    rows = np.concatenate([_ratio_rows(rng, 100), _ratio_rows(rng, 100)], axis=1)  # same law on both sides
    iv = bootstrap_interval(rows, ratio_of_ratios((0, 1), (2, 3)), seed=0)
    assert iv.low < 1 < iv.high and not iv.excludes(1.0)


def test_width_shrinks_like_one_over_root_n_and_estimate_is_the_plain_ratio():
    rng = np.random.default_rng(2)
    widths = []
    for n in (9, 36, 144, 576):
        rows = _ratio_rows(rng, n)
        iv = bootstrap_interval(rows, ratio(0, 1), seed=0)
        assert iv.estimate == pytest.approx(rows[:, 0].sum() / rows[:, 1].sum()) and iv.n == n
        widths.append(iv.width)
    assert all(1.4 < widths[i] / widths[i + 1] < 2.9 for i in range(3)), widths


def test_seeded_and_level():
    rows = _ratio_rows(np.random.default_rng(3), 30)
    a, b = (bootstrap_interval(rows, ratio(0, 1), seed=4) for _ in range(2))
    assert a == b
    assert bootstrap_interval(rows, ratio(0, 1), level=0.5, seed=4).width < a.width
    with pytest.raises(ValueError, match="level"):
        bootstrap_interval(rows, ratio(0, 1), level=1.0)


def test_undefined_cases_give_nan_bounds():
    one = bootstrap_interval(np.array([[1.0, 2.0]]), ratio(0, 1))
    assert one.estimate == 0.5 and np.isnan(one.low) and np.isnan(one.high) and not one.excludes(0)
    four = bootstrap_interval(np.array([[1.0, 2.0], [2.0, 2.0], [3.0, 2.0], [5.0, 1.0]]), ratio(0, 1))
    assert np.isnan(four.low) and four.n == 4  # too few images for a percentile interval
    zeros = bootstrap_interval(np.zeros((10, 2)), ratio(0, 1))
    assert np.isnan(zeros.low)
    assert Interval.from_dict(one.to_dict()).estimate == 0.5


def test_per_image_stats_order_free_and_refuse_an_image_twice(tmp_path):
    rows = np.arange(12.0).reshape(6, 2)
    a, b = PerImageStats(2), PerImageStats(2)
    a.add([4, 5, 0], rows[[4, 5, 0]])
    b.add([3, 1, 2], rows[[3, 1, 2]])
    merged = b.merge(a)
    idx, got = merged.arrays()
    assert idx.tolist() == list(range(6)) and np.array_equal(got, rows)
    again = PerImageStats(2)
    again.load(merged.state())
    assert again.interval(ratio(0, 1)) == merged.interval(ratio(0, 1))
    merged.add([2], rows[[2]])
    with pytest.raises(ValueError, match=r"image\(s\) \[2\] counted twice"):
        merged.arrays()


def test_paired_difference_covers_the_planted_difference_and_is_narrower_than_unpaired():
    from sdaudit.analyses.intervals import Terms, difference_interval

    rng = np.random.default_rng(7)
    hits, paired_w, unpaired_w = 0, [], []
    for k in range(200):
        base = _ratio_rows(rng, 40)  # shared per-image content
        shifted = base.copy()
        shifted[:, 0] += 0.2 * base[:, 1] + rng.normal(0, 3, 40)  # ratio + 0.2, plus a little per-image noise
        a, b = Terms(np.arange(40), shifted, ratio(0, 1)), Terms(np.arange(40), base, ratio(0, 1))
        iv = difference_interval(a, b, n_boot=500, seed=k)
        hits += iv.low <= 0.2 <= iv.high
        paired_w.append(iv.width)
        unpaired_w.append(a.interval(n_boot=500, seed=k).width + b.interval(n_boot=500, seed=k + 1).width)
    assert 180 <= hits <= 198, hits
    assert np.median(paired_w) < 0.5 * np.median(unpaired_w)
    same = difference_interval(b, b, seed=0)
    assert same.estimate == 0 and same.low == same.high == 0
