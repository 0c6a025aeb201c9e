"""The opt-in "channels" analysis in the audit: massive channels per layer in results.json, the terminal's
closing summary and the report; found where a hook plants one, absent where none is; checkpoints and shards."""

from __future__ import annotations

import numpy as np
import pytest

from sdaudit.audit import AuditSettings, audit
from sdaudit.audit.state import AuditState
from sdaudit.cli import app
from sdaudit.settings import ANALYSES, DEFAULT_ANALYSES
from sdaudit.terminal import closing_summary
from tests.cli_helpers import runner
from tests.conftest import interrupt_extraction

SIZE = 128
PLANTED_LAYER, PLANTED_CHANNEL, SCALE = "mid_block.resnets[0]", 3, 1000.0
CHANNELS_ON = ("anomalies", "channels")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    from tests.conftest import photo_folder

    return photo_folder(tmp_path_factory.mktemp("channel-images"), 6, first_seed=30, height=96, widen=8)


def _settings(**kw) -> AuditSettings:
    return AuditSettings(size=SIZE, layers="all", analyses=CHANNELS_ON, **kw)


@pytest.fixture(scope="module")
def planted(tiny, folder, tmp_path_factory):
    """An audit of the tiny model whose mid-block resnet's channel 3 is scaled by 1000 (a forward hook)."""
    def scale(module, inputs, output):
        output = output.clone()
        output[:, PLANTED_CHANNEL] *= SCALE
        return output

    handle = tiny.unet.mid_block.resnets[0].register_forward_hook(scale)
    try:
        out = tmp_path_factory.mktemp("planted")
        return out, audit(tiny, folder, out, _settings(), report=True, progress=False)
    finally:
        handle.remove()


@pytest.fixture(scope="module")
def clean(tiny, folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("clean")
    return audit(tiny, folder, out, _settings(), report=False, progress=False)


def _rows(results) -> dict:
    return {row["layer"]: row for row in results["table"]}


def test_channels_is_opt_in_and_listed_in_the_cli_help():
    assert "channels" in ANALYSES and "channels" not in DEFAULT_ANALYSES
    assert AuditSettings().analyses == DEFAULT_ANALYSES
    result = runner.invoke(app, ["audit", "--help"])
    assert result.exit_code == 0 and "channels" in result.output


def test_the_planted_channel_is_found_on_its_layer(planted):
    _, results = planted
    row = _rows(results)[PLANTED_LAYER]
    assert PLANTED_CHANNEL in row["massive_channel_ids"]
    assert row["massive_channels"] >= 1 and len(row["massive_channel_ids"]) <= 16
    assert row["massive_ratio_max"] > 100 and row["massive_consistency_min"] == pytest.approx(1.0)
    # upstream of the hook nothing changed
    assert _rows(results)["conv_in"]["massive_channels"] == 0


def test_no_massive_channel_on_the_unmodified_model(clean):
    rows = _rows(clean)
    assert rows["conv_in"]["massive_channels"] == 0 and rows["conv_in"]["massive_channel_ids"] == []
    assert rows["conv_in"]["massive_ratio_max"] is None and rows["conv_in"]["massive_consistency_min"] is None
    assert PLANTED_CHANNEL not in rows[PLANTED_LAYER]["massive_channel_ids"]


def test_default_audit_rows_have_no_channel_columns(tiny, folder, tmp_path):
    results = audit(tiny, folder, tmp_path, AuditSettings(size=SIZE, layers="paper", analyses=["anomalies"]),
                    report=False, progress=False)
    assert not any(key.startswith("massive_") for row in results["table"] for key in row)
    assert not any(line.startswith("massive channels") for line in closing_summary(results))


def test_summary_and_report_name_the_layer(planted):
    out, results = planted
    line = next(line for line in closing_summary(results) if line.startswith("massive channels"))
    top = max(results["table"], key=lambda r: r.get("massive_channels", 0))
    assert f"most on {top['layer']} ({top['massive_channels']}:" in line
    page = (out / "report.html").read_text()
    assert "Massive channels" in page and f"<code>{PLANTED_LAYER}</code>" in page
    assert "may be dominated by these channels" in page


def test_summary_says_none_found(clean):
    # the tiny model's deterministic weights have no massive channel on any layer
    assert all(row["massive_channels"] == 0 for row in clean["table"])
    lines = [line for line in closing_summary(clean) if line.startswith("massive channels")]
    assert lines == [f"massive channels: none found ({len(clean['table'])} layers)"]


def test_interrupted_audit_resumes_to_the_same_channels(tiny, folder, tmp_path, monkeypatch, clean):
    calls = interrupt_extraction(monkeypatch, at_call=2)
    settings = _settings(batch_size=2)
    with pytest.raises(KeyboardInterrupt):
        audit(tiny, folder, tmp_path, settings, report=False, progress=False, checkpoint_seconds=0)
    assert (tmp_path / ".checkpoint.npz").exists()
    calls["n"] = -10_000
    resumed = audit(tiny, folder, tmp_path, settings, report=False, progress=False, checkpoint_seconds=0)
    assert resumed["run"]["passes"][0]["resumed_at"] == 2
    for a, b in zip(resumed["table"], clean["table"]):
        assert a["massive_channel_ids"] == b["massive_channel_ids"]
        assert a == pytest.approx(b, rel=1e-5, abs=1e-6)


def _state() -> AuditState:
    grids = {"a": (4, 4), "b": (2, 2)}
    return AuditState(list(grids), grids, 6, {"channels"}, probe={}, detector={})


def test_state_round_trip_and_shards_merge_to_the_whole():
    rng = np.random.default_rng(0)
    reps = {"a": rng.normal(size=(6, 8, 4, 4)).astype(np.float32), "b": rng.normal(size=(6, 5, 2, 2)).astype(np.float32)}
    reps["a"][:, 2] *= 1000
    whole, first, second = _state(), _state(), _state()
    whole.update_full(reps, list(range(6)))
    first.update_full({k: v[:3] for k, v in reps.items()}, [0, 1, 2])
    second.update_full({k: v[3:] for k, v in reps.items()}, [3, 4, 5])
    restored = _state()
    restored.load_state_dict(first.state_dict())
    merged = restored.merge(second)
    for layer in ("a", "b"):
        want, got = whole.channels[layer].result(), merged.channels[layer].result()
        np.testing.assert_array_equal(got.channels, want.channels)
        np.testing.assert_allclose(got.magnitudes, want.magnitudes)
    assert whole.channels["a"].result().channels.tolist() == [2]
