"""Tests for sdaudit.images: loading, validation, conversions, sources, geometry, demo set."""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from sdaudit import images
from sdaudit.images import (
    BadImageError, ImageRecord, center_crop_square, count_images, demo_image_paths,
    iter_images, load_image, pixel_sha256, prepare_image, to_rgb,
)

RNG = np.random.default_rng(0)


def rand_rgb(h=24, w=32):
    return RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)


def save(tmp_path, name, img, **kw):
    path = tmp_path / name
    img.save(path, **kw)
    return path


def png_bytes(arr=None, bitdepth=8, colortype=2, width=None, height=None, idat=None):
    """A minimal PNG written by hand (lets us make 16-bit RGB and header-only bombs)."""
    def chunk(tag, data):
        return (struct.pack(">I", len(data)) + tag + data
                + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF))
    if arr is not None:
        height, width = arr.shape[:2]
        rows = arr.astype(">u2" if bitdepth == 16 else "u1").reshape(height, -1)
        idat = zlib.compress(b"".join(b"\x00" + r.tobytes() for r in rows))
    ihdr = struct.pack(">IIBBBBB", width, height, bitdepth, colortype, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat)
            + chunk(b"IEND", b""))


def assert_bad(path_or_src, match, code=None, **kw):
    with pytest.raises(BadImageError) as info:
        load_image(path_or_src, **kw)
    err = info.value
    assert os.path.abspath(path_or_src) == err.source
    assert err.source in str(err) and err.reason in str(err)
    assert match in err.reason.lower(), err.reason
    if code:
        assert err.code == code
    return err


# --------------------------------------------------------------------------- basics


def test_rgb_png_roundtrip_and_record_fields(tmp_path):
    arr = rand_rgb()
    path = save(tmp_path, "a.png", Image.fromarray(arr))
    rec = load_image(path)
    assert isinstance(rec, ImageRecord)
    assert rec.source == str(path.resolve())
    assert rec.image.mode == "RGB" and rec.original_mode == "RGB"
    assert (rec.width, rec.height) == (32, 24) == rec.image.size
    np.testing.assert_array_equal(np.asarray(rec.image), arr)


def test_sha256_definition_and_container_independence(tmp_path):
    arr = rand_rgb()
    expected = hashlib.sha256(b"sdaudit-rgb8 32x24\n" + arr.tobytes()).hexdigest()
    recs = [load_image(save(tmp_path, f"a.{ext}", Image.fromarray(arr))) for ext in
            ("png", "bmp", "tif")]
    assert {r.sha256 for r in recs} == {expected}
    assert pixel_sha256(Image.fromarray(arr)) == expected
    other = arr.copy()
    other[0, 0, 0] ^= 1
    assert load_image(save(tmp_path, "b.png", Image.fromarray(other))).sha256 != expected
    # same bytes, different shape -> different hash
    flat = arr.reshape(32, 24, 3)
    assert pixel_sha256(Image.fromarray(flat)) != expected


def test_bad_image_error_str_and_pickle():
    err = BadImageError("/x/y.png", "empty file (0 bytes)", "empty")
    assert str(err) == "/x/y.png: empty file (0 bytes)"
    assert isinstance(err, ValueError)
    back = pickle.loads(pickle.dumps(err))
    assert (back.source, back.reason, back.code) == (err.source, err.reason, err.code)


# --------------------------------------------------------------------------- bad input


def test_missing_file(tmp_path):
    assert_bad(tmp_path / "nope.png", "not found", "missing")


def test_directory(tmp_path):
    (tmp_path / "d.png").mkdir()
    assert_bad(tmp_path / "d.png", "directory", "unreadable")


def test_permission_denied_reported(tmp_path, monkeypatch):
    path = save(tmp_path, "p.png", Image.fromarray(rand_rgb()))
    monkeypatch.setattr(images.decode.os, "access", lambda p, mode: False)
    assert_bad(path, "permission denied", "unreadable")


