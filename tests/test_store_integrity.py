"""A damaged store is never read as valid: checksums per row, validated manifest and records, float16 overflow,
'sdaudit verify', and failed writes (disk full, read-only) that keep the committed images."""

from __future__ import annotations

import errno
import json
import os
import re

import numpy as np
import pytest
from typer.testing import CliRunner

from sdaudit.cli import app
from sdaudit.store import (Float16OverflowError, ImageEntry, StoreDamagedError, StoreError, create_store, open_store,
                           verify_store)

SHAPES = {"conv_in": (4, 8, 8), "mid_block.resnets[0]": (8, 4, 4)}
CONFIG = {"model": {"name": "synthetic"}, "protocol": "clean", "timestep": 50, "seed": 0, "size": 16,
          "prompt": "", "layers": list(SHAPES), "dtype": "float16"}
runner = CliRunner()


def batch(start: int, b: int = 2, seed: int = 0):
    rng = np.random.default_rng(seed + start)
    arrays = {name: rng.standard_normal((b, *shape)).astype(np.float32) for name, shape in SHAPES.items()}
    entries = [ImageEntry(i, f"/data/img{i}.png", f"{i:064x}", 16, 16, "RGB") for i in range(start, start + b)]
    return arrays, entries, rng.integers(0, 256, (b, 16, 16, 3), dtype=np.uint8)


def make_store(path, n: int = 4):
    store = create_store(path, CONFIG, SHAPES, capacity=2)
    for start in range(0, n, 2):
        arrays, entries, inputs = batch(start)
        store.write_batch(start, arrays, entries, inputs=inputs)
    store.close()
    return open_store(path)


def chunk(path, i: int, key: str = "conv_in"):
    """The file of image ``i``'s chunk (zarr v3 default chunk keys: c/<i>/0/0/0, one chunk per image)."""
    folder = path / "layers" / key if key != "inputs" else path / "inputs"
    found = folder / "c" / str(i) / "0" / "0" / "0"
    assert found.is_file(), found
    return found


def test_a_deleted_chunk_is_not_read_as_zeros(tmp_path):
    store = make_store(tmp_path / "s")
    expected = store.read("conv_in", 0)
    os.remove(chunk(tmp_path / "s", 2))
    store = open_store(tmp_path / "s")
    with pytest.raises(StoreDamagedError, match=r"store '.*s' is damaged: layer 'conv_in' of image 2 \(/data/img2.png\)"):
        store.read("conv_in")
    with pytest.raises(StoreDamagedError, match="image 2"):
        store.read("conv_in", [3, 2])
    assert np.array_equal(store.read("conv_in", 0), expected)  # the intact rows still read
    assert store.read("mid_block.resnets[0]").shape == (4, 8, 4, 4)


def test_a_truncated_chunk_is_a_store_error_not_a_decompression_traceback(tmp_path):
    make_store(tmp_path / "s")
    for key in ("conv_in", "inputs"):
        path = chunk(tmp_path / "s", 1, key)
        path.write_bytes(path.read_bytes()[:10])
    store = open_store(tmp_path / "s")
    with pytest.raises(StoreDamagedError, match="layer 'conv_in' of image 1 .* cannot be read"):
        store.read("conv_in", slice(0, 4))
    with pytest.raises(StoreDamagedError, match="the inputs of image 1"):
        store.read_inputs(1)


def test_an_altered_chunk_fails_its_checksum(tmp_path):
    make_store(tmp_path / "s")
    other = chunk(tmp_path / "s", 0, "mid_block.resnets.0").read_bytes()
    chunk(tmp_path / "s", 3, "mid_block.resnets.0").write_bytes(other)  # valid data, of another image
    with pytest.raises(StoreDamagedError, match=r"layer 'mid_block.resnets\[0\]' of image 3 .*checksum"):
        open_store(tmp_path / "s").read("mid_block.resnets[0]", 3)


