"""Read and write anomaly label files in the published format.

A label file is a ``.npy`` array of integers, shape (K, 3), one row ``[image_index, x, y]`` per
anomaly: x = column, y = row of the upper-left token of the 2x2 patch on the labelling grid
(32 x 32 for SD at 512 px, layer ``up_blocks[1].upsamplers[0]``). The published files are int64.

The authors' three label files ship with sdaudit: ``resolve_labels("paper:sd15")`` (also ``paper:sd21``,
``paper:sd-turbo``) loads them; they index the paper's 500 images (ImageNet classes 235, 242, 282, 717,
980, 100 each, in the published order) on the 32 x 32 grid.
"""

from __future__ import annotations

import os
import re
from importlib import resources
from typing import Any

import numpy as np

from ..errors import SdauditError


class LabelFileError(SdauditError, ValueError):
    """A label file (or label array to be saved) is not in the published format."""


def validate_labels(rows: Any, *, grid: int | tuple[int, int] | None = None, n_images: int | None = None,
                    source: str = "labels") -> np.ndarray:
    """Check and return labels as an int64 (K, 3) array; ``source`` names the file in errors.

    ``grid`` (rows, cols) or n checks 0 <= x < cols and 0 <= y < rows; ``n_images`` checks the
    image index. An empty array of any shape is read as no labels, (0, 3).
    """
    arr = np.asarray(rows)
    if arr.size == 0:
        return np.zeros((0, 3), np.int64)
    if arr.dtype == object:
        raise LabelFileError(f"{source}: holds Python objects, expected an integer array of shape (K, 3)")
    if arr.ndim != 2 or arr.shape[1] != 3:
        raise LabelFileError(f"{source}: expected shape (K, 3) rows [image, x, y], got {arr.shape}")
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
            raise LabelFileError(f"{source}: expected integer labels, got non-integer values ({arr.dtype})")
    elif arr.dtype.kind not in "iu":
        raise LabelFileError(f"{source}: expected an integer array, got dtype {arr.dtype}")
    out = arr.astype(np.int64)
    if np.any(out < 0):
        r = int(np.nonzero((out < 0).any(axis=1))[0][0])
        raise LabelFileError(f"{source}: negative value in row {r}: {out[r].tolist()}")
    if grid is not None:
        gh, gw = (grid, grid) if np.isscalar(grid) else grid
        bad = (out[:, 1] >= gw) | (out[:, 2] >= gh)
        if bad.any():
            r = int(np.nonzero(bad)[0][0])
            raise LabelFileError(f"{source}: row {r} {out[r].tolist()} lies outside the {gh}x{gw} grid")
    if n_images is not None and np.any(out[:, 0] >= n_images):
        r = int(np.argmax(out[:, 0]))
        raise LabelFileError(f"{source}: row {r} refers to image {out[r, 0]} but there are {n_images} images")
    return out


def load_labels(path: str | os.PathLike, *, grid: int | tuple[int, int] | None = None,
                n_images: int | None = None) -> np.ndarray:
    """Load a label file -> int64 (K, 3) rows [image, x, y]; LabelFileError naming the file if bad."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise LabelFileError(f"{path}: label file does not exist")
    try:
        arr = np.load(path, allow_pickle=False)
    except ValueError as e:
        raise LabelFileError(f"{path}: not a plain .npy label array ({e})") from e
    except Exception as e:  # truncated or foreign files raise various errors
        raise LabelFileError(f"{path}: cannot be read as a .npy file ({type(e).__name__}: {e})") from e
    if isinstance(arr, np.lib.npyio.NpzFile):
        arr.close()
        raise LabelFileError(f"{path}: is an .npz archive, expected a single .npy array")
    return validate_labels(arr, grid=grid, n_images=n_images, source=path)


def save_labels(path: str | os.PathLike, rows: Any, *, grid: int | tuple[int, int] | None = None,
                n_images: int | None = None) -> np.ndarray:
    """Validate and write labels as an int64 (K, 3) ``.npy`` exactly at ``path``; returns them."""
    path = os.fspath(path)
    rows = getattr(rows, "rows", rows)  # accept an AnomalyDetectionResult
    out = validate_labels(rows, grid=grid, n_images=n_images, source=path)
    with open(path, "wb") as f:
        np.save(f, out)
    return out


PUBLISHED_LABELS = {"sd15": "high_norm_anomalies_sd15.npy", "sd21": "high_norm_anomalies_sd21.npy",
                    "sd-turbo": "high_norm_anomalies_sdturbo.npy"}
PUBLISHED_GRID = 32
PUBLISHED_IMAGES = 500


def published_labels_key(spec: str) -> str:
    """'paper:SD-1.5' -> 'sd15' (a key of :data:`PUBLISHED_LABELS`); LabelFileError for a model without them."""
    key = {"sd15": "sd15", "sd21": "sd21", "sdturbo": "sd-turbo"}.get(re.sub(r"[\s._\-]", "", spec[6:]).lower())
    if not spec.startswith("paper:") or key not in PUBLISHED_LABELS:
        raise LabelFileError(f"{spec}: no published labels for that model; choose paper:"
                             + ", paper:".join(PUBLISHED_LABELS))
    return key


def resolve_labels(spec: str | os.PathLike, *, grid: int | tuple[int, int] | None = None,
                   n_images: int | None = None) -> np.ndarray:
    """Labels from ``paper:sd15`` / ``paper:sd21`` / ``paper:sd-turbo`` (the published files, 32 x 32 grid,
    500 images) or from a label file path. ``grid`` / ``n_images`` check them against the audit's: the
    published labels fit only the paper's 500 images on a 32 x 32 grid, and anything else is refused."""
    text = os.fspath(spec)
    if not text.startswith("paper:"):
        return load_labels(text, grid=grid, n_images=n_images)
    key = published_labels_key(text)
    want_grid = (grid, grid) if np.isscalar(grid) else tuple(grid) if grid is not None else None
    if want_grid is not None and want_grid != (PUBLISHED_GRID, PUBLISHED_GRID):
        raise LabelFileError(f"{text}: the published labels are on a {PUBLISHED_GRID}x{PUBLISHED_GRID} grid "
                             f"(up_blocks[1] at 512 px), this audit's anomaly layer is {want_grid[0]}x{want_grid[1]}")
    if n_images is not None and n_images != PUBLISHED_IMAGES:
        raise LabelFileError(f"{text}: the published labels index the paper's {PUBLISHED_IMAGES} images in their "
                             f"order, this audit has {n_images}; build them with 'sdaudit dataset imagenet-subset'")
    path = resources.files("sdaudit") / "data" / "paper_labels" / PUBLISHED_LABELS[key]
    with resources.as_file(path) as real:
        return load_labels(real, grid=PUBLISHED_GRID, n_images=PUBLISHED_IMAGES)