def test_permission_denied_real(tmp_path):
    """A file without read permission, read by a process that lacks it: as root (CI), a forked child that
    drops to the unprivileged user 'nobody' reads it, since root reads anything."""
    import shutil
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="sdaudit-perm-", dir="/tmp"))  # /tmp: 'nobody' can reach it
    folder.chmod(0o755)  # ... and enter this folder: only the file itself is unreadable
    path = save(folder, "p.png", Image.fromarray(rand_rgb()))
    readable = os.fork() if os.geteuid() == 0 else None
    if readable == 0:  # a child that checks 'nobody' can read the file while it has its permissions
        os.setgid(65534)
        os.setuid(65534)
        os._exit(0 if os.access(path, os.R_OK) else 1)
    if readable:
        assert os.waitstatus_to_exitcode(os.waitpid(readable, 0)[1]) == 0, "the test file must start readable"
    path.chmod(0)
    try:
        if os.geteuid() != 0:
            assert_bad(path, "permission denied", "unreadable")
            return
        pid = os.fork()
        if pid == 0:  # the child: never returns into pytest
            code = 1
            try:
                os.setgid(65534)
                os.setuid(65534)
                assert_bad(path, "permission denied", "unreadable")
                code = 0
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0, "reading an unreadable file was not reported as 'permission denied'"
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_empty_file(tmp_path):
    (tmp_path / "e.jpg").write_bytes(b"")
    assert_bad(tmp_path / "e.jpg", "empty file", "empty")


def test_text_renamed_png(tmp_path):
    (tmp_path / "t.png").write_text("hello, I am not an image\n")
    assert_bad(tmp_path / "t.png", "not an image", "not_image")


@pytest.mark.parametrize("fmt,ext", [("JPEG", "jpg"), ("PNG", "png"), ("GIF", "gif")])
@pytest.mark.parametrize("frac", [0.3, 0.9])
def test_truncated_files_rejected(tmp_path, fmt, ext, frac):
    buf = io.BytesIO()
    Image.fromarray(rand_rgb(64, 64)).save(buf, fmt)
    data = buf.getvalue()
    path = tmp_path / f"trunc.{ext}"
    path.write_bytes(data[: int(len(data) * frac)])
    assert_bad(path, "truncated", "corrupt")
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_truncated_jpeg_missing_only_end(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(rand_rgb(64, 64)).save(buf, "JPEG")
    path = tmp_path / "cut.jpg"
    path.write_bytes(buf.getvalue()[:-40])
    assert_bad(path, "truncated")


def test_decompression_bomb_header_only(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(png_bytes(None, 1, 0, width=20000, height=20000, idat=zlib.compress(b"")))
    before = Image.MAX_IMAGE_PIXELS
    err = assert_bad(path, "decompression bomb", "too_large")
    assert Image.MAX_IMAGE_PIXELS == before
    assert "pixels" in err.reason


def test_decompression_bomb_guard_is_configurable(tmp_path):
    # 12000 x 12000 = 144 Mpx: above Pillow's warning level, below its error level
    path = tmp_path / "big.png"
    path.write_bytes(png_bytes(None, 1, 0, width=12000, height=12000, idat=zlib.compress(b"")))
    err = assert_bad(path, "decompression bomb", "too_large", max_pixels=100_000_000)
    assert "12000x12000" in err.reason and "100000000" in err.reason
    small = save(tmp_path, "s.png", Image.fromarray(rand_rgb(40, 40)))
    assert_bad(small, "1000 pixels", "too_large", max_pixels=1000)
    assert load_image(small, max_pixels=1600).width == 40


def test_too_small_for_one_token(tmp_path):
    path = save(tmp_path, "tiny.png", Image.fromarray(rand_rgb(7, 20)))
    err = assert_bad(path, "too small", "too_small")
    assert "20x7" in err.reason and "min_side 8" in err.reason
    assert load_image(path, min_side=7).height == 7
    assert load_image(save(tmp_path, "ok.png", Image.fromarray(rand_rgb(8, 8)))).width == 8


def test_exif_orientation_1_and_unreadable_exif(tmp_path):
    arr = rand_rgb()
    exif = Image.Exif()
    exif[0x0112] = 1
    rec = load_image(save(tmp_path, "o1.png", Image.fromarray(arr), exif=exif))
    assert rec.image.size == (32, 24) and rec.notes == ()
    bad = load_image(save(tmp_path, "g.png", Image.fromarray(arr), exif=b"garbage" * 5))
    np.testing.assert_array_equal(np.asarray(bad.image), arr)
    assert any("EXIF unreadable" in n for n in bad.notes)


# --------------------------------------------------------------------------- conversions


def test_16bit_grey_png_scaled_by_bit_depth(tmp_path):
    vals = np.array([[0, 255, 256, 1000, 40000, 65535, 257 * 17, 257 * 200]] * 8, np.uint16)
    path = save(tmp_path, "g16.png", Image.fromarray(vals))
    rec = load_image(path)
    assert rec.original_mode == "I;16"
    out = np.asarray(rec.image)
    expected = (vals >> 8).astype(np.uint8)
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], expected)
    assert list(out[0, 6:, 0]) == [17, 200]  # 8-bit values replicated to 16 bit come back


