"""Tests for sdaudit.dataset.build_imagenet_subset (fake ImageNet folders and datasets)."""

from __future__ import annotations

import io
import json
import os

import numpy as np
import pytest
from PIL import Image

from sdaudit.dataset import IMAGENET_WNIDS, PAPER_CLASSES, build_imagenet_subset
from sdaudit.images import load_image, pixel_sha256, prepare_image

RNG = np.random.default_rng(1)


def jpeg(path, w, h, value=None):
    """A small JPEG of w x h px: random noise, or a flat colour if ``value`` is given."""
    if value is None:
        arr = RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)
    else:
        arr = np.full((h, w, 3), value, np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, quality=90)
    return path


# per class: (file name, width, height); short side < 40 is ineligible with min_side=40
LAYOUT = [("a_03.JPEG", 60, 45), ("a_01.JPEG", 30, 80), ("a_02.JPEG", 50, 64),
          ("a_05.JPEG", 41, 41), ("a_04.JPEG", 39, 100), ("a_06.JPEG", 70, 40)]


def fake_imagenet(root, classes=(235, 242), layout=LAYOUT):
    for cls in classes:
        wnid = IMAGENET_WNIDS[cls]
        for name, w, h in layout:
            jpeg(root / wnid / f"{wnid}_{name}", w, h)
    return root


def run(root, out, **kw):
    kw = {"classes": (235, 242), "per_class": 3, "min_side": 40, "size": 32, **kw}
    return build_imagenet_subset(root, out, **kw)


def test_wnid_table_is_the_ilsvrc_mapping():
    assert PAPER_CLASSES == (235, 242, 282, 717, 980)
    assert IMAGENET_WNIDS == {235: "n02106662", 242: "n02108089", 282: "n02123159",
                              717: "n03930630", 980: "n09472597"}


def test_folder_counts_order_skips_and_manifest(tmp_path):
    root = fake_imagenet(tmp_path / "train")
    out = tmp_path / "out"
    paths = run(root, out)
    names = [p.name for p in paths]
    # a folder gives its classes one after the other; the file names sort in selection order
    assert names == [f"{i:03d}_{c}_{IMAGENET_WNIDS[c]}.png" for i, c in enumerate([235] * 3 + [242] * 3)]
    assert all(p.is_file() for p in paths)
    for p in paths:
        img = Image.open(p)
        assert img.size == (32, 32) and img.mode == "RGB"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"] == {"235": 3, "242": 3}
    assert manifest["classes"] == [235, 242] and manifest["size"] == 32
    assert manifest["source"] == str(root.resolve())
    originals = [e["original"].split("/")[1] for e in manifest["files"][:3]]
    # sorted order: a_01 (too small), a_02, a_03, a_04 (too small), a_05 -> keep 02, 03, 05
    assert originals == [f"n02106662_a_0{i}.JPEG" for i in (2, 3, 5)]
    small = [s["source"].split("/")[1] for s in manifest["skipped_small"] if s["class"] == 235]
    assert small == ["n02106662_a_01.JPEG", "n02106662_a_04.JPEG"]
    assert manifest["skipped_bad"] == []
    entry = manifest["files"][0]
    assert entry["original_size"] == [50, 64]
    assert entry["sha256"] == pixel_sha256(Image.open(out / entry["file"]).convert("RGB"))
    assert not list(out.glob(".*"))  # no temporary files left behind


def test_output_pixels_are_crop_then_bicubic(tmp_path):
    root = fake_imagenet(tmp_path / "train")
    out = tmp_path / "out"
    run(root, out, classes=(235,), per_class=1)
    manifest = json.loads((out / "manifest.json").read_text())
    src = load_image(root / manifest["files"][0]["original"])
    expected = prepare_image(src.image, 32)
    got = Image.open(out / manifest["files"][0]["file"]).convert("RGB")
    np.testing.assert_array_equal(np.asarray(got), np.asarray(expected))
    assert manifest["files"][0]["source_sha256"] == src.sha256


