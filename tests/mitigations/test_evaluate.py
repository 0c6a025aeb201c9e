"""The mitigation evaluator on planted signals: a planted positional code hurts flip matching and its removal
restores it (probe to chance); planted anomalies are repaired to relative norm 1 by neighbour means and by the
mean-substitution control, which matches worse; pure noise gets no claimed effect; streamed and sharded
evaluation equals one shot."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from sdaudit.analyses.synthetic import positional_code
from sdaudit.analyses.views import flip_correspondence
from sdaudit.mitigations.effects import MitigationEvaluation
from sdaudit.mitigations.evaluate import CONTROL, MitigationEvaluator, evaluate_mitigations
from sdaudit.mitigations.measures import anomaly_norm_rows, masked_interior_rows

C, G = 32, 8
FLIP = {"flip": flip_correspondence(G, G)}


def positional(n=120, strength=1.0, view_noise=1.5, seed=0, channels=C):
    """Images = content + strength * positional code; views = the flipped content (plus noise) + the SAME code:
    the code pulls a token toward its own absolute position instead of its mirrored one."""
    rng = np.random.default_rng(seed)
    content = rng.standard_normal((n, channels, G, G)).astype(np.float32)
    rc, cc = positional_code(G, G, channels, seed=1000 + seed)
    code = strength * (rc.T[:, :, None] + cc.T[:, None, :]).astype(np.float32)
    view = content[..., ::-1] + view_noise * rng.standard_normal(content.shape).astype(np.float32)
    return content + code, view + code


def test_position_removal_restores_flip_matching_and_the_probe_falls_to_chance():
    a, b = positional(channels=128, view_noise=3.0)  # the subspace (14 directions) is a small part of 128 channels
    result = evaluate_mitigations(a, {"flip": b}, ["position", "position-subspace"], FLIP, n_train=80,
                                  n_boot=400)
    a0, b0 = positional(strength=0.0, channels=128, view_noise=3.0)  # the same content and view noise without the code
    no_code = evaluate_mitigations(a0, {"flip": b0}, ["position"], FLIP, n_train=80, n_boot=400)
    for name in ("position", "position-subspace"):
        e = result.effect(name)
        acc, bias = e.accuracy["flip"]["all"], e.bias_rate["flip"]["all"]
        clean = no_code.effect("position").accuracy["flip"]["all"].before.estimate
        assert acc.before.estimate < clean - 0.3  # the code hurts flip matching ...
        # ... and removing it wins back at least 3/4 of the loss (the mean fitted on 80 images leaves a residue)
        assert acc.difference.low > 0.75 * (clean - acc.before.estimate)
        assert bias.before.estimate > 0.5 > e.chance_bias_rate["flip"]["all"]  # the code pulls wrong matches home
        assert bias.difference.high < -0.3  # the positional-bias rate falls
        probe = e.artifact.change
        assert probe.before.estimate > 0.9
        assert probe.after.estimate < e.artifact.reference + 0.08  # near chance (0.125 at s = 8)
        assert probe.difference.high < 0
        assert e.verdict.startswith(f"{name}: gains") and "lowers the positional-bias rate" in e.verdict
        assert f"(chance: {e.artifact.reference:.3g})" in e.verdict
    assert math.isclose(result.effect("position").artifact.reference, 0.125)


def _smooth_content(n, rng):
    """Spatially smooth content with a common offset (as real features have): neighbours are alike, far tokens
    differ, and the mean token has about the typical token norm."""
    f = ndimage.gaussian_filter(rng.standard_normal((n, C, 16, 16)), sigma=(0, 0, 1.5, 1.5), mode="wrap")
    offset = rng.standard_normal(C)
    offset *= 2.0 * np.sqrt(C) / np.linalg.norm(offset)
    return (f / f.std() + offset[None, :, None, None]).astype(np.float32)


def planted_anomalies(n=40, factor=6.0, seed=0):
    """Two 2x2 high-norm patches per image along one shared direction, at mirrored places in the flipped view."""
    rng = np.random.default_rng(seed)
    a = _smooth_content(n, rng)
    b = a[..., ::-1] + 0.05 * rng.standard_normal(a.shape).astype(np.float32)
    d = rng.standard_normal(C).astype(np.float32)
    spike = factor * float(np.linalg.norm(a, axis=1).mean()) * d / np.linalg.norm(d)
    for r, c in [(3, 4), (10, 9)]:
        a[:, :, r:r + 2, c:c + 2] = spike[None, :, None, None]
        b[:, :, r:r + 2, 16 - c - 2:16 - c] = spike[None, :, None, None]
    return a, b


def test_anomaly_repair_restores_relative_norm_one_and_mean_substitution_matches_worse():
    a, b = planted_anomalies()
    result = evaluate_mitigations(a, {"flip": b}, ["anomalies"], {"flip": flip_correspondence(16, 16)},
                                  n_train=20, n_boot=400)
    assert [e.name for e in result.effects] == ["anomalies", CONTROL]
    repair, control = result.effect("anomalies"), result.effect(CONTROL)
    assert control.control_of == "anomalies" and control.params["method"] == "mean"
    for e, tolerance in ((repair, 0.1), (control, 0.2)):  # the mean token is shorter than a typical token
        norm = e.artifact.change
        assert norm.before.estimate > 4  # planted: 6x the mean token norm on 4 of 256 tokens
        assert abs(norm.after.estimate - 1) < tolerance and norm.difference.high < -3
        assert e.artifact.reference == 1.0
    # matching differs: the neighbour repair gives the patches their surroundings' content back
    r_acc, c_acc = repair.accuracy["flip"]["all"], control.accuracy["flip"]["all"]
    assert r_acc.difference.low > 0 and r_acc.after.estimate > c_acc.after.estimate + 0.01
    assert "gains" in repair.verdict and "no measurable effect on flip matching" in control.verdict


def test_pure_noise_gets_no_claimed_effect():
    rng = np.random.default_rng(3)
    a = rng.standard_normal((60, C, G, G)).astype(np.float32)
    b = a[..., ::-1] + 1.5 * rng.standard_normal(a.shape).astype(np.float32)
    result = evaluate_mitigations(a, {"flip": b}, ["position", "position-subspace", "anomalies", "channels"],
                                  FLIP, n_train=30, n_boot=400)
    # the one real effect: the subspace fitted on noise is rows + cols - 2 = 14 of 32 content directions,
    # and projecting them out costs matching; the verdict says so
    subspace = result.effect("position-subspace")
    assert subspace.accuracy["flip"]["all"].difference.high < 0 and "position-subspace: costs" in subspace.verdict
    for e in [e for e in result.effects if e is not subspace]:
        for change in (e.accuracy["flip"]["all"], e.bias_rate["flip"]["all"]):
            assert not change.difference.excludes(0.0), e.name
        assert "no measurable effect on flip matching" in e.verdict
    for name in ("position", "position-subspace"):
        probe = result.effect(name).artifact.change
        assert probe.before.low <= 0.125 <= probe.before.high  # no positional code to find


def test_border_masking_measures_interior_matching_with_ring_candidates_masked():
    a, b = positional(n=40, strength=2.0)
    result = evaluate_mitigations(a, {"flip": b}, ["border"], FLIP, n_train=20, n_boot=200)
    e = result.effect("border")
    assert e.artifact.measure.startswith("interior matching accuracy")
    # brute force: argmax over non-ring candidates only, for interior source tokens
    test_a, test_b = a[20:], b[20:]
    ring = np.ones((G, G), bool)
    ring[1:-1, 1:-1] = False
    hits = total = 0
    for x, y in zip(test_a, test_b):
        ua = x / np.linalg.norm(x, axis=0, keepdims=True)
        ub = y / np.linalg.norm(y, axis=0, keepdims=True)
        for r in range(1, G - 1):
            for c in range(1, G - 1):
                sim = np.einsum("k,kij->ij", ua[:, r, c], ub)
                sim[ring] = -np.inf
                pr, pc = np.unravel_index(np.argmax(sim), sim.shape)
                hits += max(abs(pr - r), abs(pc - (G - 1 - c))) <= 1
                total += 1
    assert math.isclose(e.artifact.change.after.estimate, hits / total)
    # ring tokens scaled to 0 cannot be matched any more: the ring's accuracy falls to about 0
    assert e.accuracy["flip"]["border"].after.estimate < 0.1 < e.accuracy["flip"]["border"].before.estimate


def _close(x, y, path="result"):
    """Nested equality of two to_dict trees, floats to 1e-9 relative."""
    if isinstance(x, dict):
        assert x.keys() == y.keys(), path
        for k in x:
            _close(x[k], y[k], f"{path}.{k}")
    elif isinstance(x, list):
        assert len(x) == len(y), path
        for i, (u, v) in enumerate(zip(x, y)):
            _close(u, v, f"{path}[{i}]")
    elif isinstance(x, float):
        assert math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-12), (path, x, y)
    else:
        assert x == y, path


NAMES = ["position", "position-subspace", "anomalies", "channels", "border"]


def _new(n, n_train):
    return MitigationEvaluator(NAMES, FLIP, n_images=n, n_train=n_train, n_boot=300)


def _reload(ev):
    state = {k: np.asarray(v) for k, v in ev.state_dict().items()}
    return MitigationEvaluator.from_state_dict(state)


def test_streamed_sharded_and_resumed_evaluation_equals_one_shot():
    a, b = positional(n=40)
    a[::4, 3, 2:4, 5:7] *= 20  # a few anomalies
    one = evaluate_mitigations(a, {"flip": b}, NAMES, FLIP, n_train=20, n_boot=300)
    streamed = _new(40, 20)
    # batches straddle the fit/measure boundary; the probe's 10 training images (20..29) arrive in one batch,
    # as in one shot, since its closed form sums about the first batch's mean (equal only up to rounding,
    # which decides ties when the probe is at chance)
    for lo, hi in [(0, 7), (7, 14), (14, 18), (18, 30), (30, 33), (33, 40)]:
        streamed.update(a[lo:hi], {"flip": b[lo:hi]}, range(lo, hi))
        if lo == 14:
            streamed = _reload(streamed)  # checkpoint and resume mid-way
    _close(streamed.result().to_dict(), one.to_dict())
    s1, s2 = _new(40, 20), _new(40, 20)
    s1.fit(a[:12], range(12))
    s2.fit(a[12:20], range(12, 20))
    st1, st2 = s1.state_dict(), s2.state_dict()
    s1.merge(MitigationEvaluator.from_state_dict(st2))  # the shards exchange their fits
    s2.merge(MitigationEvaluator.from_state_dict(st1))
    s1.measure(a[30:], {"flip": b[30:]}, range(30, 40))
    s2.measure(a[20:30], {"flip": b[20:30]}, range(20, 30))
    merged = s1.merge(_reload(s2)).result()
    _close(merged.to_dict(), one.to_dict())
    _close(MitigationEvaluation.from_dict(one.to_dict()).to_dict(), one.to_dict())


def test_refusals():
    a, b = positional(n=10)
    ev = MitigationEvaluator(["position"], FLIP, n_images=10, n_train=5)
    with pytest.raises(ValueError, match="fitted on 0 of n_train=5"):
        ev.measure(a[5:], {"flip": b[5:]}, range(5, 10))
    with pytest.raises(ValueError, match="is a test image"):
        ev.fit(a[:6], range(6))
    ev.fit(a[:5], range(5))
    with pytest.raises(ValueError, match="no features of the view"):
        ev.measure(a[5:], {}, range(5, 10))
    with pytest.raises(ValueError, match="more than n_train"):
        ev.fit(a[:1], [0])
    with pytest.raises(ValueError, match="no test images measured"):
        ev.result()


def test_measures_against_brute_force():
    rng = np.random.default_rng(0)
    x = np.abs(rng.standard_normal((2, 4, 6, 6))).astype(np.float32) + 1
    x[0, :, 2:4, 1:3] *= 10
    y = x.copy()
    y[0, :, 2:4, 1:3] /= 10
    rows = anomaly_norm_rows(x, y, {"z_threshold": 3.5, "ratio_threshold": 2.0, "max_tokens": 16,
                                    "local_ratio": 1.5})
    norms_x, norms_y = np.linalg.norm(x[0], axis=0), np.linalg.norm(y[0], axis=0)
    np.testing.assert_allclose(rows[0], [1, norms_x[2:4, 1:3].mean() / norms_x.mean(),
                                         norms_y[2:4, 1:3].mean() / norms_y.mean()], rtol=1e-5)
    np.testing.assert_array_equal(rows[1], [0, 0, 0])
    same = masked_interior_rows(x, x[..., ::-1], flip_correspondence(6, 6), np.ones((6, 6)))
    np.testing.assert_array_equal(same[:, 0], 16)
    np.testing.assert_array_equal(same[:, 1], same[:, 2])  # weight 1 everywhere masks nothing


@pytest.mark.parametrize("name", NAMES)
def test_mitigation_merge_of_shards_equals_one_fit(name):
    from sdaudit.mitigations import MitigationMismatchError, fit_mitigation

    a, _ = positional(n=12)
    a[::3, 5] *= 300  # a massive channel
    whole = fit_mitigation(name, a, layer="L")
    merged = fit_mitigation(name, a[:5], layer="L").merge(fit_mitigation(name, a[5:], layer="L"))
    assert merged.n_images_ == 12
    np.testing.assert_allclose(merged.transform(a), whole.transform(a), rtol=1e-5, atol=1e-5)
    with pytest.raises(MitigationMismatchError):
        merged.merge(fit_mitigation(name, a[:, :, :4, :4], layer="L"))


def test_the_summary_line_leaves_out_degenerate_grids():
    """On a 2x2 grid every token is in the ring, so masking the ring 'costs' all matching: the closing line must
    report the effect on a layer with an interior instead (the report still lists both layers)."""
    from sdaudit.report.mitigations import mitigation_line, mitigation_rows

    rng = np.random.default_rng(5)
    evaluations = []
    for layer, grid in (("tiny_grid", 2), ("big_grid", 6)):
        a = rng.standard_normal((30, 16, grid, grid)).astype(np.float32)
        b = a[..., ::-1] + 0.1 * rng.standard_normal(a.shape).astype(np.float32)
        evaluations.append(evaluate_mitigations(a, {"flip": b}, ["border"], {"flip": flip_correspondence(grid, grid)},
                                                n_train=15, layer=layer, n_boot=200))
    line = mitigation_line(evaluations)
    assert "big_grid" in line and "tiny_grid" not in line, line
    assert {row["layer"] for row in mitigation_rows(evaluations)} == {"tiny_grid", "big_grid"}
    assert "tiny_grid" in mitigation_line(evaluations[:1])  # alone, the degenerate layer is still reported
