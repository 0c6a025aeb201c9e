"""The paper's measurements in the audit: native-size crops, intervals, probe choice, controls, labels, honesty."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sdaudit.audit import AuditSettings, audit
from sdaudit.extraction import Extractor
from sdaudit.models import layer_infos
from sdaudit.models import load_denoiser_config, parse_model_spec
from sdaudit.analyses import crop_pixels

SIZE = 128
LAYERS = "down_blocks[0],up_blocks[1].upsamplers[0],up_blocks[3]"


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    from tests.conftest import photo_folder

    return photo_folder(tmp_path_factory.mktemp("fidelity-images"), 6, first_seed=30, height=96, widen=8)


@pytest.mark.parametrize("model, sizes", [("tiny", (256, 512)), ("arch:sd15", (512, 768)), ("arch:sd21", (512, 768))])
def test_every_cropped_grid_is_n_minus_2(model, sizes):
    """The crop extracted at its own size gives every layer of grid n an (n-2) grid (shapes from the meta device)."""
    config = load_denoiser_config(parse_model_spec(model))
    for size in sizes:
        full = {i.name: i for i in layer_infos(config, size)}
        for n in {i.height for i in full.values() if i.height >= 5}:
            cropped = {i.name: i for i in layer_infos(config, size - 2 * crop_pixels(size, n))}
            for name, info in full.items():
                if info.height == n:
                    assert (cropped[name].height, cropped[name].width) == (n - 2, n - 2), (model, size, name)


def test_the_unet_sees_the_cropped_sizes(tiny, folder, tmp_path, monkeypatch):
    """tiny at 256 px: the full pass (latent 32) and crops of 240, 224, 192 px (latents 30, 28, 24); the 4x4 grid
    would need a 128 px crop (latent 16) whose 2x2 grid has no border or interior, so it gets no pass."""
    seen = []
    original = Extractor.run

    def spy(self, images, indices, **kwargs):
        seen.append(images[0].size[0] // 8)
        return original(self, images, indices, **kwargs)

    monkeypatch.setattr(Extractor, "run", spy)
    results = audit(tiny, folder, tmp_path, AuditSettings(size=256, layers="paper", analyses=["borders"]),
                    report=False, progress=False)
    assert sorted(set(seen), reverse=True) == [32, 30, 28, 24]
    assert results["run"]["unet_passes_per_image"] == 4
    rows = {r["layer"]: r for r in results["table"]}
    assert rows["mid_block.resnets[0]"]["borders_undefined"] == "not defined (grid too small)"  # a 4x4 grid


@pytest.fixture(scope="module")
def controlled(tiny, folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("controlled")
    settings = AuditSettings(size=SIZE, layers=LAYERS, controls=["circular-padding", "untrained"], probe_method="paper")
    return out, audit(tiny, folder, out, settings, report=False, progress=False)


def test_intervals_everywhere_and_honest_labels(controlled):
    out, results = controlled
    saved = json.loads((out / "results.json").read_text())
    assert saved["model"]["random_weights"] is True
    assert any("only 6 images" in w for w in saved["warnings"]) and any("test split" in w for w in saved["warnings"])
    row = {r["layer"]: r for r in saved["table"]}["up_blocks[3].resnets[0]"]
    for metric in ("corner_rel_sim", "border_rel_sim", "other_rel_sim"):
        assert row[f"{metric}_low"] <= row[metric] <= row[f"{metric}_high"], metric
    # 6 images: the probe tests on 2, too few for an interval, so none is given rather than a spurious one
    assert row["probe_test_images"] == 2 and row["probe_acc_8_low"] is None and row["probe_acc_8"] is not None
    header, *lines = (out / "results.csv").read_text().splitlines()
    assert header.endswith(",value,low,high,seed_sd") and any(",corner_rel_sim," in x and not x.endswith(",,,") for x in lines)
    assert saved["settings"]["probe_method"] == "paper"


def test_control_curves_and_beyond_control_columns(controlled):
    _, results = controlled
    control = results["control"]
    assert control["kind"] == "circular-padding" and control["model"]["name"] == "tiny [circular padding]"
    assert results["controls"][0] == control and results["controls"][1]["kind"] == "untrained"
    untrained = {r["layer"]: r for r in results["controls"][1]["table"]}
    assert results["controls"][1]["model"]["name"] == "tiny [untrained (seed 1)]"
    assert untrained["up_blocks[3].resnets[0]"]["corner_rel_sim"] != {r["layer"]: r for r in results["table"]}[
        "up_blocks[3].resnets[0]"]["corner_rel_sim"]  # another draw: other curves
    assert "beyond_corner_rel_sim" in untrained["up_blocks[3].resnets[0]"]
    ours = {r["layer"]: r for r in results["table"]}
    theirs = {r["layer"]: r for r in control["table"]}
    layer = "up_blocks[3].resnets[0]"
    for metric in ("probe_acc_8", "corner_rel_sim"):
        beyond = ours[layer][f"beyond_{metric}"]
        assert beyond == pytest.approx(ours[layer][metric] - theirs[layer][metric], abs=1e-9)
    assert ours[layer]["beyond_corner_rel_sim_low"] <= ours[layer]["beyond_corner_rel_sim"] \
        <= ours[layer]["beyond_corner_rel_sim_high"]
    assert ours[layer]["beyond_probe_acc_8_low"] is None  # 2 test images: no interval
    assert theirs[layer]["beyond_corner_rel_sim"] == ours[layer]["beyond_corner_rel_sim"]  # in the control's rows too
    # zero padding carries the position signal: the probe is better than with circular padding
    assert ours[layer]["probe_acc_8"] > theirs[layer]["probe_acc_8"]


def test_published_labels_refuse_an_audit_of_other_images(tiny, folder, tmp_path):
    """Checked before any pass: the published labels index the paper's image set in its order (500 images on a
    32x32 grid; tests/test_paper_set.py checks the order, the count and the grid)."""
    from sdaudit.analyses import resolve_labels

    settings = AuditSettings(size=SIZE, layers=LAYERS, anomaly_labels="paper:sd15", analyses=["anomalies"])
    with pytest.raises(ValueError, match="not an image set built by sdaudit"):
        audit(tiny, folder, tmp_path, settings, report=False, progress=False)
    with pytest.raises(ValueError, match="32x32 grid .* this audit's anomaly layer is 8x8"):
        resolve_labels("paper:sd15", grid=8, n_images=500)


@pytest.mark.parametrize("protocol", ["clean", "paper"])
def test_given_labels_are_measured_instead_of_detections(tiny, folder, tmp_path, protocol):
    """Under both protocols: the labels' norms and their position recurrence."""
    from sdaudit.analyses import save_labels

    labels = np.array([[0, 1, 1], [1, 2, 2], [2, 3, 0], [2, 0, 5], [3, 4, 4], [5, 6, 6]])  # 8x8 layer at 128 px
    save_labels(tmp_path / "mine.npy", labels)
    settings = AuditSettings(size=SIZE, layers=LAYERS, anomaly_labels=str(tmp_path / "mine.npy"),
                             analyses=["anomalies"], protocol=protocol)
    results = audit(tiny, folder, tmp_path / "out", settings, report=False, progress=False)
    row = {r["layer"]: r for r in results["table"]}["up_blocks[1].upsamplers[0]"]
    assert row["anomaly_count"] == 6 and row["anomaly_rel_norm_mean_low"] <= row["anomaly_rel_norm_mean"]
    assert results["recurrence"]["n_anomalies"] == 6 and results["settings"]["protocol"] == protocol