def test_16bit_big_endian_tiff(tmp_path):
    vals = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000)
    img = Image.frombytes("I;16B", (8, 8), vals.astype(">u2").tobytes())
    rec = load_image(save(tmp_path, "b16.tif", img))
    assert rec.original_mode == "I;16B"
    np.testing.assert_array_equal(np.asarray(rec.image)[..., 0], vals >> 8)


def test_16bit_rgb_png_uses_high_byte(tmp_path):
    arr = np.zeros((8, 8, 3), np.uint16)
    arr[0, 0] = (0, 257 * 10, 65535)
    arr[0, 1] = (1000, 40000, 65280)
    path = tmp_path / "rgb16.png"
    path.write_bytes(png_bytes(arr, 16, 2))
    out = np.asarray(load_image(path).image)
    np.testing.assert_array_equal(out, (arr >> 8).astype(np.uint8))


def test_32bit_int_tiff_uses_declared_depth(tmp_path):
    vals = np.full((8, 8), 2**31 - 1, np.int32)
    vals[0, 0] = 2**23 * 100
    rec = load_image(save(tmp_path, "i32.tif", Image.fromarray(vals)))
    assert rec.original_mode == "I"
    out = np.asarray(rec.image)[..., 0]
    assert out[0, 0] == 100 and out[1, 1] == 255


def test_int_mode_in_memory_and_negative():
    img = Image.fromarray(np.array([[0, 257 * 3, 65535]] * 8, np.int32))
    assert img.mode == "I"
    assert list(np.asarray(to_rgb(img, "mem"))[0, :, 1]) == [0, 3, 255]
    neg = Image.fromarray(np.array([[-1, 5]] * 8, np.int32))
    with pytest.raises(BadImageError, match="negative"):
        to_rgb(neg, "neg.tif")


def test_cmyk_converted_with_pillow(tmp_path):
    cmyk = np.zeros((16, 16, 4), np.uint8)
    cmyk[:8, :, 3] = 255      # full black ink
    cmyk[8:, :8, 0] = 255     # full cyan
    img = Image.fromarray(cmyk, "CMYK")
    rec = load_image(save(tmp_path, "c.tif", img))
    assert rec.original_mode == "CMYK"
    out = np.asarray(rec.image)
    np.testing.assert_array_equal(out, np.asarray(img.convert("RGB")))
    assert tuple(out[0, 0]) == (0, 0, 0)
    assert tuple(out[15, 15]) == (255, 255, 255)
    assert tuple(out[15, 0]) == (0, 255, 255)


def test_cmyk_jpeg_loads(tmp_path):
    img = Image.fromarray(np.zeros((16, 16, 4), np.uint8), "CMYK")
    rec = load_image(save(tmp_path, "c.jpg", img, quality=100))
    assert rec.original_mode == "CMYK" and rec.image.mode == "RGB"
    assert np.asarray(rec.image).min() >= 250  # no ink -> white


def test_palette_without_and_with_transparency(tmp_path):
    pal = Image.new("P", (8, 8))
    pal.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    pal.putdata([0] * 32 + [1] * 32)
    rec = load_image(save(tmp_path, "p.png", pal))
    out = np.asarray(rec.image)
    assert rec.original_mode == "P"
    assert tuple(out[0, 0]) == (255, 0, 0) and tuple(out[7, 7]) == (0, 0, 255)
    rec_t = load_image(save(tmp_path, "pt.png", pal, transparency=1))
    out_t = np.asarray(rec_t.image)
    assert tuple(out_t[0, 0]) == (255, 0, 0) and tuple(out_t[7, 7]) == (255, 255, 255)
    assert "alpha composited over white" in rec_t.notes


