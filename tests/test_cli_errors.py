"""Option mistakes on the command line: one line naming the option, exit status 2, no traceback.

The values are checked before any model is loaded, so these tests run in milliseconds; the Python
API's settings objects refuse the same values.
"""

from __future__ import annotations

import pytest

from tests.cli_helpers import fails_with_one_line
from sdaudit.errors import UsageError

@pytest.fixture
def images(tmp_path):
    from tests.conftest import photo_folder

    return photo_folder(tmp_path / "imgs", 2)


@pytest.mark.parametrize("command,size", [("extract", "0"), ("extract", "65536"), ("extract", "100"),
                                          ("audit", "0"), ("audit", "65536"), ("layers", "0"), ("demo", "65536"),
                                          ("demo", "0")])
def test_size_out_of_range_names_size(command, size, tmp_path, images):
    args = {"extract": ["extract", "-m", "tiny", "-i", images, "--out", tmp_path / "o"],
            "audit": ["audit", "-m", "tiny", "-i", images, "--out", tmp_path / "o"],
            "layers": ["layers", "-m", "tiny"], "demo": ["demo", "--out", tmp_path / "o"]}[command]
    line = fails_with_one_line([*args, "--size", size], "--size")
    assert f"--size {size}" in line and "multiple of 64" in line and "4096" in line
    assert not (tmp_path / "o").exists()  # refused before anything was written


def test_dataset_size_out_of_range_names_size(tmp_path):
    fails_with_one_line(["dataset", "imagenet-subset", tmp_path, "--out", tmp_path / "o", "--size", "65536"],
                        "'--size'")


@pytest.mark.parametrize("seed", ["-1", str(2**32)])
@pytest.mark.parametrize("command", ["extract", "audit"])
def test_seed_out_of_range_names_seed(command, seed, tmp_path, images):
    fails_with_one_line([command, "-m", "tiny", "-i", images, "--out", tmp_path / "o", "--seed", seed], "'--seed'")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("args,needle", [
    (["audit", "--num-processes", "-3"], "'--num-processes'"),
    (["audit", "--batch-size", "-1"], "'--batch-size'"),
    (["extract", "--batch-size", "-1"], "'--batch-size'"),
    (["audit", "--timestep", "1000"], "'--timestep'"),
    (["extract", "--timestep", "-5"], "'--timestep'"),
])
def test_nonsense_numbers_name_the_option(args, needle, tmp_path, images):
    fails_with_one_line([*args, "-m", "tiny", "-i", images, "--out", tmp_path / "o"], needle)


@pytest.mark.parametrize("option,value", [("--per-class", "0"), ("--min-side", "0"), ("--per-class", "-2")])
def test_dataset_nonsense_numbers_name_the_option(option, value, tmp_path):
    fails_with_one_line(["dataset", "imagenet-subset", tmp_path, "--out", tmp_path / "o", option, value],
                        f"'{option}'")


def test_explore_port_out_of_range_names_port(tmp_path):
    fails_with_one_line(["explore", tmp_path, "--port", "70000"], "'--port'")


@pytest.mark.parametrize("analyses,needle", [("", "none given"), (" , ", "none given"), ("position,probe", "'probe'")])
def test_analyses_must_name_a_known_analysis(analyses, needle, tmp_path, images):
    line = fails_with_one_line(["audit", "-m", "tiny", "-i", images, "--out", tmp_path / "o", "--analyses", analyses],
                               "--analyses")
    assert needle in line and "position, borders, anomalies, maps" in line
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("device,cuda", [("tpu", False), ("garbage!", False), ("cuda", False), ("cuda:0", False),
                                         ("cuda:99", True)])
@pytest.mark.parametrize("command", ["extract", "audit"])
def test_unavailable_device_lists_the_available_ones(command, device, cuda, monkeypatch, tmp_path, images):
    """Without CUDA (simulated, so that the test means the same on a GPU machine), or with one GPU only."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1 if cuda else 0)
    line = fails_with_one_line([command, "-m", "tiny", "-i", images, "--out", tmp_path / "o", "--device", device],
                               f"device '{device}'")
    assert line.endswith("available: auto, cpu" + (", cuda, cuda:0" if cuda else "")), line
    assert not (tmp_path / "o").exists()


def test_resolve_device_accepts_what_exists(monkeypatch):
    import torch

    from sdaudit.models import resolve_device

    assert resolve_device("cpu") == torch.device("cpu") and resolve_device("auto").type in ("cpu", "cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda:1") == torch.device("cuda:1") and resolve_device("cuda") == torch.device("cuda")
    with pytest.raises(UsageError, match="cuda:2"):
        resolve_device("cuda:2")


@pytest.mark.parametrize("command", ["extract", "dataset"])
def test_offline_hf_dataset_is_one_line(command, monkeypatch, tmp_path):
    """Offline (HF_HUB_OFFLINE, as in every test) a dataset not in the local cache: one line naming it."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    args = {"extract": ["extract", "-m", "tiny", "-i", "hf:nobody/no-such-set", "--out", tmp_path / "o",
                        "--size", "64", "--device", "cpu"],
            "dataset": ["dataset", "imagenet-subset", "hf:nobody/no-such-set", "--out", tmp_path / "o"]}[command]
    line = fails_with_one_line(args, "hf:nobody/no-such-set")
    assert "not in the local Hugging Face cache" in line


def test_settings_objects_refuse_the_same_values():
    """The Python API refuses what the CLI refuses (no silent default for size 0, no empty report)."""
    from sdaudit.audit import AuditSettings
    from sdaudit.extraction import ExtractionSettings

    for bad, needle in (({"analyses": []}, "no analyses"), ({"size": 0}, "size 0"), ({"size": 65536}, "4096"),
                        ({"seed": -1}, "seed -1")):
        with pytest.raises(UsageError, match=needle):
            AuditSettings(**bad).validated()
    for bad, needle in (({"size": 65536}, "size 65536"), ({"seed": 2**32}, "seed 4294967296")):
        with pytest.raises(UsageError, match=needle):
            ExtractionSettings(**bad).validated()
    assert ExtractionSettings(size=4096, seed=2**32 - 1).validated().seed == 2**32 - 1


@pytest.mark.parametrize("option,value,needle", [("--probe", "svm", "unknown probe 'svm'"),
                                                 ("--control", "shuffled", "unknown control 'shuffled'"),
                                                 ("--anomaly-labels", "paper:sdxl", "no published labels")])
def test_fidelity_options_name_the_bad_value(option, value, needle, tmp_path, images):
    args = ["audit", "-m", "tiny", "-i", images, "--out", tmp_path / "o", "--size", "128", option, value]
    fails_with_one_line(args, needle)
