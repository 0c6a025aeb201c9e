"""End to end: the explorer page in headless Chromium (Debian's /usr/bin/chromium, driven by Playwright).

The server runs in a background thread (uvicorn on 127.0.0.1, a free port) on a tiny-model store;
the page is used with the mouse and keyboard like a person would, and what it computed
(``window.sdaudit.lastMaps``) is checked against :func:`sdaudit.analyses.similarity_map`.
The page runs under its own Content-Security-Policy, so waiting is done by polling from Python.
"""

from __future__ import annotations

import contextlib
import os
import socket
import statistics
import threading
import time

import numpy as np
import pytest

from sdaudit.analyses import MEASURES, load_labels, similarity_map
from sdaudit.images import demo_image_paths
from sdaudit.store import open_store
from tests.conftest import require

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
REF = "up_blocks[1].upsamplers[0]"  # 8x8 at 128 px
FINE = "up_blocks[3].attentions[2]"  # 16x16 at 128 px


require(lambda: os.path.exists(CHROMIUM), f"{CHROMIUM} is not installed (apt-get install chromium)")
sync_playwright = require("playwright.sync_api", "the playwright Python package is not installed "
                          "(pip install playwright)").sync_playwright


@pytest.fixture(scope="module")
def store_path(tiny, tmp_path_factory):
    """3 demo photos at 128 px with the tiny model (shared with the API tests when run together)."""
    from sdaudit.extraction import extract

    path = tmp_path_factory.getbasetemp() / "explore-tiny-128"
    if not (path.exists() and open_store(path).num_images == 3):
        extract(tiny, [str(p) for p in demo_image_paths()[:3]], path, layers="all", size=128, progress=False)
    return path


@contextlib.contextmanager
def serving(app):
    """Run ``app`` with uvicorn on a free port of 127.0.0.1 in a background thread; yield its URL."""
    import uvicorn

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not srv.started:
        assert time.time() < deadline and thread.is_alive(), "server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        srv.should_exit = True
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def server(store_path, tmp_path_factory):
    from sdaudit.explorer import create_app

    labels = tmp_path_factory.mktemp("explore-browser-labels") / "labels.npy"
    with serving(create_app([store_path], labels_path=labels)) as url:
        yield url, labels


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser, server):
    with open_page(browser, server[0]) as pg:
        yield pg


@contextlib.contextmanager
def open_page(browser, url: str):
    """A fresh page at ``url``, once it has drawn; no page error or console error may occur while it is used."""
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    pg = context.new_page()
    problems: list[str] = []
    pg.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    pg.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    pg.goto(url)
    wait_for_drawn(pg)
    yield pg
    context.close()
    assert not problems, problems  # includes Content-Security-Policy violations


def wait_for_drawn(page) -> None:
    wait_for(page, "() => window.sdaudit && window.sdaudit.idle && document.querySelectorAll('.panel').length > 0")


def wait_for(page, js: str, arg=None, timeout: float = 20.0):
    """Poll ``js`` (a function expression) until it returns something truthy; return it."""
    deadline = time.time() + timeout
    while True:
        value = page.evaluate(js, arg)
        if value:
            return value
        if time.time() > deadline:
            raise AssertionError(f"timed out waiting for {js}")
        time.sleep(0.03)


def token_xy(page, panel: int, row: int, col: int, grid: tuple[int, int]) -> tuple[float, float]:
    box = page.locator(".stage").nth(panel).bounding_box()
    return box["x"] + (col + 0.5) * box["width"] / grid[1], box["y"] + (row + 0.5) * box["height"] / grid[0]


def last_maps(page) -> dict:
    return page.evaluate("""() => { const m = window.sdaudit.lastMaps;
        return m && {...m, values: m.values.map((a) => Array.from(a))}; }""")


def select_images(page, wanted: list[int]) -> None:
    """Click thumbnails until exactly ``wanted`` is selected."""
    for i in page.evaluate("() => window.sdaudit.state.selected.slice()"):
        if i not in wanted:
            page.click(f"#thumbs li[data-image='{i}']")
    for i in wanted:
        if i not in page.evaluate("() => window.sdaudit.state.selected"):
            page.click(f"#thumbs li[data-image='{i}']")
    wait_for(page, "(w) => window.sdaudit.idle && JSON.stringify(window.sdaudit.state.selected) === JSON.stringify(w)"
                   " && document.querySelectorAll('.panel').length === w.length", wanted)


