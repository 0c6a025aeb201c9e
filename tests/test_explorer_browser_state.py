"""The explorer page's state: in the URL (reload and links), pages of images, no stale state, a stable layout.

Same set-up as ``test_explorer_browser`` (headless Chromium driven by Playwright, uvicorn in a thread).
"""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest
from PIL import Image, ImageOps

from sdaudit.images import demo_image_paths
from sdaudit.store import open_store
from tests.test_explorer_browser import (FINE, REF, browser, open_page, serving, store_path, token_xy,  # noqa: F401
                                         wait_for, wait_for_drawn)

#: 9 demo photos and 4 mirrored ones: more than one page (12) of images.
MANY = 13


def demo_photos(folder, count: int) -> list[str]:
    """The demo photos, then mirrored copies of the first ones, ``count`` in all (as PNG files in ``folder``)."""
    demo = demo_image_paths()
    out = [str(p) for p in demo[:count]]
    for k in range(count - len(out)):
        path = folder / f"mirrored-{demo[k].stem}.png"
        ImageOps.mirror(Image.open(demo[k]).convert("RGB")).save(path)
        out.append(str(path))
    return out


@pytest.fixture(scope="module")
def many_store(tiny, tmp_path_factory):
    from sdaudit.extraction import extract

    path = tmp_path_factory.getbasetemp() / "explore-tiny-128-many"
    if not (path.exists() and open_store(path).num_images == MANY):
        photos = demo_photos(tmp_path_factory.mktemp("many-photos"), MANY)
        extract(tiny, photos, path, layers="all", size=128, progress=False)
    return path


@pytest.fixture(scope="module")
def url(store_path, many_store, tmp_path_factory):  # noqa: F811
    from sdaudit.explorer import create_app

    labels = [tmp_path_factory.mktemp("explore-state-labels") / f"labels{k}.npy" for k in range(2)]
    with serving(create_app([store_path, many_store], labels_path=labels)) as address:
        yield address


def query(page) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(page.url).query).items()}


def state(page) -> dict:
    return page.evaluate("""() => { const s = window.sdaudit.state;
        return {store: s.store, layer: s.layer, measure: s.measure, view: s.view, selected: s.selected.slice(),
                pinned: s.pinned, ref: s.ref && {...s.ref}}; }""")


def test_url_state_round_trip(browser, url):  # noqa: F811
    with open_page(browser, url + "?store=1") as page:
        wait_for(page, "() => window.sdaudit.idle && document.querySelectorAll('.panel').length === 12")
        page.select_option("#sel-layer", FINE)
        wait_for(page, "(l) => window.sdaudit.idle && window.sdaudit.state.feats.every((f) => f.layer === l)", FINE)
        for i in range(12):  # keep 1, 4 and 12 (on the second page's first place)
            if i not in (1, 4):
                page.click(f"#thumbs li[data-image='{i}']")
        page.click("#thumbs li[data-image='12']")
        wait_for(page, "() => window.sdaudit.idle && document.querySelectorAll('.panel').length === 3")
        page.select_option("#sel-measure", "l2")
        page.mouse.click(*token_xy(page, 1, 5, 11, (16, 16)))  # pins row 5, col 11 of image 4
        wait_for(page, "() => window.sdaudit.state.pinned && window.sdaudit.lastMaps.measure === 'l2'")
        want = {"store": 1, "layer": FINE, "measure": "l2", "view": "similarity", "selected": [1, 4, 12],
                "pinned": True, "ref": {"image": 4, "row": 5, "col": 11}}
        assert state(page) == want
        assert query(page) == {"store": "1", "layer": FINE, "measure": "l2", "view": "similarity",
                               "images": "1,4,12", "token": "4,5,11"}
        link = page.url
        # reload: the same state, and the same maps
        maps = page.evaluate("() => JSON.stringify(window.sdaudit.lastMaps.values.map((a) => Array.from(a)))")
        page.reload()
        wait_for_drawn(page)
        wait_for(page, "() => window.sdaudit.lastMaps && window.sdaudit.lastMaps.ref")
        assert state(page) == want and page.url == link
        assert "pinned token (row 5, col 11) of image #4, from the link" in page.inner_text("#message")
        assert page.evaluate("() => JSON.stringify(window.sdaudit.lastMaps.values.map((a) => Array.from(a)))") == maps
        assert page.input_value("#sel-layer") == FINE and page.input_value("#sel-measure") == "l2"
        # the norm view is part of the state too
        page.click("#view-seg button[data-view=norm]")
        wait_for(page, "() => window.sdaudit.idle && window.sdaudit.lastMaps.view === 'norm'")
        assert query(page)["view"] == "norm"
    # a link opened elsewhere reproduces it
    with open_page(browser, link) as other:
        wait_for(other, "() => window.sdaudit.lastMaps && window.sdaudit.lastMaps.ref")
        assert state(other) == want


