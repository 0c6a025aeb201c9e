"""JSON serialisation, provenance, and the non-finite input policy (raise, naming the layer)."""

import json

import numpy as np
import pytest

from sdaudit.analyses import (AnomalyDetectionResult, AnomalyDetector, AnomalyNormAccumulator, AnomalyNormResult,
                              BorderArtifactsAccumulator, BorderArtifactsResult, GroupSimilarityAccumulator,
                              GroupSimilarityResult, NonFiniteInputError, PaperTraining, PositionProbeAccumulator,
                              ProbeResult, SimilarityMapAccumulator, TokenMeanAccumulator, anomaly_relative_norms,
                              border_artifacts, detect_anomalies, group_similarity, norm_map, position_probe,
                              similarity_map)
from sdaudit.analyses.synthetic import anomaly_features, border_features, positional_features

PROV = {"manifest": "store/manifest.json", "layer": "mid_block.resnets[1]", "protocol": "clean", "seed": np.int64(3)}


def roundtrip(result, cls):
    d = result.to_dict()
    text = json.dumps(d, allow_nan=False)  # only JSON-native types, no NaN/Inf
    back = cls.from_dict(json.loads(text))
    assert json.dumps(back.to_dict(), allow_nan=False) == text
    return d


def test_results_serialise_with_provenance():
    x = positional_features(10, 16, 8, strength=0.3).features
    d = roundtrip(position_probe(x, resolutions=(4, 8), layer="L", provenance=PROV), ProbeResult)
    assert d["provenance"]["seed"] == 3 and d["layer"] == "L" and d["kind"] == "position_probe"
    assert set(d["accuracy"]) == {"4", "8"}

    g = group_similarity(np.random.default_rng(0).standard_normal((2, 4, 2, 2)), provenance=PROV)
    assert np.isnan(g.matrix[2, 2])  # a 2x2 grid has no interior
    d = roundtrip(g, GroupSimilarityResult)
    assert d["matrix"][2][2] is None

    s = border_features(4, 16, 6)
    d = roundtrip(border_artifacts(s.features, s.cropped, layer="B", provenance=PROV), BorderArtifactsResult)
    assert d["cropped_result"]["kind"] == "group_similarity"

    a = anomaly_features(10, 16, 16, seed=1)
    det = detect_anomalies(a.features, provenance=PROV)
    d = roundtrip(det, AnomalyDetectionResult)
    assert d["params"]["ratio_threshold"] == 2.0 and len(d["rows"]) == len(det.rows)
    rn = anomaly_relative_norms({"a": a.features[:3]}, a.anomalies, ref_grid=16, provenance=PROV)
    d = roundtrip(rn, AnomalyNormResult)
    assert d["stats"]["a"]["missing"] == int((a.anomalies[:, 0] >= 3).sum())
    assert None in d["values"]["a"]  # missing anomalies are null, not NaN


def poisoned(value, shape=(3, 4, 6, 6), image=1):
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    x[image, 2, 3, 4] = value
    return x


CALLS = {
    "similarity_map": lambda x: similarity_map(x, (0, 0, 0), layer="L"),
    "norm_map": lambda x: norm_map(x, layer="L"),
    "position_probe": lambda x: position_probe(x, layer="L"),
    "position_probe_paper": lambda x: position_probe(x, layer="L", method="paper", training=PaperTraining(epochs=1)),
    "group_similarity": lambda x: group_similarity(x, layer="L"),
    "border_full": lambda x: border_artifacts(x, np.ones_like(x[:, :, 1:-1, 1:-1]), layer="L"),
    "border_cropped": lambda x: border_artifacts(np.ones((*x.shape[:2], x.shape[2] + 2, x.shape[3] + 2)), x, layer="L"),
    "detect_anomalies": lambda x: detect_anomalies(x, layer="L"),
    "anomaly_relative_norms": lambda x: anomaly_relative_norms({"L": x}, [[1, 0, 0]], ref_grid=6),
}


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("name", sorted(CALLS))
def test_non_finite_input_raises_naming_layer(name, value):
    with pytest.raises(NonFiniteInputError, match="layer 'L'") as e:
        CALLS[name](poisoned(value))
    assert e.value.layer == "L" and e.value.count == 1 and e.value.images == [1]


ACCUMULATORS = [
    lambda: TokenMeanAccumulator(layer="L"),
    lambda: SimilarityMapAccumulator(measure="norm", layer="L"),
    lambda: GroupSimilarityAccumulator(layer="L"),
    lambda: PositionProbeAccumulator(100, layer="L"),
    lambda: AnomalyDetector(layer="L"),
    lambda: AnomalyNormAccumulator([[11, 0, 0]], ref_grid=6, layer="L"),
]


@pytest.mark.parametrize("make", ACCUMULATORS)
def test_accumulators_raise_with_global_image_index(make):
    acc = make()
    with pytest.raises(NonFiniteInputError, match="layer 'L'") as e:
        acc.update(poisoned(np.nan), image_indices=[10, 11, 12])
    assert e.value.images == [11]
    b = BorderArtifactsAccumulator(layer="L")
    with pytest.raises(NonFiniteInputError, match="cropped of layer 'L'"):
        b.update(cropped=poisoned(np.inf))


def test_torch_and_float16_non_finite():
    torch = pytest.importorskip("torch")
    x = poisoned(np.nan)
    with pytest.raises(NonFiniteInputError):
        position_probe(torch.from_numpy(x), layer="L")
    with pytest.raises(NonFiniteInputError):
        group_similarity(torch.from_numpy(x).half(), layer="L")
    with np.errstate(over="ignore"):
        big = np.full((2, 2, 3, 3), 7e4, np.float32).astype(np.float16)  # overflows to inf in float16
    with pytest.raises(NonFiniteInputError) as e:
        norm_map(big, layer="L")
    assert e.value.count == 36


def test_state_dict_config_mismatch():
    a, b = GroupSimilarityAccumulator(layer="a"), GroupSimilarityAccumulator(layer="b")
    with pytest.raises(ValueError, match="different settings"):
        a.merge(b)
    with pytest.raises(TypeError):
        a.merge(AnomalyDetector())
    with pytest.raises(ValueError, match="state_dict is for"):
        AnomalyDetector.from_state_dict(a.state_dict())


def test_state_dict_with_numpy_provenance(tmp_path):
    a = GroupSimilarityAccumulator(layer="L", provenance=PROV)
    a.update(np.random.default_rng(0).standard_normal((2, 3, 4, 4)))
    np.savez(tmp_path / "s.npz", **a.state_dict())
    b = GroupSimilarityAccumulator.from_state_dict(dict(np.load(tmp_path / "s.npz")))
    assert b.result().provenance["seed"] == 3
    np.testing.assert_array_equal(b.result().matrix, a.result().matrix)
    b.merge(a)  # same settings after the round trip
    assert b.result().n_images == 4
