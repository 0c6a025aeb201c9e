"""The paper's image set in the paper's order: stream selection order kept, the published crop, and the
published labels refused for a set in any other order."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from sdaudit.analyses import LabelFileError
from sdaudit.dataset import build_imagenet_subset
from sdaudit.images import pixel_sha256
from sdaudit.paper_set import check_paper_order, published_crop

CLASSES = (235, 242, 282, 717, 980)  # the paper's five
SIZE = 64


def stream():
    """A synthetic 'imagenet-1k' train stream: the wanted classes interleaved with others, some images too small,
    some with odd short sides; every image unique (its stream position in the red channel)."""
    rng = np.random.default_rng(0)
    rows = []
    labels = [235, 7, 242, 282, 980, 235, 717, 282, 9, 242, 235, 980, 242, 717, 282, 235, 717, 282, 980, 242, 235,
              717, 980, 980]
    sizes = [(81, 67), (50, 50), (70, 90), (30, 60), (77, 53), (99, 75), (59, 81), (75, 77), (64, 64), (57, 83),
             (40, 20), (51, 99), (91, 71), (45, 70), (68, 84), (73, 95), (87, 65), (66, 66), (63, 52), (88, 69),
             (79, 61), (71, 71), (58, 31), (93, 55)]
    for i, (label, (w, h)) in enumerate(zip(labels, sizes)):
        pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        pixels[..., 0] = i
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, "PNG")
        rows.append((label, Image.open(io.BytesIO(buf.getvalue())).convert("RGB"), buf.getvalue()))
    return rows


def selection(rows, per_class=3, min_side=50):
    """The published rule: in stream order, append every wanted image with short side >= min_side until its
    class is full."""
    counts, out = {c: 0 for c in CLASSES}, []
    for i, (label, img, _) in enumerate(rows):
        if label in counts and counts[label] < per_class and min(img.size) >= min_side:
            counts[label] += 1
            out.append(i)
    return out


def as_dataset(rows):
    import datasets

    feats = datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")})
    return datasets.Dataset.from_dict({"image": [{"bytes": b, "path": None} for _, _, b in rows],
                                       "label": [lab for lab, _, _ in rows]}, features=feats)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    rows = stream()
    out = tmp_path_factory.mktemp("paper-set")
    build_imagenet_subset(as_dataset(rows), out, classes=CLASSES, per_class=3, min_side=50, size=SIZE)
    return rows, out


def test_sorted_files_are_the_stream_selection_order(built):
    rows, out = built
    want = selection(rows)
    files = sorted(out.glob("*.png"))
    manifest = json.loads((out / "manifest.json").read_text())
    assert [int(e["original"].split("#")[1]) for e in manifest["files"]] == want  # classes interleaved
    assert [e["file"] for e in manifest["files"]] == [f.name for f in files] and manifest["order"] == "stream"
    assert [rows[i][0] for i in want] != sorted(rows[i][0] for i in want)  # not grouped by class
    for f, i in zip(files, want):
        assert np.asarray(Image.open(f))[0, 0, 0] != 0 or i == 0  # stream position survives in the red channel


def test_images_are_the_published_crop(built):
    rows, out = built
    for f, i in zip(sorted(out.glob("*.png")), selection(rows)):
        img = rows[i][1]
        w, h = img.size
        s = min(w, h)
        box = (w // 2 - s // 2, h // 2 - s // 2, w // 2 + s // 2, h // 2 + s // 2)  # odd s: an (s-1) square
        want = np.asarray(img.crop(box).resize((SIZE, SIZE)))
        assert np.array_equal(np.asarray(Image.open(f).convert("RGB")), want), f.name
    odd = [i for i in selection(rows) if min(rows[i][1].size) % 2]
    assert odd  # the stream holds odd short sides, where the published crop is one pixel smaller
    assert published_crop(Image.new("RGB", (75, 77)), 8).size == (8, 8)


def test_audit_images_are_the_selected_images_in_order(tiny, built, tmp_path):
    """A label row [i, x, y] points at audit image i: it must be the i-th selected stream image."""
    from sdaudit.audit import AuditSettings, audit

    rows, out = built
    results = audit(tiny, out, tmp_path, AuditSettings(size=SIZE, layers="conv_in", analyses=["position"]),
                    report=False, progress=False)
    for entry, i in zip(results["images"], selection(rows)):
        img = rows[i][1]
        w, h = img.size
        s = min(w, h)
        planted = img.crop((w // 2 - s // 2, h // 2 - s // 2, w // 2 + s // 2, h // 2 + s // 2)).resize((SIZE, SIZE))
        assert entry["sha256"] == pixel_sha256(planted)
    check_paper_order([e["source"] for e in results["images"]], "paper:sd15")  # a paper-order set: accepted


def test_published_labels_need_a_paper_order_set(tiny, tmp_path):
    """A folder gives no stream order: its set is refused for paper:* labels, before the count is checked;
    with an order file it is accepted."""
    from sdaudit.audit import AuditSettings, audit
    from tests.test_dataset import fake_imagenet

    root = fake_imagenet(tmp_path / "train")
    folder_set = tmp_path / "folder-set"
    build_imagenet_subset(root, folder_set, classes=(235, 242), per_class=2, min_side=40, size=SIZE)
    settings = AuditSettings(size=SIZE, layers="up_blocks[1]", analyses=["anomalies"], anomaly_labels="paper:sd15")
    with pytest.raises(LabelFileError, match="'folder' order .* not the published order"):
        audit(tiny, folder_set, tmp_path / "a", settings, report=False, progress=False)
    a, b = "n02106662", "n02108089"  # classes 235 and 242
    names = [f"{a}_a_03.JPEG", f"{b}_a_03.JPEG", f"{a}_a_02.JPEG", f"{b}_a_06.JPEG"]  # interleaved, all eligible
    order = tmp_path / "order.txt"
    order.write_text("\n".join(names) + "\n")
    ordered = tmp_path / "ordered-set"
    build_imagenet_subset(root, ordered, classes=(235, 242), per_class=2, min_side=40, size=SIZE, order_file=order)
    manifest = json.loads((ordered / "manifest.json").read_text())
    assert manifest["order"] == "order-file"
    assert [e["original"].rsplit("/", 1)[1] for e in manifest["files"]] == names
    at_512 = AuditSettings(size=512, layers="up_blocks[1]", analyses=["anomalies"], anomaly_labels="paper:sd15")
    with pytest.raises(LabelFileError, match="paper's 500 images in their order, this audit has 4"):
        audit(tiny, ordered, tmp_path / "b", at_512, report=False, progress=False)  # the order passes, the count not
    with pytest.raises(LabelFileError, match="not exactly the files"):
        check_paper_order([str(p) for p in sorted(ordered.glob("*.png"))][:-1], "paper:sd15")


def test_cli_order_file_and_message(tmp_path):
    from tests.cli_helpers import runner
    from tests.test_dataset import fake_imagenet

    from sdaudit.cli import app

    from sdaudit.dataset import PAPER_CLASSES

    root = fake_imagenet(tmp_path / "train", classes=PAPER_CLASSES)
    names = sorted(p.name for p in root.rglob("*.JPEG"))
    (tmp_path / "order.txt").write_text("\n".join(names) + "\n")
    result = runner.invoke(app, ["dataset", "imagenet-subset", str(root), "--out", str(tmp_path / "o"), "--per-class",
                                 "1", "--size", "32", "--min-side", "40", "--order-file", str(tmp_path / "order.txt")])
    assert result.exit_code == 0 and "order: order-file" in result.output, result.output
