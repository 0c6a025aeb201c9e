"""File names that are not valid UTF-8: extracted and audited, recorded losslessly, drawn in the figures."""

from __future__ import annotations

import json
import os

import pytest

from sdaudit.audit import AuditSettings, audit
from sdaudit.extraction import extract
from sdaudit.store import open_store

SIZE = 64


@pytest.fixture
def latin1_folder(tmp_path):
    from tests.conftest import random_photo

    folder = tmp_path / "images"
    folder.mkdir()
    random_photo(70).save(folder / "plain.png")
    with open(os.fsencode(folder) + b"/caf\xe9.png", "wb") as f:  # Latin-1 'café', as old archives name it
        random_photo(71).save(f, format="PNG")
    return folder


def test_extract_stores_a_non_utf8_file_name(tiny, latin1_folder, tmp_path):
    report = extract(tiny, latin1_folder, tmp_path / "store", layers="mid_block", size=SIZE, progress=False,
                     skip_bad=True)
    assert report.added == 2 and not report.errors
    entries = open_store(tmp_path / "store").images
    assert str(latin1_folder / "caf\\xe9.png") in {entry.source for entry in entries}
    exact = [bytes.fromhex(e.source_bytes) for e in entries if e.source_bytes]
    assert len(exact) == 1 and exact[0].endswith(b"caf\xe9.png") and os.path.exists(exact[0])  # lossless


def test_audit_records_a_non_utf8_file_name_losslessly_and_draws_it(tiny, latin1_folder, tmp_path):
    audit(tiny, latin1_folder, tmp_path, AuditSettings(size=SIZE, layers="mid_block,up_blocks[1]"), progress=False)
    assert (tmp_path / "report.html").is_file() and (tmp_path / "figures" / "qualitative.svg").is_file()
    images = json.loads((tmp_path / "results.json").read_text(encoding="utf-8"))["images"]
    odd = [im for im in images if "source_bytes" in im]
    assert len(odd) == 1 and odd[0]["source"] == str(latin1_folder / "caf\\xe9.png")
    assert os.path.exists(bytes.fromhex(odd[0]["source_bytes"]))  # the exact name comes back
    assert "caf\\xe9.png" in (tmp_path / "report.html").read_text(encoding="utf-8")