def test_url_layer_alone_and_bad_values(browser, url):  # noqa: F811
    with open_page(browser, url + "?layer=" + REF.replace("[", "%5B").replace("]", "%5D")) as page:
        wait_for(page, "(l) => window.sdaudit.idle && window.sdaudit.state.feats.every((f) => f.layer === l)", REF)
        s = state(page)
        assert s["layer"] == REF and s["store"] == 0 and s["selected"] == [0, 1, 2] and not s["pinned"]
        assert page.input_value("#sel-layer") == REF
        assert query(page)["layer"] == REF
    with open_page(browser, url + "?layer=nope&measure=cosine") as page:
        assert "ignored in the link: layer nope" in page.inner_text("#message")
        assert state(page)["layer"] == open_store_reference(page)


def open_store_reference(page) -> str:
    return page.evaluate("() => window.sdaudit.state.info.stores[0].reference_layer || "
                         "window.sdaudit.state.info.stores[0].layers[0].name")


def test_more_than_a_page_of_images(browser, url):  # noqa: F811
    with open_page(browser, url + "?store=1") as page:
        wait_for(page, "() => window.sdaudit.idle && document.querySelectorAll('.panel').length === 12")
        assert state(page)["selected"] == list(range(12))  # the whole first page, not 4 of 13
        assert page.locator("#thumbs li").count() == MANY
        assert page.inner_text("#page-info") == f"#0–#11 of {MANY}"
        assert page.is_disabled("#btn-page-prev") and not page.is_disabled("#btn-page-next")
        # every panel is on screen: 12 images fill the page instead of leaving half of it empty
        boxes = [page.locator(".panel").nth(k).bounding_box() for k in range(12)]
        assert all(b["y"] + b["height"] <= 860 and b["x"] + b["width"] <= 1280 for b in boxes)
        rows = sorted({round(b["y"]) for b in boxes})
        assert len(rows) == 3 and all(sum(round(b["y"]) == y for b in boxes) == 4 for y in rows)  # a full 4x3 grid
        page.click("#btn-page-next")
        wait_for(page, "(n) => window.sdaudit.idle && JSON.stringify(window.sdaudit.state.selected) === "
                       "JSON.stringify([n - 1]) && document.querySelectorAll('.panel').length === 1", MANY)
        assert page.inner_text("#page-info") == f"#12–#12 of {MANY}"
        assert page.is_disabled("#btn-page-next") and not page.is_disabled("#btn-page-prev")
        assert query(page)["images"] == "12"
        page.click("#btn-page-prev")
        wait_for(page, "() => window.sdaudit.idle && window.sdaudit.state.selected.length === 12")


def test_no_stale_state_and_stable_layout(browser, url):  # noqa: F811
    with open_page(browser, url) as page:
        panels_top = page.evaluate("() => document.querySelector('#panels').getBoundingClientRect().top")
        page.click(".presets button[data-preset=corner]")
        wait_for(page, "() => window.sdaudit.idle && window.sdaudit.state.preset === 'corner'")
        assert page.locator(".presets button.active").count() == 1
        long_text = page.inner_text("#message")
        assert len(long_text) > 200  # the preset's text is long; the images do not move for it
        assert page.evaluate("() => document.querySelector('#panels').getBoundingClientRect().top") == panels_top
        # changing the layer: the preset's text and highlight go
        page.select_option("#sel-layer", FINE)
        wait_for(page, "(l) => window.sdaudit.idle && window.sdaudit.state.feats.every((f) => f.layer === l)", FINE)
        assert page.inner_text("#message") == "" and page.locator(".presets button.active").count() == 0
        assert page.evaluate("() => document.querySelector('#panels').getBoundingClientRect().top") == panels_top
        # so does changing the images
        page.click(".presets button[data-preset=positional]")
        wait_for(page, "() => window.sdaudit.idle && window.sdaudit.state.preset === 'positional'")
        page.click("#thumbs li[data-image='1']")
        wait_for(page, "() => window.sdaudit.idle && window.sdaudit.state.preset === null")
        assert page.inner_text("#message") == "" and page.locator(".presets button.active").count() == 0


def test_preset_text_follows_the_score(url):
    """The corner and positional texts say what to look for, and claim it is there only when the score says so."""
    import httpx

    from sdaudit.explorer.presets import CORNER_CLEAR, POSITION_CLEAR, _corner_text, _positional_text

    assert "should stand out here" in _corner_text("L", CORNER_CLEAR + 0.1)
    low = _corner_text("L", CORNER_CLEAR - 0.1)
    assert "expect no corner artifact" in low and "should stand out" not in low
    assert "should be visible here" in _positional_text("L", POSITION_CLEAR + 0.1, 4)
    assert "expect little or no positional pattern" in _positional_text("L", POSITION_CLEAR - 0.1, 4)
    # the tiny model's random weights give no corner artifact (score about 0.09), and the page says so
    corner = httpx.get(url + "api/stores/1/presets").json()["corner"]
    assert corner["score"] < CORNER_CLEAR
    assert corner["description"] == _corner_text(corner["layer"], corner["score"])
    assert "Look for:" in corner["description"]
