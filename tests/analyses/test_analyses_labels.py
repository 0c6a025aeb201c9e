"""Label file IO: published files round trip, bad files give clear errors."""

import pickle

import numpy as np
import pytest

from sdaudit.analyses import LabelFileError, load_labels, save_labels

PUBLISHED = {"sd15": (196, 144), "sd21": (93, 76), "sdturbo": (457, 438)}


@pytest.mark.parametrize("model", sorted(PUBLISHED))
def test_published_labels_round_trip(model, tmp_path):
    """The published files (shipped as package data) load, keep their counts and dtype, and round-trip."""
    from importlib import resources

    with resources.as_file(resources.files("sdaudit") / "data" / "paper_labels"
                           / f"high_norm_anomalies_{model}.npy") as path:
        rows = load_labels(path, grid=32, n_images=500)
        original = np.load(path)
    assert rows.dtype == np.int64 and rows.shape == (PUBLISHED[model][0], 3)
    assert len(np.unique(rows[:, 0])) == PUBLISHED[model][1]
    out = tmp_path / "x.npy"
    save_labels(out, rows)
    np.testing.assert_array_equal(load_labels(out), original)
    assert np.load(out).dtype == original.dtype


def test_round_trip_and_empty(tmp_path):
    p = tmp_path / "labels"  # no .npy suffix: written exactly here
    save_labels(p, [[0, 1, 2], [3, 4, 5]])
    assert load_labels(p).tolist() == [[0, 1, 2], [3, 4, 5]]
    save_labels(tmp_path / "e.npy", np.zeros((0, 3), int))
    assert load_labels(tmp_path / "e.npy").shape == (0, 3)


def bad(tmp_path, name, writer):
    p = tmp_path / name
    writer(p)
    return p


@pytest.mark.parametrize("case,match", [
    ("missing", "does not exist"),
    ("text", "npy"),
    ("pickle", "npy"),
    ("object", "npy"),
    ("shape", "shape"),
    ("float", "integer"),
    ("negative", "negative"),
    ("grid", "outside"),
    ("npz", "npz"),
    ("truncated", "npy"),
])
def test_bad_files(tmp_path, case, match):
    p = tmp_path / f"{case}.npy"
    if case == "text":
        p.write_text("0,1,2\n")
    elif case == "pickle":
        p.write_bytes(pickle.dumps([[0, 1, 2]]))
    elif case == "object":
        np.save(p, np.array([[0, 1, None]], dtype=object), allow_pickle=True)
    elif case == "shape":
        np.save(p, np.zeros((4, 2), int))
    elif case == "float":
        np.save(p, np.array([[0, 1.5, 2]]))
    elif case == "negative":
        np.save(p, np.array([[0, -1, 2]]))
    elif case == "grid":
        np.save(p, np.array([[0, 31, 32]]))
    elif case == "npz":
        with open(p, "wb") as f:
            np.savez(f, a=np.zeros((1, 3), int))
    elif case == "truncated":
        np.save(p, np.zeros((10, 3), int))
        p.write_bytes(p.read_bytes()[:-20])
    with pytest.raises(LabelFileError, match=match) as e:
        load_labels(p, grid=32)
    assert str(p) in str(e.value)


def test_save_validates(tmp_path):
    with pytest.raises(LabelFileError, match="shape"):
        save_labels(tmp_path / "a.npy", [[1, 2]])
    with pytest.raises(LabelFileError, match="image"):
        save_labels(tmp_path / "a.npy", [[9, 1, 1]], n_images=5)
    assert not (tmp_path / "a.npy").exists()


def test_published_labels_ship_with_the_package():
    """The paper's three label files load by name and hold the published statistics (design.md section 4)."""
    from sdaudit.analyses import resolve_labels

    published = {"paper:sd15": (196, 144), "paper:SD-2.1": (93, 76), "paper:sd-turbo": (457, 438)}
    for spec, (count, images) in published.items():
        rows = resolve_labels(spec, grid=32, n_images=500)
        assert rows.shape == (count, 3) and len(np.unique(rows[:, 0])) == images
        assert rows[:, 0].max() < 500 and rows[:, 1:].max() <= 30


def test_published_labels_refuse_another_image_set_or_grid():
    from sdaudit.analyses import LabelFileError, resolve_labels

    with pytest.raises(LabelFileError, match="500 images in their order, this audit has 9"):
        resolve_labels("paper:sd15", grid=32, n_images=9)
    with pytest.raises(LabelFileError, match="32x32 grid .* is 16x16"):
        resolve_labels("paper:sd21", grid=16, n_images=500)
    with pytest.raises(LabelFileError, match="no published labels"):
        resolve_labels("paper:sdxl")
