"""One writer at a time: the store's writer lock, with real processes; and extract's repairs and write errors."""

from __future__ import annotations

import errno
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from typer.testing import CliRunner

from sdaudit.cli import app
from sdaudit.extraction import extract
from sdaudit.store import StoreBusyError, StoreError, create_store, open_store, verify_store
from tests.conftest import photo_folder
from tests.test_store import assert_same_store

LAYERS = "conv_in,up_blocks[1].upsamplers[0],conv_out"
SHAPES = {"conv_in": (4, 8, 8)}
runner = CliRunner()

HOLD = textwrap.dedent("""
    import sys, time
    from sdaudit.store import create_store
    store = create_store(sys.argv[1], {"protocol": "clean"}, {"conv_in": (4, 8, 8)})
    print("locked", flush=True)
    time.sleep(300)
""")

# An extraction slowed down (0.3 s per batch) so that a second writer surely comes while it runs.
SLOW_EXTRACT = textwrap.dedent("""
    import sys, time
    from sdaudit.extraction import extract
    from sdaudit.extraction.extractor import Extractor
    from sdaudit.models import load_model
    real = Extractor.run
    def slow(self, *args, **kwargs):
        time.sleep(0.3)
        return real(self, *args, **kwargs)
    Extractor.run = slow
    model = load_model("tiny", device="cpu")
    print("ready", flush=True)
    report = extract(model, sys.argv[1], sys.argv[2], layers=sys.argv[3], size=64, batch_size=1, progress=False)
    print("added", report.added, flush=True)
""")