def choose_layer(page, layer: str) -> None:
    page.select_option("#sel-layer", layer)
    wait_for(page, "(l) => window.sdaudit.idle && window.sdaudit.state.feats.length && "
                   "window.sdaudit.state.feats.every((f) => f.layer === l)", layer)


def test_hover_draws_similarity_maps(page, store_path):
    store = open_store(store_path)
    select_images(page, [0, 2])
    choose_layer(page, FINE)
    grid = store.layer_shape(FINE)[1:]
    x = store.read(FINE, [0, 2])

    page.mouse.move(*token_xy(page, 1, 5, 11, grid))  # image 2, row 5, col 11
    wait_for(page, "() => { const m = window.sdaudit.lastMaps; return m && m.ref.image === 2 && m.ref.row === 5 "
                   "&& m.ref.col === 11; }")
    maps = last_maps(page)
    assert maps["images"] == [0, 2] and maps["layer"] == FINE and maps["measure"] == "cosine"
    np.testing.assert_allclose(np.array(maps["values"]).reshape(2, *grid), similarity_map(x, (1, 5, 11), "cosine"),
                               rtol=1e-5, atol=1e-5)
    # every measure, for the same token
    for measure in MEASURES:
        page.select_option("#sel-measure", measure)
        wait_for(page, "(m) => window.sdaudit.lastMaps.measure === m", measure)
        got = np.array(last_maps(page)["values"]).reshape(2, *grid)
        want = similarity_map(x, (1, 5, 11), measure)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * float(np.abs(want).max()), err_msg=measure)
    page.select_option("#sel-measure", "cosine")
    # the token is marked on its image, the maps are drawn and a legend says what the colours mean
    assert page.locator(".panel").nth(1).locator("svg rect.m-ref").count() == 1
    assert page.locator(".panel").nth(0).locator("svg rect.m-same").count() == 1
    alpha = page.evaluate("() => Array.from(document.querySelectorAll('.panel canvas')).map((c) => "
                          "c.getContext('2d').getImageData(0, 0, c.width, c.height).data[3])")
    assert alpha == [255, 255]
    assert page.inner_text("#legend-title") == "cosine similarity" and page.inner_text("#legend-max")

    # a click pins the token: hovering elsewhere no longer changes the maps; Esc releases it
    page.mouse.click(*token_xy(page, 0, 2, 3, grid))
    wait_for(page, "() => window.sdaudit.state.pinned && window.sdaudit.lastMaps.ref.image === 0")
    page.mouse.move(*token_xy(page, 1, 9, 9, grid))
    assert last_maps(page)["ref"] == {"image": 0, "row": 2, "col": 3}
    np.testing.assert_allclose(np.array(last_maps(page)["values"]).reshape(2, *grid),
                               similarity_map(x, (0, 2, 3), "cosine"), rtol=1e-5, atol=1e-5)
    page.keyboard.press("Escape")
    page.mouse.move(*token_xy(page, 1, 9, 8, grid))
    wait_for(page, "() => !window.sdaudit.state.pinned && window.sdaudit.lastMaps.ref.row === 9 "
                   "&& window.sdaudit.lastMaps.ref.col === 8")

    # speed: redraw time of every map per hover (compute + paint), measured in the page
    page.evaluate("() => { window.sdaudit.redrawTimes.length = 0; }")
    for k in range(40):
        page.mouse.move(*token_xy(page, k % 2, (3 * k) % grid[0], (7 * k + 1) % grid[1], grid))
    times = page.evaluate("() => window.sdaudit.redrawTimes.slice()")
    assert len(times) >= 30
    print(f"\nhover redraw, 2 images at {grid[0]}x{grid[1]}: median {statistics.median(times):.2f} ms, "
          f"max {max(times):.2f} ms")
    assert statistics.median(times) < 50


