"""The explorer's HTTP API (``sdaudit explore``): every endpoint, hostile requests, labels, uploads, threads."""

from __future__ import annotations

import asyncio
import io
import json
import struct
import threading
import zlib
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from sdaudit.analyses import MEASURES, load_labels, norm_map, save_labels, similarity_map
from sdaudit.analyses.synthetic import anomaly_features
from sdaudit.explorer import create_app
from sdaudit.images import demo_image_paths
from sdaudit.store import ImageEntry, create_store, open_store

REF = "up_blocks[1].upsamplers[0]"
FINE = "up_blocks[3].attentions[2]"  # 16x16 at 128 px
MUTATE = {"X-Requested-By": "sdaudit"}
BASE = "http://127.0.0.1"


@pytest.fixture(scope="module")
def store_path(tiny, tmp_path_factory):
    """A tiny-model store: 3 demo photos at 128 px, every layer (16x16 at the finest). Built once per
    session (the browser tests use the same one) and never written to by the tests."""
    from sdaudit.extraction import extract

    path = tmp_path_factory.getbasetemp() / "explore-tiny-128"
    if not (path.exists() and open_store(path).num_images == 3):
        extract(tiny, [str(p) for p in demo_image_paths()[:3]], path, layers="all", size=128, progress=False)
    return path


@pytest.fixture(scope="module")
def planted_path(tmp_path_factory):
    """A synthetic store with planted high-norm patches at the reference layer (and a second layer)."""
    syn = anomaly_features(4, 16, 16, ratio=4.0, clean_fraction=0.0, max_per_image=1, seed=3, dtype=np.float32)
    path = tmp_path_factory.mktemp("explore-planted") / "store"
    shapes = {"mid_block.resnets[0]": (16, 8, 8), REF: (16, 16, 16)}
    config = {"model": {"name": "synthetic"}, "protocol": "clean", "timestep": 50, "seed": 0, "size": 64,
              "prompt": "", "layers": list(shapes), "dtype": "float16"}
    store = create_store(path, config, shapes, capacity=4)
    rng = np.random.default_rng(0)
    arrays = {"mid_block.resnets[0]": rng.standard_normal((4, 16, 8, 8)).astype(np.float16),
              REF: syn.features.astype(np.float16)}
    entries = [ImageEntry(i, f"/data/img{i}.png", f"{i:064x}", 64, 64, "RGB") for i in range(4)]
    store.write_batch(0, arrays, entries, inputs=rng.integers(0, 256, (4, 64, 64, 3), dtype=np.uint8))
    return path, syn.anomalies


@pytest.fixture(scope="module")
def client(store_path, tmp_path_factory):
    labels = tmp_path_factory.mktemp("explore-labels") / "labels.npy"
    with TestClient(create_app([store_path], labels_path=labels), base_url=BASE) as c:
        yield c


@pytest.fixture(scope="module")
def store(store_path):
    return open_store(store_path)


def detail(r) -> str:
    body = r.json()
    assert isinstance(body.get("detail"), str) and body["detail"], body
    return body["detail"]


def raw_get(app, path: bytes, query: bytes = b"") -> tuple[int, bytes]:
    """Send one GET straight to the ASGI app, with the path exactly as given (no client-side
    normalisation of ``..``), the way uvicorn passes it on: percent-decoded ``path``, raw ``raw_path``."""
    from urllib.parse import unquote_to_bytes

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
             "path": unquote_to_bytes(path).decode("utf-8", "replace"), "raw_path": path, "query_string": query,
             "root_path": "", "headers": [(b"host", b"127.0.0.1:8765")], "client": ("127.0.0.1", 5000),
             "server": ("127.0.0.1", 8765)}
    out = {"status": None, "body": b""}

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        if message["type"] == "http.response.start":
            out["status"] = message["status"]
        elif message["type"] == "http.response.body":
            out["body"] += message.get("body", b"")

    asyncio.run(app(scope, receive, send))
    return out["status"], out["body"]