def test_a_missing_array_metadata_is_a_store_error_not_a_key_error(tmp_path):
    make_store(tmp_path / "s")
    os.remove(tmp_path / "s" / "layers" / "conv_in" / "zarr.json")
    store = open_store(tmp_path / "s")
    with pytest.raises(StoreDamagedError, match="layer 'conv_in' .* cannot be opened"):
        store.read("conv_in", 0)
    assert store.read("mid_block.resnets[0]", 0).shape == (8, 4, 4)


def rewrite_manifest(path, **changes):
    meta = json.loads((path / "zarr.json").read_text())
    meta["attributes"]["sdaudit"].update(changes)
    (path / "zarr.json").write_text(json.dumps(meta))


@pytest.mark.parametrize("field, value, shown", [
    ("num_images", "abc", "num_images is 'abc'"), ("num_images", -1, "num_images is '-1'"),
    ("config", [1], "config is"), ("layers", {"conv_in": {"key": "../../x", "shape": [4, 8, 8]}}, "layers\\['conv_in'\\]"),
    ("layers", {"conv_in": {"key": "conv_in", "shape": "big"}}, "layers\\['conv_in'\\]")])
def test_garbage_in_the_manifest_is_named(tmp_path, field, value, shown):
    make_store(tmp_path / "s")
    rewrite_manifest(tmp_path / "s", **{field: value})
    with pytest.raises(StoreDamagedError, match=f"store '.*s' is damaged: manifest field {shown}"):
        open_store(tmp_path / "s")


def test_a_corrupt_committed_record_is_an_error_not_fewer_images(tmp_path):
    make_store(tmp_path / "s")
    records = tmp_path / "s" / "images.jsonl"
    lines = records.read_bytes().splitlines(keepends=True)
    records.write_bytes(b"".join(lines[:2] + [b"{not json\n"] + lines[3:]))
    with pytest.raises(StoreDamagedError, match="damaged: images.jsonl line 3 is not a valid image record"):
        open_store(tmp_path / "s")
    records.write_bytes(b"".join(lines[:3]))  # one committed record missing
    with pytest.raises(StoreDamagedError, match="images.jsonl has 3 records, but the manifest counts 4"):
        open_store(tmp_path / "s")
    records.write_bytes(b"".join(lines) + b'{"index": 4, "sour')  # a killed run's leftover: ignored
    assert open_store(tmp_path / "s").num_images == 4


def test_float16_overflow_is_refused_before_writing(tmp_path):
    make_store(tmp_path / "s", n=2)
    store = open_store(tmp_path / "s", mode="r+")
    arrays, entries, inputs = batch(2)
    arrays["mid_block.resnets[0]"][1, 0, 0, 0] = 70000.0  # finite, beyond float16
    with pytest.raises(Float16OverflowError, match=r"layer\(s\) mid_block.resnets\[0\] of image\(s\) /data/img3.png "
                       r"hold finite values .*65504.*nothing of this batch was written.*--dtype float32"):
        store.write_batch(2, arrays, entries, inputs=inputs)
    store.close()
    store = open_store(tmp_path / "s")
    assert store.num_images == 2 and not (tmp_path / "s" / "layers" / "conv_in" / "c" / "2").exists()
    # non-finite model outputs are not an overflow: stored as they are
    with open_store(tmp_path / "s", mode="r+") as store:
        arrays, entries, inputs = batch(2)
        arrays["conv_in"][0, 0, 0, :3] = [np.nan, np.inf, -np.inf]
        store.write_batch(2, arrays, entries, inputs=inputs)
    row = open_store(tmp_path / "s").read("conv_in", 2)
    assert np.isnan(row[0, 0, 0]) and np.isposinf(row[0, 0, 1]) and np.isneginf(row[0, 0, 2])


