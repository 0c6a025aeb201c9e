"""The paper's fixed numbers, in one place (torch-free).

Everything here is part of the published method (Loos & Linhardt, ICLR 2025 DeLTa); code that
needs one of these numbers imports it from here instead of writing the literal again.
"""

from __future__ import annotations

#: Grid resolutions s of the position probe's targets: a token's (row, col) is binned into an
#: s x s grid and the probe predicts the bin (the paper's Figure 2 columns).
RESOLUTIONS: tuple[int, ...] = (8, 16, 32, 64)

#: The layer the paper detects and labels anomalies on (the output of the second up-block's
#: upsampler: 32 x 32 tokens for SD-1.x/2.x at 512 px). One name, used everywhere.
PAPER_ANOMALY_LAYER = "up_blocks[1].upsamplers[0]"

#: Images the paper's experiments use (its ImageNet subset) and its probe's train share.
PAPER_N_IMAGES = 500
PAPER_TRAIN_FRACTION = 0.8

#: The timestep and seed of the paper's extraction.
PAPER_TIMESTEP = 50
PAPER_SEED = 42

#: results.json warnings about grids too small for a measure start with this (the report groups them).
DEGENERATE_GRID = "degenerate grid: "
#: Below this many tokens per side the position probe has <= 3 classes per axis (chance >= 33 %): a
#: linear probe reaches 100 % there trivially (a 2x2 mid block at 128 px), which is no positional code.
MIN_PROBE_GRID = 4
#: the known views of the correspondence probe (sdaudit.analyses.views): a horizontal flip, a shift by whole
#: tokens, a central crop rescaled to the full size
VIEWS = ("flip", "shift", "crop")
