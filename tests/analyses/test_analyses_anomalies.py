"""High-norm anomaly detector and relative norms on planted anomalies."""

import numpy as np
import pytest

from sdaudit.analyses import (AnomalyDetector, AnomalyNormAccumulator, anomaly_relative_norms, compare_labels,
                              detect_anomalies, norm_map)
from sdaudit.analyses.synthetic import anomaly_features


@pytest.fixture(scope="module")
def planted():
    return anomaly_features(300, 48, 32, ratio=(2.5, 5.0), seed=11)


def test_detector_precision_recall(planted):
    det = detect_anomalies(planted.features, layer="up_blocks[1].upsamplers[0]")
    pr = compare_labels(det, planted.anomalies, tolerance=0)
    assert pr["precision"] >= 0.95 and pr["recall"] >= 0.95
    assert len(planted.anomalies) > 300 and (planted.anomalies[:, 1:] == 0).any()  # includes edge patches
    # where found exactly, the detector's relative norm is the planted ratio
    truth = {tuple(r): q for r, q in zip(planted.anomalies.tolist(), planted.anomaly_ratios)}
    found = [(rel, truth[tuple(r)]) for r, rel in zip(det.rows.tolist(), det.relative_norms) if tuple(r) in truth]
    np.testing.assert_allclose(*zip(*found), rtol=1e-4)
    assert np.all(det.scores > 3.5)


def test_no_detections_on_clean_images():
    clean = anomaly_features(300, 48, 32, clean_fraction=1.0, seed=12)
    assert len(clean.anomalies) == 0
    assert len(detect_anomalies(clean.features).rows) == 0
    rng = np.random.default_rng(0)
    flat = np.stack([np.zeros((8, 16, 16)), np.ones((8, 16, 16)), rng.standard_normal((8, 16, 16))])
    assert len(detect_anomalies(flat).rows) == 0
    # a broad high-norm region is not a token anomaly
    blob = rng.standard_normal((1, 8, 16, 16))
    blob[0, :, 2:9, 2:9] *= 5
    assert len(detect_anomalies(blob).rows) == 0


def test_single_patch_positions_and_clipping():
    x = np.ones((3, 4, 8, 8), np.float32)
    x[0, :, 3:5, 5:7] = 6  # 2x2 at row 3, col 5
    x[1, :, 7, 7] = 6  # single token in the corner -> patch clipped to the grid, upper-left (6, 6)
    x[2, :, 0:2, 0:2] = 6
    det = detect_anomalies(x, image_indices=[10, 11, 12])
    assert det.rows.tolist() == [[10, 5, 3], [11, 6, 6], [12, 0, 0]]


def test_relative_norms_return_planted_ratio(planted):
    f32 = planted.features
    f64 = f32.repeat(2, axis=2).repeat(2, axis=3)  # 64x64 layer, nearest upsampled: scale 2, patch 4x4
    res = anomaly_relative_norms({"up1": f32, "up2": f64}, planted.anomalies, ref_grid=32, provenance={"p": 1})
    for name in ("up1", "up2"):
        assert res.mean(name) == pytest.approx(planted.anomaly_ratios.mean(), rel=1e-5)
        assert res.std(name) == pytest.approx(planted.anomaly_ratios.std(), rel=1e-4)
        assert res.stats[name]["count"] == len(planted.anomalies)
    np.testing.assert_allclose(res.values["up1"], planted.anomaly_ratios, rtol=1e-5)
    assert list(res.stats) == ["up1", "up2"] and res.provenance == {"p": 1}


def test_relative_norms_match_published_rule_on_coarse_layers(planted):
    x = planted.features[:40]
    an = planted.anomalies[planted.anomalies[:, 0] < 40]
    coarse = {16: x.reshape(40, 48, 16, 2, 16, 2).mean(axis=(3, 5)), 8: x.reshape(40, 48, 8, 4, 8, 4).mean(axis=(3, 5))}
    res = anomaly_relative_norms({str(k): v for k, v in coarse.items()}, an)
    for n, feats in coarse.items():
        norms = np.linalg.norm(feats.astype(np.float64), axis=1)
        vals = []
        for img, ax, ay in an:  # the published loop
            scale = n / 32
            off = max(1, int(2 * scale))
            ys, xs = int(ay * scale), int(ax * scale)
            vals.append(norms[img, ys:ys + off, xs:xs + off].mean() / norms[img].mean())
        assert res.mean(str(n)) == pytest.approx(np.mean(vals), rel=1e-5)
        assert res.std(str(n)) == pytest.approx(np.std(vals), rel=1e-4)


