"""The representation store: round trip, resume after a kill, refusal of mixed configurations, lazy reads."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from sdaudit.extraction import ExtractionSettings, Extractor, extract, prepare_for_model
from sdaudit.images import load_image
from sdaudit.store import RepresentationStore, StoreConfigMismatch, StoreError, create_store, open_store

LAYERS = "conv_in,up_blocks[1].upsamplers[0],conv_out"


def assert_same_store(a: RepresentationStore, b: RepresentationStore, exact: bool = True) -> None:
    """Equal stores; ``exact=False`` allows one float16 step where batches were cut differently."""
    assert a.num_images == b.num_images
    assert [e.to_json() for e in a.images] == [e.to_json() for e in b.images]
    assert a.layers == b.layers
    for layer in a.layers:
        if exact:
            assert np.array_equal(a.read(layer), b.read(layer)), layer
        else:
            np.testing.assert_allclose(a.read(layer).astype(np.float32), b.read(layer).astype(np.float32),
                                       rtol=2e-3, atol=2e-3)


def test_round_trip_equals_extractor(tiny, image_folder, tmp_path):
    report = extract(tiny, image_folder, tmp_path / "s", layers=LAYERS, size=64, batch_size=2, progress=False)
    store = open_store(tmp_path / "s")
    assert report.added == 5 and store.num_images == 5 and len(store) == 5
    files = sorted(image_folder.iterdir())
    assert [Path(e.source).name for e in store.images] == [f.name for f in files]
    images = [prepare_for_model(load_image(f).image, 64) for f in files]
    direct = Extractor(tiny, LAYERS, ExtractionSettings(size=64)).run(images, list(range(5)))
    for layer in store.layers:
        stored = store.read(layer)
        assert stored.dtype == np.float16 and stored.shape == tuple(direct[layer].shape)
        np.testing.assert_allclose(stored.astype(np.float32), direct[layer].numpy(), rtol=2e-3, atol=2e-3)
    assert store.read("conv_in", 3).shape == store.layer_shape("conv_in")
    assert store.read("conv_in", [4, 0]).shape[0] == 2
    manifest = store.manifest
    assert manifest["config"]["protocol"] == "clean" and manifest["config"]["timestep"] == 50
    assert manifest["config"]["model"]["weights_sha256"] == tiny.weights_sha256
    assert {"sdaudit", "diffusers", "torch"} <= set(manifest["versions"])
    assert all(len(e.sha256) == 64 for e in store.images)


def test_rerun_skips_present_images_and_appends_new(tiny, image_folder, tmp_path):
    files = sorted(image_folder.iterdir())
    extract(tiny, [str(f) for f in files[:3]], tmp_path / "s", layers=LAYERS, size=64, progress=False)
    again = extract(tiny, image_folder, tmp_path / "s", layers=LAYERS, size=64, progress=False)
    assert (again.already_present, again.added, again.store.num_images) == (3, 2, 5)
    whole = extract(tiny, image_folder, tmp_path / "w", layers=LAYERS, size=64, progress=False)
    # batches were [0-2], [3-4] against [0-3], [4]: same noise per image, float rounding may differ
    assert_same_store(again.store, whole.store, exact=False)


@pytest.mark.parametrize("change", [{"timestep": 100}, {"seed": 1}, {"protocol": "paper"}, {"size": 128},
                                    {"layers": "conv_in"}, {"dtype": "float32"}])
def test_mixed_configuration_is_refused_and_store_untouched(tiny, image_folder, tmp_path, change):
    base = dict(layers=LAYERS, size=64, progress=False)
    extract(tiny, image_folder, tmp_path / "s", **base)
    before = {p: p.read_bytes() for p in (tmp_path / "s").rglob("*") if p.is_file()}
    with pytest.raises(StoreConfigMismatch, match="different configuration") as info:
        extract(tiny, image_folder, tmp_path / "s", **{**base, **change})
    assert next(iter(change)) in str(info.value)
    after = {p: p.read_bytes() for p in (tmp_path / "s").rglob("*") if p.is_file()}
    assert before == after


def test_paper_protocol_records_batch_size(tiny, image_folder, tmp_path):
    extract(tiny, image_folder, tmp_path / "s", layers="conv_in", size=64, protocol="paper", batch_size=2,
            progress=False)
    with pytest.raises(StoreConfigMismatch, match="batch_size"):
        extract(tiny, image_folder, tmp_path / "s", layers="conv_in", size=64, protocol="paper", batch_size=3,
                progress=False)


def test_resume_after_failures_at_random_points(tiny, image_folder, tmp_path, monkeypatch):
    """Crash inside the write path at random points; reruns resume to exactly the uninterrupted result."""
    whole = extract(tiny, image_folder, tmp_path / "whole", layers=LAYERS, size=64, batch_size=2, progress=False)
    import zarr

    original = zarr.Array.__setitem__
    rng = random.Random(0)
    for trial in range(3):
        target = tmp_path / f"crash{trial}"
        attempts = 0
        while True:
            budget = {"writes": rng.randint(0, 8)}

            def flaky_setitem(self, key, value, _budget=budget):
                if _budget["writes"] <= 0:
                    raise KeyboardInterrupt("simulated kill")
                _budget["writes"] -= 1
                return original(self, key, value)

            monkeypatch.setattr(zarr.Array, "__setitem__", flaky_setitem)
            try:
                extract(tiny, image_folder, target, layers=LAYERS, size=64, batch_size=2, progress=False)
                break
            except KeyboardInterrupt:
                attempts += 1
            finally:
                monkeypatch.setattr(zarr.Array, "__setitem__", original)
            partial = open_store(target)
            assert partial.num_images % 2 == 0  # only whole batches are ever visible
        assert_same_store(open_store(target), whole.store)


KILL_SCRIPT = textwrap.dedent("""
    import sys
    from sdaudit.extraction import extract
    from sdaudit.models import load_model
    model = load_model("tiny", device="cpu")
    print("ready", flush=True)
    extract(model, sys.argv[1], sys.argv[2], layers="all", size=64, batch_size=1, progress=False)
    print("done", flush=True)
