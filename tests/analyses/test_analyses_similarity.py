"""Similarity maps and norm maps against brute-force references; streaming forms."""

import numpy as np
import pytest

from sdaudit.analyses import (MEASURES, SimilarityMapAccumulator, TokenMeanAccumulator, norm_map,
                              reference_token, similarity_map)


def brute(t, x, measure, center):
    """Float64 per-token reference implementation."""
    n, c, h, w = x.shape
    out = np.zeros((n, h, w))
    for i in range(n):
        for r in range(h):
            for q in range(w):
                v = x[i, :, r, q].astype(np.float64)
                u = t.astype(np.float64)
                if measure == "centered_cosine":
                    u, v = u - center, v - center
                if measure in ("cosine", "centered_cosine"):
                    out[i, r, q] = u @ v / (np.linalg.norm(u) * np.linalg.norm(v))
                elif measure == "dot":
                    out[i, r, q] = u @ v
                elif measure == "l1":
                    out[i, r, q] = np.abs(u - v).sum()
                elif measure == "l2":
                    out[i, r, q] = np.sqrt(((u - v) ** 2).sum())
                elif measure == "linf":
                    out[i, r, q] = np.abs(u - v).max()
                elif measure == "relative_l2_norm":
                    out[i, r, q] = np.linalg.norm(v) / np.linalg.norm(u)
    return out


@pytest.fixture
def feats():
    rng = np.random.default_rng(0)
    return rng.standard_normal((3, 7, 4, 5)).astype(np.float32) + 0.3


@pytest.mark.parametrize("measure", MEASURES)
def test_measures_match_brute_force(feats, measure):
    ref = (1, 2, 3)
    got = similarity_map(feats, ref, measure)
    center = feats.astype(np.float64).mean(axis=(0, 2, 3))
    want = brute(feats[1, :, 2, 3], feats, measure, center)
    assert got.shape == (3, 4, 5) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("measure", MEASURES)
def test_measures_with_others(feats, measure):
    others = np.random.default_rng(1).standard_normal((2, 7, 3, 3)).astype(np.float32)
    got = similarity_map(feats, (0, 1, 1), measure, others=others)
    center = others.astype(np.float64).mean(axis=(0, 2, 3))  # mean token of the compared images
    np.testing.assert_allclose(got, brute(feats[0, :, 1, 1], others, measure, center), rtol=1e-5, atol=1e-5)


def test_self_similarity_and_vector_ref(feats):
    m = similarity_map(feats, (2, 3, 4), "cosine")
    assert m[2, 3, 4] == pytest.approx(1.0, abs=1e-6)
    assert similarity_map(feats, (2, 3, 4), "l2")[2, 3, 4] == 0
    np.testing.assert_array_equal(similarity_map(feats, feats[2, :, 3, 4], "dot"), similarity_map(feats, (2, 3, 4), "dot"))


def test_norm_map(feats):
    np.testing.assert_allclose(norm_map(feats), np.linalg.norm(feats.astype(np.float64), axis=1), rtol=1e-6)


def test_float16_and_torch_inputs(feats):
    torch = pytest.importorskip("torch")
    f16 = feats.astype(np.float16)
    want = similarity_map(f16.astype(np.float32), (0, 0, 0), "cosine")
    np.testing.assert_array_equal(similarity_map(f16, (0, 0, 0), "cosine"), want)
    np.testing.assert_array_equal(similarity_map(torch.from_numpy(f16), (0, 0, 0), "cosine"), want)
    assert norm_map(torch.from_numpy(feats)).dtype == np.float32


def test_zero_tokens():
    x = np.ones((1, 3, 2, 2), np.float32)
    x[0, :, 1, 1] = 0
    assert similarity_map(x, (0, 0, 0), "cosine")[0, 1, 1] == 0  # zero token: cosine 0, not NaN
    with pytest.raises(ValueError, match="zero norm"):
        similarity_map(x, (0, 1, 1), "relative_l2_norm")
    with pytest.raises(ValueError, match="unknown measure"):
        similarity_map(x, (0, 0, 0), "cos")
    with pytest.raises(IndexError):
        similarity_map(x, (1, 0, 0))


@pytest.mark.parametrize("measure", ["cosine", "l1", "relative_l2_norm", "norm"])
def test_streaming_equals_one_shot(feats, measure):
    t = reference_token(feats, 1, 0, 2)
    kw = {} if measure == "norm" else {"ref": t}
    whole = norm_map(feats) if measure == "norm" else similarity_map(feats, (1, 0, 2), measure)
    a, b = SimilarityMapAccumulator(measure=measure, **kw), SimilarityMapAccumulator(measure=measure, **kw)
    a.update(feats[2:], image_indices=[2])
    b.update(feats[:2], image_indices=[0, 1])
    a.merge(b)
    np.testing.assert_array_equal(a.result(), whole)
    c = SimilarityMapAccumulator.from_state_dict(a.state_dict())
    np.testing.assert_array_equal(c.result(), whole)
    np.testing.assert_array_equal(c.image_indices, [0, 1, 2])


def test_streaming_centered_cosine_two_passes(feats):
    mean = TokenMeanAccumulator()
    for i in range(3):
        mean.update(feats[i:i + 1])
    shard = TokenMeanAccumulator()
    m2 = TokenMeanAccumulator().merge(shard)
    m2.merge(mean)
    acc = SimilarityMapAccumulator(reference_token(feats, 0, 1, 1), "centered_cosine", center=m2.result())
    for i in range(3):
        acc.update(feats[i:i + 1])
    np.testing.assert_allclose(acc.result(), similarity_map(feats, (0, 1, 1), "centered_cosine"), atol=1e-6)
    with pytest.raises(ValueError, match="center"):
        SimilarityMapAccumulator(np.ones(7), "centered_cosine")
