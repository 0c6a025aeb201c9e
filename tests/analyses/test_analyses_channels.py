"""Massive channels on planted signals, against a brute-force float64 oracle; streaming, merging, norms without."""

import numpy as np
import pytest
import torch

from sdaudit.analyses import (MassiveChannelAccumulator, MassiveChannelResult, NonFiniteInputError,
                              channel_magnitudes, detect_in_map, detect_massive_channels, massive_channels,
                              norm_map_without, without_channels)
from sdaudit.analyses.channels import DEFAULT_THRESHOLDS

HALF_NORMAL_MEDIAN = 0.6744897501960817  # median of |z|, z standard normal


def planted(seed=0, n=8, c=48, grid=(6, 7), channels=(3, 17, 40), amplitude=150.0, share=None):
    """Gaussian features with ``channels`` of magnitude ~``amplitude`` (random sign per token); channel k is
    planted in the first ``share[k] * n`` images only (all images by default)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c) + grid).astype(np.float32)
    share = share or {}
    for ch in channels:
        k = int(round(share.get(ch, 1.0) * n))
        signs = rng.choice([-1.0, 1.0], size=(k,) + grid)
        x[:k, ch] = amplitude * signs * (1 + 0.05 * rng.standard_normal((k,) + grid))
    return x


def oracle(x, threshold=100.0):
    """Float64 loops: per-image token medians of |x|, median over images, ratio rule, consistency."""
    x = np.asarray(x, np.float64)
    n, c = x.shape[:2]
    m = np.array([[np.median(np.abs(x[i, k].ravel())) for k in range(c)] for i in range(n)])
    mags = np.array([np.median(m[:, k]) for k in range(c)])
    med = np.median(mags)
    chans = [k for k in range(c) if mags[k] > threshold * med]
    consistency = [np.mean([m[i, k] > threshold * np.median(m[i]) for i in range(n)]) for k in chans]
    return np.array(chans), mags[chans] / med, np.array(consistency), mags


def test_finds_exactly_the_planted_channels_with_their_ratio():
    res = detect_massive_channels(planted(), layer="blk")
    assert res.channels.tolist() == [3, 17, 40]
    np.testing.assert_allclose(res.ratios, 150.0 / HALF_NORMAL_MEDIAN, rtol=0.1)
    np.testing.assert_array_equal(res.consistency, 1.0)
    assert res.n_images == 8 and res.layer == "blk" and res.rule == "ratio" and res.threshold == 100.0


@pytest.mark.parametrize("rule", ["ratio", "mad"])
def test_recovers_random_plants_over_many_draws(rule):
    """Precision and recall 1 over 20 draws of random channel sets and amplitudes (200..2000 x the noise)."""
    for seed in range(20):
        rng = np.random.default_rng(100 + seed)
        chans = np.sort(rng.choice(96, size=int(rng.integers(1, 5)), replace=False))
        x = planted(seed, n=4, c=96, grid=(5, 5), channels=chans.tolist(), amplitude=float(rng.uniform(200, 2000)))
        assert detect_massive_channels(x, rule=rule).channels.tolist() == chans.tolist(), seed


@pytest.mark.parametrize("rule", ["ratio", "mad"])
def test_no_false_alarm_on_gaussian_data(rule):
    for seed in range(10):
        x = np.random.default_rng(seed).standard_normal((4, 512, 8, 8)).astype(np.float32) * (seed + 1)
        res = detect_massive_channels(x, rule=rule)
        assert res.channels.size == 0 and res.ratios.size == 0 and res.consistency.size == 0
        assert res.magnitudes.shape == (512,)


def test_matches_brute_force_oracle():
    x = planted(3, n=5, c=20, grid=(3, 4), channels=(0, 9), amplitude=80.0)
    x[:, 5] *= 30  # a large channel below the threshold
    chans, ratios, consistency, mags = oracle(x)
    res = detect_massive_channels(x)
    assert res.channels.tolist() == chans.tolist() == [0, 9]
    np.testing.assert_allclose(res.ratios, ratios, rtol=1e-5)
    np.testing.assert_allclose(res.consistency, consistency)
    np.testing.assert_allclose(res.magnitudes, mags, rtol=1e-5)
    np.testing.assert_allclose(res.median, np.median(mags), rtol=1e-5)
    per_image = channel_magnitudes(x)
    assert per_image.shape == (5, 20) and per_image.dtype == np.float32
    np.testing.assert_allclose(per_image[2, 5], np.median(np.abs(x[2, 5].astype(np.float64))), rtol=1e-6)


def test_consistency_is_the_planted_share_of_images():
    x = planted(1, n=8, channels=(3, 17, 40), share={17: 0.75, 40: 0.625})
    res = detect_massive_channels(x)
    assert res.channels.tolist() == [3, 17, 40]
    np.testing.assert_allclose(res.consistency, [1.0, 0.75, 0.625])
    np.testing.assert_allclose(res.consistency, oracle(x)[2])


def test_a_channel_massive_in_few_images_is_not_massive():
    res = detect_massive_channels(planted(2, n=8, channels=(5,), share={5: 0.25}))
    assert res.channels.size == 0
    assert res.magnitudes[5] < 2  # the median over images ignores the two planted images


def test_streamed_equals_one_shot_in_any_batching_and_order():
    x = planted(4, n=9, share={17: 2 / 3})
    whole = detect_massive_channels(x).to_dict()
    order = np.random.default_rng(0).permutation(9)
    acc = MassiveChannelAccumulator()
    for part in np.split(order, [2, 3, 7]):
        acc.update(torch.from_numpy(x[part]), image_indices=part)
    assert acc.result().to_dict() == whole
    np.testing.assert_array_equal(acc.per_image(), channel_magnitudes(x))


def test_merge_of_two_shards_equals_one_pass_and_state_round_trip():
    x = planted(5, n=7, share={40: 5 / 7})
    a, b = MassiveChannelAccumulator(rule="mad", layer="L"), MassiveChannelAccumulator(rule="mad", layer="L")
    a.update(x[:3])
    b.update(x[3:], image_indices=range(3, 7))
    one = MassiveChannelAccumulator(rule="mad", layer="L")
    one.update(x)
    assert a.merge(b).result().to_dict() == one.result().to_dict()
    restored = MassiveChannelAccumulator.from_state_dict(one.state_dict())
    assert restored.result().to_dict() == one.result().to_dict()
    assert restored.get_params() == {"rule": "mad", "threshold": None, "layer": "L", "provenance": None}
    restored.update(x[:1])  # continues at the next global index
    assert restored.result().n_images == 8
    with pytest.raises(ValueError, match="different settings"):
        a.merge(MassiveChannelAccumulator(rule="ratio", layer="L"))


def test_result_json_round_trip():
    res = detect_massive_channels(planted(6), provenance={"model": "tiny"})
    back = MassiveChannelResult.from_dict(res.to_dict())
    assert back.to_dict() == res.to_dict() and back.channels.dtype == np.int64
    assert res.to_dict()["kind"] == "massive_channels"


def test_threshold_and_rule_options():
    x = planted(7, channels=(3,), amplitude=150.0)  # ratio ~ 222
    assert detect_massive_channels(x, threshold=300).channels.size == 0
    assert detect_massive_channels(x, threshold=50).channels.tolist() == [3]
    mags = np.ones(100)
    mags[[4, 60]] = 1e4
    assert massive_channels(mags).tolist() == [4, 60]
    assert massive_channels(mags, rule="mad").tolist() == []  # MAD 0: spread undefined, nothing flagged
    mags = np.exp(np.random.default_rng(0).normal(0, 0.1, 100))
    mags[7] = 20
    assert massive_channels(mags, rule="mad").tolist() == [7]  # z ~ 30 on the log scale, ratio only ~ 20
    assert massive_channels(mags).tolist() == []
    assert DEFAULT_THRESHOLDS == {"ratio": 100.0, "mad": 10.0}
    with pytest.raises(ValueError, match="unknown rule"):
        detect_massive_channels(x, rule="zscore")


def test_zero_features_have_no_massive_channel():
    res = detect_massive_channels(np.zeros((2, 8, 3, 3), np.float32))
    assert res.channels.size == 0 and res.median == 0.0


def test_bad_input_is_refused():
    x = planted(8, n=2)
    x[1, 0, 0, 0] = np.nan
    with pytest.raises(NonFiniteInputError, match="'L'"):
        detect_massive_channels(x, layer="L")
    acc = MassiveChannelAccumulator()
    acc.update(planted(8, n=2))
    with pytest.raises(ValueError, match="channels"):
        acc.update(planted(8, n=2, c=10, channels=()))
    with pytest.raises(ValueError, match="no images"):
        MassiveChannelAccumulator().result()


def test_norm_map_without_equals_brute_force():
    x = planted(9, n=3, c=12, grid=(4, 5), channels=(2, 7), amplitude=50.0)
    got = norm_map_without(torch.from_numpy(x).half(), [7, 2])
    xs = x.astype(np.float16).astype(np.float64)
    want = np.sqrt(sum(xs[:, k] ** 2 for k in range(12) if k not in (2, 7)))
    assert got.shape == (3, 4, 5) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-5)
    np.testing.assert_array_equal(without_channels(x, []), x)
    assert without_channels(x, [0, 11]).shape == (3, 10, 4, 5)
    with pytest.raises(IndexError, match="outside 0..11"):
        norm_map_without(x, [12])


def test_anomaly_hidden_by_a_massive_channel_is_found_without_it():
    """A high-norm token patch drowns in a massive channel's norm; dropping the channel reveals it again."""
    x = np.random.default_rng(10).standard_normal((1, 32, 16, 16)).astype(np.float32)
    x[0, :, 5:7, 9:11] *= 4
    x[0, 7] = 200.0
    res = detect_massive_channels(x)
    assert res.channels.tolist() == [7]
    assert detect_in_map(np.sqrt((x[0].astype(np.float64) ** 2).sum(0))) == []
    found = detect_in_map(norm_map_without(x, res.channels)[0])
    assert [(xx, yy) for xx, yy, _, _ in found] == [(9, 5)]
