"""What the closed-form and the published position probes share: the train/test split, hits per test image
at each comparison resolution, their accuracy and its bootstrap interval, and the result they build.

A test image's row is ``[row hits at each resolution (R), column hits (R), tokens]``; every number of a probe
result is a function of the sums of these rows (see :mod:`sdaudit.analyses.intervals`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ._arrays import is_torch
from ._base import nest, unnest
from .intervals import Bootstrap, PerImageStats, Terms
from .results import ProbeResult


def n_train_images(n_images: int, train_fraction: float) -> int:
    """Number of training images: the first ``int(n_images * train_fraction)`` (as published)."""
    if not 0.0 < train_fraction < 1.0:
        raise ValueError(f"train_fraction must be in (0, 1), got {train_fraction}")
    n_tr = int(n_images * train_fraction)
    if n_tr < 1 or n_tr >= n_images:
        raise ValueError(f"{n_images} images with train_fraction {train_fraction} leave "
                         f"{n_tr} train / {n_images - n_tr} test images; need at least one of each")
    return n_tr


def image_hits(pred: np.ndarray, label: np.ndarray, n: int, resolutions: Sequence[int]) -> np.ndarray:
    """(B, R) correct predictions per image and resolution; ``pred``, ``label``: (B, tokens)."""
    return np.stack([((pred * s) // n == (label * s) // n).sum(axis=1) for s in resolutions], axis=1)


def test_rows(hits_r: np.ndarray, hits_c: np.ndarray, tokens_per_image: int) -> np.ndarray:
    """Per-test-image rows ``[row hits (R), column hits (R), tokens]`` from (B, R) hits."""
    return np.concatenate([hits_r, hits_c, np.full((len(hits_r), 1), tokens_per_image)], axis=1)


def accuracy_statistic(k: int, n_res: int):
    """Mean row/column accuracy at resolution number ``k`` from summed rows [row hits (R), column hits (R), tokens]."""
    return lambda t: 0.5 * (t[..., k] + t[..., n_res + k]) / t[..., 2 * n_res]


def accuracy_terms(per_image: PerImageStats, resolutions: Sequence[int], resolution: int) -> Terms:
    """Bootstrap terms of a probe's accuracy at ``resolution`` from its per-test-image rows."""
    index, rows = per_image.arrays()
    return Terms(index, rows, accuracy_statistic(list(resolutions).index(int(resolution)), len(resolutions)))


@dataclass(frozen=True)
class ProbeCounts:
    """What a probe result is computed from: the grid, the per-test-image rows, and the training set's size."""

    grid: tuple[int, int]
    rows: np.ndarray  # (test images, 2R + 1)
    n_train_images: int
    n_train_tokens: int


def make_result(method: str, resolutions: Sequence[int], counts: ProbeCounts, *, layer: str | None,
                provenance: dict | None, details: dict, boot: Bootstrap) -> ProbeResult:
    """The :class:`ProbeResult` of summed test rows, with ``boot``'s interval of the accuracy at each resolution."""
    res = [int(s) for s in resolutions]
    r = len(res)
    sums = counts.rows.sum(axis=0)
    n_test_tok = int(sums[2 * r]) if len(counts.rows) else 0
    acc_r = {s: float(h) / n_test_tok if n_test_tok else float("nan") for s, h in zip(res, sums[:r])}
    acc_c = {s: float(h) / n_test_tok if n_test_tok else float("nan") for s, h in zip(res, sums[r:2 * r])}
    grid = counts.grid
    return ProbeResult(method=method, resolutions=res, accuracy={s: 0.5 * (acc_r[s] + acc_c[s]) for s in res},
                       row_accuracy=acc_r, col_accuracy=acc_c,
                       chance={s: 0.5 * (1.0 / min(s, grid[0]) + 1.0 / min(s, grid[1])) for s in res},
                       grid=tuple(int(g) for g in grid), n_train_images=int(counts.n_train_images),
                       n_test_images=len(counts.rows), n_train_tokens=int(counts.n_train_tokens),
                       n_test_tokens=n_test_tok, layer=layer, provenance=dict(provenance or {}), details=details,
                       intervals={s: boot.interval(counts.rows, accuracy_statistic(k, r)) for k, s in enumerate(res)})


def pending_state(pending: list[tuple[np.ndarray, np.ndarray]]) -> dict[str, np.ndarray]:
    """State entries of test images that wait for the probe to be trained (features and image indices)."""
    x = np.concatenate([x for x, _ in pending]) if pending else np.zeros((0, 0, 0, 0), np.float32)
    i = np.concatenate([i for _, i in pending]) if pending else np.zeros(0, np.int64)
    return {"pending_x": x, "pending_i": i}


def load_pending(state: dict[str, np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(state["pending_x"], state["pending_i"])] if state["pending_i"].size else []


def without_test_images(state: dict) -> dict:
    """A probe's state dict without its test images, scored or pending: what shards exchange before testing."""
    width = np.asarray(unnest("per_image", state)["rows"]).shape[-1]
    return {**state, **pending_state([]), **nest("per_image", PerImageStats(width).state())}


def to_numpy(t: Any) -> np.ndarray:
    return t.detach().cpu().numpy() if is_torch(t) else np.asarray(t)


def take(x: Any, sel: np.ndarray) -> Any:
    """Images ``sel`` of a numpy array or torch tensor (index on the tensor's device)."""
    if not is_torch(x):
        return x[sel]
    import torch

    return x[torch.as_tensor(sel, device=x.device)]
