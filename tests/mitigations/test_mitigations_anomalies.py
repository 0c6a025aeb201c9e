"""Anomaly repair: planted high-norm patches are repaired to their neighbourhood's norm, clean data is untouched,
and the mean-substitution and zeroing controls do what they say."""

from __future__ import annotations

import numpy as np
import pytest

from sdaudit.analyses import detect_anomalies
from sdaudit.analyses.synthetic import anomaly_features
from sdaudit.errors import UsageError
from sdaudit.mitigations import AnomalyRepair

C, N = 32, 16
PLACES = [(3, 4), (10, 0), (14, 12)]  # (row, col) upper-left of 2x2 patches, one on the left edge, one at the bottom


def smooth_maps(n_images=6, seed=0):
    """Spatially smooth content (a per-image direction times a smooth norm field, plus small noise): a token's
    neighbours are alike, as in real feature maps, so their mean has the neighbourhood's norm."""
    rng = np.random.default_rng(seed)
    d = rng.standard_normal((n_images, C, 1, 1))
    field = 1 + 0.2 * np.sin(np.arange(N) / 3)[:, None] * np.cos(np.arange(N) / 4)[None, :]
    return (d * field + 0.05 * rng.standard_normal((n_images, C, N, N))).astype(np.float32)


def plant(x, factor=6.0, seed=1):
    rng = np.random.default_rng(seed)
    out, mask = x.copy(), np.zeros((len(x), N, N), bool)
    spike = rng.standard_normal(C).astype(np.float32)
    for i in range(len(x)):
        for y, c in PLACES:
            level = np.linalg.norm(x[i], axis=0).mean()
            out[i, :, y:y + 2, c:c + 2] = (factor * level * spike / np.linalg.norm(spike))[:, None, None]
            mask[i, y:y + 2, c:c + 2] = True
    return out, mask


def test_planted_patches_are_repaired_to_the_neighbourhood_norm():
    clean = smooth_maps()
    dirty, mask = plant(clean)
    m = AnomalyRepair().fit(dirty)
    np.testing.assert_array_equal(m.anomaly_mask(dirty), mask)
    out = m.transform(dirty)
    np.testing.assert_array_equal(out[:, :, ~mask[0]], dirty[:, :, ~mask[0]])  # only the patches change
    repaired = np.linalg.norm(out, axis=1)[mask]
    planted_norm = np.linalg.norm(clean, axis=1)[mask]  # what the tokens were before the spikes
    np.testing.assert_allclose(repaired, planted_norm, rtol=0.1)
    assert not m.anomaly_mask(out).any()


def test_neighbour_mean_is_the_mean_of_the_non_anomalous_eight_neighbours():
    dirty, mask = plant(smooth_maps(n_images=2))
    out = AnomalyRepair().fit(dirty).transform(dirty)
    for i, y, x in zip(*np.nonzero(mask)):
        around = [(yy, xx) for yy in range(y - 1, y + 2) for xx in range(x - 1, x + 2)
                  if 0 <= yy < N and 0 <= xx < N and (yy, xx) != (y, x) and not mask[i, yy, xx]]
        brute = np.mean([dirty[i, :, yy, xx].astype(np.float64) for yy, xx in around], axis=0)
        np.testing.assert_allclose(out[i, :, y, x], brute, rtol=1e-5, atol=1e-6)


def test_clean_data_is_unchanged_bit_for_bit():
    clean = smooth_maps()
    for method in ("neighbours", "mean", "zero"):
        m = AnomalyRepair(method=method).fit(clean)
        assert not m.anomaly_mask(clean).any()
        np.testing.assert_array_equal(m.transform(clean), clean)


def test_mean_substitution_and_zeroing_controls():
    dirty, mask = plant(smooth_maps())
    mean = AnomalyRepair(method="mean").fit(dirty)
    np.testing.assert_allclose(mean.mean_token_, dirty.astype(np.float64).mean(axis=(0, 2, 3)), rtol=1e-10)
    out = mean.transform(dirty)
    np.testing.assert_allclose(out.transpose(0, 2, 3, 1)[mask], np.broadcast_to(mean.mean_token_, (mask.sum(), C)),
                               rtol=1e-6)
    zero = AnomalyRepair(method="zero").fit(dirty).transform(dirty)
    assert not zero.transpose(0, 2, 3, 1)[mask].any()
    np.testing.assert_array_equal(zero[:, :, ~mask[0]], dirty[:, :, ~mask[0]])


def test_synthetic_anomalies_are_all_repaired_and_clean_images_kept():
    s = anomaly_features(n_images=20, channels=C, n=N, seed=3)
    m = AnomalyRepair().fit(s.features)
    out = m.transform(s.features)
    assert len(detect_anomalies(s.features).rows) > 0
    assert len(detect_anomalies(out).rows) == 0
    untouched = sorted(set(range(20)) - set(s.anomalies[:, 0].tolist()))
    assert untouched
    np.testing.assert_array_equal(out[untouched], s.features[untouched])


def test_unknown_method_is_a_usage_error():
    with pytest.raises(UsageError, match="neighbours, mean, zero"):
        AnomalyRepair(method="median")


def test_a_token_without_clean_neighbours_gets_the_fitted_mean_token():
    x = smooth_maps(n_images=2)
    m = AnomalyRepair().fit(x)
    img = x[0].copy()
    mask = np.zeros((N, N), bool)
    mask[:3, :3] = True  # token (1, 1) has no non-anomalous 8-neighbour
    out = m._repaired(img, mask)
    np.testing.assert_allclose(out[:, 1, 1], m.mean_token_, rtol=1e-6)
    np.testing.assert_allclose(out[:, 0, 2], (x[0, :, 0, 3] + x[0, :, 1, 3]) / 2, rtol=1e-5)
