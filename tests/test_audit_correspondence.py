"""The opt-in "correspondence" analysis in the audit: matching to known views per layer in results.json, results.csv,
the report and the closing summary; a planted positional code is found and a content-only model is not;
checkpoints, resume and two processes give the numbers of one run."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from sdaudit.analyses.views import VIEWS as ANALYSIS_VIEWS
from sdaudit.audit import AuditSettings, audit
from sdaudit.audit.distributed import audit_multiprocess
from sdaudit.audit.state import AuditState
from sdaudit.audit.views import shift_steps, view_key
from sdaudit.cli import app
from sdaudit.errors import UsageError
from sdaudit.extraction import Extractor
from sdaudit.settings import ANALYSES, DEFAULT_ANALYSES, VIEWS
from sdaudit.terminal import closing_summary
from tests.cli_helpers import fails_with_one_line, runner
from tests.conftest import interrupt_extraction
from tests.test_distributed import assert_tables_equal

SIZE = 128
FEW_LAYERS = "conv_in,up_blocks[1]"
NOISE = 0.1  # the planted model's noise, in units of the content's spread


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    from tests.conftest import photo_folder

    return photo_folder(tmp_path_factory.mktemp("matching-images"), 6, first_seed=40, height=96, widen=8)


def _settings(**kw) -> AuditSettings:
    return AuditSettings(**{"size": SIZE, "layers": FEW_LAYERS, "analyses": ("correspondence",), **kw})


@pytest.fixture(scope="module")
def controlled(tiny, folder, tmp_path_factory):
    """Every layer, flip and shift, with the untrained control and the report."""
    out = tmp_path_factory.mktemp("controlled")
    settings = _settings(layers="all", views=("flip", "shift"), controls=("untrained",))
    return out, audit(tiny, folder, out, settings, report=True, progress=False)


@pytest.fixture(scope="module")
def plain(tiny, folder, pair_file, tmp_path_factory):
    """Flip only, on two blocks' layers, with the user keypoints: what resumed and two-process runs must equal."""
    return audit(tiny, folder, tmp_path_factory.mktemp("plain"), _settings(keypoints=str(pair_file)), report=False,
                 progress=False)


def _rows(results) -> dict:
    return {row["layer"]: row for row in results["table"]}


def test_correspondence_is_opt_in_with_views_in_the_cli_help():
    assert "correspondence" in ANALYSES and "correspondence" not in DEFAULT_ANALYSES
    assert VIEWS == ANALYSIS_VIEWS and AuditSettings().views == ("flip",)
    result = runner.invoke(app, ["audit", "--help"])
    assert result.exit_code == 0 and "correspondence" in result.output and "--views" in result.output


def test_a_misspelt_view_is_one_line_with_a_suggestion(tmp_path, folder):
    with pytest.raises(UsageError, match="did you mean 'flip'"):
        _settings(views=("flp",)).validated()
    result = runner.invoke(app, ["audit", "--model", "tiny", "--images", str(folder), "--out", str(tmp_path / "o"),
                                 "--analyses", "correspondence", "--views", "flip,crp"])
    assert result.exit_code == 2 and "did you mean 'crop'" in result.output
    assert "Traceback" not in result.output


def test_the_shift_is_one_token_of_the_coarsest_grid():
    assert shift_steps({"a": (16, 16), "b": (4, 4), "c": (8, 8)}) == {"a": 4, "b": 1, "c": 2}
    with pytest.raises(UsageError, match="coarsest"):
        shift_steps({"a": (6, 6), "b": (4, 4)})


