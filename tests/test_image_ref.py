"""One image reference type: ImageRef round trips, and the store and results.json keep their exact JSON keys
(non-UTF-8 names included), so files written before it stay readable."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from typer.testing import CliRunner

from sdaudit.audit_results import AuditResults, ResultsFormatError, read_results, write_results
from sdaudit.cli import app
from sdaudit.image_ref import ImageRef
from sdaudit.store import ImageEntry, StoreDamagedError, create_store, open_store

# a Latin-1 file name (not valid UTF-8): printable source with the escape, exact bytes as hex
RAW = b"/photos/caf\xe9.png"
LATIN = ImageRef(0, RAW.decode("utf-8", "backslashreplace"), "a" * 64, 640, 480, "P", RAW.hex())
SHAPES = {"conv_in": (4, 8, 8)}
CONFIG = {"model": {"name": "synthetic"}, "protocol": "clean", "timestep": 50, "seed": 0, "size": 16,
          "prompt": "", "layers": list(SHAPES), "dtype": "float16"}


def test_round_trip_and_keys():
    plain = ImageRef(3, "/data/x.png", "b" * 64, 64, 32, "RGB")
    assert plain.to_json() == {"index": 3, "source": "/data/x.png", "sha256": "b" * 64, "width": 64, "height": 32,
                               "mode": "RGB"}
    assert list(LATIN.to_json()) == ["index", "source", "sha256", "width", "height", "mode", "source_bytes"]
    assert list(LATIN.to_json(with_mode=False)) == ["index", "source", "sha256", "width", "height", "source_bytes"]
    for ref in (plain, LATIN, ImageRef(0, "hf:x#0", "c" * 64, 8, 8)):
        assert ImageRef.from_json(json.loads(json.dumps(ref.to_json()))) == ref
    assert ImageEntry is ImageRef
    with pytest.raises(AttributeError):
        plain.index = 4  # frozen: a reference never changes under its holders


@pytest.mark.parametrize("record", [{"index": 0, "source": "a", "sha256": "0", "width": 1, "height": 1, "new": 1},
                                    {"index": 0, "source": "a"}, ["index", 0]])
def test_from_json_refuses_what_is_not_an_image_record(record):
    with pytest.raises(TypeError):
        ImageRef.from_json(record)


def test_store_rows_keep_their_keys_and_exact_names(tmp_path):
    store = create_store(tmp_path / "s", CONFIG, SHAPES, capacity=2)
    store.write_batch(0, {"conv_in": np.ones((1, 4, 8, 8), np.float32)}, [LATIN],
                      inputs=np.zeros((1, 16, 16, 3), np.uint8))
    store.close()
    line = json.loads((tmp_path / "s" / "images.jsonl").read_text(encoding="utf-8").splitlines()[0])
    assert list(line) == ["index", "source", "sha256", "width", "height", "mode", "source_bytes", "crc32"]
    again = open_store(tmp_path / "s")
    assert again.images == [LATIN] and isinstance(again.images[0], ImageRef)
    assert os.fsencode(os.fsdecode(bytes.fromhex(again.images[0].source_bytes))) == RAW


def test_a_store_row_without_its_mode_is_damaged(tmp_path):
    store = create_store(tmp_path / "s", CONFIG, SHAPES, capacity=2)
    store.write_batch(0, {"conv_in": np.ones((1, 4, 8, 8), np.float32)}, [LATIN],
                      inputs=np.zeros((1, 16, 16, 3), np.uint8))
    store.close()
    records = tmp_path / "s" / "images.jsonl"
    line = json.loads(records.read_text(encoding="utf-8"))
    del line["mode"]
    records.write_text(json.dumps(line) + "\n", encoding="utf-8")
    with pytest.raises(StoreDamagedError, match="line 1 is not a valid image record"):
        open_store(tmp_path / "s")


def test_results_images_keep_their_keys_and_exact_names(tmp_path):
    results = AuditResults(table=[], images=[LATIN, ImageRef(1, "/data/y.png", "d" * 64, 8, 8, "RGB")])
    write_results(tmp_path / "results.json", results)
    images = json.loads((tmp_path / "results.json").read_text(encoding="utf-8"))["images"]
    # results.json records no mode (as before ImageRef)
    assert [list(i) for i in images] == [["index", "source", "sha256", "width", "height", "source_bytes"],
                                         ["index", "source", "sha256", "width", "height"]]
    back = read_results(tmp_path)
    assert back.images[0].source_bytes == RAW.hex() and back.images[0].mode is None
    assert back.image_source(1) == "/data/y.png" and back.n_images == 2
    assert back.to_dict()["images"] == images


def test_results_with_a_broken_image_record_are_refused_naming_the_file(tmp_path):
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"format": "sdaudit-audit/2", "table": [], "images": [{"index": 0}]}))
    with pytest.raises(ResultsFormatError, match="'images'") as caught:
        read_results(path)
    assert str(path) in str(caught.value)


def test_report_of_a_corrupt_results_json_is_one_line_naming_the_file(tmp_path):
    (tmp_path / "results.json").write_text('{"format": "sdaudit-audit/2", "table": [', encoding="utf-8")
    result = CliRunner().invoke(app, ["report", str(tmp_path)])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and str(tmp_path / "results.json") in lines[0] and "Traceback" not in result.output
