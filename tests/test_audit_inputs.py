"""What the audit reads: images that change during the audit, and its own outputs inside the image folder."""

from __future__ import annotations

import json

import pytest

import sdaudit.audit
from sdaudit.audit import AuditSettings, audit
from sdaudit.audit.sources import SourceChangedError
from tests.conftest import photo_folder, random_photo

SIZE = 64
QUICK = dict(size=SIZE, layers="mid_block", analyses=["position", "borders"])


def test_image_replaced_after_the_scan_stops_the_audit(tiny, tmp_path, monkeypatch):
    folder = photo_folder(tmp_path / "images", 3, first_seed=80)
    scan = sdaudit.audit.sources.scan_images

    def scan_then_replace(*args, **kwargs):
        items = scan(*args, **kwargs)
        random_photo(99, size=(64, 64)).save(folder / "img1.png")  # another picture under the same name
        return items

    monkeypatch.setattr(sdaudit.audit.sources, "scan_images", scan_then_replace)
    with pytest.raises(SourceChangedError) as caught:
        audit(tiny, folder, tmp_path / "out", AuditSettings(**QUICK), report=False, progress=False)
    message = str(caught.value)
    assert message.startswith(str(folder / "img1.png")) and "changed during the audit" in message
    assert "\n" not in message and not (tmp_path / "out" / "results.json").exists()


def test_image_deleted_after_the_scan_is_named_as_changed(tiny, tmp_path, monkeypatch):
    folder = photo_folder(tmp_path / "images", 3, first_seed=80)
    scan = sdaudit.audit.sources.scan_images

    def scan_then_delete(*args, **kwargs):
        items = scan(*args, **kwargs)
        (folder / "img2.png").unlink()
        return items

    monkeypatch.setattr(sdaudit.audit.sources, "scan_images", scan_then_delete)
    with pytest.raises(SourceChangedError, match=r"img2\.png: image changed during the audit \(file not found\)"):
        audit(tiny, folder, tmp_path / "out", AuditSettings(**QUICK), report=False, progress=False)


@pytest.mark.parametrize("inside", ["sub", "same"])
def test_audit_output_inside_the_image_folder_is_not_audited_again(tiny, tmp_path, inside):
    folder = photo_folder(tmp_path / "images", 3, first_seed=90)
    out = folder / "audit" if inside == "sub" else folder
    first = audit(tiny, folder, out, AuditSettings(**QUICK), progress=False)
    assert (out / "figures" / "quantitative.png").is_file()
    assert audit(tiny, folder, out, AuditSettings(**QUICK), progress=False) == first  # finished: not redone
    second = audit(tiny, folder, out, AuditSettings(**QUICK, seed=7), progress=False)  # other settings: redone
    assert [i["sha256"] for i in second["images"]] == [i["sha256"] for i in first["images"]]
    listed = {s["source"]: s["reason"] for s in json.loads((out / "results.json").read_text())["skipped_images"]}
    left_out = out if inside == "sub" else out / "figures"
    assert list(listed) == [str(left_out)] and "sdaudit" in listed[str(left_out)]