def test_results_carry_the_matching_numbers_with_intervals(controlled):
    out, results = controlled
    assert results["run"]["unet_passes_per_image"] == 3  # the images and two views
    written = json.loads((out / "results.json").read_text())
    assert written["format"] == "sdaudit-audit/2"
    for row in written["table"]:
        for view in ("flip", "shift"):
            base = f"match_{view}"
            for name in ("acc", "acc_corner", "acc_border", "acc_interior", "pck05", "pck10", "pck20", "bias"):
                assert f"{base}_{name}_low" in row and f"{base}_{name}_high" in row, (row["layer"], name)
            assert f"{base}_bias_chance" in row
    row = _rows(results)["up_blocks[1].attentions[2]"]  # a 4x4 grid: every number is defined
    assert row["match_flip_acc_low"] <= row["match_flip_acc"] <= row["match_flip_acc_high"]
    assert 0 < row["match_flip_bias_chance"] < 1 and row["beyond_match_flip_bias_low"] is not None
    control = _rows(results["controls"][0])["up_blocks[1].attentions[2]"]
    assert "match_flip_bias" in control and "beyond_match_flip_bias" in control
    with open(out / "results.csv", newline="") as f:
        metrics = {(r["layer"], r["metric"]): r for r in csv.DictReader(f)}
    got = metrics[("up_blocks[1].attentions[2]", "match_flip_bias")]
    assert float(got["value"]) == row["match_flip_bias"] and float(got["low"]) == row["match_flip_bias_low"]
    assert ("conv_in", "match_shift_bias_chance") in metrics


def test_report_and_summary_show_matching_against_the_control(controlled):
    out, results = controlled
    page = (out / "report.html").read_text()
    assert '<h2 id="matching">Matching</h2>' in page and "View: shift" in page
    assert "untrained" in page.split('id="matching"')[1].split('id="numbers"')[0]
    lines = [line for line in closing_summary(results) if line.startswith("matching (flip)")]
    assert len(lines) == 1 and "the control" in lines[0]


def test_default_audit_has_no_matching_columns(plain, tiny, folder, tmp_path):
    results = audit(tiny, folder, tmp_path, AuditSettings(size=SIZE, layers="conv_in", analyses=["position"]),
                    report=False, progress=False)
    assert not any(key.startswith("match_") for row in results["table"] for key in row)
    assert not any(line.startswith("matching") for line in closing_summary(results))
    assert results["run"]["unet_passes_per_image"] == 1 and plain["run"]["unet_passes_per_image"] == 2


def _planted_run(code_scale: float):
    """Extractor.run of a planted model: each token is a mirror-invariant descriptor of its pixels (its
    sorted values: content that moves with the image under a flip), plus ``code_scale`` times a fixed random
    code of its grid position (a positional embedding), plus noise seeded by the image index (as the
    extractor's: a view has its own draw, so wrong matches do happen and go anywhere)."""
    def run(self, images, indices, **kwargs):
        pixels = np.stack([np.asarray(im.convert("RGB"), np.float32) for im in images])
        out = {}
        for layer in self.layers:
            _, h, w = self.shapes[layer]
            ppt = pixels.shape[1] // h
            patches = pixels.reshape(len(images), h, ppt, w, ppt, 3).transpose(0, 1, 3, 2, 4, 5)
            content = np.sort(patches.reshape(len(images), h, w, -1), axis=-1)
            content -= content.mean(axis=-1, keepdims=True)
            code = np.random.default_rng(0).standard_normal((h, w, content.shape[-1])).astype(np.float32)
            noise = np.stack([np.random.default_rng(i).standard_normal(content.shape[1:]) for i in indices])
            feats = content + content.std() * (code_scale * code + NOISE * noise.astype(np.float32))
            out[layer] = torch.from_numpy(np.ascontiguousarray(feats.transpose(0, 3, 1, 2)))
        return out

    return run


@pytest.mark.parametrize("code_scale", [0.0, 3.0])
def test_a_planted_positional_code_biases_flip_matches_and_content_alone_does_not(tiny, folder, tmp_path,
                                                                                  monkeypatch, code_scale):
    monkeypatch.setattr(Extractor, "run", _planted_run(code_scale))
    results = audit(tiny, folder, tmp_path, _settings(layers="conv_in"), report=False, progress=False)
    row = _rows(results)["conv_in"]
    chance = row["match_flip_bias_chance"]
    finding = [line for line in closing_summary(results) if line.startswith("matching (flip)")][0]
    if code_scale:
        assert row["match_flip_bias_low"] > 0.8 > 10 * chance and row["match_flip_acc"] < 0.2
        assert "strongest on conv_in" in finding
    else:
        assert row["match_flip_acc"] > 0.5 and row["match_flip_bias_low"] <= chance <= row["match_flip_bias_high"]
        assert "no positional bias beyond chance" in finding


