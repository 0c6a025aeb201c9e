"""Keypoint pair files: sdaudit's format and SPair-71k's layout, and one clear error per mistake."""

import json

import numpy as np
import pytest
from PIL import Image

from sdaudit.errors import SdauditError
from sdaudit.keypoint_pairs import KeypointFileError, load_keypoint_pairs


def image(path, size):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (90, 120, 150)).save(path)
    return path


def pair_object(**over):
    item = {"image_a": "img/a.png", "image_b": "img/b.png", "keypoints_a": [[10, 20], [30, 5.5]],
            "keypoints_b": [[1, 2], [60, 40]], "bbox_b": [0, 0, 50, 40], "category": "cat"}
    item.update(over)
    return {k: v for k, v in item.items() if v is not None}


@pytest.fixture
def folder(tmp_path):
    image(tmp_path / "img" / "a.png", (64, 48))
    image(tmp_path / "img" / "b.png", (80, 60))
    return tmp_path


def write(path, data):
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def test_reads_our_format_single_list_and_folder(folder):
    one = load_keypoint_pairs(write(folder / "one.json", pair_object()))
    assert len(one) == 1
    pair = one[0]
    assert pair.image_a == folder / "img" / "a.png" and pair.category == "cat" and pair.bbox_a is None
    assert pair.keypoints.size_a == (64, 48) and pair.keypoints.size_b == (80, 60)
    np.testing.assert_array_equal(pair.keypoints.keypoints_a, [[10, 20], [30, 5.5]])
    assert pair.keypoints.bbox_b == (0, 0, 50, 40) and "one.json: pair 0" in pair.source
    (folder / "sub").mkdir()
    write(folder / "sub" / "many.json", {"pairs": [pair_object(image_a="../img/a.png", image_b="../img/b.png")] * 2})
    write(folder / "list.json", [pair_object(bbox_b=None), pair_object()])
    pairs = load_keypoint_pairs(folder)
    assert [p.source.rsplit("/", 1)[-1] for p in pairs] == [  # files in sorted order, pairs in file order
        "list.json: pair 0", "list.json: pair 1", "one.json: pair 0", "many.json: pair 0", "many.json: pair 1"]
    assert pairs[0].keypoints.bbox_b is None and pairs[1].keypoints.bbox_b == (0, 0, 50, 40)


def test_reads_spair_layout(tmp_path):
    image(tmp_path / "JPEGImages" / "cat" / "2008_1.jpg", (500, 375))
    image(tmp_path / "JPEGImages" / "cat" / "2009_2.jpg", (333, 500))
    ann = tmp_path / "PairAnnotation" / "test"
    ann.mkdir(parents=True)
    spair = {"src_imname": "2008_1.jpg", "trg_imname": "2009_2.jpg", "category": "cat",
             "src_kps": [[100, 120], [250, 300]], "trg_kps": [[50, 60], [200, 400]],
             "src_bndbox": [20, 30, 400, 370], "trg_bndbox": [10, 10, 300, 480], "kps_ids": [0, 4]}
    pairs = load_keypoint_pairs(write(ann / "000001-2008_1-2009_2:cat.json", spair))
    assert len(pairs) == 1
    pair = pairs[0]
    assert pair.image_b == tmp_path / "JPEGImages" / "cat" / "2009_2.jpg" and pair.category == "cat"
    assert pair.bbox_a == (20, 30, 400, 370) and pair.keypoints.bbox_b == (10, 10, 300, 480)
    assert pair.keypoints.size_b == (333, 500)
    np.testing.assert_array_equal(pair.keypoints.keypoints_b, [[50, 60], [200, 400]])


@pytest.mark.parametrize("data, message", [
    ('{"image_a": "img/a.png",', r"bad\.json: malformed JSON"),
    ([], r"bad\.json: expected a pair object"),
    (pair_object(image_b="img/missing.png"), r"bad\.json: pair 0 \(image_b\): image .*missing\.png does not exist"),
    (pair_object(image_a=None), r"pair 0 \(image_a\): expected an image path"),
    (pair_object(keypoints_b=[[1, 2]]), r"pair 0 \(keypoints_b\): 1 keypoints, but keypoints_a has 2"),
    (pair_object(keypoints_a=[[10, 20], [65, 5]]), r"pair 0 \(keypoints_a\): keypoint 1 at \[65\.0, 5\.0\] is outside "
                                                   r"the 64x48 image"),
    (pair_object(keypoints_a=[[10, "x"]]), r"pair 0 \(keypoints_a\): expected \[\[x, y\], \.\.\.\]"),
    (pair_object(keypoints_a=[]), r"pair 0 \(keypoints_a\): no keypoints"),
    (pair_object(bbox_b=[0, 0, 90, 40]), r"pair 0 \(bbox_b\): box .* outside the 80x60 image"),
    (pair_object(category=3), r"pair 0 \(category\): expected a string"),
    ([pair_object(), "oops"], r"pair 1: expected an object"),
])
def test_each_mistake_names_file_pair_and_field(folder, data, message):
    path = write(folder / "bad.json", data)
    with pytest.raises(KeypointFileError, match=message) as info:
        load_keypoint_pairs(path)
    assert isinstance(info.value, SdauditError)


def test_unreadable_image_missing_path_empty_folder_and_spair_without_images(folder, tmp_path):
    (folder / "img" / "broken.png").write_bytes(b"not an image")
    with pytest.raises(KeypointFileError, match=r"pair 0 \(image_a\): cannot read image"):
        load_keypoint_pairs(write(folder / "p.json", pair_object(image_a="img/broken.png")))
    with pytest.raises(KeypointFileError, match="no such keypoint pair file or folder"):
        load_keypoint_pairs(folder / "nothing.json")
    (tmp_path / "empty").mkdir()
    with pytest.raises(KeypointFileError, match="no \\*.json keypoint pair files"):
        load_keypoint_pairs(tmp_path / "empty")
    lone = tmp_path / "lone"
    lone.mkdir()
    with pytest.raises(KeypointFileError, match="no folder above it has a JPEGImages folder"):
        load_keypoint_pairs(write(lone / "x.json", {"src_imname": "a.jpg", "category": "cat"}))