def png_bytes(seed: int = 0, size=(40, 48)) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def bomb_png(width: int, height: int) -> bytes:
    """A valid PNG header claiming ``width`` x ``height`` pixels, with almost no pixel data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


# ----------------------------------------------------------------------------------------- page, info
def test_page_and_assets(client):
    r = client.get("/")
    assert r.status_code == 200 and "text/html" in r.headers["content-type"]
    assert "/static/app.js" in r.text and "default-src 'self'" in r.headers["content-security-policy"]
    assert "http://" not in r.text and "https://" not in r.text  # nothing from a CDN
    page = r.text
    for name, kind in (("app.js", "javascript"), ("maps.js", "javascript"), ("link.js", "javascript"),
                       ("style.css", "css"), ("index.html", "html")):
        assert name == "index.html" or f"/static/{name}" in page
        r = client.get(f"/static/{name}")
        assert r.status_code == 200 and kind in r.headers["content-type"]
    assert not any("https://" in client.get(f"/static/{name}").text for name in ("app.js", "maps.js", "link.js"))
    assert client.get("/static/nope.js").status_code == 404


def test_info_describes_stores(client, store):
    info = client.get("/api/info").json()
    assert info["measures"] == list(MEASURES) and info["model"] is None
    (s,) = info["stores"]
    assert s["index"] == 0 and s["num_images"] == 3 and s["model"] == "tiny" and s["timestep"] == 50
    assert s["protocol"] == "clean" and s["size"] == 128 and s["reference_layer"] == REF
    assert [l["name"] for l in s["layers"]] == store.layers
    fine = next(l for l in s["layers"] if l["name"] == FINE)
    assert (fine["rows"], fine["cols"], fine["block"], fine["kind"]) == (16, 16, "up_blocks[3]", "attn")
    assert s["can_upload"] is False and "--model" in s["upload_error"]


def test_images_and_thumbnails(client, store):
    body = client.get("/api/stores/0/images").json()
    assert body["num_images"] == 3
    assert [i["name"] for i in body["images"]] == [Path(e.source).name for e in store.images]
    r = client.get("/api/stores/0/images/1/input.png")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    img = Image.open(io.BytesIO(r.content))
    assert img.size == (128, 128) and np.array_equal(np.asarray(img.convert("RGB")), store.read_inputs(1))
    assert Image.open(io.BytesIO(client.get("/api/stores/0/images/1/input.png?size=32").content)).size == (32, 32)
    assert client.get("/api/stores/0/images/1/input.png?size=100000").status_code == 400
    assert client.get("/api/stores/0/images/3/input.png").status_code == 404


# ----------------------------------------------------------------------------------------- data
def test_features_are_token_major_float16(client, store):
    for layer in (FINE, REF, "down_blocks[0].resnets[0]"):
        r = client.get("/api/stores/0/features", params={"layer": layer, "image": 2})
        assert r.status_code == 200 and r.headers["x-dtype"] == "float16" and r.headers["x-layout"] == "token-major"
        c, h, w = (int(v) for v in r.headers["x-shape"].split(","))
        assert (c, h, w) == store.layer_shape(layer)
        tokens = np.frombuffer(r.content, dtype="<f2").reshape(h * w, c)
        assert np.array_equal(tokens.T.reshape(c, h, w), store.read(layer, 2))
    # diffusers' dotted spelling names the same layer
    r = client.get("/api/stores/0/features", params={"layer": "up_blocks.1.upsamplers.0", "image": 0})
    assert r.status_code == 200 and r.headers["x-layer"] == REF


def test_similarity_endpoint_equals_similarity_map(client, store):
    x = store.read(FINE, [0, 2])
    for measure in MEASURES:
        r = client.get("/api/stores/0/similarity", params={"layer": FINE, "images": "0,2", "ref_image": 2, "row": 5,
                                                            "col": 11, "measure": measure})
        assert r.status_code == 200, r.text
        np.testing.assert_allclose(np.array(r.json()["maps"]), similarity_map(x, (1, 5, 11), measure), rtol=1e-6,
                                   atol=1e-6)
    # a reference from an image that is not compared
    r = client.get("/api/stores/0/similarity", params={"layer": FINE, "images": "0", "ref_image": 1, "row": 0, "col": 0})
    ref = store.read(FINE, 1)[:, 0, 0]
    np.testing.assert_allclose(np.array(r.json()["maps"]), similarity_map(store.read(FINE, [0]), ref), atol=1e-6)


def test_norms_endpoint(client, store):
    body = client.get("/api/stores/0/norms", params={"layer": REF, "images": "1,0"}).json()
    assert body["images"] == [1, 0] and body["shape"] == [8, 8]
    np.testing.assert_allclose(np.array(body["maps"]), norm_map(store.read(REF, [1, 0])), rtol=1e-5)


# ----------------------------------------------------------------------------------------- hostile requests
@pytest.mark.parametrize("path", [
    b"/static/../app.py", b"/static/../state.py", b"/static/..%2fapp.py", b"/static/%2e%2e%2fapp.py",
    b"/static/%2e%2e/%2e%2e/%2e%2e/pyproject.toml", b"/static/..%5capp.py", b"/static//etc/passwd",
    b"/static/%2fetc%2fpasswd", b"/static/....//app.py", b"/static/.", b"/static/%00app.js",
    b"/../../etc/passwd", b"/%2e%2e/%2e%2e/etc/passwd", b"/api/stores/0/../../zarr.json",
    b"/api/stores/..%2f..%2f/images", b"/api/stores/0/images/0/..%2f..%2f..%2fzarr.json",
    b"/api/stores/0/zarr.json", b"/api/stores/0/layers/conv_in/c/0/0/0/0",
])
def test_path_traversal_is_refused(client, path):
    status, body = raw_get(client.app, path)
    assert 400 <= status < 500, (path, status)
    for secret in (b"import ", b"root:", b"zarr_format", b"[project]", b"sha256"):
        assert secret not in body, (path, body[:200])


@pytest.mark.parametrize("layer", ["../../zarr.json", "..%2f..%2fzarr.json", "layers/conv_in", "/etc/passwd",
                                   "conv_in/../../images.jsonl", "up_blocks[9].resnets[0]", "x" * 5000, "%00"])
def test_layers_are_checked_against_the_store(client, layer):
    r = client.get("/api/stores/0/features", params={"layer": layer, "image": 0})
    assert r.status_code == 404 and "unknown layer" in detail(r)
    status, body = raw_get(client.app, b"/api/stores/0/features", b"layer=" + layer.encode() + b"&image=0")
    assert status == 404 and b"zarr_format" not in body


def test_unknown_store_and_out_of_range(client):
    for url in ("/api/stores/1/images", "/api/stores/-1/images", "/api/stores/99999999999/presets",
                "/api/stores/1/labels", "/api/stores/1/features?layer=conv_in&image=0"):
        r = client.get(url)
        assert r.status_code == 404 and "unknown store index" in detail(r), url
    r = client.get("/api/stores/abc/images")
    assert r.status_code == 422 and "bad request" in detail(r)
    cases = [
        ("/api/stores/0/features", {"layer": FINE, "image": 3}, 404, "out of range"),
        ("/api/stores/0/features", {"layer": FINE, "image": -1}, 404, "out of range"),
        ("/api/stores/0/features", {"layer": FINE}, 400, "missing 'image'"),
        ("/api/stores/0/features", {"image": 0}, 400, "missing 'layer'"),
        ("/api/stores/0/features", {"layer": FINE, "image": "1e9"}, 422, "image"),
        ("/api/stores/0/norms", {"layer": FINE, "images": "0,7"}, 404, "out of range"),
        ("/api/stores/0/norms", {"layer": FINE, "images": "0,;1"}, 400, "bad image index"),
        ("/api/stores/0/norms", {"layer": FINE, "images": ","}, 400, "no image"),
        ("/api/stores/0/norms", {"layer": FINE, "images": ",".join(["0"] * 70 + ["1"])}, 200, None),
        ("/api/stores/0/similarity", {"layer": FINE, "images": "0", "ref_image": 0, "row": 16, "col": 0}, 404,
         "outside the 16x16 grid"),
        ("/api/stores/0/similarity", {"layer": FINE, "images": "0", "ref_image": 0, "row": 0, "col": -1}, 404,
         "outside"),
        ("/api/stores/0/similarity", {"layer": FINE, "images": "0", "ref_image": 5, "row": 0, "col": 0}, 404,
         "out of range"),
        ("/api/stores/0/similarity", {"layer": FINE, "images": "0", "row": 0, "col": 0}, 400, "missing reference"),
        ("/api/stores/0/similarity", {"layer": FINE, "images": "0", "ref_image": 0, "row": 0, "col": 0,
                                      "measure": "euclid"}, 400, "unknown measure"),
        ("/api/stores/0/anomalies", {"layer": "nope", "images": "0"}, 404, "unknown layer"),
        ("/api/stores/0/anomalies", {"layer": REF}, 400, "missing 'images'"),
    ]
    for url, params, status, text in cases:
        r = client.get(url, params=params)
        assert r.status_code == status, (url, params, r.text)
        if text:
            assert text in detail(r), (url, params)


ENDPOINTS = [("GET", "images", {}), ("GET", "images/0/input.png", {}), ("GET", "features", {"image": 0}),
             ("GET", "norms", {"images": "0"}), ("GET", "anomalies", {"images": "0"}),
             ("GET", "channels", {"images": "0"}),
             ("GET", "similarity", {"images": "0", "ref_image": 0, "row": 0, "col": 0}), ("GET", "presets", {}),
             ("GET", "labels", {}), ("GET", "labels.npy", {}), ("POST", "labels/upload", {}),
             ("POST", "images", {})]
LAYER_ENDPOINTS = ["features", "norms", "anomalies", "channels", "similarity", "labels/upload"]


@pytest.mark.parametrize("method, path, params", ENDPOINTS)
def test_every_endpoint_checks_its_shared_parameters_alike(client, method, path, params):
    """One dependency per shared parameter: the same message from every endpoint that takes it."""
    headers = MUTATE if method != "GET" else {}
    r = client.request(method, f"/api/stores/7/{path}", params={"layer": FINE, **params}, headers=headers,
                       content=b"x" if method != "GET" else None)
    assert r.status_code == 404 and detail(r).startswith("unknown store index 7: 1 store(s) are open"), r.text
    if path in LAYER_ENDPOINTS:
        r = client.request(method, f"/api/stores/0/{path}", params={**params, "layer": "up_blocks[9].resnets[0]"},
                           headers=headers, content=b"x" if method != "GET" else None)
        assert r.status_code == 404 and detail(r) == ("unknown layer 'up_blocks[9].resnets[0]' for store 0; "
                                                      "see /api/info for its layers"), r.text
    if "images" in params:
        r = client.get(f"/api/stores/0/{path}", params={**params, "layer": FINE, "images": "0,9"})
        assert r.status_code == 404 and detail(r) == "image index 9 out of range: store 0 has 3 images", r.text


def test_thumbnail_size_is_named(client):
    r = client.get("/api/stores/0/images/0/input.png", params={"size": 7})
    assert r.status_code == 400 and detail(r) == "size must be between 8 and 4096 pixels, got 7"
    r = client.put("/api/stores/0/labels", json={"layer": "nope", "rows": []}, headers=MUTATE)
    assert r.status_code == 404 and "unknown layer 'nope'" in detail(r)


def test_guards_host_header_and_mutations(client):
    r = client.get("/api/info", headers={"Host": "evil.example:8765"})
    assert r.status_code == 400 and "Host" in detail(r)
    assert client.get("/api/info", headers={"Host": "localhost:8765"}).status_code == 200
    body = {"layer": REF, "image": 0, "x": 1, "y": 1}
    r = client.post("/api/stores/0/labels/toggle", json=body)  # no X-Requested-By: a cross-site form could do this
    assert r.status_code == 403 and "X-Requested-By" in detail(r)
    r = client.post("/api/stores/0/labels/toggle", content=json.dumps(body), headers={"Content-Type": "text/plain"})
    assert r.status_code == 403
    r = client.post("/api/stores/0/labels/toggle", content=b"{not json", headers={**MUTATE, "Content-Type": "application/json"})
    assert r.status_code == 422 and "bad request" in detail(r)
    r = client.post("/api/stores/0/labels/toggle", json={"layer": REF}, headers=MUTATE)
    assert r.status_code == 422 and "image" in detail(r)


# ----------------------------------------------------------------------------------------- anomalies, presets
def test_anomalies_and_presets_on_planted_store(planted_path):
    path, truth = planted_path
    with TestClient(create_app([path]), base_url=BASE) as c:
        body = c.get("/api/stores/0/anomalies", params={"layer": REF, "images": "0,1,2,3"}).json()
        assert body["grid"] == [16, 16]
        found = {(d["image"], d["x"], d["y"]) for ds in body["detections"].values() for d in ds}
        assert {tuple(r) for r in truth.tolist()} <= found
        presets = c.get("/api/stores/0/presets").json()
        a = presets["anomaly"]
        assert a["layer"] == REF and (a["detection"]["image"], a["detection"]["x"], a["detection"]["y"]) in found
        assert a["image"] == a["images"][0] and a["detection"]["x"] <= a["col"] <= a["detection"]["x"] + 1
        assert presets["corner"]["layer"] == "mid_block.resnets[0]"
        assert (presets["corner"]["row"], presets["corner"]["col"]) in {(0, 0), (0, 7), (7, 0), (7, 7)}
        assert presets["positional"]["layer"] in (REF, "mid_block.resnets[0]")


def test_presets_on_tiny_store(client, store):
    presets = client.get("/api/stores/0/presets").json()
    assert set(presets) == {"positional", "corner", "anomaly"}
    for name in ("positional", "corner"):
        p = presets[name]
        assert p["layer"] in store.layers and p["measure"] == "cosine" and p["view"] == "similarity"
        _, h, w = store.layer_shape(p["layer"])
        assert 0 <= p["row"] < h and 0 <= p["col"] < w and set(p["images"]) <= {0, 1, 2} and p["description"]
    assert presets["corner"]["layer"].startswith(("down_blocks", "mid_block"))
    assert presets["anomaly"].get("unavailable") or presets["anomaly"]["layer"] in store.layers


# ----------------------------------------------------------------------------------------- labels
def test_label_toggle_save_and_reload(store_path, store, tmp_path):
    labels = tmp_path / "my_labels.npy"
    with TestClient(create_app([store_path], labels_path=labels), base_url=BASE) as c:
        assert c.get("/api/stores/0/labels").json() == {"path": str(labels), "layer": None, "grid": None, "rows": [],
                                                        "saved": False}
        r = c.post("/api/stores/0/labels/toggle", json={"layer": REF, "image": 1, "x": 3, "y": 4, "snap": False},
                   headers=MUTATE)
        assert r.status_code == 200 and r.json()["action"] == "added" and r.json()["row"] == [1, 3, 4]
        # snapping: the 2x2 window containing the clicked token with the largest summed norm, inside the grid
        r = c.post("/api/stores/0/labels/toggle", json={"layer": REF, "image": 2, "x": 7, "y": 0}, headers=MUTATE)
        assert r.json()["row"] == [2, 6, 0]
        r = c.post("/api/stores/0/labels/toggle", json={"layer": REF, "image": 0, "x": 4, "y": 4}, headers=MUTATE)
        x0, y0 = r.json()["row"][1:]
        norms = norm_map(store.read(REF, [0]))[0]
        sums = {(x, y): float(norms[y:y + 2, x:x + 2].sum()) for x in (3, 4) for y in (3, 4)}
        assert (x0, y0) == max(sums, key=sums.get)
        rows = load_labels(labels, grid=8, n_images=3)
        assert rows.dtype == np.int64 and sorted(map(tuple, rows.tolist())) == sorted([(1, 3, 4), (2, 6, 0), (0, x0, y0)])
        side = json.loads(labels.with_suffix(".json").read_text())
        assert side["layer"] == REF and side["grid"] == [8, 8] and side["count"] == 3
        # a click inside a label's patch removes it
        r = c.post("/api/stores/0/labels/toggle", json={"layer": REF, "image": 1, "x": 4, "y": 5}, headers=MUTATE)
        assert r.json()["action"] == "removed" and r.json()["row"] == [1, 3, 4]
        assert (1, 3, 4) not in map(tuple, load_labels(labels).tolist())
        # editing on another layer while labels exist is refused, clearly
        r = c.post("/api/stores/0/labels/toggle", json={"layer": FINE, "image": 0, "x": 1, "y": 1}, headers=MUTATE)
        assert r.status_code == 409 and REF in detail(r)
        r = c.post("/api/stores/0/labels/toggle", json={"layer": REF, "image": 0, "x": 8, "y": 0}, headers=MUTATE)
        assert r.status_code == 404 and "outside" in detail(r)
        r = c.post("/api/stores/0/labels/toggle", json={"layer": REF, "image": 3, "x": 0, "y": 0}, headers=MUTATE)
        assert r.status_code == 404
        dl = c.get("/api/stores/0/labels.npy")
        assert np.array_equal(np.load(io.BytesIO(dl.content)), load_labels(labels))
        saved = c.get("/api/stores/0/labels").json()["rows"]
    # a new explorer on the same file starts from the saved labels
    with TestClient(create_app([store_path], labels_path=labels), base_url=BASE) as c:
        body = c.get("/api/stores/0/labels").json()
        assert body["rows"] == saved and body["layer"] == REF and body["saved"] is True
        # clear, then label another layer
        r = c.put("/api/stores/0/labels", json={"layer": FINE, "rows": []}, headers=MUTATE)
        assert r.status_code == 200 and r.json()["rows"] == [] and r.json()["layer"] == FINE
        r = c.put("/api/stores/0/labels", json={"layer": FINE, "rows": [[0, 15, 0]]}, headers=MUTATE)
        assert r.status_code == 200 and r.json()["grid"] == [16, 16]
        r = c.put("/api/stores/0/labels", json={"layer": FINE, "rows": [[0, 16, 0]]}, headers=MUTATE)
        assert r.status_code == 400 and "outside the 16x16 grid" in detail(r)
        for rows in ([[0, 1]], [[0, 1, 2], [0, 1]], [[0, 2**70, 0]], [[-1, 0, 0]], [[5, 0, 0]]):
            r = c.put("/api/stores/0/labels", json={"layer": FINE, "rows": rows}, headers=MUTATE)
            assert r.status_code in (400, 422) and detail(r), rows
    assert json.loads(labels.with_suffix(".json").read_text())["layer"] == FINE


def test_label_file_upload_and_published_convention(store_path, tmp_path):
    published = tmp_path / "published.npy"
    save_labels(published, np.array([[0, 2, 3], [2, 6, 6]]), grid=8)
    labels = tmp_path / "work.npy"
    with TestClient(create_app([store_path], labels_path=labels), base_url=BASE) as c:
        r = c.post("/api/stores/0/labels/upload", content=published.read_bytes(), headers=MUTATE)
        assert r.status_code == 200 and r.json()["layer"] == REF and r.json()["rows"] == [[0, 2, 3], [2, 6, 6]]
        assert np.array_equal(load_labels(labels), [[0, 2, 3], [2, 6, 6]])
        bad = io.BytesIO()
        np.save(bad, np.array([[0, 9, 0]]))
        r = c.post(f"/api/stores/0/labels/upload?layer={REF}", content=bad.getvalue(), headers=MUTATE)
        assert r.status_code == 400 and "outside the 8x8 grid" in detail(r) and str(tmp_path) not in detail(r)
        r = c.post("/api/stores/0/labels/upload", content=b"not a numpy file", headers=MUTATE)
        assert r.status_code == 400 and "label file" in detail(r)
        r = c.post("/api/stores/0/labels/upload", content=b"", headers=MUTATE)
        assert r.status_code == 400 and "empty" in detail(r)
        r = c.post("/api/stores/0/labels/upload?layer=nope", content=published.read_bytes(), headers=MUTATE)
        assert r.status_code == 404
        assert c.get("/api/stores/0/labels").json()["rows"] == [[0, 2, 3], [2, 6, 6]]  # unchanged by the failures
    # a file without sidecar is read with the published convention (up_blocks[1].upsamplers[0])
    with TestClient(create_app([store_path], labels_path=published), base_url=BASE) as c:
        body = c.get("/api/stores/0/labels").json()
        assert body["layer"] == REF and body["rows"] == [[0, 2, 3], [2, 6, 6]]
    # a label file that does not fit the store is refused at start-up
    save_labels(tmp_path / "big.npy", np.array([[0, 20, 0]]))
    with pytest.raises(ValueError, match="outside the 8x8 grid"):
        create_app([store_path], labels_path=tmp_path / "big.npy")
    with pytest.raises(ValueError, match="at most one per store"):
        create_app([store_path], labels_path=[tmp_path / "a.npy", tmp_path / "b.npy"])


# ----------------------------------------------------------------------------------------- uploads
def test_upload_without_model_is_a_clear_4xx(client):
    r = client.post("/api/stores/0/images?name=a.png", content=png_bytes(), headers=MUTATE)
    assert r.status_code == 400 and "--model" in detail(r)


def test_upload_checks_and_extracts(tiny, store_path, tmp_path):
    import shutil

    path = tmp_path / "store"
    shutil.copytree(store_path, path)
    with TestClient(create_app([path], model=tiny, labels_path=tmp_path / "l.npy", max_upload_bytes=200_000),
                    base_url=BASE) as c:
        assert c.get("/api/info").json()["stores"][0]["can_upload"] is True
        post = lambda data, name="x.png": c.post(f"/api/stores/0/images?name={name}", content=data, headers=MUTATE)  # noqa: E731
        r = post(b"\x00" * 200_001)
        assert r.status_code == 413 and "too large" in detail(r)
        r = c.post("/api/stores/0/images?name=x.png", content=iter([b"\x00" * 100_000] * 3), headers=MUTATE)  # chunked
        assert r.status_code == 413 and "too large" in detail(r)
        r = post(b"this is not an image at all", "notes.png")
        assert r.status_code == 400 and "not an image" in detail(r) and "notes.png" in detail(r)
        r = post(bomb_png(100_000, 100_000), "bomb.png")
        assert r.status_code == 413 and "decompression bomb" in detail(r)
        r = post(bomb_png(9_000, 9_000), "bomb2.png")  # under Pillow's limit, over the explorer's
        assert r.status_code == 413 and "decompression bomb" in detail(r)
        r = post(png_bytes()[:60], "cut.png")
        assert r.status_code == 400
        r = post(b"", "empty.png")
        assert r.status_code == 400 and "empty" in detail(r)
        r = c.post("/api/stores/3/images?name=x.png", content=png_bytes(), headers=MUTATE)
        assert r.status_code == 404
        assert c.get("/api/stores/0/images").json()["num_images"] == 3  # nothing was added
        r = post(png_bytes(7), "../../etc/new photo.png")
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["added"] is True and body["image"]["index"] == 3 and body["store"]["num_images"] == 4
        source = Path(body["image"]["source"])  # kept beside the store; the name cannot steer where it goes
        assert source.parent.parent == path / "uploads" and source.name == "new_photo.png" and source.is_file()
        assert body["image"]["name"] == "new_photo.png"
        assert c.get("/api/stores/0/images").json()["num_images"] == 4
        feats = c.get("/api/stores/0/features", params={"layer": FINE, "image": 3})
        assert feats.status_code == 200
        assert open_store(path).config == open_store(store_path).config
        again = post(png_bytes(7), "again.png").json()
        assert again["added"] is False and again["image"]["index"] == 3
    # an explorer whose model is not the store's refuses uploads with a clear message
    planted = tmp_path / "other"
    shapes = {REF: (4, 8, 8)}
    other = create_store(planted, {"model": {"name": "synthetic"}, "size": 64, "layers": [REF]}, shapes)
    other.write_batch(0, {REF: np.ones((1, 4, 8, 8), np.float16)}, [ImageEntry(0, "a", "0" * 64, 64, 64, "RGB")],
                      inputs=np.zeros((1, 64, 64, 3), np.uint8))
    with TestClient(create_app([planted], model=tiny), base_url=BASE) as c:
        r = c.post("/api/stores/0/images?name=a.png", content=png_bytes(3), headers=MUTATE)
        assert r.status_code == 409 and "not the model of store" in detail(r)


# ----------------------------------------------------------------------------------------- threads
def test_concurrent_requests(store_path, store, tmp_path):
    labels = tmp_path / "labels.npy"
    app = create_app([store_path], labels_path=labels)
    errors: list = []
    expected = {i: store.read(FINE, i) for i in range(3)}

    def reader(k: int):
        try:
            with TestClient(app, base_url=BASE) as c:
                for j in range(6):
                    i = (k + j) % 3
                    r = c.get("/api/stores/0/features", params={"layer": FINE, "image": i})
                    assert r.status_code == 200
                    got = np.frombuffer(r.content, "<f2").reshape(256, -1).T.reshape(expected[i].shape)
                    assert np.array_equal(got, expected[i])
                    r = c.get("/api/stores/0/similarity", params={"layer": FINE, "images": "0,1,2", "ref_image": i,
                                                                   "row": k, "col": j, "measure": "l2"})
                    assert r.status_code == 200
                    assert c.get("/api/stores/0/anomalies", params={"layer": REF, "images": str(i)}).status_code == 200
        except Exception as e:  # noqa: BLE001
            errors.append(repr(e))

    def labeller(k: int):
        try:
            with TestClient(app, base_url=BASE) as c:
                for j in range(4):  # distinct, non-overlapping patches on image k
                    r = c.post("/api/stores/0/labels/toggle", json={"layer": REF, "image": k, "x": 2 * j, "y": 2 * (k % 4),
                                                                   "snap": False}, headers=MUTATE)
                    assert r.status_code == 200 and r.json()["action"] == "added", r.text
        except Exception as e:  # noqa: BLE001
            errors.append(repr(e))

    threads = [threading.Thread(target=reader, args=(k,)) for k in range(4)]
    threads += [threading.Thread(target=labeller, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    rows = load_labels(labels, grid=8, n_images=3)
    assert sorted(map(tuple, rows.tolist())) == sorted((k, 2 * j, 2 * (k % 4)) for k in range(3) for j in range(4))


# ----------------------------------------------------------------------------------------- several stores, CLI
def test_several_stores_addressed_by_index(store_path, planted_path):
    path, _ = planted_path
    with TestClient(create_app([store_path, path]), base_url=BASE) as c:
        stores = c.get("/api/info").json()["stores"]
        assert [(s["index"], s["model"], s["num_images"]) for s in stores] == [(0, "tiny", 3), (1, "synthetic", 4)]
        assert c.get("/api/stores/1/features", params={"layer": REF, "image": 3}).headers["x-shape"] == "16,16,16"
        r = c.get("/api/stores/1/features", params={"layer": FINE, "image": 0})  # a layer of store 0 only
        assert r.status_code == 404 and "unknown layer" in detail(r)
        assert c.get("/api/stores/2/images").status_code == 404


def test_cli_explore_errors_are_clear(store_path, tmp_path):
    import socket

    from typer.testing import CliRunner

    from sdaudit.cli import app

    runner = CliRunner()
    result = runner.invoke(app, ["explore", "--help"])
    assert result.exit_code == 0 and "--model" in result.output and "127.0.0.1" in result.output
    result = runner.invoke(app, ["explore", str(tmp_path / "missing")])
    assert result.exit_code == 2 and "does not exist" in result.output
    result = runner.invoke(app, ["explore", str(store_path), "--model", "no-such-model"])
    assert result.exit_code == 2 and "unknown model" in result.output
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        result = runner.invoke(app, ["explore", str(store_path), "--port", str(port),
                                     "--labels", str(tmp_path / "l.npy")])
    assert result.exit_code == 2 and "cannot listen" in result.output


def test_image_name_keeps_the_escape_of_a_non_utf8_byte():
    """Regression: 'caf\\xe9.png' (a printable non-UTF-8 name) was shown as 'xe9.png'."""
    from sdaudit.explorer.stores import image_summary
    from sdaudit.store import ImageEntry

    entry = ImageEntry(0, "/photos/caf\\xe9.png", "0" * 64, 8, 8, "RGB", "2f70686f746f732f636166e92e706e67")
    assert image_summary(entry)["name"] == "caf\\xe9.png"
