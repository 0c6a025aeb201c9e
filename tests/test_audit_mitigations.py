"""``--mitigations`` in the audit: each mitigation's measured effect per layer in results.json, results.csv, the
report and the closing summary; resume and two processes give the numbers of one run; a planted positional code
is removed by the position mitigation with an interval that excludes no effect."""

from __future__ import annotations

import csv
import json
import math
import shutil

import pytest

from sdaudit.audit import AuditSettings, audit
from sdaudit.audit.distributed import audit_multiprocess
from sdaudit.cli import app
from sdaudit.errors import UsageError
from sdaudit.extraction import Extractor
from sdaudit.mitigations import REGISTRY
from sdaudit.settings import MITIGATIONS
from sdaudit.terminal import closing_summary
from tests.cli_helpers import fails_with_one_line, runner
from tests.conftest import interrupt_extraction
from tests.test_audit_correspondence import _planted_run

SIZE = 128
FEW_LAYERS = "conv_in,up_blocks[1].attentions[2]"
CHOSEN = ("position", "anomalies", "border")


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The bundled demo photos (9) in a folder."""
    from sdaudit.images.demo import demo_image_paths

    folder = tmp_path_factory.mktemp("demo")
    for path in demo_image_paths():
        shutil.copy(path, folder / path.name)
    return folder


def _settings(**kw) -> AuditSettings:
    return AuditSettings(**{"size": SIZE, "layers": FEW_LAYERS, "analyses": ("position",), "mitigations": CHOSEN,
                            **kw})


@pytest.fixture(scope="module")
def plain(tiny, demo, tmp_path_factory):
    """One uninterrupted single-process run: what resumed and two-process runs must equal."""
    return audit(tiny, demo, tmp_path_factory.mktemp("plain"), _settings(batch_size=2), report=False, progress=False)


def _assert_same(a, b, where="") -> None:
    """Nested results equal, floats up to the rounding of sums taken in another order."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            _assert_same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and isinstance(b, float):
        assert math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-6), (where, a, b)
    else:
        assert a == b, (where, a, b)


def test_the_settings_name_the_registry_and_imply_the_correspondence_probe():
    assert MITIGATIONS == tuple(REGISTRY)
    settings = AuditSettings(analyses=("position",), mitigations=("position",)).validated()
    assert "correspondence" in settings.analyses and settings.to_dict()["mitigations"] == ["position"]
    assert "correspondence" not in AuditSettings(analyses=("position",)).validated().analyses
    with pytest.raises(UsageError, match="twice"):
        AuditSettings(mitigations=("border", "border")).validated()


def test_a_bad_mitigation_name_is_one_line_and_exit_2(demo, tmp_path):
    line = fails_with_one_line(["audit", "--model", "tiny", "--images", demo, "--out", tmp_path / "o",
                                "--mitigations", "position,bordr"], "--mitigations")
    assert "did you mean 'border'" in line


