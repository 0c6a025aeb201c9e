"""Position probe: rises with the planted positional code, chance at zero, methods agree, streams."""

import math

import numpy as np
import pytest

from sdaudit.analyses import PaperTraining, PositionProbeAccumulator, position_probe
from sdaudit.analyses._probe_scoring import image_hits as _image_hits
from sdaudit.analyses.synthetic import positional_features

RES = (4, 8, 16)


def se(p, n):
    return math.sqrt(p * (1 - p) / n)


def test_accuracy_rises_with_strength_and_is_chance_at_zero():
    accs = []
    for s in (0.0, 0.05, 0.1, 0.3, 0.6):
        r = position_probe(positional_features(40, 64, 16, strength=s, seed=7).features, resolutions=RES)
        accs.append(r.accuracy[16])
        if s == 0:
            for k in RES:  # within 4 standard errors of chance (mean of two axes: n = 2 * tokens)
                assert abs(r.accuracy[k] - r.chance[k]) < 4 * se(r.chance[k], 2 * r.n_test_tokens)
    assert all(b > a for a, b in zip(accs, accs[1:]))
    assert accs[-1] > 0.9


def test_closed_forms_agree_with_trained_probe():
    """LDA, ridge and the published trained probe (trained to convergence on this small set)."""
    diffs = {"ridge": [], "paper": []}
    for s in (0.0, 0.06, 0.15):
        x = positional_features(60, 64, 16, strength=s, seed=3).features
        lda = position_probe(x, resolutions=RES)
        ridge = position_probe(x, resolutions=RES, method="ridge")
        paper = position_probe(x, resolutions=RES, method="paper", training=PaperTraining(epochs=10, lr=1e-2),
                               threads=1)
        for k in RES:
            diffs["ridge"].append(abs(ridge.accuracy[k] - lda.accuracy[k]))
            diffs["paper"].append(abs(paper.accuracy[k] - lda.accuracy[k]))
    assert max(diffs["ridge"]) < 0.02
    assert max(diffs["paper"]) < 0.03


def test_paper_probe_settings_and_history():
    x = positional_features(20, 32, 8, strength=0.3, seed=1).features
    r = position_probe(x, resolutions=(4, 8, 64), method="paper", threads=1)
    assert r.details["epochs"] == 5 and r.details["seed"] == 42 and len(r.details["history"]) == 5
    assert r.n_train_images == 16 and r.n_test_images == 4 and r.n_test_tokens == 4 * 64
    assert r.chance == {4: 0.25, 8: 0.125, 64: 0.125}
    again = position_probe(x, resolutions=(4, 8, 64), method="paper", threads=1)
    assert again.accuracy == r.accuracy  # seeded


def test_resolution_rule():
    pred, label = np.array([0, 1, 5, 7, 15]), np.array([1, 1, 4, 6, 0])
    # n = 16: at s = 8 pairs (0,1), (1,1), (5,4), (7,6) share a bin; at s = 16 only (1,1); at s = 64 exact
    assert _image_hits(pred[None], label[None], 16, (8, 16, 64)).tolist() == [[4, 1, 1]]
    assert _image_hits(pred[None], label[None], 16, (2,)).tolist() == [[4]]
    two = _image_hits(np.stack([pred, label]), np.stack([label, label]), 16, (8, 64))
    assert two.tolist() == [[4, 1], [5, 5]]  # per image


@pytest.mark.parametrize("method", ["lda", "ridge", "paper"])
def test_non_square_grid(method):
    x = positional_features(30, 64, 6, cols=10, strength=0.5, seed=2).features
    r = position_probe(x, resolutions=(4, 64), method=method, threads=1, training=PaperTraining(epochs=20, lr=1e-2))
    assert r.grid == (6, 10)
    assert r.chance[64] == pytest.approx(0.5 * (1 / 6 + 1 / 10))
    assert r.chance[4] == pytest.approx(0.25)
    assert r.accuracy[64] > 0.8
    assert r.accuracy[64] == pytest.approx(0.5 * (r.row_accuracy[64] + r.col_accuracy[64]))


def test_streamed_equals_one_shot_and_merge(tmp_path):
    x = positional_features(30, 32, 8, strength=0.12, seed=5).features
    whole = position_probe(x, resolutions=RES)
    acc = PositionProbeAccumulator(30, resolutions=RES)
    for i in range(0, 30, 7):
        acc.update(x[i:i + 7])
    assert acc.result().accuracy == pytest.approx(whole.accuracy, abs=1e-3)
    # out of order: test images first (buffered), then train images in two shards
    a = PositionProbeAccumulator(30, resolutions=RES)
    b = PositionProbeAccumulator(30, resolutions=RES)
    a.update(x[24:], image_indices=range(24, 30))
    a.update(x[:10], image_indices=range(10))
    b.update(x[10:24], image_indices=range(10, 24))
    np.savez(tmp_path / "a.npz", **a.state_dict())  # checkpoint with pending test images
    a = PositionProbeAccumulator.from_state_dict(dict(np.load(tmp_path / "a.npz")))
    got = a.merge(b).result()
    assert got.accuracy == pytest.approx(whole.accuracy, abs=1e-3)
    assert got.n_test_tokens == whole.n_test_tokens and got.n_train_tokens == whole.n_train_tokens


def test_torch_input_matches_numpy():
    torch = pytest.importorskip("torch")
    x = positional_features(20, 32, 8, strength=0.2, seed=6).features
    want = position_probe(x, resolutions=RES)
    got = position_probe(torch.from_numpy(x), resolutions=RES)
    assert got.accuracy == pytest.approx(want.accuracy, abs=2e-3)
    got16 = position_probe(torch.from_numpy(x).half(), resolutions=RES)
    assert got16.accuracy == pytest.approx(want.accuracy, abs=0.02)


def test_probe_errors():
    x = positional_features(4, 8, 4, strength=0.1).features
    with pytest.raises(ValueError, match="paper"):
        PositionProbeAccumulator(4, method="paper")
    with pytest.raises(ValueError, match="test"):
        position_probe(x[:1])
    acc = PositionProbeAccumulator(4)
    acc.update(x[:2])
    with pytest.raises(ValueError, match="training"):
        acc.result()
    with pytest.raises(ValueError, match="twice"):
        acc.update(x[:2], image_indices=[0, 1])
    with pytest.raises(ValueError, match="unknown probe method"):
        position_probe(x, method="svm")


def test_probe_interval_covers_the_accuracy_and_shrinks_with_test_images():
    from sdaudit.analyses.synthetic import positional_features

    widths = []
    for n in (40, 160, 640):
        s = positional_features(n, 16, 8, strength=0.2, seed=3)
        r = position_probe(s.features, resolutions=(8,))
        iv = r.intervals[8]
        assert iv.low <= r.accuracy[8] <= iv.high and iv.n == r.n_test_images
        widths.append(iv.width)
    assert widths[0] > 1.4 * widths[1] > 1.4 * 1.4 * widths[2], widths  # about 2x per 4x images
    paper = position_probe(s.features[:40], resolutions=(8,), method="paper", training=PaperTraining(epochs=1),
                           threads=1)
    assert paper.intervals[8].low <= paper.accuracy[8] <= paper.intervals[8].high
