"""The anomaly detector rerun without a layer's massive channels (analyses.norms_without): planted massive
channels hide planted high-norm tokens from the plain detector and not from this one; its maps equal the
brute-force norm_map_without; batching, shards and state round trips change nothing; no channel = plain."""

from __future__ import annotations

import numpy as np
import pytest

from sdaudit.analyses import (NormsWithoutAccumulator, anomalies_without, detect_anomalies, detect_massive_channels,
                              norm_map_without)
from sdaudit.analyses.synthetic import anomaly_features

MASSIVE = [3, 9]


def _planted(seed: int = 0, massive: bool = True):
    """Features with planted 2x2 anomalies (ratio 4) and, if ``massive``, channels 3 and 9 at about 300 everywhere."""
    syn = anomaly_features(8, 48, 12, ratio=4.0, clean_fraction=0.25, max_per_image=2, seed=seed)
    x = syn.features.copy()
    if massive:
        rng = np.random.default_rng(seed + 100)
        x[:, MASSIVE] = 300.0 + rng.standard_normal((len(x), len(MASSIVE), 12, 12)).astype(np.float32)
    return x, syn.anomalies


def _found(rows) -> set:
    return {tuple(int(v) for v in r) for r in rows}


def test_massive_channels_hide_the_anomalies_and_removing_them_recovers_them():
    x, truth = _planted()
    assert detect_massive_channels(x).channels.tolist() == MASSIVE
    assert len(detect_anomalies(x).rows) == 0  # the flat huge norms hide every planted token
    acc = NormsWithoutAccumulator()
    acc.update(x)
    out = acc.result(MASSIVE)
    assert anomalies_without(acc, MASSIVE) == out
    assert out["channels"] == MASSIVE and out["skipped_images"] == 0 and out["n_images"] == len(x)
    assert _found(truth) <= _found(out["rows"])
    assert out["count"] == len(out["rows"]) and out["rel_norm_mean"] > 2
    assert out["rel_norm_low"] <= out["rel_norm_mean"] <= out["rel_norm_high"]


def test_maps_equal_the_brute_force_norm_map_without():
    x, _ = _planted(seed=1)
    acc = NormsWithoutAccumulator()
    acc.update(x)
    maps, skipped = acc.maps(MASSIVE)
    want = norm_map_without(x, MASSIVE)
    assert skipped == [] and sorted(maps) == list(range(len(x)))
    for i, m in maps.items():
        np.testing.assert_allclose(m, want[i], rtol=1e-5)


def test_without_massive_channels_the_result_is_the_plain_detection():
    x, truth = _planted(seed=2, massive=False)
    assert detect_massive_channels(x).channels.tolist() == []
    acc = NormsWithoutAccumulator()
    acc.update(x)
    out, plain = acc.result([]), detect_anomalies(x)
    assert _found(out["rows"]) == _found(plain.rows) and _found(truth) <= _found(plain.rows)
    assert out["rel_norm_mean"] == pytest.approx(float(plain.relative_norms.mean()), rel=1e-5)


def test_batches_shards_and_state_round_trip_equal_the_whole():
    x, _ = _planted(seed=3)
    whole, first, second = NormsWithoutAccumulator(), NormsWithoutAccumulator(), NormsWithoutAccumulator()
    whole.update(x)
    first.update(x[:3], [0, 1, 2])
    first.update(x[3:5], [3, 4])
    second.update(x[5:], list(range(5, len(x))))
    merged = NormsWithoutAccumulator.from_state_dict(first.state_dict()).merge(
        NormsWithoutAccumulator.from_state_dict(second.state_dict()))
    want, got = whole.result(MASSIVE), merged.result(MASSIVE)
    assert got["rows"] == want["rows"] and got["rel_norm_mean"] == pytest.approx(want["rel_norm_mean"])


def test_an_image_whose_candidates_miss_a_massive_channel_is_left_out_and_counted():
    x, _ = _planted(seed=4)
    x[0, 9] = 0.0  # image 0: channel 9 is not among its largest
    acc = NormsWithoutAccumulator(candidates=2)
    acc.update(x)
    maps, skipped = acc.maps(MASSIVE)
    assert skipped == [0] and 0 not in maps
    assert acc.result(MASSIVE)["skipped_images"] == 1 and acc.result(MASSIVE)["n_images"] == len(x) - 1