def test_end_to_end_through_the_cli_on_the_demo_photos(demo, tmp_path):
    out = tmp_path / "audit"
    result = runner.invoke(app, ["audit", "--model", "tiny", "--images", str(demo), "--out", str(out), "--size",
                                 str(SIZE), "--layers", FEW_LAYERS, "--analyses", "position",
                                 "--mitigations", ",".join(CHOSEN)])
    assert result.exit_code == 0, result.output
    written = json.loads((out / "results.json").read_text())
    assert written["settings"]["mitigations"] == list(CHOSEN)
    evaluations = {m["layer"]: m for m in written["mitigations"]}
    assert list(evaluations) == ["conv_in", "up_blocks[1].attentions[2]"]
    for ev in evaluations.values():
        assert ev["n_fit_images"] == 7 and ev["n_test_images"] == 2  # the probe's split of 9 images at 0.8
        assert [e["name"] for e in ev["effects"]] == [*CHOSEN, "anomalies-mean"]
    with open(out / "results.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["metric"].startswith("mitigation_")]
    metrics = {(r["layer"], r["metric"]) for r in rows}
    for state in ("before", "after", "difference"):
        assert ("conv_in", f"mitigation_position_match_flip_bias_{state}") in metrics
        assert ("conv_in", f"mitigation_border_artifact_{state}") in metrics
    effect = evaluations["conv_in"]["effects"][0]
    got = {r["metric"]: r for r in rows if r["layer"] == "conv_in"}
    assert float(got["mitigation_position_match_flip_acc_before"]["value"]) == \
        effect["accuracy"]["flip"]["all"]["before"]["estimate"]
    page = (out / "report.html").read_text()
    assert '<h2 id="mitigations">' in page and 'href="#mitigations"' in page and "anomalies-mean" in page
    lines = [line for line in result.output.splitlines() if line.startswith("mitigations: ")]
    assert len(lines) == 1 and all(f"{name} " in lines[0] for name in CHOSEN), result.output


# 9 images in batches of 2, each batch and its flip view: two calls per batch (images 0-6 fit, 7-8 measure)
@pytest.mark.parametrize("at_call, resumed_at", [(4, 2), (9, 8)])
def test_an_interrupted_audit_resumes_to_the_same_effects(tiny, demo, tmp_path, monkeypatch, plain, at_call,
                                                          resumed_at):
    calls = interrupt_extraction(monkeypatch, at_call=at_call)
    settings = _settings(batch_size=2)
    with pytest.raises(KeyboardInterrupt):
        audit(tiny, demo, tmp_path, settings, report=False, progress=False, checkpoint_seconds=0)
    calls["n"] = -10_000
    resumed = audit(tiny, demo, tmp_path, settings, report=False, progress=False, checkpoint_seconds=0)
    assert resumed["run"]["passes"][0]["resumed_at"] == resumed_at
    _assert_same(plain["mitigations"], resumed["mitigations"])


def test_two_processes_equal_one_process(demo, tmp_path, plain):
    two = audit_multiprocess("tiny", demo, tmp_path / "two", _settings(batch_size=2), num_processes=2, threads=1,
                             load_kwargs={"device": "cpu"}, report=False, progress=False)
    assert two["run"]["processes"] == 2
    _assert_same(plain["mitigations"], two["mitigations"])


def test_a_planted_positional_code_is_removed_by_the_position_mitigation(tiny, tmp_path, monkeypatch):
    from tests.conftest import photo_folder

    folder = photo_folder(tmp_path / "images", 14, first_seed=60, height=96, widen=8)
    monkeypatch.setattr(Extractor, "run", _planted_run(3.0))
    settings = _settings(layers="conv_in", mitigations=("position",), train_fraction=0.5)
    results = audit(tiny, folder, tmp_path / "out", settings, report=False, progress=False)
    (ev,) = results["mitigations"]
    effect = ev["effects"][0]
    bias = effect["bias_rate"]["flip"]["all"]
    assert ev["n_test_images"] == 7 and bias["before"]["estimate"] > 0.8
    assert bias["difference"]["high"] < 0  # lowered, and the interval excludes no change
    assert effect["accuracy"]["flip"]["all"]["difference"]["low"] > 0
    assert "lowers the positional-bias rate" in effect["verdict"]
    line = [x for x in closing_summary(results) if x.startswith("mitigations: ")][0]
    assert line.startswith("mitigations: position ") and " on conv_in" in line and "[" in line


def test_shards_share_their_fits_before_measuring():
    import numpy as np

    from sdaudit.audit.mitigations import fit_states, mitigation_evaluators, share_fits

    grids = {"a": (8, 8)}
    x = np.random.default_rng(0).normal(size=(6, 5, 8, 8)).astype(np.float32)

    def evaluators():
        return mitigation_evaluators(["a"], grids, names=["position", "border"], views=["flip"], size=64,
                                     n_images=6, train_fraction=0.5)

    whole, first, second, late = evaluators(), evaluators(), evaluators(), evaluators()
    whole["a"].fit(x[:3], [0, 1, 2])
    first["a"].fit(x[:1], [0])
    second["a"].fit(x[1:3], [1, 2])
    gathered = [fit_states(first), fit_states(second)]
    share_fits(first, gathered, 0)
    share_fits(second, gathered, 1)
    for shard in (first, second):
        assert shard["a"].n_fitted == 3
        np.testing.assert_allclose(shard["a"].transforms["position"].transform(x), whole["a"].transforms["position"]
                                   .transform(x), rtol=1e-5, atol=1e-6)
    share_fits(late, [fit_states(first), fit_states(late)], 1)  # a rank that resumed after the exchange holds it
    assert late["a"].n_fitted == 3
    np.testing.assert_allclose(late["a"].transforms["position"].transform(x),
                               whole["a"].transforms["position"].transform(x), rtol=1e-5, atol=1e-6)
    with pytest.raises(UsageError, match="at least 2 test images"):
        mitigation_evaluators(["a"], grids, names=["position"], views=["flip"], size=64, n_images=3,
                              train_fraction=0.8)  # 2 train, 1 test


def test_the_untrained_control_gives_each_artifact_measure_its_no_learning_reference(tiny, demo, tmp_path):
    """With --control untrained the control run is evaluated too, on the same images and split: its artifact
    measure before any mitigation (e.g. the probe accuracy zero padding alone gives) is what the report sets the
    model's after-mitigation value against, beside chance (the issue: 'probe accuracy toward the untrained
    control'); circular padding gets no evaluation."""
    from sdaudit.audit_results import AuditResults
    from sdaudit.mitigations.effects import MitigationEvaluation
    from sdaudit.report.mitigations import control_references, mitigation_rows

    settings = _settings(mitigations=("position",), controls=("untrained",), layers="up_blocks[1].attentions[2]")
    audit(tiny, demo, tmp_path, settings, report=True, progress=False)
    results = AuditResults.coerce(json.loads((tmp_path / "results.json").read_text()))
    (control,) = results.controls
    (evaluation,) = [MitigationEvaluation.from_dict(d) for d in control.extra["mitigations"]]
    assert evaluation.layer == "up_blocks[1].attentions[2]"
    probe = evaluation.effect("position").artifact
    assert probe.measure.startswith("position probe accuracy")
    references = control_references(results.controls)
    assert references[("up_blocks[1].attentions[2]", "position")].estimate == probe.change.before.estimate
    (row,) = mitigation_rows(results.mitigations, references=references)
    assert "chance" in row["reference"] and "untrained control" in row["reference"]
    assert "untrained control" in (tmp_path / "report.html").read_text()
