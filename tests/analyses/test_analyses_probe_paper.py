"""The streamed published probe: bounded sample, order-free, mergeable, resumable, close to the one-shot probe."""

import numpy as np
import pytest

from sdaudit.analyses import PaperTraining, position_probe
from sdaudit.analyses.probe_paper import PaperProbeAccumulator
from sdaudit.analyses.synthetic import positional_features

RES = (4, 8)


@pytest.fixture(scope="module")
def planted():
    return positional_features(30, 24, 8, strength=0.6, seed=11).features


def _streamed(x, order, **kw):
    acc = PaperProbeAccumulator(len(x), resolutions=RES, epochs=10, **kw)
    for i in range(0, len(order), 4):
        sel = order[i:i + 4]
        acc.update(x[sel], image_indices=sel)
    return acc


def test_streamed_probe_matches_the_one_shot_published_probe(planted):
    one = position_probe(planted, resolutions=RES, method="paper", training=PaperTraining(epochs=10), threads=1)
    got = _streamed(planted, np.arange(30)).result()
    for s in RES:
        assert abs(got.accuracy[s] - one.accuracy[s]) < 0.04
        assert got.intervals[s].low <= got.accuracy[s] <= got.intervals[s].high
    assert got.n_test_images == one.n_test_images == 6 and got.details["train_tokens_kept"] == 24 * 64


def test_result_does_not_depend_on_image_order_or_batching(planted):
    order = np.random.default_rng(0).permutation(30)
    test_last = np.concatenate([order[order < 24], order[order >= 24]])
    a = _streamed(planted, np.arange(30)).result()
    b = _streamed(planted, test_last).result()
    c = _streamed(planted, order).result()  # test images arriving before training ends wait
    assert a.accuracy == b.accuracy == c.accuracy and a.intervals == c.intervals


def test_sample_is_bounded_and_still_learns(planted):
    acc = _streamed(planted, np.arange(30), max_train_tokens=300)
    r = acc.result()
    full = _streamed(planted, np.arange(30)).result()
    assert len(acc._keys) == 300 and r.details["train_tokens_seen"] == 24 * 64
    assert r.intervals[8].low > 1.5 * r.chance[8] and abs(r.accuracy[8] - full.accuracy[8]) < 0.03


def test_shards_merge_before_training_and_checkpoint_round_trips(planted, tmp_path):
    whole = _streamed(planted, np.arange(30), max_train_tokens=500).result()
    a = PaperProbeAccumulator(30, resolutions=RES, epochs=10, max_train_tokens=500)
    b = PaperProbeAccumulator(30, resolutions=RES, epochs=10, max_train_tokens=500)
    a.update(planted[:10], image_indices=range(10))
    b.update(planted[10:24], image_indices=range(10, 24))
    np.savez(tmp_path / "b.npz", **b.state_dict())
    b = PaperProbeAccumulator.from_state_dict(dict(np.load(tmp_path / "b.npz")))
    a.merge(b)
    a.update(planted[24:], image_indices=range(24, 30))
    np.savez(tmp_path / "a.npz", **a.state_dict())  # trained: the weights travel with the state
    got = PaperProbeAccumulator.from_state_dict(dict(np.load(tmp_path / "a.npz"))).result()
    assert got.accuracy == whole.accuracy
    with pytest.raises(ValueError, match="before any of them trains"):
        trained = PaperProbeAccumulator.from_state_dict(dict(np.load(tmp_path / "a.npz")))
        trained.merge(b)
