"""Position recurrence of anomalies: planted recurring positions are found, random ones are not."""

import numpy as np
import pytest

from sdaudit.analyses.recurrence import _coincident_pairs, position_recurrence


def _random_rows(rng, n_images, grid, per_image=2, edge_only=False):
    rows = []
    for i in range(n_images):
        for _ in range(per_image):
            if edge_only:  # uniformly on the outer ring of patch positions
                ring = [(x, y) for x in range(grid - 1) for y in range(grid - 1) if min(x, y, grid - 2 - x, grid - 2 - y) == 0]
                x, y = ring[int(rng.integers(len(ring)))]
            else:
                x, y = (int(v) for v in rng.integers(0, grid - 1, 2))
            rows.append([i, x, y])
    return np.array(rows)


def test_coincident_pairs_brute_force():
    rng = np.random.default_rng(0)
    images, pos = rng.integers(0, 6, 40), rng.integers(0, 5, 40)
    want = sum(1 for i in range(40) for j in range(i + 1, 40) if pos[i] == pos[j] and images[i] != images[j])
    assert _coincident_pairs(images, pos) == want


def test_planted_recurring_positions_are_detected():
    rng = np.random.default_rng(1)
    rows = _random_rows(rng, 60, 32, per_image=1, edge_only=True)
    shared = np.array([[i, 4, 0] for i in range(0, 60, 4)])  # one edge position in a quarter of the images
    r = position_recurrence(np.concatenate([rows, shared]), 32, n_perm=500, seed=0)
    assert r.recurrent and r.p_value < 0.01 and r.ratio > 3
    assert r.top_positions[0] == {"x": 4, "y": 0, "images": 15 + int(((rows[:, 1] == 4) & (rows[:, 2] == 0)).sum())}
    assert type(r).from_dict(r.to_dict()).pairs == r.pairs


def test_random_positions_are_not_recurrent_at_the_nominal_rate():
    """Under each null's own hypothesis, p < 0.05 happens in about 5 % of the data sets."""
    rng = np.random.default_rng(2)
    for null, edge in (("uniform", False), ("ring", True)):
        false_alarms = sum(position_recurrence(_random_rows(rng, 40, 16, edge_only=edge), 16, null=null,
                                               n_perm=200, seed=k).p_value < 0.05 for k in range(60))
        assert false_alarms <= 8, (null, false_alarms)  # 3 expected; P(> 8) < 0.01


def test_edge_preference_alone_is_recurrent_only_under_the_uniform_null():
    rows = _random_rows(np.random.default_rng(3), 80, 16, per_image=2, edge_only=True)
    assert position_recurrence(rows, 16, null="uniform", n_perm=300).p_value < 0.01
    assert position_recurrence(rows, 16, null="ring", n_perm=300).p_value > 0.05


def test_bad_input():
    with pytest.raises(ValueError, match="unknown null"):
        position_recurrence(np.zeros((1, 3), int), 8, null="x")
    with pytest.raises(ValueError):
        position_recurrence(np.array([[0, 40, 0]]), 32)
