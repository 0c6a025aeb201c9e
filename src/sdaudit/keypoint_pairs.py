"""Annotated image pairs for keypoint matching: read and validate pair files (sdaudit's format or SPair-71k's).

sdaudit's format: a JSON file holding one pair object, a list of them, or ``{"pairs": [...]}``::

    {"image_a": "cats/1.jpg", "image_b": "cats/2.jpg",
     "keypoints_a": [[x, y], ...], "keypoints_b": [[x, y], ...],      # same count, pixels of each image
     "bbox_a": [x0, y0, x1, y1], "bbox_b": [x0, y0, x1, y1],          # optional (PCK uses bbox_b's longer side)
     "category": "cat"}                                                # optional

Image paths are relative to the JSON file's folder (absolute paths are kept). A folder is read as all its
``*.json`` files, recursively, in sorted order.

SPair-71k's layout: one pair per JSON file (``PairAnnotation/<split>/<name>.json``) with keys ``src_imname``,
``trg_imname``, ``src_kps``, ``trg_kps``, ``src_bndbox``, ``trg_bndbox``, ``category``; its images are
``<root>/JPEGImages/<category>/<imname>``, where ``<root>`` is the nearest folder above the JSON file that has
a ``JPEGImages`` folder. A file is read as SPair's when its object has ``src_imname``.

Every problem raises :class:`KeypointFileError` naming the file, the pair and the field at fault: malformed
JSON, a missing or mistyped field, a missing or unreadable image, different keypoint counts, a keypoint or box
outside its image.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .analyses.keypoints import PairKeypoints
from .errors import SdauditError

_SPAIR_KEYS = {"image_a": "src_imname", "image_b": "trg_imname", "keypoints_a": "src_kps",
               "keypoints_b": "trg_kps", "bbox_a": "src_bndbox", "bbox_b": "trg_bndbox"}


class KeypointFileError(SdauditError, ValueError):
    """A keypoint pair file the user must fix; the message names the file, pair and field."""


@dataclass(frozen=True)
class KeypointPair:
    """One validated pair: image paths, its :class:`~sdaudit.analyses.keypoints.PairKeypoints` (sizes read
    from the images), ``bbox_a``, ``category`` and ``source`` ("<file> pair <i>") for messages."""

    image_a: Path
    image_b: Path
    keypoints: PairKeypoints
    bbox_a: tuple[float, float, float, float] | None = None
    category: str | None = None
    source: str = ""


def load_keypoint_pairs(path: str | os.PathLike) -> list[KeypointPair]:
    """All pairs of a pair file or of a folder of them (module docstring), validated."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*.json") if p.is_file())
        if not files:
            raise KeypointFileError(f"{path}: no *.json keypoint pair files in this folder")
    elif path.is_file():
        files = [path]
    else:
        raise KeypointFileError(f"{path}: no such keypoint pair file or folder")
    return [pair for f in files for pair in _read_file(f)]


def _read_file(path: Path) -> list[KeypointPair]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise KeypointFileError(f"{path}: malformed JSON: {error}") from None
    except (OSError, UnicodeDecodeError) as error:
        raise KeypointFileError(f"{path}: cannot read the file: {error}") from None
    if isinstance(data, dict) and "src_imname" in data:
        return [_spair_pair(path, data)]
    items = data.get("pairs") if isinstance(data, dict) and "pairs" in data else data
    items = [items] if isinstance(items, dict) else items
    if not isinstance(items, list) or not items:
        raise KeypointFileError(f"{path}: expected a pair object, a non-empty list of pairs or {{\"pairs\": [...]}}")
    return [_pair(path, i, item, path.parent) for i, item in enumerate(items)]


def _spair_pair(path: Path, data: dict) -> KeypointPair:
    root = next((p for p in path.parents if (p / "JPEGImages").is_dir()), None)
    if root is None:
        raise KeypointFileError(f"{path}: SPair-71k pair file, but no folder above it has a JPEGImages folder")
    category = data.get("category")
    if not isinstance(category, str):
        raise KeypointFileError(f"{path}: pair 0 (category): SPair-71k pairs need a category string")
    item = {ours: data.get(theirs) for ours, theirs in _SPAIR_KEYS.items()}
    item["category"] = category
    return _pair(path, 0, item, root / "JPEGImages" / category)


