"""Position probe (paper Fig. 2 top row): how well a linear map recovers a token's row and column.

Every token (C features) of a layer is a sample; its labels are its row (n_rows classes) and its
column (n_cols classes). The first ``int(train_fraction * N)`` images train, the rest test (split
by image index). Accuracy at comparison resolution s on an axis with n classes: a prediction
counts if ``pred * s // n == label * s // n``; the reported accuracy is the mean of the row and
column accuracy; chance is 1 / min(s, n) (per axis, then averaged).

Methods
-------
``"paper"``  the published probe: ``nn.Linear(C, n_rows + n_cols)``, cross-entropy on each axis
             (averaged), Adam lr 1e-3, batch 512, 5 epochs, torch seed 42 (seeded per call, the
             caller's RNG state is preserved). On square grids the logits are read as the
             published ``view(-1, n, 2)`` (row and column logits interleaved), so results match
             the published code's layout. Needs all tokens in memory (kept in the input dtype).
``"lda"``    closed form (default): linear discriminant analysis with a shared, shrunk within-class
             covariance, one per axis. Needs only streamed sufficient statistics of the training
             tokens: sum x, sum x x^T (C x C), per-row and per-column feature sums and counts.
``"ridge"``  closed form: ridge regression of one-hot row / column targets on the centred
             features, argmax per axis; same sufficient statistics.

``shrinkage`` (alpha) regularises both closed forms: LDA uses (1 - alpha) S + alpha tr(S)/C I for
the within-class covariance S; ridge adds lambda = alpha tr(S)/C to the centred scatter.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ..constants import RESOLUTIONS
from ._arrays import check_features, check_finite, is_torch, resolve_indices
from ._base import Accumulator, nest, unnest
from ._probe_scoring import (ProbeCounts, accuracy_terms, image_hits, load_pending, make_result, n_train_images,
                             pending_state, take, test_rows, to_numpy, without_test_images)
from .intervals import DEFAULT_BOOT, DEFAULT_LEVEL, Bootstrap, PerImageStats, Terms
from .probe_paper import PaperTraining, paper_probe_history
from .results import ProbeResult

__all__ = ["CLOSED_FORM", "DEFAULT_SHRINKAGE", "PaperTraining", "PositionProbeAccumulator", "n_train_images",
           "position_probe"]

CLOSED_FORM = ("lda", "ridge")
DEFAULT_SHRINKAGE = 1e-2


class PositionProbeAccumulator(Accumulator):
    """Streamed closed-form position probe (``method`` "lda" or "ridge").

    ``n_images`` is the total number of images (to know which are train: index < int(n_images *
    train_fraction), or pass ``n_train``). Training images add to the sufficient statistics
    (float64; C x C plus classes x C; per-batch products in float32 about a fixed shift vector,
    on the input's torch device if a tensor is given). Test images are scored as soon as all
    training images have been seen (the natural order of an audit: test images come last);
    test images that arrive earlier are buffered until then. For multi-process runs: merge
    (or all-reduce) the shards' training statistics first, then stream the test images through
    the merged accumulator, then merge the test counts.
    """

    def __init__(self, n_images: int, *, train_fraction: float = 0.8, resolutions: Sequence[int] = RESOLUTIONS,
                 method: str = "lda", shrinkage: float = DEFAULT_SHRINKAGE, n_train: int | None = None,
                 layer: str | None = None, provenance: dict | None = None, n_boot: int = DEFAULT_BOOT,
                 level: float = DEFAULT_LEVEL, seed: int = 0):
        super().__init__()
        if method not in CLOSED_FORM:
            raise ValueError(f"streamed probe method must be one of {CLOSED_FORM}, got {method!r} "
                             "(the 'paper' probe needs all data at once: use position_probe)")
        self.n_train = n_train_images(n_images, train_fraction) if n_train is None else int(n_train)
        if not 0 < self.n_train < n_images:
            raise ValueError(f"n_train={self.n_train} must be between 1 and n_images-1={n_images - 1}")
        self.n_images, self.train_fraction, self.method = int(n_images), float(train_fraction), method
        self.resolutions = [int(s) for s in resolutions]
        self.shrinkage, self.layer, self.provenance = float(shrinkage), layer, dict(provenance or {})
        self._boot = Bootstrap(int(n_boot), float(level), int(seed))
        self.per_image = PerImageStats(2 * len(self.resolutions) + 1)  # test images: row hits, col hits, tokens
        self._grid: tuple[int, int] | None = None
        self._c = 0
        self._shift: np.ndarray | None = None
        self._n_tok = 0
        self._s = self._g = self._rs = self._rc = self._cs = self._cc = None
        self._n_tr_img = self._n_te_img = self._n_te_tok = 0
        self._hits_r = np.zeros(len(self.resolutions), np.int64)
        self._hits_c = np.zeros(len(self.resolutions), np.int64)
        self._pending: list[tuple[np.ndarray, np.ndarray]] = []
        self._fit: tuple | None = None

    # -- streaming ---------------------------------------------------------------------------
    def update(self, batch: Any, image_indices: Sequence[int] | None = None) -> None:
        idx = resolve_indices(len(batch), image_indices, self._next_index)
        if len(idx) == 0:
            return
        self._next_index = max(self._next_index, int(idx.max()) + 1)
        if np.any(idx >= self.n_images):
            raise ValueError(f"image index {int(idx.max())} >= n_images={self.n_images}")
        x = batch if is_torch(batch) else check_features(batch, layer=self.layer, image_indices=idx)
        if is_torch(x):
            self._check_torch(x, idx)
        self._set_shape(tuple(int(v) for v in x.shape[1:]))
        train = idx < self.n_train
        if train.any():
            self._add_train(x if train.all() else take(x, np.nonzero(train)[0]), int(train.sum()))
        if (~train).any():
            sel = np.nonzero(~train)[0]
            xt = to_numpy(take(x, sel))
            if self.train_complete:
                self._score(xt, idx[sel])
            else:
                self._pending.append((np.asarray(xt, np.float32), idx[sel]))

    @property
    def train_complete(self) -> bool:
        return self._n_tr_img == self.n_train

    def _check_torch(self, x, idx) -> None:
        if x.ndim != 4:
            raise ValueError(f"features (layer {self.layer!r}): expected (N, C, rows, cols), got {tuple(x.shape)}")
        check_finite(x, self.layer, idx)

    def _set_shape(self, shape: tuple[int, int, int]) -> None:
        c, h, w = shape
        if self._grid is None:
            self._grid, self._c = (h, w), c
        elif (h, w) != self._grid or c != self._c:
            raise ValueError(f"layer {self.layer!r}: shape (C, rows, cols) changed from "
                             f"{(self._c,) + self._grid} to {shape}")

    def _add_train(self, x: Any, n_img: int) -> None:
        if self._n_tr_img + n_img > self.n_train:
            raise ValueError(f"layer {self.layer!r}: more than n_train={self.n_train} training images "
                             "seen (an image was given twice?)")
        c, (h, w) = self._c, self._grid
        if self._shift is None:
            mean = x.float().mean((0, 2, 3)) if is_torch(x) else x.mean(axis=(0, 2, 3), dtype=np.float64)
            self._shift = np.asarray(to_numpy(mean), np.float64)
            self._s, self._g = np.zeros(c), np.zeros((c, c))
            self._rs, self._rc = np.zeros((h, c)), np.zeros(h)
            self._cs, self._cc = np.zeros((w, c)), np.zeros(w)
        if is_torch(x):
            xf = x.float()
            t = xf.permute(0, 2, 3, 1) - xf.new_tensor(self._shift)
            tok = t.reshape(-1, c)
            self._g += to_numpy(tok.T @ tok).astype(np.float64)
            self._rs += to_numpy(t.double().sum((0, 2)))
            self._cs += to_numpy(t.double().sum((0, 1)))
        else:
            t = x.transpose(0, 2, 3, 1) - self._shift.astype(np.float32)
            tok = t.reshape(-1, c)
            self._g += (tok.T @ tok).astype(np.float64)
            self._rs += t.sum(axis=(0, 2), dtype=np.float64)
            self._cs += t.sum(axis=(0, 1), dtype=np.float64)
        self._s = self._rs.sum(axis=0)
        self._rc += n_img * w
        self._cc += n_img * h
        self._n_tok += n_img * h * w
        self._n_tr_img += n_img
        self._fit = None

    def _score(self, x: np.ndarray, idx: np.ndarray) -> None:
        h, w = self._grid
        b = x.shape[0]
        wr, br, wc, bc = self._weights()
        tok = (x.transpose(0, 2, 3, 1) - self._shift.astype(np.float32)).reshape(-1, self._c)
        pr = np.argmax(tok @ wr + br, axis=1).reshape(b, h * w)
        pc = np.argmax(tok @ wc + bc, axis=1).reshape(b, h * w)
        rows = np.broadcast_to(np.repeat(np.arange(h), w), (b, h * w))
        cols = np.broadcast_to(np.tile(np.arange(w), h), (b, h * w))
        hr, hc = image_hits(pr, rows, h, self.resolutions), image_hits(pc, cols, w, self.resolutions)
        self._hits_r += hr.sum(axis=0)
        self._hits_c += hc.sum(axis=0)
        self._n_te_tok += tok.shape[0]
        self._n_te_img += b
        self.per_image.add(idx, test_rows(hr, hc, h * w))

    def _flush(self) -> None:
        if self._pending and self.train_complete:
            for x, idx in self._pending:
                self._score(x, idx)
            self._pending = []

    # -- closed-form fit -----------------------------------------------------------------------
    def _weights(self):
        if self._fit is None:
            self._fit = (*self._fit_axis(self._rs, self._rc), *self._fit_axis(self._cs, self._cc))
        return self._fit

    def _fit_axis(self, sums: np.ndarray, counts: np.ndarray):
        """(C, K) float32 weights and (K,) bias, applied to (x - shift)."""
        n, c, k = self._n_tok, self._c, len(counts)
        if np.any(counts == 0):
            raise ValueError(f"layer {self.layer!r}: a position class has no training tokens")
        a = self.shrinkage
        if self.method == "lda":
            means = sums / counts[:, None]
            scatter = self._g - sums.T @ means
            cov = scatter / max(n - k, 1)
            cov = (1 - a) * cov + a * (np.trace(cov) / c) * np.eye(c)
            wts = _solve_psd(cov, means.T)
            bias = -0.5 * np.einsum("kc,ck->k", means, wts) + np.log(counts / n)
        else:
            m = self._s / n
            scatter = self._g - n * np.outer(m, m)
            lam = a * np.trace(scatter) / c
            rhs = (sums - counts[:, None] * m[None, :]).T
            wts = _solve_psd(scatter + lam * np.eye(c), rhs)
            bias = counts / n - m @ wts
        return wts.astype(np.float32), bias.astype(np.float32)

    # -- merge / result / state ----------------------------------------------------------------
    def merge(self, other: "PositionProbeAccumulator") -> "PositionProbeAccumulator":
        self._check_mergeable(other)
        if other._grid is not None:
            self._set_shape((other._c,) + other._grid)
        if other._n_tok:
            if self._n_tr_img + other._n_tr_img > self.n_train:
                raise ValueError("merged shards hold more than n_train training images (overlap?)")
            if self._shift is None:
                self._shift = other._shift.copy()
                self._s, self._g = np.zeros_like(other._s), np.zeros_like(other._g)
                self._rs, self._rc = np.zeros_like(other._rs), np.zeros_like(other._rc)
                self._cs, self._cc = np.zeros_like(other._cs), np.zeros_like(other._cc)
            d = other._shift - self._shift  # convert other's sums about its shift to ours
            n = other._n_tok
            self._g += other._g + np.outer(other._s, d) + np.outer(d, other._s) + n * np.outer(d, d)
            self._rs += other._rs + other._rc[:, None] * d
            self._cs += other._cs + other._cc[:, None] * d
            self._s = self._rs.sum(axis=0)
            self._rc += other._rc
            self._cc += other._cc
            self._n_tok += n
            self._n_tr_img += other._n_tr_img
            self._fit = None
        self._hits_r += other._hits_r
        self._hits_c += other._hits_c
        self._n_te_tok += other._n_te_tok
        self._n_te_img += other._n_te_img
        self.per_image.merge(other.per_image)
        self._pending += [(x.copy(), i.copy()) for x, i in other._pending]
        self._next_index = max(self._next_index, other._next_index)
        return self

    def result(self) -> ProbeResult:
        if not self.train_complete:
            raise ValueError(f"layer {self.layer!r}: only {self._n_tr_img} of {self.n_train} training "
                             "images seen")
        self._flush()
        if not self._n_te_img:
            raise ValueError(f"layer {self.layer!r}: no test images seen")
        counts = ProbeCounts(self._grid, self.per_image.arrays()[1], self._n_tr_img, self._n_tok)
        return make_result(self.method, self.resolutions, counts, layer=self.layer, provenance=self.provenance,
                           details={"shrinkage": self.shrinkage}, boot=self._boot)

    def terms(self, resolution: int) -> Terms:
        """Bootstrap terms of the accuracy at ``resolution`` over the test images (for paired intervals)."""
        return accuracy_terms(self.per_image, self.resolutions, resolution)

    def _state_arrays(self):
        z = np.zeros(0)
        return {"grid": np.array(self._grid or (0, 0)), "c": np.array(self._c),
                "shift": z if self._shift is None else self._shift, "n_tok": np.array(self._n_tok),
                "s": z if self._s is None else self._s, "g": z if self._g is None else self._g,
                "rs": z if self._rs is None else self._rs, "rc": z if self._rc is None else self._rc,
                "cs": z if self._cs is None else self._cs, "cc": z if self._cc is None else self._cc,
                "counts": np.array([self._n_tr_img, self._n_te_img, self._n_te_tok]),
                "hits_r": self._hits_r, "hits_c": self._hits_c, **pending_state(self._pending),
                **nest("per_image", self.per_image.state())}

    _TRAIN_KEYS = ("shift", "s", "g", "rs", "rc", "cs", "cc")

    @classmethod
    def train_only_state(cls, state: dict) -> dict:
        """``state`` (a :meth:`state_dict`) with the test counts removed: what shards exchange before testing."""
        counts = np.array(state["counts"], dtype=np.int64).copy()
        counts[1:] = 0
        return dict(without_test_images(state), counts=counts, hits_r=np.zeros_like(state["hits_r"]),
                    hits_c=np.zeros_like(state["hits_c"]))

    @classmethod
    def test_only_state(cls, state: dict) -> dict:
        """``state`` with the training statistics removed (only this shard's test counts and rows)."""
        out = dict(state)
        counts = np.array(state["counts"], dtype=np.int64).copy()
        counts[0] = 0
        out.update({k: np.zeros(0) for k in cls._TRAIN_KEYS})
        out.update(counts=counts, n_tok=np.array(0))
        return out

    def _load_state_arrays(self, st):
        g = tuple(int(v) for v in st["grid"])
        self._grid, self._c = (g if g != (0, 0) else None), int(st["c"])
        self._n_tok = int(st["n_tok"])
        if st["shift"].size:
            self._shift, self._s, self._g = st["shift"], st["s"], st["g"]
            self._rs, self._rc, self._cs, self._cc = st["rs"], st["rc"], st["cs"], st["cc"]
        self._n_tr_img, self._n_te_img, self._n_te_tok = (int(v) for v in st["counts"])
        self._hits_r, self._hits_c = st["hits_r"].astype(np.int64), st["hits_c"].astype(np.int64)
        self._pending = load_pending(st)
        self.per_image.load(unnest("per_image", st))


def _solve_psd(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    from scipy.linalg import LinAlgError, solve

    try:
        return solve(a, b, assume_a="pos")
    except LinAlgError:
        return np.linalg.lstsq(a, b, rcond=None)[0]


def position_probe(features: Any, *, method: str = "lda", train_fraction: float = 0.8,
                   resolutions: Sequence[int] = RESOLUTIONS, shrinkage: float = DEFAULT_SHRINKAGE,
                   training: PaperTraining = PaperTraining(), device: str | None = None, threads: int | None = None,
                   layer: str | None = None, provenance: dict | None = None,
                   bootstrap: Bootstrap = Bootstrap()) -> ProbeResult:
    """Test accuracy of a linear position probe per comparison resolution, with chance level and a
    bootstrap interval over test images (``bootstrap``; the probe is held fixed).

    Parameters:
        features: (N, C, rows, cols) numpy or torch (float16/32); the first ``int(train_fraction * N)`` images train.
        method: "lda" (default), "ridge" or "paper" (see the module docstring).
        shrinkage: regularisation of the closed forms ("lda", "ridge").
        training: the optimiser recipe of "paper" (default: the published one).
        device, threads: where "paper" trains (default: the features' device) and with how many torch CPU
            threads (None = torch's current setting; 1 is fastest for small C on a busy machine).
        layer, provenance: recorded in the result.

    For "paper", ``details["history"]`` has the accuracy per epoch.
    """
    if method in CLOSED_FORM:
        acc = PositionProbeAccumulator(len(features), train_fraction=train_fraction, resolutions=resolutions,
                                       method=method, shrinkage=shrinkage, layer=layer, provenance=provenance,
                                       n_boot=bootstrap.n_boot, level=bootstrap.level, seed=bootstrap.seed)
        acc.update(features)
        return acc.result()
    if method != "paper":
        raise ValueError(f"unknown probe method {method!r}; choose 'paper', 'lda' or 'ridge'")
    x = _paper_input(features, layer)
    n, _, h, w = x.shape
    n_tr = n_train_images(n, train_fraction)
    res = [int(s) for s in resolutions]
    hist = paper_probe_history(x, n_tr, res, training, device=device, threads=threads)
    n_te_tok = (n - n_tr) * h * w
    hr, hc, loss = hist[-1]
    details = {**training.details(), "final_train_loss": loss,
               "history": [{"epoch": e + 1, "accuracy": {s: 0.5 * (r[:, i].sum() + c[:, i].sum()) / n_te_tok
                                                         for i, s in enumerate(res)}}
                           for e, (r, c, _) in enumerate(hist)]}
    counts = ProbeCounts((h, w), test_rows(hr, hc, h * w), n_tr, n_tr * h * w)
    return make_result("paper", res, counts, layer=layer, provenance=provenance, details=details, boot=bootstrap)


def _paper_input(features: Any, layer: str | None) -> Any:
    """The published probe's input: a finite (N, C, rows, cols) tensor, or numpy kept in float16/float32."""
    if is_torch(features):
        if features.ndim != 4:
            raise ValueError(f"expected (N, C, rows, cols), got {tuple(features.shape)}")
        check_finite(features, layer)
        return features
    arr = np.asarray(features)
    x = arr if arr.dtype in (np.float16, np.float32) else arr.astype(np.float32)
    if x.ndim != 4:
        raise ValueError(f"features (layer {layer!r}): expected (N, C, rows, cols), got {x.shape}")
    check_finite(x, layer)
    return x
