"""Typed audit results: results.json read into AuditResults / LayerRow and written back without loss.

The round trip runs on a real (tiny, 4-image) audit's results.json; the format checks on hand-made files.
"""

from __future__ import annotations

import dataclasses
import json

import pytest

from sdaudit.audit_results import (FORMAT, SCHEMA_VERSION, AuditResults, LayerRow, ResultsFormatError,
                                   ResultsNotFoundError, read_results, write_results)
from sdaudit.errors import SdauditError


@pytest.fixture(scope="module")
def tiny_audit(tiny, tmp_path_factory):
    from sdaudit.audit import AuditSettings, audit
    from tests.conftest import photo_folder

    images = photo_folder(tmp_path_factory.mktemp("results-images"), 4, first_seed=3, height=64, widen=8)
    out = tmp_path_factory.mktemp("results-audit")
    audit(tiny, images, out, AuditSettings(size=64, layers="paper"), report=False, progress=False)
    return out


def test_round_trip_of_a_real_audit_is_lossless(tiny_audit, tmp_path):
    written = json.loads((tiny_audit / "results.json").read_text())
    results = read_results(tiny_audit)
    assert results.to_dict() == written
    assert len(results.table) == 45 and all(isinstance(r, LayerRow) for r in results.table)
    assert results.model.name == "tiny" and results.random_weights and results.n_images == 4
    row = next(r for r in results.table if r.layer == "up_blocks[3].resnets[0]")
    assert row.accuracy(8) == written["table"][[r["layer"] for r in written["table"]].index(row.layer)]["probe_acc_8"]
    assert row.has_interval("corner_rel_sim") and row.grid == row.to_dict()["grid"]
    # written again (current format) and read back: the same results
    again = read_results(write_results(tmp_path / "results.json", results))
    assert again == dataclasses.replace(results, format=FORMAT)
    assert json.loads((tmp_path / "results.json").read_text())["format"] == FORMAT == f"sdaudit-audit/{SCHEMA_VERSION}"


def test_unknown_keys_are_kept(tmp_path):
    data = {"format": "sdaudit-audit/1", "table": [{"layer": "conv_in", "grid": 8, "new_metric": 1.5}],
            "something_new": {"a": 1}, "model": {"name": "m", "extra_id": "x"}}
    (tmp_path / "results.json").write_text(json.dumps(data))
    results = read_results(tmp_path / "results.json")  # format 1 is read as is
    assert results.table[0].value("new_metric") == 1.5 and results.extra["something_new"] == {"a": 1}
    out = results.to_dict()
    assert out["something_new"] == {"a": 1} and out["model"]["extra_id"] == "x"
    assert out["table"] == data["table"]


@pytest.mark.parametrize("fmt", ["sdaudit-audit/3", "sdaudit-audit/x", "sdaudit-store/1", ""])
def test_unknown_or_newer_format_is_refused_naming_the_file(tmp_path, fmt):
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"format": fmt, "table": []}))
    with pytest.raises(ResultsFormatError) as caught:
        read_results(path)
    assert str(path) in str(caught.value) and isinstance(caught.value, SdauditError)
    assert "rerun the audit" in str(caught.value) or "is not an sdaudit audit result" in str(caught.value)


def test_damaged_or_missing_results_are_user_errors(tmp_path):
    (tmp_path / "results.json").write_text("{not json")
    with pytest.raises(ResultsFormatError, match="cannot be read as JSON"):
        read_results(tmp_path)
    (tmp_path / "results.json").write_text(json.dumps({"format": FORMAT, "table": {"no": "list"}}))
    with pytest.raises(ResultsFormatError, match="per-layer 'table'"):
        read_results(tmp_path)
    with pytest.raises(ResultsNotFoundError) as caught:
        read_results(tmp_path / "elsewhere")
    assert isinstance(caught.value, FileNotFoundError) and isinstance(caught.value, SdauditError)


def test_row_accessors():
    row = LayerRow.from_dict({"layer": "L", "grid": 4, "probe_acc_8": 0.5, "probe_acc_8_low": None,
                              "corner_rel_sim": float("nan"), "beyond_corner_rel_sim": 0.2})
    assert row.chance(8) == 0.25 and row.chance(64) == 0.25  # 1 / min(s, grid) without probe_chance_s
    assert row.has_interval("probe_acc_8") and row.interval("probe_acc_8") == (None, None)
    assert row.ratio("corner") is None and row.beyond("corner_rel_sim") == (0.2, None, None)
    assert row.beyond("border_rel_sim") is None and row.to_dict()["probe_acc_8_low"] is None
    results = AuditResults.from_dict({"table": [row.to_dict()], "control": {"kind": "untrained", "table": []}})
    assert results.controls[0].label == "untrained" and results.to_dict()["control"]["kind"] == "untrained"