def test_bad_images_are_skipped_and_listed(tmp_path):
    root = fake_imagenet(tmp_path / "train", classes=(235,))
    folder = root / IMAGENET_WNIDS[235]
    (folder / "n02106662_a_00.JPEG").write_bytes(b"")              # empty
    good = (folder / "n02106662_a_02.JPEG").read_bytes()
    (folder / "n02106662_a_02.JPEG").write_bytes(good[: len(good) // 2])  # truncated
    out = tmp_path / "out"
    run(root, out, classes=(235,))
    manifest = json.loads((out / "manifest.json").read_text())
    bad = {b["source"].split("/")[1]: b["reason"] for b in manifest["skipped_bad"]}
    assert set(bad) == {"n02106662_a_00.JPEG", "n02106662_a_02.JPEG"}
    assert "empty" in bad["n02106662_a_00.JPEG"] and "truncated" in bad["n02106662_a_02.JPEG"]
    kept = [e["original"].split("/")[1] for e in manifest["files"]]
    assert kept == [f"n02106662_a_0{i}.JPEG" for i in (3, 5, 6)]


def test_missing_class_folder(tmp_path):
    root = fake_imagenet(tmp_path / "train", classes=(235,))
    with pytest.raises(FileNotFoundError, match=r"class 242 \(n02108089\).*not found"):
        run(root, tmp_path / "out")
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_too_few_eligible_errors_or_allow_fewer(tmp_path):
    root = fake_imagenet(tmp_path / "train")
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=r"class 235 \(n02106662\): 4 eligible of 5 needed.*"
                                         r"2 with short side < 40"):
        run(root, out, per_class=5)
    assert not list(out.iterdir())  # nothing written, temporaries removed
    with pytest.raises(ValueError, match="only 6 image files, 7 needed"):
        run(root, out, per_class=7)
    with pytest.warns(RuntimeWarning, match="fewer images"):
        paths = run(root, out, per_class=5, allow_fewer=True)
    assert len(paths) == 8
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"] == {"235": 4, "242": 4}


def test_rerun_replaces_and_removes_stale_files(tmp_path):
    root = fake_imagenet(tmp_path / "train")
    out = tmp_path / "out"
    first = run(root, out, per_class=3)
    (out / "mine.txt").write_text("user file")  # added to a folder sdaudit built: kept
    second = run(root, out, per_class=2)
    assert len(first) == 6 and [p.name for p in second] == [
        f"{i:03d}_{c}_{IMAGENET_WNIDS[c]}.png" for i, c in enumerate([235, 235, 242, 242])]
    assert sorted(p.name for p in out.glob("*.png")) == sorted(p.name for p in second)  # the first build's rest: gone
    assert (out / "mine.txt").exists()


def test_split_subfolder_and_mapping_file(tmp_path):
    base = tmp_path / "ILSVRC"
    fake_imagenet(base / "train", classes=(235,))
    jpeg(base / "train" / "n01443537" / "x_1.JPEG", 50, 50)
    (base / "LOC_synset_mapping.txt").write_text(
        "n01440764 tench, Tinca tinca\nn01443537 goldfish, Carassius auratus\n"
        + "".join(f"n{i:08d} filler\n" for i in range(2, 235))
        + "n02106662 German shepherd\n")
    out = tmp_path / "out"
    paths = build_imagenet_subset(base, out, classes=(1, 235), per_class=1, min_side=40,
                                  size=16)
    assert [p.name for p in paths] == ["000_1_n01443537.png", "001_235_n02106662.png"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["wnid_mapping"].endswith("LOC_synset_mapping.txt")


def test_unknown_class_without_mapping(tmp_path):
    root = fake_imagenet(tmp_path / "train", classes=(235,))
    with pytest.raises(ValueError, match=r"no WordNet id known for class\(es\) \[7\]"):
        run(root, tmp_path / "out", classes=(7,))


def test_paper_defaults_on_fake_folder(tmp_path):
    root = tmp_path / "train"
    for cls in PAPER_CLASSES:
        folder = root / IMAGENET_WNIDS[cls]
        jpeg(folder / "img_1.JPEG", 400, 349, value=cls % 200)   # too small for 350
        jpeg(folder / "img_2.JPEG", 500, 375, value=cls % 200)
    paths = build_imagenet_subset(root, tmp_path / "out", per_class=1)
    assert [p.name.split("_")[1] for p in paths] == [str(c) for c in PAPER_CLASSES]
    assert Image.open(paths[0]).size == (512, 512)
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["min_side"] == 350 and len(manifest["skipped_small"]) == 5


# --------------------------------------------------------------------------- datasets


def fake_hf_dataset(n_per_class=4, classes=(235, 242, 5)):
    import datasets

    images, labels = [], []
    sizes = [(60, 45), (30, 80), (50, 64), (48, 48)]
    for i in range(n_per_class):
        for cls in classes:
            w, h = sizes[i % len(sizes)]
            buf = io.BytesIO()
            Image.fromarray(np.full((h, w, 3), (cls + i) % 256, np.uint8)).save(buf, "PNG")
            images.append({"bytes": buf.getvalue(), "path": None})
            labels.append(cls)
    feats = datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")})
    return datasets.Dataset.from_dict({"image": images, "label": labels}, features=feats)


def test_datasets_object(tmp_path):
    ds = fake_hf_dataset()
    out = tmp_path / "out"
    paths = run(ds, out, per_class=3)
    assert len(paths) == 6
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["source_kind"] == "datasets"
    # dataset order: rows 0,3,6,9 are class 235 with sizes 60x45, 30x80 (small), 50x64, 48x48
    idx = [int(e["original"].split("#")[1]) for e in manifest["files"] if e["class"] == 235]
    assert idx == [0, 6, 9]
    assert [s["source"].split("#")[1] for s in manifest["skipped_small"]] == ["3", "4"]
    first = Image.open(paths[0])
    assert first.size == (32, 32)
    assert np.asarray(first)[0, 0, 0] == 235


def test_datasets_saved_to_disk_and_hf_spec(tmp_path):
    import datasets

    ds = fake_hf_dataset()
    datasets.DatasetDict({"train": ds}).save_to_disk(str(tmp_path / "dd"))
    a = run(tmp_path / "dd", tmp_path / "a", per_class=2)
    b = run(f"hf:{tmp_path / 'dd'}:train", tmp_path / "b", per_class=2)
    assert [p.name for p in a] == [p.name for p in b]
    assert [p.read_bytes() for p in a] == [p.read_bytes() for p in b]


def test_datasets_errors(tmp_path):
    import datasets

    ds = fake_hf_dataset()
    with pytest.raises(ValueError, match=r"class 235 \(n02106662\): 3 eligible of 4 needed"):
        run(ds, tmp_path / "out", per_class=4)
    no_label = ds.remove_columns(["label"])
    with pytest.raises(ValueError, match="no label column 'label'"):
        run(no_label, tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="not found"):
        run(tmp_path / "missing", tmp_path / "out")
    assert isinstance(ds.features["image"], datasets.Image)


def test_thousand_wnid_folders_give_sorted_index_mapping(tmp_path):
    base = tmp_path / "imagenet"
    for i in range(1000):
        (base / "train" / f"n{i * 3:08d}").mkdir(parents=True)
    jpeg(base / "train" / "n00000021" / "only.JPEG", 48, 48)   # sorted index 7
    calls = []
    paths = build_imagenet_subset(base, tmp_path / "out", classes=(7,), per_class=1,
                                  min_side=40, size=16, progress=lambda d, t: calls.append((d, t)))
    assert [p.name for p in paths] == ["000_7_n00000021.png"]
    assert calls == [(1, 1)]


def test_foreign_manifest_never_deletes_its_files(tmp_path):
    """Another tool's manifest.json listing the user's files: the folder is refused, nothing deleted."""
    from typer.testing import CliRunner

    from sdaudit.cli import app
    from sdaudit.errors import OutputPathError

    root = fake_imagenet(tmp_path / "train")
    out = tmp_path / "thesis"
    out.mkdir()
    (out / "thesis.pdf").write_bytes(b"%PDF years of work")
    foreign = json.dumps({"files": [{"file": "thesis.pdf"}], "tool": "latexmk"})
    (out / "manifest.json").write_text(foreign)
    result = CliRunner().invoke(app, ["dataset", "imagenet-subset", str(root), "--out", str(out), "--per-class", "1",
                                      "--size", "32", "--min-side", "40"])
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert len([line for line in result.output.splitlines() if str(out) in line]) == 1
    assert "not an image set built by sdaudit" in result.output
    with pytest.raises(OutputPathError, match="thesis.pdf"):
        run(root, out)
    assert (out / "thesis.pdf").read_bytes() == b"%PDF years of work"
    assert (out / "manifest.json").read_text() == foreign and sorted(p.name for p in out.iterdir()) == [
        "manifest.json", "thesis.pdf"]


def test_own_manifest_deletes_only_names_sdaudit_writes(tmp_path):
    """Even a manifest with sdaudit's format tag only gets regular files named as sdaudit names them
    (<seq>_<class>_<wnid>.png, or an earlier build's <class>_<wnid>_<k>.png) inside the folder removed: not
    other names, paths leading out, or links."""
    root = fake_imagenet(tmp_path / "train")
    out = tmp_path / "out"
    run(root, out, per_class=2)
    outside = tmp_path / "outside.png"
    outside.write_bytes(b"keep")
    (out / "thesis.pdf").write_bytes(b"keep")
    (out / "235_n02106662_007.png").write_bytes(b"stale, ours")
    (out / "235_n02106662_008.png").symlink_to(outside)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["files"] += [{"file": name} for name in (
        "thesis.pdf", "../outside.png", str(outside), "235_n02106662_007.png", "235_n02106662_008.png",
        "sub/235_n02106662_009.png")] + ["not a dict", {"file": 3}]
    (out / "manifest.json").write_text(json.dumps(manifest))
    run(root, out, per_class=1)
    assert (out / "thesis.pdf").read_bytes() == b"keep" and outside.read_bytes() == b"keep"
    assert (out / "235_n02106662_008.png").is_symlink()
    assert not (out / "235_n02106662_007.png").exists() and not (out / "003_242_n02108089.png").exists()
    assert (out / "000_235_n02106662.png").is_file() and (out / "001_242_n02108089.png").is_file()


def test_non_empty_folder_without_manifest_is_refused_before_any_work(tmp_path):
    from sdaudit.errors import OutputPathError

    root = fake_imagenet(tmp_path / "train")
    out = tmp_path / "out"
    out.mkdir()
    (out / "235_n02106662_000.png").write_bytes(b"someone else's")
    with pytest.raises(OutputPathError, match="not an image set built by sdaudit"):
        run(root, out)
    assert [p.name for p in out.iterdir()] == ["235_n02106662_000.png"]
    assert (out / "235_n02106662_000.png").read_bytes() == b"someone else's"


def test_temporary_files_of_an_interrupted_first_build_do_not_block(tmp_path):
    root = fake_imagenet(tmp_path / "train")
    out = tmp_path / "out"
    out.mkdir()
    (out / ".235_n02106662_000.png.partial").write_bytes(b"half a png")  # an earlier version's name
    (out / ".004_242_n02108089.png.partial").write_bytes(b"half a png")
    (out / ".manifest.json.partial").write_text("{")
    paths = run(root, out)
    assert len(paths) == 6 and not list(out.glob(".*"))


def test_crash_while_renaming_leaves_every_png_listed_and_the_set_marked_incomplete(tmp_path, monkeypatch):
    """Killed between the renames: the manifest on disk is sdaudit's, says incomplete, and lists every
    PNG now in the folder (new and previous), so the rerun replaces or removes each of them."""
    import sdaudit.dataset

    root = fake_imagenet(tmp_path / "train")
    out = tmp_path / "out"
    run(root, out, per_class=3)
    assert json.loads((out / "manifest.json").read_text())["complete"] is True
    real_replace, renamed = os.replace, []

    def crash_after_two_pngs(src, dst):
        if str(dst).endswith(".png") and len(renamed) == 2:
            raise KeyboardInterrupt
        renamed.append(dst)
        return real_replace(src, dst)

    monkeypatch.setattr(sdaudit.dataset.os, "replace", crash_after_two_pngs)
    with pytest.raises(KeyboardInterrupt):
        run(root, out, per_class=1, size=16)
    monkeypatch.setattr(sdaudit.dataset.os, "replace", real_replace)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"] is False and manifest["size"] == 16
    assert {p.name for p in out.glob("*.png")} <= {e["file"] for e in manifest["files"]}
    paths = run(root, out, per_class=1, size=16)
    assert sorted(p.name for p in out.glob("*.png")) == sorted(p.name for p in paths)
    assert json.loads((out / "manifest.json").read_text())["complete"] is True
    assert not list(out.glob(".*"))