def test_timesteps_and_noise_seeds_in_one_audit(tiny, folder, tmp_path):
    """Two timesteps x two noise seeds: numbers per timestep, averaged over the seeds with their spread; each
    run has its own checkpoint while the audit runs, and none is left once it has finished."""
    settings = AuditSettings(size=SIZE, layers=LAYERS, analyses=["position", "borders"], timesteps=[50, 500],
                             noise_seeds=2)
    results = audit(tiny, folder, tmp_path, settings, report=False, progress=False)
    assert [t["timestep"] for t in results["timesteps"]] == [50, 500]
    assert results["timesteps"][0]["table"] is not None and results["settings"]["noise_seeds"] == 2
    assert (tmp_path / "variants" / "t50-s43").is_dir() and (tmp_path / "variants" / "t500-s42").is_dir()
    assert not list(tmp_path.rglob(".checkpoint*.npz"))
    layer = "up_blocks[3].resnets[0]"
    main = {r["layer"]: r for r in results["table"]}[layer]
    late = {r["layer"]: r for r in results["timesteps"][1]["table"]}[layer]
    assert main["noise_seeds"] == 2 and main["probe_acc_8_seed_sd"] >= 0
    assert main["corner_rel_sim_low"] <= main["corner_rel_sim"] <= main["corner_rel_sim_high"]
    assert late["corner_rel_sim"] != main["corner_rel_sim"]
    # the main number is the average of the two seeds' own audits
    single = [audit(tiny, folder, tmp_path / f"s{seed}", AuditSettings(size=SIZE, layers=LAYERS, seed=seed,
                                                                       analyses=["position", "borders"]),
                    report=False, progress=False) for seed in (42, 43)]
    own = [{r["layer"]: r for r in s["table"]}[layer]["corner_rel_sim"] for s in single]
    assert main["corner_rel_sim"] == pytest.approx(np.mean(own), rel=1e-9)
    assert main["corner_rel_sim_seed_sd"] == pytest.approx(np.std(own, ddof=1), rel=1e-6)
    csv = (tmp_path / "results.csv").read_text().splitlines()
    assert csv[0].startswith("model,timestep,") and any(line.split(",")[1] == "500" for line in csv[1:])


def test_cli_timestep_list_must_be_numbers(tmp_path):
    from tests.cli_helpers import fails_with_one_line

    fails_with_one_line(["audit", "-m", "tiny", "-i", tmp_path, "--out", tmp_path / "o", "--timestep", "0,fifty"],
                        "--timestep takes a whole number or a comma-separated list")