def test_grey_and_bilevel_replicated(tmp_path):
    grey = np.arange(64, dtype=np.uint8).reshape(8, 8) * 3
    rec = load_image(save(tmp_path, "l.png", Image.fromarray(grey)))
    assert rec.original_mode == "L"
    np.testing.assert_array_equal(np.asarray(rec.image), np.stack([grey] * 3, -1))
    bw = Image.fromarray(grey > 90).convert("1")
    rec1 = load_image(save(tmp_path, "b.png", bw))
    assert rec1.original_mode == "1"
    out = np.asarray(rec1.image)
    assert set(np.unique(out)) <= {0, 255}
    np.testing.assert_array_equal(out[..., 0] == 255, grey > 90)


def expected_over_white(rgb, a):
    rgb, a = rgb.astype(np.int64), a.astype(np.int64)[..., None]
    return ((rgb * a + 255 * (255 - a) + 127) // 255).astype(np.uint8)


def test_rgba_composited_over_white(tmp_path):
    rgba = rand_rgb(8, 8)
    alpha = np.tile(np.array([0, 1, 64, 127, 128, 200, 254, 255], np.uint8), (8, 1))
    img = Image.fromarray(np.dstack([rgba, alpha]), "RGBA")
    rec = load_image(save(tmp_path, "a.png", img))
    assert rec.original_mode == "RGBA"
    out = np.asarray(rec.image)
    np.testing.assert_array_equal(out, expected_over_white(rgba, alpha))
    assert (out[:, 0] == 255).all()                  # fully transparent -> white
    np.testing.assert_array_equal(out[:, 7], rgba[:, 7])  # opaque -> unchanged


def test_la_and_pa_composited_over_white(tmp_path):
    grey = np.full((8, 8), 100, np.uint8)
    alpha = np.full((8, 8), 128, np.uint8)
    la = Image.fromarray(np.dstack([grey, alpha]), "LA")
    out = np.asarray(load_image(save(tmp_path, "la.png", la)).image)
    assert (out == expected_over_white(np.full((8, 8, 3), 100), alpha)).all()
    pa = Image.new("PA", (8, 8))
    pa.putpalette([10, 20, 30] + [0] * 765)
    pa.putalpha(0)
    assert (np.asarray(to_rgb(pa, "pa")) == 255).all()


def test_float_mode_accepts_unit_range_and_rejects_others(tmp_path):
    vals = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
    rec = load_image(save(tmp_path, "f.tif", Image.fromarray(vals)))
    assert rec.original_mode == "F"
    np.testing.assert_array_equal(np.asarray(rec.image)[..., 2], np.rint(vals * 255))
    assert_bad(save(tmp_path, "f2.tif", Image.fromarray(vals * 2)), "only [0, 1]",
               "unsupported")
    nan = vals.copy()
    nan[0, 0] = np.nan
    assert_bad(save(tmp_path, "f3.tif", Image.fromarray(nan)), "nan", "unsupported")


def test_unsupported_mode():
    with pytest.raises(BadImageError, match="unsupported image mode 'LAB'"):
        to_rgb(Image.new("LAB", (8, 8)), "lab.tif")


def test_exif_orientation_applied(tmp_path):
    arr = np.zeros((10, 20, 3), np.uint8)
    arr[0, 0] = (255, 0, 0)      # red top-left marker
    exif = Image.Exif()
    exif[0x0112] = 6             # stored rotated: display = rotate 90 deg clockwise
    path = save(tmp_path, "rot.png", Image.fromarray(arr), exif=exif)
    rec = load_image(path)
    assert (rec.width, rec.height) == (10, 20)
    out = np.asarray(rec.image)
    np.testing.assert_array_equal(out, np.rot90(arr, k=-1))
    assert tuple(out[0, 9]) == (255, 0, 0)   # top-left moved to top-right
    assert any("EXIF orientation 6" in n for n in rec.notes)


def test_animated_gif_first_frame(tmp_path):
    frames = [Image.fromarray(np.full((16, 16, 3), v, np.uint8)) for v in (10, 200, 90)]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=50, loop=0)
    rec = load_image(path)
    assert rec.original_mode in ("P", "L")
    out = np.asarray(rec.image)
    assert abs(int(out.mean()) - 10) <= 1
    assert "first of 3 frames used" in rec.notes