# 6 images in batches of 2, each batch and its flip view: calls 1-6; then one pair per call: calls 7-12
@pytest.mark.parametrize("at_call, resumed_at, calls_left", [(4, 2, 10), (9, 6, 4)])
def test_interrupted_audit_resumes_to_the_same_matching(tiny, folder, pair_file, tmp_path, monkeypatch, plain,
                                                        at_call, resumed_at, calls_left):
    calls = interrupt_extraction(monkeypatch, at_call=at_call)  # in the image pass, or in the keypoint pass
    settings = _settings(batch_size=2, keypoints=str(pair_file))
    with pytest.raises(KeyboardInterrupt):
        audit(tiny, folder, tmp_path, settings, report=False, progress=False, checkpoint_seconds=0)
    calls["n"] = -10_000
    resumed = audit(tiny, folder, tmp_path, settings, report=False, progress=False, checkpoint_seconds=0)
    assert resumed["run"]["passes"][0]["resumed_at"] == resumed_at and calls["n"] == -10_000 + calls_left
    assert_tables_equal(plain["table"], resumed["table"])


def test_two_processes_equal_one_process(folder, pair_file, tmp_path, plain):
    two = audit_multiprocess("tiny", folder, tmp_path / "two", _settings(batch_size=2, keypoints=str(pair_file)),
                             num_processes=2, threads=1, load_kwargs={"device": "cpu"}, report=False, progress=False)
    assert two["run"]["processes"] == 2 and two["run"]["unet_passes_per_image"] == 2
    assert_tables_equal(plain["table"], two["table"])


def test_state_round_trip_and_shards_merge_to_the_whole():
    grids = {"a": (8, 8), "b": (4, 4)}

    def state():
        return AuditState(list(grids), grids, 6, {"correspondence"}, probe={}, detector={},
                          matching={"views": ["flip", "crop"], "size": 64})

    rng = np.random.default_rng(0)
    reps = {k: rng.normal(size=(6, 5, *g)).astype(np.float32) for k, g in grids.items()}
    reps.update({view_key(v, k): rng.normal(size=(6, 5, *g)).astype(np.float32)
                 for v in ("flip", "crop") for k, g in grids.items()})
    whole, first, second = state(), state(), state()
    whole.update_full(reps, list(range(6)))
    first.update_full({k: v[:4] for k, v in reps.items()}, [0, 1, 2, 3])
    second.update_full({k: v[4:] for k, v in reps.items()}, [4, 5])
    restored = state()
    restored.load_state_dict(first.state_dict())
    merged = restored.merge(second)
    assert sorted(merged.matching) == sorted(view_key(v, k) for v in ("flip", "crop") for k in grids)
    for key, acc in whole.matching.items():
        assert merged.matching[key].result().to_dict() == acc.result().to_dict()


@pytest.fixture(scope="module")
def pair_file(folder, tmp_path_factory):
    """Six pairs made from the demo photos: each photo and its mirror image, a 5 x 5 grid of keypoints (the outer
    ones on the 16 x 16 grid's ring) mirrored."""
    from PIL import Image

    root = tmp_path_factory.mktemp("pairs")
    pairs = []
    for i, path in enumerate(sorted(folder.glob("*.png"))):
        with Image.open(path) as img:
            width, height = img.size
            img.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(root / f"mirror{i}.png")
        points = [[width / 2 + dx, height / 2 + dy] for dx in (-46, -23, 0, 23, 46) for dy in (-46, -23, 0, 23, 46)]
        pairs.append({"image_a": str(path), "image_b": str(root / f"mirror{i}.png"), "keypoints_a": points,
                      "keypoints_b": [[width - x, y] for x, y in points], "category": "photo"})
    (root / "pairs.json").write_text(json.dumps({"pairs": pairs}))
    return root / "pairs.json"


def test_user_keypoints_end_to_end(tiny, folder, pair_file, tmp_path):
    settings = _settings(layers="conv_in", analyses=("position",), keypoints=str(pair_file))
    results = audit(tiny, folder, tmp_path, settings, report=True, progress=False)
    row = _rows(results)["conv_in"]
    assert row["keypoint_pairs"] == 6 and row["keypoint_skipped"] == 0
    for metric in ("keypoint_pck05", "keypoint_pck10", "keypoint_pck15", "keypoint_pck10_ring",
                   "keypoint_pck10_interior"):
        assert row[f"{metric}_low"] <= row[metric] <= row[f"{metric}_high"], metric
    assert 0 < row["keypoint_pck10_chance"] < 1
    assert results["run"]["keypoint_pairs"] == 6 and results["run"]["unet_passes_per_pair"] == 2
    with open(tmp_path / "results.csv", newline="") as f:
        assert {"keypoint_pck10", "keypoint_pck10_ring", "keypoint_pairs"} <= {r["metric"] for r in csv.DictReader(f)}
    page = (tmp_path / "report.html").read_text()
    assert "User keypoints" in page and "PCK@0.1" in page


