"""The explorer under hostile input: non-finite layers, oversized / stalled / aborted bodies, huge images,
Host headers, lenient JSON. Each test reproduces a defect found by a hostile test campaign."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import shutil
import socket
import time
import tracemalloc

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from sdaudit.explorer import create_app
from sdaudit.explorer import server
from sdaudit.images import demo_image_paths
from sdaudit.store import ImageEntry, create_store, open_store

REF = "up_blocks[1].upsamplers[0]"
MUTATE = {"X-Requested-By": "sdaudit"}
BASE = "http://127.0.0.1"


@pytest.fixture(scope="module")
def nan_store(tmp_path_factory):
    """A synthetic store whose reference layer holds NaN in image 1 (images 0 and 2 are finite)."""
    path = tmp_path_factory.mktemp("explore-nan") / "store"
    shapes = {REF: (8, 8, 8)}
    config = {"model": {"name": "synthetic"}, "protocol": "clean", "timestep": 50, "seed": 0, "size": 64,
              "prompt": "", "layers": [REF], "dtype": "float16"}
    store = create_store(path, config, shapes, capacity=3)
    x = np.random.default_rng(0).standard_normal((3, 8, 8, 8)).astype(np.float16)
    x[1, :, 2, 3] = np.nan
    entries = [ImageEntry(i, f"/data/img{i}.png", f"{i:064x}", 64, 64, "RGB") for i in range(3)]
    store.write_batch(0, {REF: x}, entries, inputs=np.zeros((3, 64, 64, 3), np.uint8))
    return path


@pytest.fixture(scope="module")
def nan_client(nan_store, tmp_path_factory):
    labels = tmp_path_factory.mktemp("explore-nan-labels") / "labels.npy"
    with TestClient(create_app([nan_store], labels_path=labels), base_url=BASE) as c:
        yield c


def asgi_call(app, method: str, path: str, chunks, *, headers=(), query: bytes = b"", pause: float | None = None,
              disconnect: bool = False, wait: float = 10.0):
    """Send one request straight to the ASGI app. ``chunks`` are the body parts; after them the client
    either drips (one byte per ``pause`` seconds), disconnects, or ends the body.
    Returns (status, body, bytes the app consumed)."""
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": query, "root_path": "",
             "headers": [(b"host", b"127.0.0.1:8765"), (b"x-requested-by", b"sdaudit"), *headers],
             "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 8765)}
    out = {"status": None, "body": b"", "consumed": 0}
    parts = list(chunks)

    async def receive():
        if parts:
            chunk = parts.pop(0)
            out["consumed"] += len(chunk)
            return {"type": "http.request", "body": chunk, "more_body": bool(parts) or pause is not None or disconnect}
        if disconnect:
            return {"type": "http.disconnect"}
        if pause is not None:
            await asyncio.sleep(pause)
            out["consumed"] += 1
            return {"type": "http.request", "body": b"0", "more_body": True}  # one byte per pause
        await asyncio.sleep(3600)  # the body has ended: only a disconnect would come

    async def send(message):
        if message["type"] == "http.response.start":
            out["status"] = message["status"]
        elif message["type"] == "http.response.body":
            out["body"] += message.get("body", b"")

    async def main():
        await asyncio.wait_for(app(scope, receive, send), wait)

    asyncio.run(main())
    return out["status"], out["body"], out["consumed"]


# ----------------------------------------------------------------------------------------- 9: NaN norms
def test_norms_of_a_layer_holding_nan_is_a_clean_409(nan_client):
    r = nan_client.get("/api/stores/0/norms", params={"layer": REF, "images": "0,1"})
    assert r.status_code == 409, r.text
    assert REF in r.json()["detail"] and "non-finite" in r.json()["detail"]
    assert nan_client.get("/api/stores/0/norms", params={"layer": REF, "images": "0,2"}).status_code == 200
    # snapping a label to the norm map of that image is refused the same way, not a 500
    r = nan_client.post("/api/stores/0/labels/toggle", json={"layer": REF, "image": 1, "x": 3, "y": 2},
                        headers=MUTATE)
    assert r.status_code == 409 and REF in r.json()["detail"]
    assert nan_client.get("/api/stores/0/presets").status_code == 200


# ----------------------------------------------------------------------------------------- 10: body size
def test_json_bodies_are_size_limited(nan_store, tmp_path):
    app = create_app([nan_store], labels_path=tmp_path / "l.npy")
    huge = json.dumps({"layer": REF, "rows": [[0, 1, 1]] * 400_000}).encode()  # ~4.4 MB
    with TestClient(app, base_url=BASE) as c:
        r = c.put("/api/stores/0/labels", content=huge, headers={**MUTATE, "Content-Type": "application/json"})
        assert r.status_code == 413 and "too large" in r.json()["detail"]
        from sdaudit.explorer.limits import MAX_JSON_BYTES, MAX_LABELS_BYTES

        assert str(MAX_LABELS_BYTES) in r.json()["detail"]
        r = c.put("/api/stores/0/labels", content=iter([huge[i:i + 65536] for i in range(0, len(huge), 65536)]),
                  headers={**MUTATE, "Content-Type": "application/json"})  # chunked: no Content-Length
        assert r.status_code == 413 and "too large" in r.json()["detail"]
        big_toggle = json.dumps({"layer": REF, "image": 0, "x": 1, "y": 1, "pad": "x" * MAX_JSON_BYTES}).encode()
        r = c.post("/api/stores/0/labels/toggle", content=big_toggle, headers={**MUTATE, "Content-Type": "application/json"})
        assert r.status_code == 413
        # the largest legitimate body still fits: a label list for 500 images, 64 labels each, spaced out
        rows = [[i % 3, (i // 3) % 7, (i // 21) % 7] for i in range(500 * 64)]
        body = json.dumps({"layer": REF, "rows": rows}, indent=1).encode()
        assert len(body) < MAX_LABELS_BYTES
        r = c.put("/api/stores/0/labels", content=body, headers={**MUTATE, "Content-Type": "application/json"})
        assert r.status_code == 200, r.text
    # a chunked body is not read past the limit (the 56 MB PUT that took the server to 2 GB)
    chunks = [b"[" + b"0" * 65535] * 100  # 6.5 MB, never ending in valid JSON
    status, _, consumed = asgi_call(app, "PUT", "/api/stores/0/labels", chunks,
                                    headers=[(b"content-type", b"application/json")])
    assert status == 413 and consumed <= MAX_LABELS_BYTES + 65536


# ----------------------------------------------------------------------------------------- 17: stalls, aborts
def test_stalled_body_is_aborted(nan_store, tmp_path):
    app = create_app([nan_store], labels_path=tmp_path / "l.npy", body_stall_s=0.3)
    start = time.monotonic()
    status, body, _ = asgi_call(app, "POST", "/api/stores/0/labels/upload", [b"\x93NUMPY"], pause=60, wait=10)
    assert status == 408 and "stalled" in json.loads(body)["detail"]
    assert time.monotonic() - start < 5
    # a client that drips bytes forever is stopped by the overall deadline
    app = create_app([nan_store], labels_path=tmp_path / "l.npy", body_stall_s=0.3, body_deadline_s=1.0)
    status, body, _ = asgi_call(app, "POST", "/api/stores/0/labels/upload", [b"\x93NUMPY"], pause=0.05, wait=10)
    assert status == 408 and "took longer" in json.loads(body)["detail"]


def test_aborted_upload_logs_one_line(nan_store, tmp_path, caplog):
    app = create_app([nan_store], labels_path=tmp_path / "l.npy")
    with caplog.at_level(logging.INFO):
        status, _, _ = asgi_call(app, "POST", "/api/stores/0/labels/upload", [b"\x93NUMPY" + b"0" * 1000],
                                 disconnect=True)
    assert status is None  # nobody to answer
    assert all(rec.exc_info is None for rec in caplog.records), [rec.getMessage() for rec in caplog.records]
    lines = [rec.getMessage() for rec in caplog.records if rec.name.startswith("sdaudit")]
    assert len(lines) == 1 and "disconnected" in lines[0] and "/labels/upload" in lines[0]
    assert not list(tmp_path.glob("l.*"))  # nothing saved


def test_serve_sets_uvicorn_timeouts(nan_store, monkeypatch):
    import uvicorn

    seen = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: seen.update(kw))
    monkeypatch.setattr(server, "_check_port_free", lambda host, port: None)
    server.serve([nan_store], port=8799, echo=lambda text: None)
    assert 0 < seen["timeout_keep_alive"] <= 10 and seen["h11_max_incomplete_event_size"] <= 65536
    assert seen.get("http") is server.TimedH11Protocol


# ----------------------------------------------------------------------------------------- 12, 18: Host
def test_listening_everywhere_keeps_a_host_allow_list(nan_store, monkeypatch):
    echoed = []
    app = server.build([nan_store], host="0.0.0.0", allowed_hosts=["explorer.lan"])
    names = server.allowed_host_names("0.0.0.0", ["explorer.lan"])
    assert "explorer.lan" in names and socket.gethostname().lower() in names and "127.0.0.1" in names
    with TestClient(app, base_url=BASE) as c:
        for host in ("evil.example", "evil.example:8765", "attacker.test:80"):
            r = c.get("/api/info", headers={"Host": host})
            assert r.status_code == 400 and "Host" in r.json()["detail"], host
        for host in (socket.gethostname(), f"{socket.gethostname()}:8765", "explorer.lan:8765", "127.0.0.1:8765"):
            assert c.get("/api/info", headers={"Host": host}).status_code == 200, host
    # and the start-up lines say which names are accepted
    import uvicorn

    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: None)
    monkeypatch.setattr(server, "_check_port_free", lambda host, port: None)
    server.serve([nan_store], host="0.0.0.0", port=8799, allowed_hosts=["explorer.lan"], echo=echoed.append)
    text = "\n".join(echoed)
    assert "explorer.lan" in text and "Host" in text and "--allowed-host" in text


def test_cli_explore_has_allowed_host_option(nan_store, monkeypatch):
    from typer.testing import CliRunner

    from sdaudit.cli import app

    seen = {}
    monkeypatch.setattr(server, "serve", lambda stores, **kw: seen.update(kw))
    import sdaudit.explorer as explorer

    monkeypatch.setattr(explorer, "serve", lambda stores, **kw: seen.update(kw))
    result = CliRunner().invoke(app, ["explore", str(nan_store), "--host", "0.0.0.0", "--allowed-host", "a.lan",
                                      "--allowed-host", "b.lan"])
    assert result.exit_code == 0, result.output
    assert seen["allowed_hosts"] == ["a.lan", "b.lan"]
    monkeypatch.undo()
    monkeypatch.setattr(server, "_check_port_free", lambda host, port: None)
    result = CliRunner().invoke(app, ["explore", str(nan_store), "--allowed-host", "evil.lan:80"])
    assert result.exit_code == 2 and "--allowed-host" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("host", ["localhost:abc", "localhost:", "localhost:0", "localhost:65536", "localhost:+80",
                                  "localhost:8 0", "127.0.0.1:80:80", "[::1]x", "[::1]:", "::1", "[::1", "",
                                  "localhost:٣".encode()])
def test_host_header_is_parsed_strictly(nan_client, host):
    r = nan_client.get("/api/info", headers={"Host": host})
    assert r.status_code == 400 and "Host" in r.json()["detail"], host


@pytest.mark.parametrize("host", ["localhost:8765", "LOCALHOST", "[::1]:8765", "[::1]", "127.0.0.1:65535"])
def test_good_host_headers_are_accepted(nan_client, host):
    assert nan_client.get("/api/info", headers={"Host": host}).status_code == 200, host


# ----------------------------------------------------------------------------------------- 18: strict JSON
@pytest.mark.parametrize("field, value", [("image", "0"), ("image", True), ("image", 0.0), ("image", 1.5),
                                          ("x", "1"), ("y", False), ("snap", 1), ("layer", 5)])
def test_image_indices_must_be_json_integers(nan_client, field, value):
    body = {"layer": REF, "image": 0, "x": 1, "y": 1, "snap": False, field: value}
    r = nan_client.post("/api/stores/0/labels/toggle", json=body, headers=MUTATE)
    assert r.status_code == 422 and field in r.json()["detail"], r.text


@pytest.mark.parametrize("rows", [[["0", 1, 1]], [[True, 1, 1]], [[0, 1.0, 1]]])
def test_label_rows_must_be_json_integers(nan_client, rows):
    r = nan_client.put("/api/stores/0/labels", json={"layer": REF, "rows": rows}, headers=MUTATE)
    assert r.status_code == 422, r.text


@pytest.mark.parametrize("images", ["1_0", "+2", "0x1", "٢", " 2 ,+0"])
def test_image_lists_are_plain_digits(nan_client, images):
    r = nan_client.get("/api/stores/0/norms", params={"layer": REF, "images": images})
    assert r.status_code == 400 and "bad image index" in r.json()["detail"], images


# ----------------------------------------------------------------------------------------- 11: huge uploads
def smooth_png(width: int, height: int, mode: str = "RGB") -> bytes:
    rng = np.random.default_rng(1)
    small = Image.fromarray(rng.integers(0, 256, (16, 16, len(mode)), dtype=np.uint8), mode)
    buf = io.BytesIO()
    small.resize((width, height), Image.BILINEAR).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


@pytest.fixture(scope="module")
def tiny_store_copy(tiny, tmp_path_factory):
    from sdaudit.extraction import extract

    path = tmp_path_factory.mktemp("explore-upload") / "store"
    extract(tiny, [str(p) for p in demo_image_paths()[:1]], path, layers="paper", size=64, progress=False)
    return path


def test_large_upload_peak_memory_is_bounded(tiny, tiny_store_copy, tmp_path):
    path = tmp_path / "store"
    shutil.copytree(tiny_store_copy, path)
    data = smooth_png(4000, 4000)
    app = create_app([path], model=tiny, labels_path=tmp_path / "l.npy")
    with TestClient(app, base_url=BASE) as c:
        tracemalloc.start()
        try:
            r = c.post("/api/stores/0/images?name=big.png", content=data, headers=MUTATE)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert r.status_code == 200, r.text
        # the old pipeline copied the 16-megapixel picture several times (57 bytes per pixel at peak)
        assert peak < 16 * 2**20, peak
        body = r.json()
        assert body["added"] is True and "downscaled" in body["message"] and "4000x4000" in body["message"]
        entry = open_store(path).images[-1]
        assert max(entry.width, entry.height) <= 4 * 64 and min(entry.width, entry.height) >= 2 * 64
        kept = Image.open(entry.source)
        assert kept.size == (entry.width, entry.height)
        # the same picture again is recognised, not added twice
        again = c.post("/api/stores/0/images?name=big2.png", content=data, headers=MUTATE).json()
        assert again["added"] is False and again["image"]["index"] == entry.index


def test_large_jpeg_upload_is_decoded_in_draft_mode(tiny, tiny_store_copy, tmp_path, monkeypatch):
    from PIL import ImageFile

    path = tmp_path / "store"
    shutil.copytree(tiny_store_copy, path)
    halves = np.zeros((2000, 3000, 3), np.uint8)
    halves[:, 1500:] = 255  # left half black, right half white, as stored
    buf = io.BytesIO()
    Image.fromarray(halves).save(buf, format="JPEG", quality=85, exif=_exif_rotated())
    decoded = []
    real_load = ImageFile.ImageFile.load

    def spy(img):
        decoded.append(img.size)
        return real_load(img)

    monkeypatch.setattr(ImageFile.ImageFile, "load", spy)
    with TestClient(create_app([path], model=tiny), base_url=BASE) as c:
        r = c.post("/api/stores/0/images?name=big.jpg", content=buf.getvalue(), headers=MUTATE)
    assert r.status_code == 200, r.text
    monkeypatch.undo()
    assert max(w * h for w, h in decoded) <= 3000 * 2000 // 4  # libjpeg scaled the picture while decoding
    assert "downscaled from 3000x2000" in r.json()["message"]
    kept = np.asarray(Image.open(open_store(path).images[-1].source).convert("L"), dtype=np.float32)
    # EXIF orientation 6 applied (a quarter turn clockwise): the black half is now on top
    assert kept[: kept.shape[0] // 4].mean() < 40 and kept[-kept.shape[0] // 4:].mean() > 215


def _exif_rotated() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees
    return exif.tobytes()


@pytest.fixture
def live_server(nan_store, tmp_path):
    """The explorer served by uvicorn on a free port, with short head / body / keep-alive timeouts."""
    import threading

    import uvicorn

    class Quick(server.TimedH11Protocol):
        head_timeout_s = 0.5

    app = create_app([nan_store], labels_path=tmp_path / "l.npy", body_stall_s=0.5)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(app, http=Quick, timeout_keep_alive=1, log_level="warning", lifespan="off")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not srv.started and time.monotonic() < deadline:
        time.sleep(0.02)
    yield sock.getsockname()[1]
    srv.should_exit = True
    thread.join(timeout=10)


def _read_until_closed(conn: socket.socket, limit_s: float) -> tuple[bytes, float]:
    conn.settimeout(limit_s)
    start, data = time.monotonic(), b""
    try:
        while chunk := conn.recv(65536):
            data += chunk
    except (socket.timeout, ConnectionResetError):
        pass
    return data, time.monotonic() - start


def test_stalled_connections_are_closed(live_server):
    port = live_server
    # a request head that never completes
    with socket.create_connection(("127.0.0.1", port)) as conn:
        conn.sendall(b"GET /api/info HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        data, took = _read_until_closed(conn, 5)
        assert data == b"" and took < 4
    # a connection that never sends anything
    with socket.create_connection(("127.0.0.1", port)) as conn:
        data, took = _read_until_closed(conn, 5)
        assert data == b"" and took < 4
    # a body that stops half-way: 408, then the connection is closed
    with socket.create_connection(("127.0.0.1", port)) as conn:
        conn.sendall(b"POST /api/stores/0/labels/upload HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Requested-By: sdaudit\r\n"
                     b"Content-Length: 1000\r\n\r\n\x93NUMPY")
        data, took = _read_until_closed(conn, 5)
        assert data.startswith(b"HTTP/1.1 408") and b"stalled" in data and took < 4
    # a finished request on a kept-alive connection: closed after the keep-alive time
    with socket.create_connection(("127.0.0.1", port)) as conn:
        conn.sendall(b"GET /api/info HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        data, took = _read_until_closed(conn, 5)
        assert data.startswith(b"HTTP/1.1 200") and took < 4