""")


def test_resume_after_sigkill(tiny, image_folder, tmp_path):
    """A real SIGKILL at random moments of an extraction; the resumed store equals an uninterrupted one."""
    whole = extract(tiny, image_folder, tmp_path / "whole", layers="all", size=64, batch_size=1, progress=False)
    script = tmp_path / "run.py"
    script.write_text(KILL_SCRIPT)
    target = tmp_path / "killed"
    rng = random.Random(1)
    kills = 0
    for attempt in range(6):
        proc = subprocess.Popen([sys.executable, str(script), str(image_folder), str(target)],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        assert proc.stdout.readline().strip() == "ready"
        if attempt < 2:
            time.sleep(rng.uniform(0.05, 1.5))
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kills += proc.returncode == -signal.SIGKILL
            continue
        assert proc.wait(timeout=300) == 0
        break
    assert kills >= 1
    assert_same_store(open_store(target), whole.store)


def test_partial_records_past_the_commit_are_ignored(tiny, image_folder, tmp_path):
    report = extract(tiny, image_folder, tmp_path / "s", layers="conv_in", size=64, progress=False)
    with open(tmp_path / "s" / "images.jsonl", "a") as f:
        f.write(json.dumps({"index": 5, "source": "x", "sha256": "y", "width": 1, "height": 1, "mode": "RGB"}) + "\n")
        f.write('{"index": 6, "sour')  # a line cut off by a kill
    store = open_store(tmp_path / "s")
    assert store.num_images == 5 and len(store.images) == 5
    new = tmp_path / "more"
    new.mkdir()
    from tests.conftest import random_photo

    random_photo(99).save(new / "extra.png")
    more = extract(tiny, new, tmp_path / "s", layers="conv_in", size=64, progress=False)
    assert more.store.num_images == 6 and more.store.images[-1].source.endswith("extra.png")
    assert report.store.path == more.store.path


def test_reading_one_image_touches_only_its_chunks(tiny, image_folder, tmp_path):
    extract(tiny, image_folder, tmp_path / "s", layers=LAYERS, size=64, progress=False)
    store = open_store(tmp_path / "s")
    expected = store.read("conv_in", 0)
    # Remove every chunk of every image but the first: image 0 still reads the same.
    for chunk_dir in (tmp_path / "s" / "layers").glob("*/c"):
        for chunk in chunk_dir.iterdir():
            if chunk.name != "0":
                os.remove(chunk) if chunk.is_file() else None
    assert np.array_equal(open_store(tmp_path / "s").read("conv_in", 0), expected)


def test_store_errors(tmp_path):
    with pytest.raises(StoreError, match="does not exist"):
        open_store(tmp_path / "missing")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "file.txt").write_text("hello")
    with pytest.raises(StoreError, match="not an sdaudit store"):
        create_store(tmp_path / "junk", {}, {"conv_in": (4, 8, 8)})
    with pytest.raises(StoreError, match="no zarr.json"):
        open_store(tmp_path / "junk")
    store = create_store(tmp_path / "ok", {"protocol": "clean"}, {"conv_in": (4, 8, 8)})
    with pytest.raises(StoreError, match="layer 'conv_out' is not in store"):
        store.read("conv_out")
    with pytest.raises(StoreError, match="out of range"):
        store.read("conv_in", 0)
    with pytest.raises(StoreError, match="read-only"):
        open_store(tmp_path / "ok").write_batch(0, {}, [])


def test_a_creation_killed_midway_leaves_no_half_store(tmp_path, monkeypatch):
    """Regression: a SIGKILL while the store was being created left a folder without a manifest, which every
    rerun refused ("not an sdaudit store"). Creation is now built aside and renamed into place."""
    import sdaudit.store as store_module

    real, calls = store_module._write_empty_store, []

    def dies_midway(path, *args):
        calls.append(path)
        path.mkdir(parents=True)
        (path / "zarr.json").write_text('{"zarr_format": 3, "node_type": "group", "attributes": {}}')
        raise KeyboardInterrupt  # stands for the kill: nothing after this point runs

    target = tmp_path / "reps.zarr"
    monkeypatch.setattr(store_module, "_write_empty_store", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        create_store(target, {"protocol": "clean"}, {"conv_in": (4, 8, 8)})
    assert not target.exists() and calls[0].parent == tmp_path and calls[0].name.startswith(".reps.zarr.")
    # a scratch folder abandoned by a killed process (no cleanup ran) is removed by the next creation
    abandoned = tmp_path / ".reps.zarr.creating-999999999"
    abandoned.mkdir()
    monkeypatch.setattr(store_module, "_write_empty_store", real)
    store = create_store(target, {"protocol": "clean"}, {"conv_in": (4, 8, 8)})
    assert store.num_images == 0 and store.layers == ["conv_in"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["reps.zarr"]
    (tmp_path / "empty").mkdir()  # an existing empty folder is filled, as before
    assert create_store(tmp_path / "empty", {"protocol": "clean"}, {"conv_in": (4, 8, 8)}).num_images == 0


def test_inputs_are_stored_and_extract_like_appends(tiny, image_folder, tmp_path):
    from sdaudit.extraction import extract_like

    files = sorted(image_folder.iterdir())
    extract(tiny, [str(f) for f in files[:2]], tmp_path / "s", layers="conv_in", size=64, timestep=80, seed=3,
            progress=False)
    report = extract_like(tmp_path / "s", tiny, [str(files[2])])
    store = open_store(tmp_path / "s")
    assert report.added == 1 and store.num_images == 3 and store.config["timestep"] == 80
    inputs = store.read_inputs()
    assert inputs.shape == (3, 64, 64, 3) and inputs.dtype == np.uint8
    assert np.array_equal(inputs[2], np.asarray(prepare_for_model(load_image(files[2]).image, 64)))


def test_batch_size_zero_extracts_with_the_automatic_size(tiny, image_folder, tmp_path):
    """0 = as many as fit on the GPU; on the CPU the default batch, with the same store as an explicit size."""
    auto = extract(tiny, image_folder, tmp_path / "auto", layers="conv_in", size=64, batch_size=0, progress=False)
    explicit = extract(tiny, image_folder, tmp_path / "four", layers="conv_in", size=64, batch_size=4,
                       progress=False)
    assert auto.added == explicit.added > 0
    np.testing.assert_allclose(auto.store.read("conv_in"), explicit.store.read("conv_in"), atol=1e-3)
    with pytest.raises(ValueError, match="batch_size 0"):
        extract(tiny, image_folder, tmp_path / "paper", layers="conv_in", size=64, protocol="paper", batch_size=0,
                progress=False)
    assert not (tmp_path / "paper").exists()