def test_multipage_tiff_first_frame(tmp_path):
    pages = [Image.fromarray(np.full((16, 16, 3), v, np.uint8)) for v in (30, 220)]
    path = tmp_path / "multi.tif"
    pages[0].save(path, save_all=True, append_images=pages[1:])
    rec = load_image(path)
    assert (np.asarray(rec.image) == 30).all()
    assert "first of 2 frames used" in rec.notes


def test_to_rgb_returns_same_object_for_rgb():
    img = Image.fromarray(rand_rgb())
    assert to_rgb(img, "x") is img


# --------------------------------------------------------------------------- sources


def make_folder(tmp_path):
    root = tmp_path / "imgs"
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / ".hidden_dir").mkdir()
    names = ["b.png", "a.JPEG", "sub/c.png", "sub/deeper/d.bmp", "z.tif", "sub/a.gif"]
    for i, name in enumerate(names):
        Image.fromarray(np.full((12, 12, 3), i * 20, np.uint8)).save(root / name)
    Image.fromarray(rand_rgb(12, 12)).save(root / ".hidden.png")
    Image.fromarray(rand_rgb(12, 12)).save(root / ".hidden_dir" / "x.png")
    (root / "notes.txt").write_text("not an image")
    (root / "data.npy").write_bytes(b"\x93NUMPY")
    return root


def test_folder_recursive_sorted_filtered(tmp_path):
    root = make_folder(tmp_path)
    recs = list(iter_images(root))
    rel = [os.path.relpath(r.source, root).replace(os.sep, "/") for r in recs]
    assert rel == ["a.JPEG", "b.png", "sub/a.gif", "sub/c.png", "sub/deeper/d.bmp", "z.tif"]
    assert count_images(root) == 6
    assert all(os.path.isabs(r.source) for r in recs)


def test_folder_without_images_and_missing_source(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no image files"):
        iter_images(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="nope"):
        iter_images(tmp_path / "nope")


def make_mixed_folder(tmp_path):
    root = tmp_path / "mixed"
    root.mkdir()
    Image.fromarray(rand_rgb()).save(root / "1_good.png")
    (root / "2_empty.png").write_bytes(b"")
    (root / "3_text.jpg").write_text("plain text")
    Image.fromarray(rand_rgb(4, 30)).save(root / "4_small.png")
    Image.fromarray(rand_rgb()).save(root / "5_good.png")
    return root


def test_skip_bad_false_raises_first_bad(tmp_path):
    root = make_mixed_folder(tmp_path)
    it = iter_images(root)
    assert next(it).source.endswith("1_good.png")
    with pytest.raises(BadImageError) as info:
        next(it)
    assert info.value.source.endswith("2_empty.png") and "empty" in info.value.reason


def test_skip_bad_true_continues_and_lists(tmp_path):
    root = make_mixed_folder(tmp_path)
    errors: list = []
    recs = list(iter_images(root, skip_bad=True, errors=errors))
    assert [os.path.basename(r.source) for r in recs] == ["1_good.png", "5_good.png"]
    assert [os.path.basename(s) for s, _ in errors] == ["2_empty.png", "3_text.jpg",
                                                         "4_small.png"]
    assert "empty" in errors[0][1] and "not an image" in errors[1][1]
    assert "too small" in errors[2][1]
    assert list(iter_images(root, skip_bad=True))  # errors=None is allowed


def test_list_of_paths_single_file_and_list_file(tmp_path):
    root = make_folder(tmp_path)
    one = root / "b.png"
    assert [r.source for r in iter_images(one)] == [str(one)]
    assert count_images(one) == 1
    paths = [root / "z.tif", root / "sub"]
    srcs = [os.path.basename(r.source) for r in iter_images(paths)]
    assert srcs == ["z.tif", "a.gif", "c.png", "d.bmp"]
    listing = tmp_path / "list.txt"
    listing.write_text("# comment\nimgs/b.png\n\n" + str(root / "a.JPEG") + "\n")
    assert [os.path.basename(r.source) for r in iter_images(listing)] == ["b.png", "a.JPEG"]
    assert count_images(listing) == 2
    missing = [root / "b.png", root / "gone.png"]
    errors: list = []
    assert len(list(iter_images(missing, skip_bad=True, errors=errors))) == 1
    assert "not found" in errors[0][1]


def test_iteration_is_lazy(tmp_path, monkeypatch):
    root = make_mixed_folder(tmp_path)
    calls = []
    real = images.load_image

    def spy(path, **kw):
        calls.append(path)
        return real(path, **kw)

    monkeypatch.setattr(images.sources, "load_image", spy)  # the name iter_images calls
    it = iter_images(root)
    assert calls == []
    next(it)
    assert len(calls) == 1


# --------------------------------------------------------------------------- datasets


def encoded(arr, fmt="PNG"):
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, fmt)
    return buf.getvalue()


