"""Known second views of an image and the exact token correspondence each implies (numpy/PIL, torch-free).

A view B of image A by a known transform tells, for every token of A, where its content lies in B's
token grid, so matching can be scored without annotations. Conventions, for an image of W x H pixels
seen by a feature grid of ``rows x cols`` tokens with ``pixels_per_token`` = W / cols = H / rows:

* token (r, c) covers pixels [c * ppt, (c + 1) * ppt) x [r * ppt, (r + 1) * ppt); positions on the grid
  are in token units with token (r, c)'s centre at (r, c) (pixel x maps to col x / ppt - 0.5);
* a :class:`Correspondence` gives, for each token (r, c) of A, its true (row, col) in B's grid (float)
  and whether it has a match at all (``valid``).

The views (all the same size as A, so A and B share the grid):

* **flip**: B = A mirrored left-right; token (r, c) matches (r, cols - 1 - c); every token is valid.
* **shift by (dr, dc) whole tokens**: B's pixel (y, x) shows A's pixel (y + dr * ppt, x + dc * ppt), i.e.
  B is the W x H window of A translated by (dr, dc) tokens, as if cut from a larger image; pixels whose
  source lies outside A are filled with A's mean colour (no content to match). Token (r, c) of A matches
  (r - dr, c - dc); it is valid only when that lies inside the grid.
* **crop-and-rescale by fraction f**: B = the central crop of f * W x f * H pixels (box rounded to whole
  pixels, :func:`central_box`) resized back to W x H. A pixel x of A lands at (x - left) * W / box width in
  B; a token is valid when its centre lies inside the box. Targets are fractional.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from ..constants import VIEWS


@dataclass(frozen=True)
class Correspondence:
    """True positions in B's grid of every token of A: ``target`` (rows, cols, 2) float (row, col) and
    ``valid`` (rows, cols) bool (False: the token's content is not in B). ``kind`` names the view."""

    target: np.ndarray
    valid: np.ndarray
    kind: str = "custom"

    def __post_init__(self) -> None:
        target = np.asarray(self.target, dtype=np.float64)
        valid = np.asarray(self.valid, dtype=bool)
        if target.ndim != 3 or target.shape[2] != 2 or valid.shape != target.shape[:2]:
            raise ValueError(f"correspondence: target must be (rows, cols, 2) and valid (rows, cols), got "
                             f"{target.shape} and {valid.shape}")
        if not np.isfinite(target[valid]).all():
            raise ValueError("correspondence: valid tokens need finite target positions")
        object.__setattr__(self, "target", target)
        object.__setattr__(self, "valid", valid)

    @property
    def grid(self) -> tuple[int, int]:
        return (int(self.valid.shape[0]), int(self.valid.shape[1]))

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "target": np.where(self.valid[..., None], self.target, 0.0).tolist(),
                "valid": self.valid.tolist()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Correspondence":
        return cls(target=np.asarray(d["target"], dtype=np.float64), valid=np.asarray(d["valid"], dtype=bool),
                   kind=str(d.get("kind", "custom")))


def _token_grid(rows: int, cols: int) -> tuple[np.ndarray, np.ndarray]:
    if rows < 1 or cols < 1:
        raise ValueError(f"grid must be at least 1x1, got {rows}x{cols}")
    return np.meshgrid(np.arange(rows, dtype=np.float64), np.arange(cols, dtype=np.float64), indexing="ij")


def flip_correspondence(rows: int, cols: int) -> Correspondence:
    """Horizontal flip: (r, c) -> (r, cols - 1 - c), all valid."""
    r, c = _token_grid(rows, cols)
    return Correspondence(np.stack([r, cols - 1 - c], axis=-1), np.ones((rows, cols), bool), "flip")


def shift_correspondence(rows: int, cols: int, shift: tuple[int, int]) -> Correspondence:
    """Shift by ``shift`` = (dr, dc) whole tokens: (r, c) -> (r - dr, c - dc), valid inside the grid."""
    dr, dc = (int(v) for v in shift)
    r, c = _token_grid(rows, cols)
    target = np.stack([r - dr, c - dc], axis=-1)
    valid = (target[..., 0] >= 0) & (target[..., 0] < rows) & (target[..., 1] >= 0) & (target[..., 1] < cols)
    return Correspondence(target, valid, "shift")


def central_box(width: int, height: int, fraction: float) -> tuple[int, int, int, int]:
    """PIL (left, top, right, bottom) of the central crop keeping ``fraction`` of each side (whole pixels)."""
    if not 0 < fraction <= 1:
        raise ValueError(f"crop fraction must be in (0, 1], got {fraction}")
    cw, ch = max(1, int(round(width * fraction))), max(1, int(round(height * fraction)))
    left, top = (width - cw) // 2, (height - ch) // 2
    return (left, top, left + cw, top + ch)


def crop_correspondence(rows: int, cols: int, fraction: float, pixels_per_token: float) -> Correspondence:
    """Central crop of ``fraction`` rescaled to the full size: fractional targets; tokens whose centre is
    outside the crop box are invalid. ``pixels_per_token`` fixes the image size (cols * ppt x rows * ppt)
    and so the whole-pixel box of :func:`central_box`."""
    width, height = int(round(cols * pixels_per_token)), int(round(rows * pixels_per_token))
    left, top, right, bottom = central_box(width, height, fraction)
    r, c = _token_grid(rows, cols)
    x, y = (c + 0.5) * width / cols, (r + 0.5) * height / rows  # token centres in pixels
    bx, by = (x - left) * width / (right - left), (y - top) * height / (bottom - top)  # in B's pixels
    target = np.stack([by * rows / height - 0.5, bx * cols / width - 0.5], axis=-1)
    valid = (x >= left) & (x < right) & (y >= top) & (y < bottom)
    return Correspondence(target, valid, "crop")


def flip_view(image: Image.Image) -> Image.Image:
    """The image mirrored left-right."""
    return image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)


