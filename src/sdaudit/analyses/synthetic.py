"""Synthetic features with planted phenomena of known strength, for tests and benchmarks.

* :func:`positional_features` - random content plus a smooth positional code of strength s.
* :func:`border_features` - full and "cropped" maps whose edge groups are made more alike by a
  known factor (the expected ``border_artifacts`` ratios are exact in expectation).
* :func:`anomaly_features` - 2x2 high-norm patches at known places with an exact relative norm
  (mean patch norm / mean map norm), on a content map with smoothly varying norm.
All return a :class:`Synthetic`; arrays are (N, C, n, n) in the requested dtype.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

from .borders import group_masks


@dataclass
class Synthetic:
    features: np.ndarray
    cropped: np.ndarray | None = None
    anomalies: np.ndarray | None = None  # (K, 3) rows [image, x, y]
    anomaly_ratios: np.ndarray | None = None  # (K,) planted relative norms
    info: dict[str, Any] = field(default_factory=dict)


def _orthonormal(k: int, c: int, rng: np.random.Generator) -> np.ndarray:
    """(k, c) matrix with orthonormal rows."""
    q, _ = np.linalg.qr(rng.standard_normal((c, k)))
    return q.T


def positional_code(rows: int, cols: int, channels: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Smooth sinusoidal row and column codes, (rows, C) and (cols, C), each of norm sqrt(C).

    Periods are geometric from 2 to 2 * n tokens, projected into C dims by orthonormal maps
    (rows and columns get orthogonal subspaces), so nearby positions have similar codes.
    """
    rng = np.random.default_rng(seed)
    m = max(1, min(channels // 4, 8))
    proj = _orthonormal(4 * m, channels, rng) if 4 * m <= channels else rng.standard_normal((4 * m, channels))

    def emb(n: int) -> np.ndarray:
        periods = 2.0 * n ** (np.arange(m) / max(m - 1, 1))
        ang = 2 * np.pi * np.arange(n)[:, None] / periods[None, :]
        return np.concatenate([np.sin(ang), np.cos(ang)], axis=1)  # (n, 2m), |row|^2 = m

    scale = np.sqrt(channels / m)
    return emb(rows) @ proj[:2 * m] * scale, emb(cols) @ proj[2 * m:] * scale


def positional_features(n_images: int = 40, channels: int = 64, rows: int = 16, *, cols: int | None = None,
                        strength: float = 0.5, seed: int = 0, dtype: Any = np.float32) -> Synthetic:
    """token(i, j) = content + strength * (row_code[i] + col_code[j]), content ~ N(0, 1) per channel.

    strength 0 gives no positional information (probe at chance)."""
    cols = rows if cols is None else cols
    rc, cc = positional_code(rows, cols, channels, seed=1000 + seed)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n_images, channels, rows, cols), dtype=np.float32)
    x += strength * (rc.T[:, :, None] + cc.T[:, None, :]).astype(np.float32)
    return Synthetic(x.astype(dtype), info={"strength": strength, "grid": (rows, cols)})


def border_features(n_images: int = 50, channels: int = 256, n: int = 16, *, corner_ratio: float = 1.0,
                    border_ratio: float = 1.0, base_similarity: float = 0.2, seed: int = 0,
                    dtype: Any = np.float32) -> Synthetic:
    """Full and cropped maps with edge tokens made more alike by known factors.

    Every token of image i is a*m_i + eps (+ b_g*e_{g,i} on the outer ring, g = corner/border),
    with m_i, e_{g,i} orthogonal per-image directions and eps orthogonal to them, all of norm
    sqrt(C) -- so the expected cosine of two interior tokens is ``base_similarity`` and that of two
    ring tokens of group g is ratio_g * base_similarity. ``cropped`` is a fresh (n-2) x (n-2) map of
    the same images (new eps, same m_i: the crop extracted at its own size), again with its ring
    boosted; the full map's interior is not. Hence
    ``border_artifacts(features, cropped).relative`` is (corner_ratio, border_ratio, 1) in
    expectation (``info["expected"]``).
    """
    c0 = float(base_similarity)
    if not 0 < c0 < 1:
        raise ValueError("base_similarity must be in (0, 1)")
    weights = _RingWeights.of(c0, corner_ratio=corner_ratio, border_ratio=border_ratio)
    rng = np.random.default_rng(seed)
    full = np.empty((n_images, channels, n, n), np.float32)
    crop = np.empty((n_images, channels, n - 2, n - 2), np.float32)
    for i in range(n_images):
        q = _orthonormal(3, channels, rng)
        full[i] = weights.map(q, n, rng)
        crop[i] = weights.map(q, n - 2, rng)
    expected = {"corner": float(corner_ratio), "border": float(border_ratio), "other": 1.0}
    return Synthetic(full.astype(dtype), cropped=crop.astype(dtype),
                     info={"expected": expected, "base_similarity": c0})


