"""The command line's error contract (issue 13): device errors, "did you mean", a fast offline failure, nothing
left on disk by a failed command, --version and -h, flags without a '<bool>' metavar.

Each failing command prints one line naming the culprit and exits with status 2.
"""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from sdaudit.cli import app
from tests.cli_helpers import fails_with_one_line

runner = CliRunner()


@pytest.fixture
def images(tmp_path):
    from tests.conftest import photo_folder

    return photo_folder(tmp_path / "imgs", 2)


def _run(command: str, images, out, *extra):
    return [command, "-m", "tiny", "-i", images, "--out", out, "--size", "64", "--device", "cpu", *extra]


@pytest.mark.parametrize("args,needle,suggestion", [
    (["layers", "-m", "tiny", "--layers", "up_blocks[1].attention[0]"], "unknown layer",
     "did you mean 'up_blocks[1].attentions[0]'"),
    (["layers", "-m", "sd16"], "unknown model 'sd16'", "did you mean 'sd14' or 'sd15' or 'sd21'?"),
    (["layers", "-m", "arch:sd16"], "unknown architecture", "did you mean 'arch:sd15'"),
])
def test_unknown_names_get_did_you_mean(args, needle, suggestion):
    line = fails_with_one_line(args, needle)
    assert "did you mean" in line and suggestion in line, line


def test_resolve_dtype_suggests_the_closest():
    import torch

    from sdaudit.errors import UsageError
    from sdaudit.models.devices import resolve_dtype

    with pytest.raises(UsageError, match=r"unknown dtype 'flaot16' \(did you mean 'float16'"):
        resolve_dtype("flaot16", torch.device("cpu"))


def test_unknown_layer_points_to_the_listing_instead_of_dumping_it():
    line = fails_with_one_line(["layers", "-m", "tiny", "--layers", "mid_blok"], "unknown layer")
    assert "'mid_block'" in line and "sdaudit layers --model" in line and "conv_out" not in line, line


@pytest.mark.parametrize("option,value,suggestion", [("--analyses", "positon", "'position'"),
                                                     ("--probe", "ldaa", "'lda'"),
                                                     ("--control", "untrainde", "'untrained'"),
                                                     ("--protocol", "papr", "'paper'"),
                                                     ("--layers", "conv_ot", "'conv_out'"),
                                                     ("--anomaly-layer", "up_blocks[1].upsampler[0]",
                                                      "'up_blocks[1].upsamplers[0]'")])
def test_audit_options_get_did_you_mean(option, value, suggestion, tmp_path, images):
    line = fails_with_one_line(_run("audit", images, tmp_path / "o", option, value), value)
    assert f"did you mean {suggestion}" in line, line
    assert not (tmp_path / "o").exists()


def test_unknown_model_on_extract_creates_nothing(tmp_path, images):
    line = fails_with_one_line(["extract", "-m", "sd16", "-i", images, "--out", tmp_path / "o"], "unknown model")
    assert "did you mean 'sd14' or 'sd15' or" in line  # same ratio as 'sd21', a longer common prefix first
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("command,target", [("extract", "sdaudit.extraction.extract"),
                                            ("audit", "sdaudit.audit.audit")])
def test_out_of_gpu_memory_is_one_line_naming_batch_size(command, target, monkeypatch, tmp_path, images):
    import torch

    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(target, out_of_memory)
    line = fails_with_one_line(_run(command, images, tmp_path / "o"), "out of GPU memory")
    assert "--batch-size" in line
    assert not (tmp_path / "o").exists()


def test_torch_without_cuda_is_one_line_naming_device(monkeypatch, tmp_path, images):
    def no_cuda(*args, **kwargs):
        raise AssertionError("Torch not compiled with CUDA enabled")

    monkeypatch.setattr("sdaudit.models.load_model", no_cuda)
    line = fails_with_one_line(_run("extract", images, tmp_path / "o"), "--device")
    assert "no CUDA support" in line and "--device cpu" in line
    assert not (tmp_path / "o").exists()


def test_other_exceptions_keep_their_traceback(monkeypatch, tmp_path, images):
    def bug(*args, **kwargs):
        raise AssertionError("an internal invariant")

    monkeypatch.setattr("sdaudit.models.load_model", bug)
    result = runner.invoke(app, [str(a) for a in _run("extract", images, tmp_path / "o")])
    assert result.exit_code == 1 and isinstance(result.exception, AssertionError)


