"""High-norm anomalies (paper Fig. 2 bottom row): detection and relative norm across layers.

Detector rule (:func:`detect_anomalies`), per image and layer, on the token norm map m (L2 over
channels):

1. med = median(m), mad = 1.4826 * median(|m - med|) (a robust standard deviation).
2. A token is a candidate if m >= ``ratio_threshold`` * med (default 2.0: at least twice the
   typical norm) AND its robust z-score (m - med) / mad >= ``z_threshold`` (default 3.5, the
   usual modified-z outlier cut; skipped when mad == 0). Both are needed: the ratio keeps a map
   with a very narrow norm distribution from flagging small bumps, the z-score keeps a map with
   a wide one from flagging its ordinary high tail.
3. Candidates are grouped into 8-connected components; a component larger than ``max_tokens``
   (default 16) is a broad high-norm region, not a token anomaly, and is ignored.
4. Each component's patch is the 2x2 window (upper-left token, clipped to the grid) that
   contains the component's peak token and has the largest summed norm.
5. Local contrast: the patch's mean norm must be >= ``local_ratio`` (default 1.5) times the
   median norm of its surroundings (the tokens within 2 of the patch, clipped to the grid, that
   are not candidates themselves). This rejects the high end of a smooth norm gradient, which
   passes the global tests but is no isolated patch; a patch with no non-candidate surroundings
   is rejected too.
6. Reported as rows ``[image, x (column), y (row)]`` like the published labels; score = the
   peak's robust z-score (inf if mad == 0), relative_norm = mean patch norm / mean map norm.

An image whose map has median 0 (e.g. all-zero) gets no detections. An image without anomalies
gives none unless some token is at once >= 2x the median, an outlier, and >= 1.5x its
surroundings.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
from scipy import ndimage

from ._arrays import check_features, resolve_indices, token_norms
from ._base import Accumulator
from .intervals import DEFAULT_BOOT, DEFAULT_LEVEL, Bootstrap, Interval, item_mean_terms
from .labels import validate_labels
from .results import AnomalyDetectionResult, AnomalyNormResult

DEFAULTS = {"z_threshold": 3.5, "ratio_threshold": 2.0, "max_tokens": 16, "local_ratio": 1.5}
_EIGHT = np.ones((3, 3), bool)


def best_patch(norms: np.ndarray, row: int, col: int) -> tuple[int, int]:
    """Upper-left (row, col) of the 2x2 patch of a (rows, cols) norm map that contains token (row, col)
    and has the largest summed norm (windows clipped to the grid; ties go to the smallest row, then col).

    The detector's patch rule (step 4 of the module docstring); the explorer snaps a hand label with it.
    """
    h, w = norms.shape
    ys = {min(max(row - 1, 0), max(h - 2, 0)), min(row, max(h - 2, 0))}
    xs = {min(max(col - 1, 0), max(w - 2, 0)), min(col, max(w - 2, 0))}
    _, y0, x0 = min((-float(norms[y0:y0 + 2, x0:x0 + 2].sum()), y0, x0) for y0 in ys for x0 in xs)
    return y0, x0


def detect_in_map(norms: np.ndarray, *, z_threshold: float = 3.5, ratio_threshold: float = 2.0,
                  max_tokens: int = 16, local_ratio: float = 1.5) -> list[tuple[int, int, float, float]]:
    """Detect anomalies in one (rows, cols) norm map -> [(x, y, score, relative_norm)]."""
    h, w = norms.shape
    med = float(np.median(norms))
    if not med > 0:
        return []
    mad = 1.4826 * float(np.median(np.abs(norms - med)))
    cand = norms >= ratio_threshold * med
    if mad > 0:
        cand &= (norms - med) >= z_threshold * mad
    if not cand.any():
        return []
    lab, k = ndimage.label(cand, structure=_EIGHT)
    mean = float(norms.mean())
    found: dict[tuple[int, int], tuple[float, float]] = {}
    for comp in range(1, k + 1):
        ys, xs = np.nonzero(lab == comp)
        if ys.size > max_tokens:
            continue
        p = int(np.argmax(norms[ys, xs]))
        py, px = int(ys[p]), int(xs[p])
        y0, x0 = best_patch(norms, py, px)
        pm = float(norms[y0:y0 + 2, x0:x0 + 2].mean())
        ya, xa = max(y0 - 2, 0), max(x0 - 2, 0)
        around = np.ones((min(y0 + 4, h) - ya, min(x0 + 4, w) - xa), bool)
        around[y0 - ya:y0 - ya + 2, x0 - xa:x0 - xa + 2] = False
        around &= ~cand[ya:ya + around.shape[0], xa:xa + around.shape[1]]
        ring = norms[ya:ya + around.shape[0], xa:xa + around.shape[1]][around]
        if ring.size == 0 or pm < local_ratio * float(np.median(ring)):
            continue
        score = (float(norms[py, px]) - med) / mad if mad > 0 else float("inf")
        rel = pm / mean
        if (x0, y0) not in found or score > found[(x0, y0)][0]:
            found[(x0, y0)] = (score, rel)
    return [(x, y, s, r) for (x, y), (s, r) in found.items()]


def _checked_batch(acc, batch: Any, image_indices: Sequence[int] | None) -> tuple[np.ndarray, np.ndarray]:
    """Validate a batch for a one-layer accumulator: global indices, finite float32 features, same grid."""
    idx = resolve_indices(len(batch), image_indices, acc._next_index)
    x = check_features(batch, layer=acc.layer, image_indices=idx)
    if len(idx):
        acc._next_index = max(acc._next_index, int(idx.max()) + 1)
    grid = (x.shape[2], x.shape[3])
    if acc._grid not in (None, grid):
        raise ValueError(f"layer {acc.layer!r}: grid changed from {acc._grid} to {grid}")
    acc._grid = grid
    return idx, x


class AnomalyDetector(Accumulator):
    """Streamed :func:`detect_anomalies`; keeps only the detections (grows with their number)."""

    def __init__(self, *, z_threshold: float = 3.5, ratio_threshold: float = 2.0, max_tokens: int = 16,
                 local_ratio: float = 1.5, layer: str | None = None, provenance: dict | None = None):
        super().__init__()
        self.params = {"z_threshold": float(z_threshold), "ratio_threshold": float(ratio_threshold),
                       "max_tokens": int(max_tokens), "local_ratio": float(local_ratio)}
        self.layer, self.provenance = layer, dict(provenance or {})
        self._rows: list[tuple[int, int, int]] = []
        self._scores: list[float] = []
        self._rel: list[float] = []
        self._n_images = 0
        self._grid: tuple[int, int] | None = None

    def update(self, batch: Any, image_indices: Sequence[int] | None = None) -> None:
        idx, x = _checked_batch(self, batch, image_indices)
        for i, m in zip(idx.tolist(), token_norms(x)):
            for xx, yy, s, r in detect_in_map(m, **self.params):
                self._rows.append((i, xx, yy))
                self._scores.append(s)
                self._rel.append(r)
        self._n_images += len(idx)

    def merge(self, other: "AnomalyDetector") -> "AnomalyDetector":
        self._check_mergeable(other)
        if other._grid is not None and self._grid not in (None, other._grid):
            raise ValueError(f"cannot merge grids {self._grid} and {other._grid}")
        self._grid = self._grid or other._grid
        self._rows += other._rows
        self._scores += other._scores
        self._rel += other._rel
        self._n_images += other._n_images
        return self

    def result(self) -> AnomalyDetectionResult:
        rows = np.array(self._rows, dtype=np.int64).reshape(-1, 3)
        order = np.lexsort((rows[:, 1], rows[:, 2], rows[:, 0]))  # by image, y, x
        return AnomalyDetectionResult(rows=rows[order], scores=np.array(self._scores, float)[order],
                                      relative_norms=np.array(self._rel, float)[order],
                                      grid=self._grid or (0, 0), n_images=self._n_images,
                                      params=dict(self.params), layer=self.layer,
                                      provenance=dict(self.provenance))

    def _state_arrays(self):
        return {"rows": np.array(self._rows, np.int64).reshape(-1, 3), "scores": np.array(self._scores, float),
                "rel": np.array(self._rel, float), "n_images": np.array(self._n_images),
                "grid": np.array(self._grid or (0, 0))}

    def _load_state_arrays(self, st):
        self._rows = [tuple(int(v) for v in r) for r in st["rows"]]
        self._scores, self._rel = st["scores"].tolist(), st["rel"].tolist()
        self._n_images = int(st["n_images"])
        g = tuple(int(v) for v in st["grid"])
        self._grid = g if g != (0, 0) else None


def detect_anomalies(features: Any, *, z_threshold: float = 3.5, ratio_threshold: float = 2.0,
                     max_tokens: int = 16, local_ratio: float = 1.5, image_indices: Sequence[int] | None = None,
                     layer: str | None = None, provenance: dict | None = None) -> AnomalyDetectionResult:
    """Automatic high-norm anomaly detector on (N, C, rows, cols) features (rule: module docstring).

    Rows refer to ``image_indices`` (default 0..N-1) and to this layer's grid. To reproduce the
    paper's labelling, run it on ``up_blocks[1].upsamplers[0]`` (32x32 at 512 px).
    """
    det = AnomalyDetector(z_threshold=z_threshold, ratio_threshold=ratio_threshold, max_tokens=max_tokens,
                          local_ratio=local_ratio, layer=layer, provenance=provenance)
    det.update(features, image_indices)
    return det.result()


def compare_labels(predicted: Any, truth: Any, tolerance: int = 0) -> dict[str, float]:
    """Precision / recall of predicted label rows against true ones (one-to-one matching per image;
    a match needs max(|dx|, |dy|) <= ``tolerance`` tokens). Returns tp, fp, fn, precision, recall."""
    p = validate_labels(getattr(predicted, "rows", predicted), source="predicted")
    t = validate_labels(getattr(truth, "rows", truth), source="truth")
    tp = 0
    for img in np.union1d(p[:, 0], t[:, 0]):
        pp, tt = p[p[:, 0] == img, 1:], t[t[:, 0] == img, 1:]
        if not len(pp) or not len(tt):
            continue
        d = np.abs(pp[:, None, :] - tt[None, :, :]).max(axis=2)
        pairs = sorted((int(d[i, j]), i, j) for i, j in zip(*np.nonzero(d <= tolerance)))
        used_p, used_t = set(), set()
        for _, i, j in pairs:
            if i not in used_p and j not in used_t:
                used_p.add(i)
                used_t.add(j)
        tp += len(used_p)
    fp, fn = len(p) - tp, len(t) - tp
    return {"tp": tp, "fp": fp, "fn": fn, "precision": tp / len(p) if len(p) else float("nan"),
            "recall": tp / len(t) if len(t) else float("nan")}


def _patch(grid: tuple[int, int], ref: tuple[int, int], x: int, y: int) -> tuple[slice, slice]:
    """Token window of a labelled anomaly on a layer grid (the published scaling rule)."""
    sy, sx = grid[0] / ref[0], grid[1] / ref[1]
    y0, x0 = int(y * sy), int(x * sx)
    return slice(y0, y0 + max(1, int(2 * sy))), slice(x0, x0 + max(1, int(2 * sx)))


class AnomalyNormAccumulator(Accumulator):
    """Streamed relative norm of labelled anomalies on one layer.

    ``anomalies``: (K, 3) rows [global image index, x, y] on the ``ref_grid``. ``update`` takes
    batches with their global image indices; state = one value per anomaly (bounded by K). The mean's
    interval is a bootstrap over images (an image's anomalies are resampled together: they are not
    independent), ``n_boot`` / ``level`` / ``seed`` as in :mod:`sdaudit.analyses.intervals`.
    """

    def __init__(self, anomalies: Any, *, ref_grid: int | Sequence[int] = 32, layer: str | None = None,
                 provenance: dict | None = None, n_boot: int = DEFAULT_BOOT, level: float = DEFAULT_LEVEL,
                 seed: int = 0):
        super().__init__()
        self.ref = (int(ref_grid), int(ref_grid)) if np.isscalar(ref_grid) else tuple(int(v) for v in ref_grid)
        self.anomalies = validate_labels(getattr(anomalies, "rows", anomalies), grid=self.ref, source="anomalies")
        self.layer, self.provenance = layer, dict(provenance or {})
        self._boot = Bootstrap(int(n_boot), float(level), int(seed))
        self._params["anomalies"] = self.anomalies.tolist()  # the rows, also when given a detection result
        k = len(self.anomalies)
        self._values = np.full(k, np.nan)
        self._seen = np.zeros(k, bool)
        self._grid: tuple[int, int] | None = None

    def update(self, batch: Any, image_indices: Sequence[int] | None = None) -> None:
        idx, x = _checked_batch(self, batch, image_indices)
        grid = self._grid
        pos = {int(g): p for p, g in enumerate(idx)}
        hit = np.nonzero(np.isin(self.anomalies[:, 0], idx))[0]
        if not hit.size:
            return
        norms = token_norms(x)
        means = norms.mean(axis=(1, 2), dtype=np.float64)
        for j in hit:
            img, ax, ay = (int(v) for v in self.anomalies[j])
            p = pos[img]
            ys, xs = _patch(grid, self.ref, ax, ay)
            patch = norms[p, ys, xs]
            if patch.size == 0:
                raise ValueError(f"layer {self.layer!r}: anomaly {[img, ax, ay]} falls outside its {grid} grid")
            self._values[j] = float(patch.mean(dtype=np.float64)) / means[p] if means[p] > 0 else np.nan
            self._seen[j] = True

    def merge(self, other: "AnomalyNormAccumulator") -> "AnomalyNormAccumulator":
        self._check_mergeable(other)
        if other._grid is not None and self._grid not in (None, other._grid):
            raise ValueError(f"cannot merge grids {self._grid} and {other._grid}")
        self._grid = self._grid or other._grid
        self._values = np.where(other._seen, other._values, self._values)
        self._seen |= other._seen
        return self

    def result(self) -> AnomalyNormResult:
        name = self.layer if self.layer is not None else "layer"
        ok = self._seen & np.isfinite(self._values)
        v = self._values[ok]
        stats = {"mean": float(v.mean()) if v.size else float("nan"),
                 "std": float(v.std()) if v.size else float("nan"), "count": int(v.size),
                 "missing": int((~self._seen).sum()), "undefined": int((self._seen & ~ok).sum()),
                 "grid": list(self._grid) if self._grid else None}
        iv = self._interval(ok)
        stats.update(low=iv.low, high=iv.high, level=iv.level, n_images=iv.n)
        return AnomalyNormResult(stats={name: stats}, values={name: self._values.copy()},
                                 anomalies=self.anomalies, ref_grid=self.ref[0] if self.ref[0] == self.ref[1]
                                 else list(self.ref), provenance=dict(self.provenance))

    def _interval(self, ok: np.ndarray) -> Interval:
        """Bootstrap interval of the mean over images: per image, (sum of its anomalies' values, count)."""
        terms = item_mean_terms(self.anomalies[ok, 0], self._values[ok])
        return self._boot.interval(terms.rows, terms.statistic)

    def _state_arrays(self):
        return {"values": self._values, "seen": self._seen, "grid": np.array(self._grid or (0, 0))}

    def _load_state_arrays(self, st):
        self._values, self._seen = st["values"].astype(float), st["seen"].astype(bool)
        g = tuple(int(v) for v in st["grid"])
        self._grid = g if g != (0, 0) else None


def anomaly_relative_norms(layers: Mapping[str, Any], anomalies: Any, *, ref_grid: int = 32,
                           image_indices: Sequence[int] | None = None,
                           provenance: dict | None = None) -> AnomalyNormResult:
    """Per layer mean and std of the anomalies' relative norm.

    ``layers``: {layer name: (N, C, n, n)}; ``anomalies``: (K, 3) rows [image, x, y] on the
    ``ref_grid`` (or an AnomalyDetectionResult); ``image_indices``: global index of each of the N
    images (default 0..N-1). For a layer with n tokens: scale = n / ref_grid, patch = tokens from
    (int(y*scale), int(x*scale)) of size max(1, int(2*scale)); relative norm = mean patch norm /
    mean norm of that image's whole map. Anomalies of images not in the data count as missing.
    """
    results = []
    for name, feats in layers.items():
        acc = AnomalyNormAccumulator(anomalies, ref_grid=ref_grid, layer=name)
        acc.update(feats, image_indices)
        results.append(acc.result())
    if not results:
        raise ValueError("no layers given")
    return AnomalyNormResult.combine(results, provenance=dict(provenance or {}))
