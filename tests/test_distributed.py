"""Multi-process audits: sharded accumulators merge to the single-process results.

The second test spawns 2 CPU processes (torch.multiprocessing, gloo over a free localhost TCP port);
each audits its share of a small tiny-model image set, the shards' states are merged, and the results
table is compared with a single-process audit's.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sdaudit.audit import AuditSettings, audit
from sdaudit.audit.distributed import audit_multiprocess
from sdaudit.audit.sharding import _block
from sdaudit.audit.outputs import layer_results
from sdaudit.audit.state import AuditState

SIZE = 128
# thresholds low enough that the tiny model's maps give some detections, so the anomaly norms are compared too
DETECTOR = {"z_threshold": 1.0, "ratio_threshold": 1.05, "local_ratio": 1.05}


def assert_tables_equal(a: list[dict], b: list[dict]) -> None:
    assert [r["layer"] for r in a] == [r["layer"] for r in b]
    for ra, rb in zip(a, b):
        assert ra.keys() == rb.keys(), ra["layer"]
        for key, va in ra.items():
            vb = rb[key]
            if isinstance(va, float) and isinstance(vb, float):
                assert math.isclose(va, vb, rel_tol=1e-4, abs_tol=1e-6), (ra["layer"], key, va, vb)
            else:
                assert va == vb, (ra["layer"], key, va, vb)


def _features(rng, n, c, g):
    rows = np.linspace(-1, 1, g, dtype=np.float32)
    pos = np.stack([np.broadcast_to(rows[:, None], (g, g)), np.broadcast_to(rows[None, :], (g, g))])
    x = rng.standard_normal((n, c, g, g)).astype(np.float32)
    x[:, :2] += 3 * pos
    x[:, :, 1, 2] *= 6  # a high-norm token in every map
    return torch.from_numpy(x)


def test_block_split_covers_every_item_once():
    for n in (0, 1, 5, 8):
        for world in (1, 2, 3):
            blocks = [_block(list(range(n)), r, world) for r in range(world)]
            assert sum(blocks, []) == list(range(n))


def test_sharded_states_merge_to_the_single_state():
    layers, grids = ["a", "b"], {"a": (8, 8), "b": (4, 4)}
    n, n_train = 10, 8

    def new_state():
        return AuditState(layers, grids, n, {"position", "borders", "anomalies"}, "a",
                          probe={"train_fraction": 0.8, "method": "lda", "resolutions": [2, 4, 8]},
                          detector=dict(DETECTOR))

    rng = np.random.default_rng(0)
    full = {"a": _features(rng, n, 6, 8), "b": _features(rng, n, 5, 4)}
    cropped = {"a": _features(rng, n, 6, 6)}  # crops at their own size (n-2); grid 4 has no cropped pass

    def feed(state, indices, what):
        reps = full if what == "full" else cropped
        batch = {k: v[indices] for k, v in reps.items()}
        (state.update_full if what == "full" else state.update_cropped)(batch, list(indices))

    single = new_state()
    for start in range(0, n, 3):
        feed(single, list(range(start, min(start + 3, n))), "full")
    for start in range(0, n, 3):
        feed(single, list(range(start, min(start + 3, n))), "cropped")

    shards = [new_state(), new_state()]
    train = [list(range(0, 4)), list(range(4, n_train))]
    test = [[8], [9]]
    for state, idx in zip(shards, train):
        feed(state, idx, "full")
    # the probe sync: merged training statistics for everyone, own test counts kept
    merged_training = shards[0].merge_probe_training(shards[0].probe_training(), shards[1].probe_training())
    for state in shards:
        state.take_probe_training(merged_training)
    for state, idx, t in zip(shards, train, test):
        feed(state, t, "full")
        feed(state, idx + t, "cropped")
    # the final reduction: rank 1 sends its state without the (shared) training statistics
    other = shards[0].empty_like()
    other.load_state_dict(shards[1].state_dict(probe_training=False))
    merged_state = shards[0].merge(other)

    _, _, want = layer_results(single, grids)
    _, _, got = layer_results(merged_state, grids)
    assert_tables_equal(want, got)
    assert single.detector.result().rows.tolist() == merged_state.detector.result().rows.tolist()
    assert len(single.detector.result().rows) > 0 and want[0]["anomaly_count"] > 0


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    from tests.conftest import photo_folder

    return photo_folder(tmp_path_factory.mktemp("dist-images"), 6, first_seed=20, height=96, widen=8, prefix="p")


def test_two_processes_equal_one_process(tiny, images, tmp_path):
    # three grid sizes (16, 8, 4 at 128 px: three cropped passes), the anomaly layer, early stops: a quick run
    settings = AuditSettings(size=SIZE, layers="conv_in,up_blocks[1]", analyses=["position", "borders", "anomalies"],
                             batch_size=2, detector=dict(DETECTOR))
    two = audit_multiprocess("tiny", images, tmp_path / "two", settings, num_processes=2, threads=1,
                             load_kwargs={"device": "cpu"}, report=False, progress=False)
    one = audit(tiny, images, tmp_path / "one", settings, report=False, progress=False, shard=None)
    assert two["run"]["processes"] == 2 and two["run"]["unet_passes_per_image"] == one["run"]["unet_passes_per_image"]
    assert len(two["images"]) == len(one["images"]) == 6 and len(one["table"]) == 8
    assert_tables_equal(one["table"], two["table"])
    assert one["anomalies"]["count"] > 0
    assert two["anomalies"]["rows"] == one["anomalies"]["rows"]
    assert two["non_finite"] == one["non_finite"] == {}
    # each process removed its own checkpoint once the audit finished, and only rank 0 wrote the outputs
    assert not list((tmp_path / "two").glob(".checkpoint*"))
    assert (tmp_path / "two" / "results.json").is_file()


def test_keep_store_is_refused_with_several_processes(tmp_path):
    with pytest.raises(ValueError, match="keep_store"):
        audit_multiprocess("tiny", tmp_path, tmp_path / "out", num_processes=2, keep_store=True)


def test_overlapped_device_style_analyses_equal_inline(tiny, images, tmp_path, monkeypatch):
    """The CUDA code path of AuditRun, exercised on the CPU: analyses in a background thread one batch
    behind the extraction, and anomaly analyses on token-norm maps (as when the features stay on a GPU)."""
    from sdaudit.audit import state as state_module
    from sdaudit.audit.run import AuditRun, RunOptions
    from sdaudit.audit.sources import scan_images

    settings = AuditSettings(size=SIZE, layers="conv_in,up_blocks[1]", analyses=["position", "borders", "anomalies"],
                             batch_size=2, detector=dict(DETECTOR))
    items = scan_images(images)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    outcome = AuditRun(tiny, items, settings, tmp_path / "a", RunOptions(overlap=False)).execute()
    inline, full = outcome.state, outcome.full
    monkeypatch.setattr(state_module, "_on_device", lambda x: True)
    overlapped = AuditRun(tiny, items, settings, tmp_path / "b", RunOptions(overlap=True)).execute().state
    grids = {name: (shape[1], shape[2]) for name, shape in full.shapes.items()}
    assert_tables_equal(layer_results(inline, grids)[2], layer_results(overlapped, grids)[2])
    assert inline.detector.result().rows.tolist() == overlapped.detector.result().rows.tolist()
    assert len(inline.detector.result().rows) > 0
