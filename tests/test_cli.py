"""The command line, run in-process with typer's test runner."""

from __future__ import annotations

import numpy as np
from typer.testing import CliRunner

from sdaudit.cli import app
from sdaudit.store import open_store
from tests.conftest import require

runner = CliRunner()


def invoke(*args):
    result = runner.invoke(app, [str(a) for a in args])
    return result.exit_code, result.output


def test_help_lists_commands():
    code, out = invoke("--help")
    assert code == 0
    for command in ("models", "layers", "extract", "dataset", "demo"):
        assert command in out
    code, out = invoke("extract", "--help")
    assert code == 0 and "--skip-bad" in out and "--protocol" in out


def test_models_and_layers():
    code, out = invoke("models")
    assert code == 0 and "stable-diffusion-v1-5/stable-diffusion-v1-5" in out and "arch:sd21" in out
    code, out = invoke("layers", "--model", "SD1.5")
    assert code == 0 and "46 layers" in out and "up_blocks[1].upsamplers[0]" in out and "1280" in out
    code, out = invoke("layers", "--model", "tiny", "--layers", "paper", "--size", "128")
    assert code == 0 and "45 layers" in out and "16x16" in out
    code, out = invoke("layers", "--model", "tiny", "--layers", "up_blocks[7]")
    assert code == 2 and "unknown layer 'up_blocks[7]'" in out
    code, out = invoke("layers", "--model", "nonsense-model")
    assert code == 2 and "unknown model" in out


def test_extract_with_bad_images(tmp_path, image_folder):
    (image_folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    (image_folder / "empty.jpg").write_bytes(b"")
    (image_folder / "[red]odd.png").write_bytes(b"not an image")  # rich markup in a name is printed as it is
    out = tmp_path / "store"
    code, text = invoke("extract", "--model", "tiny", "--images", image_folder, "--out", out, "--size", "64",
                        "--layers", "conv_in,conv_out")
    assert code == 2 and "[red]odd.png: not an image" in text  # the first bad file in order, named as it is
    code, text = invoke("extract", "--model", "tiny", "--images", image_folder, "--out", out, "--size", "64",
                        "--layers", "conv_in,conv_out", "--skip-bad")
    assert code == 0, text
    assert "3 image(s) skipped" in text and "broken.png" in text and "empty.jpg" in text and "[red]odd.png" in text
    store = open_store(out)
    assert store.num_images == 5 and store.layers == ["conv_in", "conv_out"]
    # a different configuration into the same store is refused, and the store keeps its images
    code, text = invoke("extract", "--model", "tiny", "--images", image_folder, "--out", out, "--size", "64",
                        "--layers", "conv_in,conv_out", "--timestep", "10", "--skip-bad")
    assert code == 2 and "timestep" in text
    assert open_store(out).num_images == 5


def test_bad_image_mid_run_keeps_committed_batches(tmp_path, image_folder):
    (image_folder / "img2.png").write_bytes(b"garbage")  # third image in sorted order
    out = tmp_path / "store"
    code, text = invoke("extract", "--model", "tiny", "--images", image_folder, "--out", out, "--size", "64",
                        "--layers", "conv_in", "--batch-size", "1")
    assert code == 2 and "img2.png" in text
    assert open_store(out).num_images == 2  # img0 and img1 were committed before the bad file
    code, text = invoke("extract", "--model", "tiny", "--images", image_folder, "--out", out, "--size", "64",
                        "--layers", "conv_in", "--batch-size", "1", "--skip-bad")
    assert code == 0 and "2 already present" in text and open_store(out).num_images == 4


def test_extract_from_a_saved_datasets_folder(tmp_path):
    datasets = require("datasets", "the datasets package is not installed (pip install datasets)")
    from tests.conftest import random_photo

    ds = datasets.Dataset.from_dict({"image": [random_photo(i) for i in range(3)], "label": [0, 1, 2]},
                                    features=datasets.Features({"image": datasets.Image(),
                                                                "label": datasets.Value("int64")}))
    ds.save_to_disk(str(tmp_path / "ds"))
    code, text = invoke("extract", "--model", "tiny", "--images", tmp_path / "ds", "--out", tmp_path / "s",
                        "--size", "64", "--layers", "conv_in")
    assert code == 0, text
    store = open_store(tmp_path / "s")
    assert store.num_images == 3 and store.images[1].source.endswith("#1")


def test_dataset_imagenet_subset(tmp_path):
    from tests.conftest import random_photo

    root = tmp_path / "train"
    for wnid in ("n02106662", "n02108089", "n02123159", "n03930630", "n09472597"):
        (root / wnid).mkdir(parents=True)
        for k in range(3):
            random_photo(k, size=(400 + 10 * k, 360)).save(root / wnid / f"{wnid}_{k}.JPEG")
        random_photo(9, size=(300, 200)).save(root / wnid / f"{wnid}_small.JPEG")  # short side < 350: skipped
    code, text = invoke("dataset", "imagenet-subset", root, "--out", tmp_path / "subset", "--per-class", "2",
                        "--size", "64")
    assert code == 0, text
    files = sorted((tmp_path / "subset").glob("*.png"))
    assert len(files) == 10 and files[0].name == "000_235_n02106662.png"
    assert "order: folder: class by class" in text  # a folder cannot give the published order, and it says so
    code, text = invoke("dataset", "imagenet-subset", root, "--out", tmp_path / "subset2", "--per-class", "5")
    assert code == 2 and "235" in text


def test_demo_runs_offline(tmp_path):
    import json

    code, text = invoke("demo", "--out", tmp_path / "demo", "--size", "128")
    assert code == 0, text
    results = json.loads((tmp_path / "demo" / "results.json").read_text())
    assert len(results["images"]) == 9 and len(results["layers"]) == 45
    assert (tmp_path / "demo" / "report.html").is_file() and "report.html" in text
    assert all(np.isfinite(r["probe_acc_8"]) for r in results["table"])
    # the terminal says what qualifies the numbers: random weights, few images, undefined and unreadable ratios
    assert "random weights: this model was not trained" in text and "warning: only 9 images" in text
    assert "n.d." in text and "the probe tests on 2 here" in text


def test_audit_under_a_launcher_prints_one_summary(tmp_path, monkeypatch):
    """Under torchrun / accelerate every rank runs the CLI; only rank 0 prints the summary."""
    import sdaudit.audit
    import sdaudit.audit.distributed
    import sdaudit.models

    class Rank:
        def __init__(self, rank):
            self.rank = rank

    images = [{"index": i, "source": f"{i}.png", "sha256": f"{i:064x}", "width": 8, "height": 8} for i in range(3)]
    results = {"images": images, "layers": [{}] * 45, "table": [], "run": {"unet_passes_per_image": 4},
               "skipped_images": []}
    monkeypatch.setattr(sdaudit.models, "load_model", lambda *a, **k: "model")
    monkeypatch.setattr(sdaudit.audit, "audit", lambda *a, **k: results)
    (tmp_path / "imgs").mkdir()
    for rank, printed in ((1, False), (0, True)):
        monkeypatch.setattr(sdaudit.audit.distributed, "init_from_env", lambda rank=rank: Rank(rank))
        code, out = invoke("audit", "--model", "tiny", "--images", tmp_path / "imgs", "--out", tmp_path / "out")
        assert code == 0 and ("audited 3 images x 45 layers" in out) == printed, out