def start(tmp_path, script: str, *args) -> subprocess.Popen:
    path = tmp_path / "script.py"
    path.write_text(script)
    return subprocess.Popen([sys.executable, str(path), *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_two_writers_cannot_share_a_store_and_a_killed_one_leaves_no_stale_lock(tmp_path):
    target = tmp_path / "s"
    holder = start(tmp_path, HOLD, target)
    try:
        assert holder.stdout.readline().strip() == "locked"
        message = f"store '{target}' is being written by pid {holder.pid} on {socket.gethostname()}; wait for it " \
                  "or use another --out"
        with pytest.raises(StoreBusyError) as caught:
            create_store(target, {"protocol": "clean"}, SHAPES)
        assert str(caught.value) == message
        with pytest.raises(StoreBusyError):
            open_store(target, mode="r+")
        assert open_store(target).num_images == 0  # readers are never locked out
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    finally:
        holder.kill()
        holder.wait()
    with create_store(target, {"protocol": "clean"}, SHAPES) as store:  # the kernel released the dead one's lock
        assert store.num_images == 0
    with create_store(target, {"protocol": "clean"}, SHAPES):  # and closing releases it too
        pass


def test_a_second_extract_is_refused_while_one_runs(tiny, tmp_path):
    """Regression: two extracts into one store both reported success and left images with mixed layers."""
    first, second = photo_folder(tmp_path / "a", 4), photo_folder(tmp_path / "b", 3, first_seed=50)
    target = tmp_path / "s"
    writer = start(tmp_path, SLOW_EXTRACT, first, target, LAYERS)
    try:
        assert writer.stdout.readline().strip() == "ready"
        deadline = time.monotonic() + 120
        while not (target / ".writer.lock").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        result = runner.invoke(app, ["extract", "-m", "tiny", "-i", str(second), "-o", str(target), "-l", LAYERS,
                                     "-s", "64", "--device", "cpu"])
        assert result.exit_code == 2, result.output
        assert f"is being written by pid {writer.pid}" in result.output and "another --out" in result.output
        assert writer.wait(timeout=300) == 0 and "added 4" in writer.stdout.read()
    finally:
        writer.kill()
        writer.wait()
    alone = extract(tiny, first, tmp_path / "alone", layers=LAYERS, size=64, batch_size=1, progress=False)
    assert_same_store(open_store(target), alone.store)  # nothing of the refused run got in
    more = extract(tiny, second, target, layers=LAYERS, size=64, progress=False)  # now it may
    assert more.added == 3 and verify_store(target).intact


def test_creating_the_same_store_twice_at_once(tmp_path, monkeypatch):
    """Two creations of one new store at the same moment: one creates it, the other gets the busy error."""
    import sdaudit.store as store_module

    real, winner = store_module._write_empty_store, {}

    def other_process_comes_first(path, *args):
        real(path, *args)
        if not winner:  # while this creation is under way, another process's one completes (and keeps writing)
            winner["store"] = None
            with monkeypatch.context() as m:
                m.setattr(os, "getpid", lambda: 999999998)  # its scratch folder is its own
                winner["store"] = create_store(target, {"protocol": "clean"}, SHAPES)

    target = tmp_path / "new"
    monkeypatch.setattr(store_module, "_write_empty_store", other_process_comes_first)
    with pytest.raises(StoreBusyError, match="is being written by pid"):
        create_store(target, {"protocol": "clean"}, SHAPES)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new"]  # no scratch folder left behind
    winner["store"].close()
    with create_store(target, {"protocol": "clean"}, SHAPES) as store:
        assert store.layers == ["conv_in"]


def test_extract_repairs_damaged_rows_in_place(tiny, image_folder, tmp_path):
    whole = extract(tiny, image_folder, tmp_path / "whole", layers=LAYERS, size=64, progress=False)
    target = tmp_path / "s"
    extract(tiny, image_folder, target, layers=LAYERS, size=64, progress=False)
    os.remove(target / "layers" / "conv_in" / "c" / "1" / "0" / "0" / "0")
    truncated = target / "inputs" / "c" / "3" / "0" / "0" / "0"
    truncated.write_bytes(truncated.read_bytes()[:7])
    os.remove(target / "layers" / "conv_out" / "c" / "4" / "0" / "0" / "0")
    assert set(verify_store(target).damaged) == {1, 3, 4}
    given = [str(p) for p in sorted(image_folder.iterdir())[:4]]  # not the image of row 4
    report = extract(tiny, given, target, layers=LAYERS, size=64, progress=False)
    assert report.repaired == [1, 3] and list(report.unrepaired) == [4] and report.added == 0
    assert report.already_present == 2
    assert set(verify_store(target).damaged) == {4}
    result = runner.invoke(app, ["extract", "-m", "tiny", "-i", str(image_folder), "-o", str(target), "-l", LAYERS,
                                 "-s", "64", "--device", "cpu"])
    assert result.exit_code == 0 and "repaired 1 damaged image(s) in place: [4]" in result.output
    assert verify_store(target).intact
    assert_same_store(open_store(target), whole.store, exact=False)


def test_disk_full_during_extract_keeps_the_committed_images(tiny, image_folder, tmp_path, monkeypatch):
    import zarr.storage

    whole = extract(tiny, image_folder, tmp_path / "whole", layers=LAYERS, size=64, batch_size=2, progress=False)
    original = zarr.storage.LocalStore.set

    async def fills_up(self, key, value):
        if "/c/" in f"/{key}" and key.split("/c/")[-1].split("/")[0] >= "2":  # the chunks of the second batch
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return await original(self, key, value)

    monkeypatch.setattr(zarr.storage.LocalStore, "set", fills_up)
    target = tmp_path / "s"
    result = runner.invoke(app, ["extract", "-m", "tiny", "-i", str(image_folder), "-o", str(target), "-l", LAYERS,
                                 "-s", "64", "-b", "2", "--device", "cpu"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert f"cannot write to store '{target}': No space left on device; its 2 committed images are intact" \
        in " ".join(result.output.split())
    monkeypatch.setattr(zarr.storage.LocalStore, "set", original)
    assert open_store(target).num_images == 2 and verify_store(target).intact
    again = extract(tiny, image_folder, target, layers=LAYERS, size=64, batch_size=2, progress=False)
    assert again.added == 3 and again.already_present == 2
    assert_same_store(open_store(target), whole.store)


def test_a_read_only_store_gives_one_line(tiny, image_folder, tmp_path, monkeypatch):
    """Files that cannot be written (simulated: root can write anywhere) give one line naming the store."""
    import builtins

    import zarr.storage

    import sdaudit.store.lock as lock_module

    target = tmp_path / "s"
    extract(tiny, sorted(image_folder.iterdir())[:2], target, layers=LAYERS, size=64, progress=False)

    def refused(*args, **kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))

    def read_only_open(file, mode="r", *args, **kwargs):
        if str(file).startswith(str(target)) and any(c in mode for c in "wa+"):
            refused()
        return builtins.open(file, mode, *args, **kwargs)

    monkeypatch.setattr(lock_module, "open", read_only_open, raising=False)
    monkeypatch.setattr(zarr.storage.LocalStore, "set", refused)
    result = runner.invoke(app, ["extract", "-m", "tiny", "-i", str(image_folder), "-o", str(target), "-l", LAYERS,
                                 "-s", "64", "--device", "cpu"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert f"cannot write to store '{target}': Permission denied" in " ".join(result.output.split())
    monkeypatch.undo()
    assert open_store(target).num_images == 2 and verify_store(target).intact
    with pytest.raises(StoreError, match="read-only"):
        open_store(target).write_batch(2, {}, [])
    assert np.asarray(open_store(target).read("conv_in")).shape[0] == 2


def test_float16_overflow_during_extract_names_layer_and_image(tiny, image_folder, tmp_path, monkeypatch):
    """Regression: finite activations beyond float16's range were stored as inf with only a numpy warning."""
    from sdaudit.extraction.extractor import Extractor

    real, files = Extractor.run, sorted(image_folder.iterdir())

    def huge_conv_out(self, images, indices, **kwargs):
        reps = real(self, images, indices, **kwargs)
        if 3 in indices:
            reps["conv_out"][indices.index(3)] *= 1e6
        return reps

    monkeypatch.setattr(Extractor, "run", huge_conv_out)
    target = tmp_path / "s"
    result = runner.invoke(app, ["extract", "-m", "tiny", "-i", str(image_folder), "-o", str(target), "-l", LAYERS,
                                 "-s", "64", "-b", "2", "--device", "cpu"])
    out = " ".join(result.output.split())
    assert result.exit_code == 2 and "Traceback" not in out
    assert f"layer(s) conv_out of image(s) {files[3]} hold finite values beyond its range" in out
    assert "--dtype float32" in out
    assert open_store(target).num_images == 2 and verify_store(target).intact  # the first batch is kept
    wide = extract(tiny, image_folder, tmp_path / "f32", layers=LAYERS, size=64, batch_size=2, dtype="float32",
                   progress=False)
    assert wide.added == 5 and np.isfinite(wide.store.read("conv_out")).all()
    assert np.abs(wide.store.read("conv_out", 3)).max() > 65504