@pytest.mark.parametrize("command", ["extract", "audit"])
def test_bad_image_names_skip_bad_and_leaves_nothing(command, tmp_path, images):
    (images / "broken.png").write_bytes(b"not an image")
    line = fails_with_one_line(_run(command, images, tmp_path / "o"), "broken.png")
    assert "--skip-bad" in line
    assert not (tmp_path / "o").exists()  # no empty folder, no 0-image store


def test_failed_rerun_keeps_an_existing_output(tmp_path, images):
    (tmp_path / "o").mkdir()  # the user's folder: not ours to remove
    (images / "broken.png").write_bytes(b"not an image")
    fails_with_one_line(_run("extract", images, tmp_path / "o"), "--skip-bad")
    assert (tmp_path / "o").is_dir()


def test_removed_on_failure_keeps_committed_images(tmp_path):
    from sdaudit.validation import removed_on_failure

    with pytest.raises(ValueError), removed_on_failure(tmp_path / "o"):
        (tmp_path / "o").mkdir()
        (tmp_path / "o" / "images.jsonl").write_text('{"index": 0}\n')
        raise ValueError("later failure")
    assert (tmp_path / "o" / "images.jsonl").exists()


def test_version_and_short_help():
    from sdaudit import __version__

    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"sdaudit {__version__}"
    for args in (["-h"], ["extract", "-h"], ["dataset", "imagenet-subset", "-h"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 0 and "Usage" in result.output, (args, result.output)


@pytest.mark.parametrize("command", ["", "models", "layers", "extract", "audit", "report", "demo", "explore",
                                     "verify", "dataset", "dataset imagenet-subset"])
def test_flags_show_no_bool_metavar(command):
    """Every flag (--skip-bad, --keep-store, --debug, --help...) is shown as a flag: a '<bool>' metavar suggests
    '--skip-bad true', which a flag refuses."""
    result = runner.invoke(app, [*command.split(), "--help"])
    assert result.exit_code == 0 and "--help" in result.output
    assert "<bool>" not in result.output, result.output


def test_skip_bad_is_a_plain_flag(tmp_path, images):
    (images / "broken.png").write_bytes(b"not an image")
    result = runner.invoke(app, [str(a) for a in _run("extract", images, tmp_path / "o", "--layers", "conv_in",
                                                      "--skip-bad")])
    assert result.exit_code == 0 and "1 image(s) skipped" in result.output, result.output


def _no_hub_load(monkeypatch):
    """Make every hub load (the one entry point of the components' from_pretrained calls) fail the test."""
    def called(*args, **kwargs):
        raise AssertionError("the hub was called")

    monkeypatch.setattr("sdaudit.models.load.load_pipeline_components", called)


def _cache_repo(hf_home, repo_id: str) -> None:
    """Put a pipeline's index and U-Net config in a Hugging Face cache laid out as the hub client writes it."""
    repo = hf_home / "hub" / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / "c0ffee"
    (snapshot / "unet").mkdir(parents=True)
    (snapshot / "model_index.json").write_text("{}")
    (snapshot / "unet" / "config.json").write_text("{}")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("c0ffee")


def test_offline_without_weights_fails_before_any_hub_call(monkeypatch, tmp_path, images):
    """HF_HOME an empty folder and hub access off: the message names --local-files-only and how to get the
    weights, and neither the hub nor a network probe was asked."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _no_hub_load(monkeypatch)
    monkeypatch.setattr("sdaudit.models.load.hub_reachable", lambda *a, **k: pytest.fail("network probed offline"))
    line = fails_with_one_line(["extract", "-m", "sd15", "-i", images, "--out", tmp_path / "o"], "model 'sd15'")
    assert "not in the local Hugging Face cache" in line and str(tmp_path / "hf") in line
    assert "--local-files-only" in line and "huggingface-cli download" in line  # the fix is on the same line
    result = runner.invoke(app, ["extract", "-m", "sd15", "-i", str(images), "--out", str(tmp_path / "o")])
    assert [ln for ln in result.output.splitlines() if ln.strip()] == [line]  # and it is the only line
    assert not (tmp_path / "o").exists()


def test_unreachable_hub_fails_at_once(monkeypatch, tmp_path, images):
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr("sdaudit.models.load.hub_reachable", lambda *a, **k: False)
    _no_hub_load(monkeypatch)
    line = fails_with_one_line(["audit", "-m", "sd15", "-i", images, "--out", tmp_path / "o"], "model 'sd15'")
    assert "the hub cannot be reached" in line
    assert not (tmp_path / "o").exists()


def test_cached_weights_pass_the_check(monkeypatch, tmp_path):
    """A repo whose index and U-Net config are in the cache goes on to the (here refused) load."""
    from sdaudit.models import load_model
    from sdaudit.models.hub import is_cached

    _cache_repo(tmp_path / "hf", "someone/pipe")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    assert is_cached("someone/pipe") and not is_cached("someone/other")
    _no_hub_load(monkeypatch)
    with pytest.raises(AssertionError, match="the hub was called"):
        load_model("someone/pipe", device="cpu")


def test_models_table_fits_80_columns_and_says_what_is_local(monkeypatch, tmp_path):
    """At 80 columns every repo id is printed whole; 'local' is yes for the built-in models and for a repo in
    the Hugging Face cache (HF_HOME as the process sees it), no otherwise."""
    from rich.console import Console

    import sdaudit.cli as cli
    from sdaudit.models import REGISTRY

    _cache_repo(tmp_path / "hf", "stabilityai/sd-turbo")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr(cli, "console", Console(width=80))
    result = runner.invoke(app, ["models"])
    assert result.exit_code == 0
    lines = result.output.splitlines()
    assert max(map(len, lines)) <= 80 and "local" in lines[2], result.output
    local = {}
    for line in lines:
        cells = [c.strip() for c in line.strip("│ ").split("│")]
        if len(cells) == 3 and cells[0] and not cells[0].endswith(" px"):
            local[cells[0]] = (cells[1], cells[2])
    for entry in REGISTRY.values():
        assert local[entry.key] == (entry.repo_id, "yes" if entry.key == "sd-turbo" else "no"), result.output
    assert local["tiny"][1] == local["arch:sd15"][1] == local["arch:sd21"][1] == "yes"


def test_removed_on_failure_keeps_an_audit_checkpoint(tmp_path):
    from sdaudit.validation import removed_on_failure

    with pytest.raises(OSError), removed_on_failure(tmp_path / "o"):
        (tmp_path / "o").mkdir()
        (tmp_path / "o" / ".checkpoint.npz").write_bytes(b"x")
        raise OSError("disk full")
    assert (tmp_path / "o" / ".checkpoint.npz").exists()


def test_layers_of_an_uncached_repo_fails_before_any_hub_call(monkeypatch, tmp_path):
    from diffusers import UNet2DConditionModel

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(UNet2DConditionModel, "load_config", lambda *a, **k: pytest.fail("the hub was called"))
    line = fails_with_one_line(["layers", "-m", "someone/pipe"], "model 'someone/pipe'")
    assert "not in the local Hugging Face cache" in line


@pytest.mark.parametrize("args,needle,suggestion", [
    (["extract", "--skp-bad"], "No such option: --skp-bad", "--skip-bad"),
    (["extrat"], "No such command 'extrat'", "'extract'"),
    (["dataset", "imagenet-subst"], "No such command 'imagenet-subst'", "'imagenet-subset'"),
    (["--bogus"], "No such option: --bogus", "-h"),
    (["extract", "-i", "x", "--out", "o"], "Missing option '--model'", "extract -h"),
])
def test_click_usage_errors_are_one_line_with_the_suggestion(args, needle, suggestion):
    line = fails_with_one_line(args, needle)
    assert suggestion in line and "help:" in line, line
    assert len(runner.invoke(app, args).output.strip().splitlines()) == 1  # no usage block, no box


def test_a_bare_command_still_prints_its_help():
    result = runner.invoke(app, ["dataset"])
    assert "Usage" in result.output and "imagenet-subset" in result.output


def test_extract_storage_dtype_gets_did_you_mean(tmp_path, images):
    line = fails_with_one_line(_run("extract", images, tmp_path / "s", "--dtype", "flaot16"), "unknown storage dtype")
    assert "did you mean 'float16'" in line, line
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("command", ["extract", "audit"])
def test_a_missing_image_source_fails_before_the_model_is_loaded(command, tmp_path, monkeypatch):
    import sdaudit.models

    def no_load(*args, **kwargs):
        raise AssertionError("the model was loaded before --images was checked")

    monkeypatch.setattr(sdaudit.models, "load_model", no_load)
    line = fails_with_one_line(_run(command, tmp_path / "nowhere", tmp_path / "o"), "--images")
    assert "nowhere" in line and not (tmp_path / "o").exists()