def test_norm_view_labels_and_keyboard(page, server, store_path):
    _, labels_path = server
    store = open_store(store_path)
    select_images(page, [0, 2])
    page.click("#view-seg button[data-view=norm]")
    choose_layer(page, REF)
    wait_for(page, "() => window.sdaudit.lastMaps && window.sdaudit.lastMaps.view === 'norm'")
    assert page.is_visible("#labelbar") and page.inner_text("#legend-title") == "token L2 norm"
    norms = np.array(last_maps(page)["values"]).reshape(2, 8, 8)
    np.testing.assert_allclose(norms, np.linalg.norm(store.read(REF, [0, 2]).astype(np.float32), axis=1), rtol=1e-5)

    # without label mode a click writes nothing (and says how to label)
    page.mouse.click(*token_xy(page, 1, 3, 5, (8, 8)))
    wait_for(page, "() => window.sdaudit.idle && document.querySelector('#message').textContent.includes('Label mode')")
    assert page.evaluate("() => window.sdaudit.state.labels.rows.length") == 0 and not labels_path.exists()
    assert page.inner_text("#btn-label-mode") == "Label mode: off"
    # label mode on, visibly: a click labels the 2x2 patch around the token, in the published format
    page.click("#btn-label-mode")
    assert page.inner_text("#btn-label-mode") == "Label mode: on"
    assert page.evaluate("() => document.body.classList.contains('labelling')")
    assert page.evaluate("() => getComputedStyle(document.querySelector('.stage')).cursor") == "cell"
    page.mouse.click(*token_xy(page, 1, 3, 5, (8, 8)))  # image 2, row (y) 3, col (x) 5
    wait_for(page, "() => window.sdaudit.state.labels.rows.length === 1")
    rows = load_labels(labels_path, grid=8, n_images=3)
    assert rows.shape == (1, 3) and rows.dtype == np.int64
    image, x0, y0 = rows[0].tolist()
    assert image == 2 and x0 <= 5 <= x0 + 1 and y0 <= 3 <= y0 + 1
    assert page.locator(".panel").nth(1).locator("svg rect.m-lab").count() == 1
    assert str(labels_path) in page.inner_text("#label-info")
    # a click inside the patch removes it, another adds it back
    page.mouse.click(*token_xy(page, 1, y0 + 1, x0 + 1, (8, 8)))
    wait_for(page, "() => window.sdaudit.state.labels.rows.length === 0")
    assert load_labels(labels_path).shape == (0, 3)
    page.mouse.click(*token_xy(page, 1, 3, 5, (8, 8)))
    wait_for(page, "() => window.sdaudit.state.labels.rows.length === 1")
    assert load_labels(labels_path).tolist() == [[image, x0, y0]]
    # off again (key L): clicks no longer change the file; leaving the norm view also ends label mode
    page.keyboard.press("l")
    assert page.inner_text("#btn-label-mode") == "Label mode: off"
    page.mouse.click(*token_xy(page, 1, 0, 0, (8, 8)))
    wait_for(page, "() => window.sdaudit.idle")
    assert load_labels(labels_path).tolist() == [[image, x0, y0]]
    page.click("#btn-label-mode")
    page.click("#view-seg button[data-view=similarity]")
    assert not page.evaluate("() => window.sdaudit.state.labelMode || document.body.classList.contains('labelling')")
    page.click("#view-seg button[data-view=norm]")

    # keyboard: next / previous image
    page.keyboard.press("ArrowRight")
    wait_for(page, "() => window.sdaudit.idle && JSON.stringify(window.sdaudit.state.selected) === '[0,1]'")
    page.keyboard.press("ArrowLeft")
    wait_for(page, "() => window.sdaudit.idle && JSON.stringify(window.sdaudit.state.selected) === '[0,2]'")


def test_presets(page, server):
    import httpx

    url, _ = server
    presets = httpx.get(url + "api/stores/0/presets").json()
    for name in ("positional", "corner"):
        p = presets[name]
        page.click(f".presets button[data-preset={name}]")
        wait_for(page, "(p) => { const m = window.sdaudit.lastMaps; return window.sdaudit.idle && m && m.layer === p.layer "
                       "&& m.ref.row === p.row && m.ref.col === p.col && window.sdaudit.state.pinned; }", p)
        assert sorted(last_maps(page)["images"]) == sorted(p["images"])
        assert p["description"] in page.inner_text("#message")