@dataclass(frozen=True)
class _RingWeights:
    """Squared weights of a token's shared direction (``a2``) and of its ring group's direction (``b2``)."""

    a2: float
    b2: dict[str, float]

    @classmethod
    def of(cls, c0: float, *, corner_ratio: float, border_ratio: float) -> "_RingWeights":
        """Weights giving interior cosine ``c0`` and ring-group cosines ``ratio * c0``."""
        a2 = c0 / (1 - c0)
        b2 = {}
        for g, r in (("corner", corner_ratio), ("border", border_ratio)):
            if r < 1 or r * c0 >= 1:
                raise ValueError(f"{g}_ratio must be in [1, 1/base_similarity), got {r}")
            b2[g] = r * c0 / (1 - r * c0) - a2
        return cls(a2, b2)

    def map(self, q: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
        """One (C, n, n) map on the orthonormal directions ``q`` (3, C): shared, corner, border."""
        channels = q.shape[1]
        masks = dict(zip(("corner", "border"), group_masks(n)))  # the ring's two groups; the interior is left out
        eps = rng.standard_normal((n * n, channels))
        eps -= (eps @ q.T) @ q
        eps *= np.sqrt(channels) / np.linalg.norm(eps, axis=1, keepdims=True)
        tok = np.sqrt(self.a2) * np.sqrt(channels) * q[0] + eps
        for k, g in enumerate(("corner", "border")):
            tok[masks[g].reshape(-1)] += np.sqrt(self.b2[g]) * np.sqrt(channels) * q[k + 1]
        return tok.T.reshape(channels, n, n)


def _smooth_field(n: int, variation: float, rng: np.random.Generator) -> np.ndarray:
    low = rng.uniform(1 - variation, 1 + variation, (4, 4))
    return ndimage.zoom(low, n / 4, order=1)[:n, :n]


def _place(n: int, k: int, edge_fraction: float, rng: np.random.Generator) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for _ in range(200 * k):
        if len(out) == k:
            break
        y, x = (int(v) for v in rng.integers(0, n - 1, 2))
        if rng.random() < edge_fraction:
            side = rng.integers(4)
            y, x = [(0, x), (n - 2, x), (y, 0), (y, n - 2)][side]
        if all(max(abs(y - yy), abs(x - xx)) >= 3 for yy, xx in out):
            out.append((y, x))
    return out


def _plant(xi: np.ndarray, places: list[tuple[int, int]], r: np.ndarray, d: np.ndarray,
           rng: np.random.Generator) -> None:
    """Overwrite the 2x2 patches at ``places`` (upper-left (y, x)) of the (C, n, n) map ``xi`` in place, so that
    patch j's mean norm / the map's mean norm is ``r[j]``; tokens point along ``d`` (shared) plus noise."""
    channels, n = xi.shape[0], xi.shape[1]
    norms = np.linalg.norm(xi, axis=0)
    mask = np.zeros((n, n), bool)
    for y0, x0 in places:
        mask[y0:y0 + 2, x0:x0 + 2] = True
    mean = norms[~mask].sum() / (n * n - 4 * r.sum())
    for (y0, x0), rj in zip(places, r):
        for yy in (y0, y0 + 1):
            for xx in (x0, x0 + 1):
                v = d + 0.5 * rng.standard_normal(channels) / np.sqrt(channels)
                xi[:, yy, xx] = rj * mean * v / np.linalg.norm(v)


def anomaly_features(n_images: int = 100, channels: int = 64, n: int = 32, *,
                     ratio: float | tuple[float, float] = (2.5, 5.0), max_per_image: int = 3,
                     clean_fraction: float = 0.3, edge_fraction: float = 0.5, norm_variation: float = 0.5,
                     seed: int = 0, dtype: Any = np.float32) -> Synthetic:
    """Maps with planted 2x2 high-norm patches of exact relative norm.

    Content tokens are N(0, 1) per channel times a smooth per-image field in [1 - v, 1 + v]
    (``norm_variation``), so token norms vary like a real norm map. A fraction ``clean_fraction``
    of images has no anomaly; the others 1..``max_per_image`` patches (upper-left on the n-2 grid,
    a fraction ``edge_fraction`` on the outer rows/columns, at least one token apart). Each patch's
    4 tokens point along a shared anomaly direction (pairwise cosine about 0.8) and are scaled so
    that mean patch norm / mean map norm equals its ratio, drawn uniformly from ``ratio`` (or
    fixed). ``anomalies`` rows are [image, x, y]; ``anomaly_ratios`` the planted ratios.
    """
    rng = np.random.default_rng(seed)
    lo, hi = (ratio, ratio) if np.isscalar(ratio) else ratio
    d = rng.standard_normal(channels)
    d /= np.linalg.norm(d)
    x = rng.standard_normal((n_images, channels, n, n), dtype=np.float32)
    rows, ratios = [], []
    for i in range(n_images):
        x[i] *= _smooth_field(n, norm_variation, rng).astype(np.float32)
        if rng.random() < clean_fraction:
            continue
        places = _place(n, int(rng.integers(1, max_per_image + 1)), edge_fraction, rng)
        r = rng.uniform(lo, hi, len(places))
        _plant(x[i], places, r, d, rng)
        rows += [(i, x0, y0) for y0, x0 in places]
        ratios += list(r)
    return Synthetic(x.astype(dtype), anomalies=np.array(rows, np.int64).reshape(-1, 3),
                     anomaly_ratios=np.array(ratios), info={"grid": n})
