"""Shared fixtures: the tiny model, a saved copy of it, and small image folders. Everything is offline."""

from __future__ import annotations

import importlib
import os
from typing import Any, Callable

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ["COLUMNS"] = "200"  # rich tables: no wrapping of long layer names and repo ids


def require(check: str | Callable[[], Any], reason: str) -> Any:
    """A dependency a test needs: a module name (imported and returned) or a check (called; its result returned).

    Missing (an ImportError, or a falsy check) it skips the test on a developer's machine, but under
    ``CI=true`` it fails: the tests that prove the product (browser, published helper, datasets) must
    run in CI, and a skip there would pass unnoticed. Usable at module level too.
    """
    try:
        found = importlib.import_module(check) if isinstance(check, str) else check()
    except ImportError as error:
        found, reason = None, f"{reason} ({error})"
    if found:
        return found
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}; under CI=true a missing dependency fails instead of skipping", pytrace=False)
    pytest.skip(reason, allow_module_level=True)


@pytest.fixture(scope="session")
def tiny():
    """The tiny model on the CPU (built once per test session)."""
    from sdaudit.models import load_model

    return load_model("tiny", device="cpu")


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory, tiny):
    """The tiny model saved as a diffusers pipeline folder."""
    folder = tmp_path_factory.mktemp("tiny-pipeline")
    tiny.save_pretrained(folder)
    return folder


def random_photo(seed: int, size=(80, 64)) -> Image.Image:
    """A smooth random RGB picture (not white noise, so that the VAE sees structure)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (size[1] // 8 + 1, size[0] // 8 + 1, 3), dtype=np.uint8)
    return Image.fromarray(small).resize(size, Image.BILINEAR)


def photo_folder(folder, count: int, first_seed: int = 0, height: int = 64, widen: int = 16, prefix: str = "img"):
    """Save ``count`` random photos of mixed widths (``height + widen * i`` x ``height``) into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        random_photo(first_seed + i, size=(height + widen * i, height)).save(folder / f"{prefix}{i}.png")
    return folder


@pytest.fixture
def image_folder(tmp_path):
    """A folder of 5 small RGB images of mixed sizes."""
    return photo_folder(tmp_path / "images", 5)


@pytest.fixture
def images5():
    """Five prepared 64x64 RGB images."""
    return [random_photo(i, size=(64, 64)) for i in range(5)]


def interrupt_extraction(monkeypatch, at_call: int) -> dict:
    """Make the ``at_call``-th ``Extractor.run`` raise KeyboardInterrupt (a simulated kill mid-run). Returns the
    call counter: set ``counter["n"]`` far below ``at_call`` to let a rerun through and count its calls."""
    from sdaudit.extraction import Extractor

    counter = {"n": 0}
    original = Extractor.run

    def run(self, images, indices, **kwargs):
        counter["n"] += 1
        if counter["n"] == at_call:
            raise KeyboardInterrupt("simulated interruption")
        return original(self, images, indices, **kwargs)

    monkeypatch.setattr(Extractor, "run", run)
    return counter