def shift_view(image: Image.Image, shift: tuple[int, int], pixels_per_token: float) -> Image.Image:
    """The image's window translated by ``shift`` = (dr, dc) tokens (module docstring); uncovered pixels
    take the image's mean colour."""
    arr = np.asarray(image)
    dy, dx = (int(round(v * pixels_per_token)) for v in shift)
    h, w = arr.shape[:2]
    fill = arr.reshape(h * w, -1).mean(axis=0).round().astype(arr.dtype)
    out = np.empty_like(arr)
    out[...] = fill.reshape((1, 1) + arr.shape[2:]) if arr.ndim == 3 else fill[0]
    ys, yd = slice(max(dy, 0), h + min(dy, 0)), slice(max(-dy, 0), h + min(-dy, 0))
    xs, xd = slice(max(dx, 0), w + min(dx, 0)), slice(max(-dx, 0), w + min(-dx, 0))
    if ys.start < ys.stop and xs.start < xs.stop:
        out[yd, xd] = arr[ys, xs]
    return Image.fromarray(out)


def crop_view(image: Image.Image, fraction: float) -> Image.Image:
    """The central crop keeping ``fraction`` of each side (:func:`central_box`), resized back (bicubic)."""
    box = central_box(image.width, image.height, fraction)
    return image.crop(box).resize(image.size, Image.Resampling.BICUBIC)


@dataclass(frozen=True)
class KnownView:
    """One known transform with its settings: ``kind`` in :data:`VIEWS`, ``shift`` = (dr, dc) tokens (shift),
    ``fraction`` of each side kept (crop). ``apply`` makes the view of an image, ``correspondence`` the token
    correspondence it implies on a grid; both need ``pixels_per_token`` (= image size / grid side)."""

    kind: str = "flip"
    shift: tuple[int, int] = (0, 1)
    fraction: float = 0.75

    def __post_init__(self) -> None:
        if self.kind not in VIEWS:
            raise ValueError(f"unknown view {self.kind!r}; choose one of {VIEWS}")

    def apply(self, image: Image.Image, pixels_per_token: float) -> Image.Image:
        if self.kind == "flip":
            return flip_view(image)
        if self.kind == "shift":
            return shift_view(image, self.shift, pixels_per_token)
        return crop_view(image, self.fraction)

    def correspondence(self, rows: int, cols: int, pixels_per_token: float) -> Correspondence:
        if self.kind == "flip":
            return flip_correspondence(rows, cols)
        if self.kind == "shift":
            return shift_correspondence(rows, cols, self.shift)
        return crop_correspondence(rows, cols, self.fraction, pixels_per_token)