def test_streamed_equals_one_shot(planted, tmp_path):
    x, an = planted.features[:50], planted.anomalies[planted.anomalies[:, 0] < 60]
    whole = anomaly_relative_norms({"L": x}, an)
    a, b = AnomalyNormAccumulator(an, layer="L"), AnomalyNormAccumulator(an, layer="L")
    for i in range(0, 50, 8):
        (a if i % 16 else b).update(x[i:i + 8], image_indices=range(i, min(i + 8, 50)))
    b = AnomalyNormAccumulator.from_state_dict(b.state_dict())
    got = a.merge(b).result()
    assert got.stats["L"] == whole.stats["L"]
    assert got.stats["L"]["missing"] == int((an[:, 0] >= 50).sum()) > 0
    np.testing.assert_array_equal(got.values["L"], whole.values["L"])

    one = detect_anomalies(x)
    d1, d2 = AnomalyDetector(), AnomalyDetector()
    d1.update(x[25:], image_indices=range(25, 50))
    d2.update(x[:25])
    np.savez(tmp_path / "d.npz", **d2.state_dict())
    d2 = AnomalyDetector.from_state_dict(dict(np.load(tmp_path / "d.npz")))
    got = d1.merge(d2).result()
    np.testing.assert_array_equal(got.rows, one.rows)
    np.testing.assert_array_equal(got.scores, one.scores)


def test_compare_labels_tolerance():
    truth = np.array([[0, 5, 5], [0, 10, 10], [1, 0, 0]])
    pred = np.array([[0, 6, 5], [1, 0, 0], [2, 3, 3]])
    assert compare_labels(pred, truth, 0)["tp"] == 1
    r = compare_labels(pred, truth, 1)
    assert (r["tp"], r["fp"], r["fn"]) == (2, 1, 1)


def test_anomaly_norm_errors():
    with pytest.raises(ValueError, match="outside"):
        AnomalyNormAccumulator(np.array([[0, 40, 1]]), ref_grid=32)
    assert np.isnan(anomaly_relative_norms({"z": np.zeros((1, 2, 4, 4))}, [[0, 1, 1]]).mean("z"))
    assert anomaly_relative_norms({"z": np.zeros((1, 2, 4, 4))}, [[0, 1, 1]]).stats["z"]["undefined"] == 1
    assert norm_map(np.zeros((1, 2, 4, 4))).shape == (1, 4, 4)


def test_relative_norm_interval_covers_the_planted_mean_90_to_99_percent_of_the_time():
    from sdaudit.analyses.synthetic import anomaly_features

    hits, widths = 0, []
    for rep in range(200):
        s = anomaly_features(30, 4, 12, ratio=(2.0, 6.0), seed=500 + rep)
        stats = anomaly_relative_norms({"L": s.features}, s.anomalies, ref_grid=12).stats["L"]
        hits += stats["low"] <= 4.0 <= stats["high"]  # the planted ratios' population mean
        widths.append(stats["high"] - stats["low"])
        assert stats["n_images"] == len(np.unique(s.anomalies[:, 0]))
    assert 180 <= hits <= 198, hits


def test_relative_norm_interval_is_the_same_streamed_and_merged(planted):
    x, an = planted.features[:50], planted.anomalies[planted.anomalies[:, 0] < 50]
    whole = anomaly_relative_norms({"L": x}, an).stats["L"]
    a, b = AnomalyNormAccumulator(an, layer="L"), AnomalyNormAccumulator(an, layer="L")
    a.update(x[:20], image_indices=range(20))
    b.update(x[20:], image_indices=range(20, 50))
    got = b.merge(a).result().stats["L"]
    assert (got["low"], got["high"]) == (whole["low"], whole["high"]) and whole["low"] < whole["mean"] < whole["high"]
