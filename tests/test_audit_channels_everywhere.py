"""Massive channels everywhere a user looks: results.csv's channel rows, the anomaly detector rerun without the
anomaly layer's massive channels (results.json, report card), the explorer's channels endpoint."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from fastapi.testclient import TestClient

from sdaudit.audit import AuditSettings, audit
from sdaudit.audit.state import AuditState
from sdaudit.constants import PAPER_ANOMALY_LAYER
from sdaudit.explorer import create_app
from sdaudit.store import ImageEntry, create_store

SIZE = 128
PLANTED = [1, 6]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    from tests.conftest import photo_folder

    return photo_folder(tmp_path_factory.mktemp("everywhere-images"), 6, first_seed=40, height=96, widen=8)


def _audit(tiny, folder, out, plant: bool) -> dict:
    """An audit with the "channels" analysis; with ``plant`` (a forward hook on the anomaly layer) the 2x2 patch
    at rows and columns 3-4 is scaled by 6 (a high-norm anomaly) and then channels 1 and 6 get + 1000 on every
    token (massive), which flattens the norm map."""
    def plant_channels(module, inputs, output):
        output = output.clone()
        output[:, :, 3:5, 3:5] *= 6.0
        output[:, PLANTED] = output[:, PLANTED] + 1000.0
        return output

    settings = AuditSettings(size=SIZE, layers="all", analyses=("anomalies", "channels"))
    handle = tiny.unet.get_submodule("up_blocks.1.upsamplers.0").register_forward_hook(plant_channels) if plant \
        else None
    try:
        return audit(tiny, folder, out, settings, report=plant, progress=False)
    finally:
        if handle is not None:
            handle.remove()


@pytest.fixture(scope="module")
def planted(tiny, folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("everywhere-planted")
    return out, _audit(tiny, folder, out, plant=True)


@pytest.fixture(scope="module")
def clean(tiny, folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("everywhere-clean")
    return out, _audit(tiny, folder, out, plant=False)


def _csv(out) -> dict:
    with open(out / "results.csv", newline="") as f:
        return {(r["layer"], r["metric"]): r for r in csv.DictReader(f)}


def test_results_csv_has_the_channel_rows(planted):
    out, results = planted
    rows = _csv(out)
    row = next(r for r in results["table"] if r["layer"] == PAPER_ANOMALY_LAYER)
    assert int(rows[(PAPER_ANOMALY_LAYER, "massive_channels")]["value"]) == row["massive_channels"] == len(PLANTED)
    ids = rows[(PAPER_ANOMALY_LAYER, "massive_channel_ids")]["value"]
    assert sorted(int(v) for v in ids.split()) == PLANTED
    assert float(rows[(PAPER_ANOMALY_LAYER, "massive_ratio_max")]["value"]) == row["massive_ratio_max"] > 100
    assert float(rows[(PAPER_ANOMALY_LAYER, "massive_consistency_min")]["value"]) == pytest.approx(1.0)
    # a layer without massive channels has its count (0) and no ids, ratio or consistency row
    assert rows[("conv_in", "massive_channels")]["value"] == "0"
    assert ("conv_in", "massive_channel_ids") not in rows and ("conv_in", "massive_ratio_max") not in rows


def test_the_anomaly_numbers_are_recomputed_without_the_planted_channels(planted, clean):
    _, results = planted
    without = results["anomalies"]["without_massive"]
    assert without["layer"] == PAPER_ANOMALY_LAYER and without["channels"] == PLANTED
    assert without["n_images"] + without["skipped_images"] == 6
    # the planted channels flatten the plain norm maps: the planted patch is found only without them
    patch = {(i, 3, 3) for i in range(6)}
    assert not patch & {tuple(r) for r in results["anomalies"]["rows"]}
    assert patch <= {tuple(r) for r in without["rows"]} and without["rel_norm_mean"] > 2
    # on the unmodified model: no massive channel, and the recomputation is the plain detection
    _, results = clean
    without = results["anomalies"]["without_massive"]
    assert without["channels"] == [] and without["count"] == results["anomalies"]["count"]
    assert {tuple(r) for r in without["rows"]} == {tuple(r) for r in results["anomalies"]["rows"]}


def test_the_report_card_states_both(planted, clean):
    out, results = planted
    page = (out / "report.html").read_text()
    without = results["anomalies"]["without_massive"]
    assert f"Without the {len(PLANTED)} massive channels of <code>{PAPER_ANOMALY_LAYER}</code>" in page
    assert f"finds <b>{without['count']}</b>" in page and f"(with them: {results['anomalies']['count']} in" in page
    from sdaudit.report.verdicts import summarize

    assert summarize(clean[1])["channels"]["without"] is None  # nothing removed: no line


def test_state_keeps_the_recomputation_through_checkpoints_and_shards():
    grids = {"a": (6, 6)}
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, 20, 6, 6)).astype(np.float32)
    x[:, :, 2:4, 2:4] *= 6.0
    x[:, 4] += 500.0

    def state():
        return AuditState(["a"], grids, 6, {"channels", "anomalies"}, "a", probe={}, detector={})

    whole, first, second = state(), state(), state()
    whole.update_full({"a": x}, list(range(6)))
    first.update_full({"a": x[:2]}, [0, 1])
    second.update_full({"a": x[2:]}, list(range(2, 6)))
    restored = state()
    restored.load_state_dict(first.state_dict())
    restored.merge(second)
    from sdaudit.audit.outputs import anomalies_without_massive

    want, got = anomalies_without_massive(whole), anomalies_without_massive(restored)
    assert want["channels"] == [4] and want["count"] >= 6 and got == want


def test_explorer_shows_a_layers_massive_channels(tmp_path):
    rng = np.random.default_rng(1)
    shapes = {"mid_block.resnets[0]": (16, 8, 8), PAPER_ANOMALY_LAYER: (16, 8, 8)}
    config = {"model": {"name": "synthetic"}, "protocol": "clean", "timestep": 50, "seed": 0, "size": 64,
              "prompt": "", "layers": list(shapes), "dtype": "float32"}
    store = create_store(tmp_path / "store", config, shapes, capacity=3)
    planted = rng.standard_normal((3, 16, 8, 8)).astype(np.float32)
    planted[:, 5] += 400.0
    arrays = {"mid_block.resnets[0]": rng.standard_normal((3, 16, 8, 8)).astype(np.float32),
              PAPER_ANOMALY_LAYER: planted}
    entries = [ImageEntry(i, f"/data/img{i}.png", f"{i:064x}", 64, 64, "RGB") for i in range(3)]
    store.write_batch(0, arrays, entries, inputs=rng.integers(0, 256, (3, 64, 64, 3), dtype=np.uint8))
    with TestClient(create_app([tmp_path / "store"]), base_url="http://127.0.0.1") as c:
        body = c.get("/api/stores/0/channels", params={"layer": PAPER_ANOMALY_LAYER, "images": "0,1,2"}).json()
        assert body["massive_channels"] == 1 and body["massive_channel_ids"] == [5]
        assert body["massive_ratio_max"] > 100 and body["massive_consistency_min"] == 1.0
        assert body["rule"] == "ratio" and body["images"] == [0, 1, 2]
        body = c.get("/api/stores/0/channels", params={"layer": "mid_block.resnets[0]", "images": "0"}).json()
        assert body["massive_channels"] == 0 and body["massive_channel_ids"] == []
        assert body["massive_ratio_max"] is None
        page = c.get("/").text
        assert 'id="layer-channels"' in page