def test_a_bad_pair_file_is_one_line_and_exit_2(folder, pair_file, tmp_path):
    bad = tmp_path / "bad.json"
    data = json.loads(pair_file.read_text())
    data["pairs"][1]["keypoints_b"] = data["pairs"][1]["keypoints_b"][:-1]
    bad.write_text(json.dumps(data))
    args = ["audit", "--model", "tiny", "--images", folder, "--out", tmp_path / "o", "--layers", "conv_in",
            "--analyses", "position", "--keypoints", bad]
    line = fails_with_one_line(args, "keypoints_b")
    assert "pair 1" in line and "keypoints_a has 25" in line
    assert "model loaded" not in runner.invoke(app, [str(a) for a in args]).output  # refused before the model loads


def test_the_checkpoint_fingerprint_follows_the_pairs_contents_not_their_path(tiny, pair_file, tmp_path):
    """An edited pair file (or a changed image) under the same path must not resume the old counts (regression:
    the fingerprint held the path only)."""
    import shutil

    from sdaudit.audit.checkpoint import numeric_settings

    copy = tmp_path / "pairs"
    shutil.copytree(pair_file.parent, copy)
    data = json.loads(pair_file.read_text())
    for pair in data["pairs"]:  # the copied mirror images (the same bytes)
        pair["image_b"] = str(copy / pair["image_b"].rsplit("/", 1)[-1])
    (copy / pair_file.name).write_text(json.dumps(data))
    settings = _settings(keypoints=str(copy / pair_file.name))
    before = numeric_settings(settings)["keypoints"]
    assert before == numeric_settings(_settings(keypoints=str(pair_file)))["keypoints"]  # same contents, other path
    data = json.loads((copy / pair_file.name).read_text())
    data["pairs"][0]["keypoints_b"][0][0] += 1.0
    (copy / pair_file.name).write_text(json.dumps(data))
    edited = numeric_settings(settings)["keypoints"]
    assert edited != before
    image = copy / "mirror0.png"
    image.write_bytes(image.read_bytes() + b"\0")
    assert numeric_settings(settings)["keypoints"] != edited


@pytest.mark.parametrize("extra", [{"analyses": ("correspondence",)}, {"mitigations": ("position",)},
                                   {"analyses": ("position",), "keypoints": "pairs.json"}])
def test_protocol_paper_is_refused_where_an_image_and_its_view_would_share_noise(extra):
    """Under 'paper' one noise tensor serves a whole batch: an image and its view (or a pair's two images) would
    get the same noise at the same positions, which pulls matches onto the source position (regression: on tiny
    the flip bias rate read 1.00 under paper against 0.09 under clean)."""
    with pytest.raises(UsageError, match="protocol clean"):
        _settings(protocol="paper", batch_size=4, **extra).validated()
    _settings(**extra).validated()  # clean: independent noise per image and view


def test_each_view_is_extracted_with_its_own_noise_indices():
    """Under 'clean' the noise is seeded by the index handed to the extractor: every view of image i must get an
    index no image and no other view has (a shared index would share the noise pattern at the same positions)."""
    from PIL import Image

    from sdaudit.audit.views import ViewPasses

    class Recorder:
        def __init__(self):
            self.calls = []

        def run(self, images, indices, device_output=False):
            self.calls.append(list(indices))
            return {"layer": np.zeros((len(images), 1, 4, 4))}

    n = 5
    passes = ViewPasses(("flip", "shift", "crop"), {"layer": (4, 4)}, 64, n)
    recorder = Recorder()
    passes.extract(recorder, [Image.new("RGB", (64, 64))] * 2, [3, 4])
    used = [i for call in recorder.calls for i in call]
    assert len(set(used)) == len(used) and not set(used) & set(range(n))