def make_dataset(n=4, bad_at=None):
    import datasets

    arrays = [np.full((16, 20, 3), 10 * i, np.uint8) for i in range(n)]
    cells = [{"bytes": encoded(a), "path": None} for a in arrays]
    if bad_at is not None:
        cells[bad_at] = {"bytes": b"definitely not an image", "path": None}
    feats = datasets.Features({"caption": datasets.Value("string"), "img": datasets.Image(),
                               "label": datasets.Value("int64")})
    ds = datasets.Dataset.from_dict(
        {"caption": [f"c{i}" for i in range(n)], "img": cells, "label": list(range(n))},
        features=feats)
    return ds, arrays


def test_dataset_object(tmp_path):
    ds, arrays = make_dataset(4)
    recs = list(iter_images(ds))
    assert len(recs) == 4 == count_images(ds)
    for i, (rec, arr) in enumerate(zip(recs, arrays)):
        np.testing.assert_array_equal(np.asarray(rec.image), arr)
        assert rec.source.startswith("hf:") and rec.source.endswith(f"#{i}")
        assert rec.sha256 == pixel_sha256(Image.fromarray(arr))


def test_dataset_same_hash_as_file(tmp_path):
    ds, arrays = make_dataset(2)
    path = save(tmp_path, "x.png", Image.fromarray(arrays[1]))
    assert list(iter_images(ds))[1].sha256 == load_image(path).sha256


def test_dataset_bad_item_skip(tmp_path):
    ds, _ = make_dataset(4, bad_at=2)
    with pytest.raises(BadImageError, match="#2"):
        list(iter_images(ds))
    errors: list = []
    recs = list(iter_images(ds, skip_bad=True, errors=errors))
    assert len(recs) == 3 and errors[0][0].endswith("#2")
    assert "not an image" in errors[0][1]


def test_saved_dataset_detected_and_hf_spec(tmp_path):
    import datasets

    ds, arrays = make_dataset(3)
    ds.save_to_disk(str(tmp_path / "saved"))
    datasets.DatasetDict({"train": ds, "test": ds.select([0])}).save_to_disk(
        str(tmp_path / "dd"))
    recs = list(iter_images(tmp_path / "saved"))
    assert len(recs) == 3 and count_images(tmp_path / "saved") == 3
    assert recs[0].source == f"hf:{tmp_path / 'saved'}[all]#0"  # from_dict: no split
    dd = list(iter_images(str(tmp_path / "dd")))  # defaults to the train split
    assert len(dd) == 3 and "[train]" in dd[0].source
    spec = f"hf:{tmp_path / 'dd'}:test:img"
    test = list(iter_images(spec))
    assert len(test) == 1 and test[0].source == f"hf:{tmp_path / 'dd'}[test]#0"
    assert count_images(spec) == 1
    assert count_images("hf:some-org/some-hub-dataset") is None


def test_dataset_column_errors():
    import datasets

    ds = datasets.Dataset.from_dict({"text": ["a"], "n": [1]})
    with pytest.raises(ValueError, match=r"no column of type datasets.Image.*text.*n"):
        iter_images(ds)
    good, _ = make_dataset(1)
    from sdaudit.images import open_dataset_source
    with pytest.raises(ValueError, match="no column 'pic'"):
        open_dataset_source(good, image_column="pic")
    with pytest.raises(ValueError, match="bad dataset source"):
        open_dataset_source("hf:a:b:c:d")


