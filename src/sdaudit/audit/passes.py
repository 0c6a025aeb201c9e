"""The passes of an audit: one full pass over all layers, then one cropped pass per grid size.

Plan for L layers with G distinct grid sizes: one full pass (all layers at once) and one cropped
pass per grid size n >= 5 (the image cropped by one token of that grid, ts = size / n px, on each
side and extracted at its own size, size - 2 ts, as published: that grid becomes (n-2) x (n-2),
aligned with the full grid's interior). So at most 1 + G U-Net passes per image (5 for SD), against
about 92 in the published pipeline; as the crops are smaller, they cost sum((size - 2 ts)^2) / size^2
full passes: about 4.15 full-pass equivalents per image for SD at 512 px (grids 64, 32, 16, 8).
Grids under 5 tokens have no cropped pass: their (n-2) grid has no border and no interior.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..analyses import crop_pixels

MIN_CROPPED_GRID = 3  # the cropped (n-2) grid needs corners, a border and an interior


@dataclass(frozen=True)
class Pass:
    """One extraction pass over the images: its name, the pixels cropped off each side (0: the full
    image), and the layers it feeds."""

    name: str
    crop_px: int
    layers: tuple[str, ...]

    @property
    def is_full(self) -> bool:
        return self.crop_px == 0


def pass_plan(grids: dict[str, tuple[int, int]], size: int, analyses: Sequence[str]) -> list[Pass]:
    """The passes: ``full`` (all layers), then ``crop<px>`` (layers of that grid) per grid size n >= 5."""
    passes = [Pass("full", 0, tuple(grids))]
    if "borders" in analyses:
        by_crop: dict[int, list[str]] = {}
        for name, (h, w) in grids.items():
            if h == w and h - 2 >= MIN_CROPPED_GRID:
                by_crop.setdefault(crop_pixels(size, h), []).append(name)
        passes += [Pass(f"crop{px}", px, tuple(by_crop[px])) for px in sorted(by_crop)]
    return passes


def batches(items: Sequence, size: int):
    """``items`` in consecutive slices of at most ``size``."""
    for start in range(0, len(items), size):
        yield items[start:start + size]