def _pair(path: Path, i: int, item: Any, base: Path) -> KeypointPair:
    where = f"{path}: pair {i}"
    if not isinstance(item, dict):
        raise KeypointFileError(f"{where}: expected an object with image_a, image_b, keypoints_a, keypoints_b")
    image_a, size_a = _image(where, "image_a", item.get("image_a"), base)
    image_b, size_b = _image(where, "image_b", item.get("image_b"), base)
    kps_a = _points(where, "keypoints_a", item.get("keypoints_a"), size_a)
    kps_b = _points(where, "keypoints_b", item.get("keypoints_b"), size_b)
    if len(kps_a) != len(kps_b):
        raise KeypointFileError(f"{where} (keypoints_b): {len(kps_b)} keypoints, but keypoints_a has {len(kps_a)}")
    bbox_a, bbox_b = (_box(where, k, item.get(k), s) for k, s in (("bbox_a", size_a), ("bbox_b", size_b)))
    category = item.get("category")
    if category is not None and not isinstance(category, str):
        raise KeypointFileError(f"{where} (category): expected a string, got {category!r}")
    return KeypointPair(image_a, image_b, PairKeypoints(kps_a, kps_b, size_a, size_b, bbox_b), bbox_a, category,
                        source=where)


def _image(where: str, key: str, value: Any, base: Path) -> tuple[Path, tuple[int, int]]:
    if not isinstance(value, str) or not value:
        raise KeypointFileError(f"{where} ({key}): expected an image path, got {value!r}")
    path = base / value
    if not path.is_file():
        raise KeypointFileError(f"{where} ({key}): image {path} does not exist")
    try:
        with Image.open(path) as img:
            return path, img.size
    except (OSError, Image.DecompressionBombError) as error:
        raise KeypointFileError(f"{where} ({key}): cannot read image {path}: {error}") from None


def _numbers(where: str, key: str, value: Any, shape: tuple[int, ...]) -> np.ndarray:
    try:
        arr = np.array(value, dtype=np.float64)
    except (TypeError, ValueError):
        arr = None
    if arr is None or arr.ndim != len(shape) or any(s != -1 and a != s for a, s in zip(arr.shape, shape)) \
            or not np.isfinite(arr).all():
        expected = "[[x, y], ...]" if len(shape) == 2 else "[x0, y0, x1, y1]"
        raise KeypointFileError(f"{where} ({key}): expected {expected} of finite numbers, got {value!r}"[:300])
    return arr


def _points(where: str, key: str, value: Any, size: tuple[int, int]) -> np.ndarray:
    if value == []:
        raise KeypointFileError(f"{where} ({key}): no keypoints")
    pts = _numbers(where, key, value, (-1, 2))
    outside = (pts[:, 0] < 0) | (pts[:, 0] > size[0]) | (pts[:, 1] < 0) | (pts[:, 1] > size[1])
    if outside.any():
        k = int(np.argmax(outside))
        raise KeypointFileError(f"{where} ({key}): keypoint {k} at {pts[k].tolist()} is outside the "
                                f"{size[0]}x{size[1]} image")
    return pts


def _box(where: str, key: str, value: Any, size: tuple[int, int]) -> tuple[float, float, float, float] | None:
    if value is None:
        return None
    x0, y0, x1, y1 = _numbers(where, key, value, (4,)).tolist()
    if not (0 <= x0 < x1 <= size[0] and 0 <= y0 < y1 <= size[1]):
        raise KeypointFileError(f"{where} ({key}): box {[x0, y0, x1, y1]} is empty or outside the "
                                f"{size[0]}x{size[1]} image")
    return (x0, y0, x1, y1)


def pairs_digest(pairs: list[KeypointPair]) -> str:
    """sha256 of what a keypoint audit's numbers depend on: every pair in order, its keypoints and box, and the
    bytes of both images (so an edited pair file, an added file in a folder or a changed image is noticed on
    resume, not mixed into the checkpointed counts)."""
    h = hashlib.sha256()
    for pair in pairs:
        kp = pair.keypoints
        record = [hashlib.sha256(Path(pair.image_a).read_bytes()).hexdigest(),
                  hashlib.sha256(Path(pair.image_b).read_bytes()).hexdigest(), np.asarray(kp.keypoints_a).tolist(),
                  np.asarray(kp.keypoints_b).tolist(), None if kp.bbox_b is None else list(kp.bbox_b),
                  None if pair.bbox_a is None else list(pair.bbox_a)]
        h.update(json.dumps(record).encode())
    return h.hexdigest()