def test_dataset_with_decoded_column_stays_lazy_and_validated():
    import datasets

    ds = datasets.Dataset.from_dict(
        {"image": [Image.fromarray(rand_rgb(4, 4)), Image.fromarray(rand_rgb(16, 16))]},
        features=datasets.Features({"image": datasets.Image()}))
    errors: list = []
    recs = list(iter_images(ds, skip_bad=True, errors=errors))
    assert len(recs) == 1 and "too small" in errors[0][1]


# --------------------------------------------------------------------------- geometry


def test_center_crop_square_offsets():
    arr = np.zeros((20, 31, 3), np.uint8)
    arr[:, :, 0] = np.arange(31)
    crop = center_crop_square(Image.fromarray(arr))
    assert crop.size == (20, 20)
    assert np.asarray(crop)[0, 0, 0] == 5  # floor((31 - 20) / 2)
    tall = center_crop_square(Image.fromarray(np.zeros((41, 10, 3), np.uint8)))
    assert tall.size == (10, 10)


def test_prepare_image_crop_then_bicubic():
    arr = rand_rgb(60, 90)
    img = Image.fromarray(arr)
    out = prepare_image(img, 32)
    assert out.mode == "RGB" and out.size == (32, 32)
    ref = img.crop((15, 0, 75, 60)).resize((32, 32), Image.Resampling.BICUBIC)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(ref))
    assert np.asarray(img.crop((15, 0, 75, 60)).resize((32, 32))).tolist() == \
        np.asarray(out).tolist()  # PIL's default resize filter is the same
    same = prepare_image(Image.fromarray(rand_rgb(16, 16)), 16)
    assert same.size == (16, 16)
    grey = prepare_image(Image.new("L", (10, 20), 7), 8)
    assert grey.mode == "RGB" and np.asarray(grey).max() == 7


# --------------------------------------------------------------------------- demo


def test_demo_image_paths():
    paths = demo_image_paths()
    assert [p.name for p in paths] == sorted(images.DEMO_IMAGE_NAMES)
    assert len(paths) == 9
    for p in paths:
        rec = load_image(p)
        assert rec.original_mode == "RGB" and min(rec.width, rec.height) >= 256


def test_demo_image_paths_missing(monkeypatch, tmp_path):
    monkeypatch.setattr(images.demo, "_skimage_data_dir", lambda: tmp_path)
    with pytest.raises(FileNotFoundError, match="astronaut.png"):
        demo_image_paths()


# --------------------------------------------------------------------------- file names and special files


def test_non_utf8_file_name_is_loaded_and_recorded_losslessly(tmp_path):
    Image.fromarray(rand_rgb()).save(tmp_path / "ok.png")
    raw = os.fsencode(tmp_path) + b"/caf\xe9.png"
    with open(raw, "wb") as f:
        Image.fromarray(rand_rgb()).save(f, format="PNG")
    records = {r.source: r for r in iter_images(tmp_path)}
    odd = records[str(tmp_path / "caf\\xe9.png")]  # printable: the undecodable byte as a backslash escape
    odd.source.encode("utf-8")  # writable to JSON / UTF-8 files as it is
    assert bytes.fromhex(odd.source_bytes) == raw and os.fsencode(odd.path) == raw
    assert records[str(tmp_path / "ok.png")].source_bytes is None
    listed = tmp_path / "list.txt"
    listed.write_bytes(raw + b"\n")  # a list file naming it in the file system's bytes
    assert [r.sha256 for r in iter_images(listed)] == [odd.sha256]


def test_bad_non_utf8_file_is_skipped_with_a_printable_name(tmp_path):
    Image.fromarray(rand_rgb()).save(tmp_path / "ok.png")
    with open(os.fsencode(tmp_path) + b"/bad\xff.png", "wb") as f:
        f.write(b"not an image")
    errors = []
    assert len(list(iter_images(tmp_path, skip_bad=True, errors=errors))) == 1
    assert errors[0][0] == str(tmp_path / "bad\\xff.png") and "not an image" in errors[0][1]
    with pytest.raises(BadImageError, match=r"bad\\xff\.png"):
        list(iter_images(tmp_path))


def test_fifo_is_named_a_fifo_not_an_empty_file(tmp_path):
    Image.fromarray(rand_rgb()).save(tmp_path / "ok.png")
    os.mkfifo(tmp_path / "pipe.png")  # opening it would block: it must be refused from its status
    err = assert_bad(tmp_path / "pipe.png", "fifo", code="unreadable")
    assert "not a regular file" in err.reason and "empty" not in err.reason
    errors = []
    assert len(list(iter_images(tmp_path, skip_bad=True, errors=errors))) == 1
    assert errors == [(str(tmp_path / "pipe.png"), err.reason)]


