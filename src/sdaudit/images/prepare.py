"""The model's input from a validated image: centre crop to a square, resize to the model's size."""

from __future__ import annotations

from PIL import Image

from .convert import to_rgb


def center_crop_square(img: Image.Image) -> Image.Image:
    """Centre crop to a square with the short side's length (offset ``floor((long-short)/2)``)."""
    w, h = img.size
    s = min(w, h)
    left, top = (w - s) // 2, (h - s) // 2
    return img.crop((left, top, left + s, top + s))


def prepare_image(img: Image.Image, size: int) -> Image.Image:
    """Centre crop to square, then resize to ``size`` x ``size`` pixels with PIL BICUBIC; RGB out.

    Non-RGB input is first converted by :func:`to_rgb`. No resize if already the right size.
    """
    if size < 1:
        raise ValueError(f"size must be >= 1 pixel, got {size}")
    rgb = to_rgb(img, "<in-memory image>")
    square = center_crop_square(rgb)
    if square.size == (size, size):
        return square
    return square.resize((size, size), Image.Resampling.BICUBIC)