def test_verify_command_reports_damage(tmp_path):
    make_store(tmp_path / "s")
    result = runner.invoke(app, ["verify", str(tmp_path / "s")])
    assert result.exit_code == 0 and "intact" in result.output and "4 images x 2 layers" in result.output
    os.remove(chunk(tmp_path / "s", 1))
    path = chunk(tmp_path / "s", 3, "inputs")
    path.write_bytes(path.read_bytes()[:5])
    report = verify_store(tmp_path / "s")
    assert not report.intact and set(report.damaged) == {1, 3}
    assert report.damaged[1] == ["layer conv_in: does not match its checksum"]
    assert report.damaged[3] == ["inputs: cannot be read"]
    result = runner.invoke(app, ["verify", str(tmp_path / "s")])
    assert result.exit_code == 1 and "image 1: layer conv_in" in result.output and "2 of 4 images damaged" in result.output
    rewrite_manifest(tmp_path / "s", num_images="x")
    result = runner.invoke(app, ["verify", str(tmp_path / "s")])
    assert result.exit_code == 1 and "manifest field num_images is 'x'" in result.output
    result = runner.invoke(app, ["verify", str(tmp_path / "missing")])
    assert result.exit_code == 2 and "does not exist" in result.output


@pytest.mark.parametrize("version", [1, 2])
def test_a_store_of_an_older_format_is_refused_with_one_message(tmp_path, version):
    """Stores written before format 3 (the settings tree's configuration) are refused, reading or writing, with
    one message that says to re-extract; the command line prints it as one line."""
    make_store(tmp_path / "s")
    rewrite_manifest(tmp_path / "s", format_version=version)
    message = f"store '{tmp_path / 's'}' was written by format {version}; this sdaudit reads format 3: re-extract"
    for mode in ("r", "r+"):
        with pytest.raises(StoreError, match=re.escape(message)):
            open_store(tmp_path / "s", mode=mode)
    result = runner.invoke(app, ["verify", str(tmp_path / "s")])
    assert result.exit_code == 2 and message in result.output


def test_a_failed_write_keeps_the_committed_images(tmp_path, monkeypatch):
    """Disk full midway through a batch: one StoreError naming the store; the committed images are intact."""
    import zarr.storage

    make_store(tmp_path / "s", n=2)
    original, calls = zarr.storage.LocalStore.set, {"n": 0}

    async def full_disk(self, key, value):
        calls["n"] += 1
        if calls["n"] > 3:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return await original(self, key, value)

    monkeypatch.setattr(zarr.storage.LocalStore, "set", full_disk)
    with open_store(tmp_path / "s", mode="r+") as store:
        arrays, entries, inputs = batch(2)
        with pytest.raises(StoreError, match=r"cannot write to store '.*s': No space left on device; its 2 committed"):
            store.write_batch(2, arrays, entries, inputs=inputs)
        assert store.num_images == 2
    monkeypatch.setattr(zarr.storage.LocalStore, "set", original)
    assert verify_store(tmp_path / "s").intact and open_store(tmp_path / "s").num_images == 2
    with open_store(tmp_path / "s", mode="r+") as store:  # the same batch commits once there is room again
        store.write_batch(2, arrays, entries, inputs=inputs)
    assert verify_store(tmp_path / "s").intact and open_store(tmp_path / "s").num_images == 4


def test_a_store_that_cannot_be_created_gives_one_error(tmp_path, monkeypatch):
    import zarr.storage

    (tmp_path / "file").write_text("x")
    with pytest.raises(StoreError, match=r"cannot create store '.*file/s': a part of its path is a file"):
        create_store(tmp_path / "file" / "s", CONFIG, SHAPES)
    with pytest.raises(StoreError, match=r"'.*file' is a file, not a store folder"):
        create_store(tmp_path / "file", CONFIG, SHAPES)

    async def read_only(self, key, value):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(zarr.storage.LocalStore, "set", read_only)
    with pytest.raises(StoreError, match=r"cannot create store '.*new': Read-only file system"):
        create_store(tmp_path / "new", CONFIG, SHAPES)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]  # no scratch folder left


def test_an_unreadable_zarr_json_is_damage(tmp_path):
    make_store(tmp_path / "s")
    (tmp_path / "s" / "zarr.json").write_text('{"zarr_format": 3, "node_ty')
    with pytest.raises(StoreDamagedError, match="store '.*s' is damaged: its zarr.json cannot be read"):
        open_store(tmp_path / "s")
    result = runner.invoke(app, ["verify", str(tmp_path / "s")])
    assert result.exit_code == 1 and "its records are damaged" in result.output