def _deny_listing(monkeypatch, folder):
    """Listing ``folder`` raises PermissionError, as for a folder without read permission (tests run as root)."""
    real = os.scandir

    def scandir(path="."):
        if os.fspath(path) == os.fspath(folder):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)


def test_unreadable_sub_folder_is_named_or_listed_with_skip_bad(tmp_path, monkeypatch):
    Image.fromarray(rand_rgb()).save(tmp_path / "ok.png")
    (tmp_path / "locked").mkdir()
    Image.fromarray(rand_rgb()).save(tmp_path / "locked" / "hidden.png")
    _deny_listing(monkeypatch, tmp_path / "locked")
    with pytest.raises(BadImageError) as info:
        list(iter_images(tmp_path))
    assert info.value.source == str(tmp_path / "locked") and "Permission denied" in str(info.value)
    assert "\n" not in str(info.value) and info.value.code == "unreadable_folder"
    errors = []
    assert [os.path.basename(r.source) for r in iter_images(tmp_path, skip_bad=True, errors=errors)] == ["ok.png"]
    assert errors[0][0] == str(tmp_path / "locked") and "cannot list this folder" in errors[0][1]


def test_unreadable_image_folder_fails_in_one_line_in_the_cli(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from sdaudit.cli import app

    (tmp_path / "images").mkdir()
    _deny_listing(monkeypatch, tmp_path / "images")
    result = CliRunner().invoke(app, ["extract", "--model", "tiny", "--images", str(tmp_path / "images"),
                                      "--out", str(tmp_path / "store"), "--size", "64"])
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert str(tmp_path / "images") in result.output.replace("\n", "") and "Permission denied" in result.output


def test_unsupported_image_format_is_listed_as_skipped(tmp_path, monkeypatch):
    Image.fromarray(rand_rgb()).save(tmp_path / "ok.png")
    Image.fromarray(rand_rgb()).save(tmp_path / "photo.heic", format="PNG")  # HEIC bytes or not: same listing
    (tmp_path / "notes.txt").write_text("not an image, ignored silently")
    registered = {k: v for k, v in Image.registered_extensions().items() if k != ".heic"}
    monkeypatch.setattr(Image, "registered_extensions", lambda: registered)  # no HEIC plugin installed
    errors = []
    assert [os.path.basename(r.source) for r in iter_images(tmp_path, errors=errors)] == ["ok.png"]
    assert errors == [(str(tmp_path / "photo.heic"),
                       "'.heic' is not a supported image format here; convert it to PNG or JPEG")]
    # with a plugin that reads it (e.g. pillow-heif registers '.heic'), it is an image like any other
    monkeypatch.setattr(Image, "registered_extensions", lambda: {**registered, ".heic": "HEIF"})
    errors = []
    assert len(list(iter_images(tmp_path, errors=errors))) == 2 and errors == []


def test_sdaudit_output_folders_are_left_out_of_scans(tmp_path):
    Image.fromarray(rand_rgb()).save(tmp_path / "ok.png")
    out = tmp_path / "audit-out"
    (out / "figures").mkdir(parents=True)
    (out / "results.json").write_text('{\n "format": "sdaudit-audit/1",\n "created": "now"\n}')
    Image.fromarray(rand_rgb()).save(out / "figures" / "quantitative.png")
    errors = []
    assert [os.path.basename(r.source) for r in iter_images(tmp_path, errors=errors)] == ["ok.png"]
    assert errors[0][0] == str(out) and "sdaudit" in errors[0][1]
    # an audit written into the image folder itself: its figures folder is left out
    (tmp_path / "results.json").write_text('{\n "format": "sdaudit-audit/1"\n}')
    (tmp_path / "figures").mkdir()
    Image.fromarray(rand_rgb()).save(tmp_path / "figures" / "qualitative.png")
    errors = []
    assert [os.path.basename(r.source) for r in iter_images(tmp_path, errors=errors)] == ["ok.png"]
    assert sorted(e[0] for e in errors) == [str(out), str(tmp_path / "figures")]
