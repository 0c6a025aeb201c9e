"""The published (trained) position probe: one-shot as published, and streamed with bounded memory.

The probe: ``nn.Linear(C, n_rows + n_cols)``, cross-entropy on each axis (square grids read the logits
as the published ``view(-1, n, 2)``), Adam lr 1e-3, batch 512, 5 epochs, torch seed 42; each epoch
visits the training tokens in a fresh ``torch.randperm`` order.

:func:`paper_probe_history` is the published computation on all tokens at once (used by
:func:`~sdaudit.analyses.position_probe` with ``method="paper"``).

:class:`PaperProbeAccumulator` streams it in bounded memory: the training tokens are a uniform sample
of at most ``max_train_tokens`` of them, chosen by bottom-k sampling on seeded per-token keys (token t of
image i gets key ``default_rng([seed, i]).random(h*w)[t]``; the k smallest keys are kept), so the sample
does not depend on the order or the batching of the images, and shards merge exactly. The optimiser
takes the published number of steps: each epoch walks ``randperm(T_all) % T_kept`` where T_all is the
number of training tokens seen, so with T_kept == T_all (nothing dropped) it is the published procedure,
and otherwise each kept token is seen about T_all / T_kept times per epoch. Test images are scored
as they stream once the probe is trained (it trains when the last training image has arrived; earlier
test images wait), per image, for bootstrap intervals over test images. Memory: max_train_tokens x C
float32 per layer (65,536 x 1,280 x 4 B = 320 MiB at SD's widest layers).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np

from ..constants import RESOLUTIONS
from ._arrays import check_features, resolve_indices
from ._base import Accumulator, nest, unnest
from ._probe_scoring import (ProbeCounts, accuracy_terms, image_hits, load_pending, make_result, n_train_images,
                             pending_state, test_rows, to_numpy, without_test_images)
from .intervals import DEFAULT_BOOT, DEFAULT_LEVEL, Bootstrap, PerImageStats, Terms
from .results import ProbeResult

DEFAULT_MAX_TRAIN_TOKENS = 65536


@dataclass(frozen=True)
class PaperTraining:
    """The published probe's optimiser recipe: Adam at ``lr``, ``batch_size`` tokens a step, ``epochs`` passes,
    torch seeded with ``seed`` (the defaults are the published ones)."""

    epochs: int = 5
    lr: float = 1e-3
    batch_size: int = 512
    seed: int = 42

    def details(self) -> dict:
        """The recipe as a result's ``details`` entries."""
        return asdict(self)


def _split(logits, h: int, w: int):
    if h == w:  # the published layout: logits.view(-1, n, 2)
        v = logits.view(-1, h, 2)
        return v[..., 0], v[..., 1]
    return logits[:, :h], logits[:, h:]


def _train(tokens, labels, grid: tuple[int, int], training: PaperTraining, *, epoch_tokens: int | None = None,
           on_epoch=None):
    """Train the published probe on ``tokens`` (T, C) with ``labels`` = (rows, cols) of each token;
    ``on_epoch(clf, loss)`` after every epoch."""
    import torch
    import torch.nn.functional as F

    h, w = grid
    rows, cols = labels
    dev, (t, c) = tokens.device, tokens.shape
    n_epoch = t if epoch_tokens is None else int(epoch_tokens)
    batch_size = training.batch_size
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        torch.manual_seed(training.seed)
        clf = torch.nn.Linear(c, h + w).to(dev)
        opt = torch.optim.Adam(clf.parameters(), lr=training.lr)
        for _ in range(training.epochs):
            clf.train()
            perm = (torch.randperm(n_epoch) % t).to(dev)
            for i in range(0, n_epoch, batch_size):
                b = perm[i:i + batch_size]
                lr_, lc_ = _split(clf(tokens[b].float()), h, w)
                if h == w:
                    loss = F.cross_entropy(torch.stack([lr_, lc_], -1), torch.stack([rows[b], cols[b]], -1))
                else:
                    loss = 0.5 * (F.cross_entropy(lr_, rows[b]) + F.cross_entropy(lc_, cols[b]))
                opt.zero_grad()
                loss.backward()
                opt.step()
            if on_epoch is not None:
                on_epoch(clf, float(loss.item()))
    return clf.eval()


def _evaluate(clf, tokens, grid: tuple[int, int], resolutions: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """(images, R) row and column hits per image; ``tokens`` (images * h * w, C) in image-major order."""
    import torch

    h, w = grid
    step = max(1, 65536 // (h * w)) * h * w  # whole images per chunk
    rows = np.repeat(np.arange(h), w)[None]
    cols = np.tile(np.arange(w), h)[None]
    hr, hc = [], []
    with torch.no_grad():
        for i in range(0, tokens.shape[0], step):
            pr, pc = (v.argmax(1).cpu().numpy().reshape(-1, h * w) for v in _split(clf(tokens[i:i + step].float()), h, w))
            hr.append(image_hits(pr, np.broadcast_to(rows, pr.shape), h, resolutions))
            hc.append(image_hits(pc, np.broadcast_to(cols, pc.shape), w, resolutions))
    r = len(resolutions)
    empty = np.zeros((0, r), np.int64)
    return (np.concatenate(hr) if hr else empty), (np.concatenate(hc) if hc else empty)


def paper_probe_history(x: Any, n_train: int, resolutions: Sequence[int], training: PaperTraining, *,
                        device: str | None = None, threads: int | None = None):
    """The published probe on all of ``x`` (N, C, h, w): per epoch (row hits, column hits per test image, loss).

    ``device``: where to train (default: ``x``'s); ``threads``: torch CPU threads while training (None: as set).
    """
    import torch

    xt = x.detach() if hasattr(x, "detach") else torch.from_numpy(np.ascontiguousarray(x))
    if not xt.is_floating_point():
        xt = xt.float()
    dev = torch.device(device) if device is not None else xt.device
    n, c, h, w = xt.shape
    tokens = xt.permute(0, 2, 3, 1).reshape(-1, c).to(dev)  # input dtype kept; upcast per batch
    rows = torch.arange(h, device=dev).repeat_interleave(w).repeat(n)
    cols = torch.arange(w, device=dev).repeat(h * n)
    ntr = n_train * h * w
    history = []

    def on_epoch(clf, loss):
        history.append((*_evaluate(clf, tokens[ntr:], (h, w), resolutions), loss))

    old_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(int(threads))
    try:
        _train(tokens[:ntr], (rows[:ntr], cols[:ntr]), (h, w), training, on_epoch=on_epoch)
    finally:
        torch.set_num_threads(old_threads)
    return history


class PaperProbeAccumulator(Accumulator):
    """Streamed published probe with a bounded sample of training tokens (module docstring).

    Images with index < ``n_train`` (default ``int(n_images * train_fraction)``) train, the rest test.
    Shards merge before training (the union of their samples, cut to the k smallest keys) and, once
    trained, their test counts add up.
    """

    def __init__(self, n_images: int, *, train_fraction: float = 0.8, resolutions: Sequence[int] = RESOLUTIONS,
                 n_train: int | None = None, max_train_tokens: int = DEFAULT_MAX_TRAIN_TOKENS, epochs: int = 5,
                 lr: float = 1e-3, batch_size: int = 512, seed: int = 42, layer: str | None = None,
                 provenance: dict | None = None, n_boot: int = DEFAULT_BOOT, level: float = DEFAULT_LEVEL,
                 boot_seed: int = 0):
        super().__init__()
        self.n_images, self.train_fraction = int(n_images), float(train_fraction)
        self.n_train = n_train_images(n_images, train_fraction) if n_train is None else int(n_train)
        self.resolutions = [int(s) for s in resolutions]
        self.max_train_tokens, self.layer = int(max_train_tokens), layer
        self.training = PaperTraining(int(epochs), float(lr), int(batch_size), int(seed))
        self.provenance = dict(provenance or {})
        self._boot = Bootstrap(int(n_boot), float(level), int(boot_seed))
        self._grid: tuple[int, int] | None = None
        self._keys = np.zeros(0)
        self._tokens = np.zeros((0, 0), np.float32)
        self._pos = np.zeros(0, np.int64)  # token position t = row * w + col
        self._n_tr_img = self._n_tr_tok = 0
        self._clf = None
        self._loss = float("nan")
        self._pending: list[tuple[np.ndarray, np.ndarray]] = []
        self.per_image = PerImageStats(2 * len(self.resolutions) + 1)

    # -- streaming ---------------------------------------------------------------------------
    def update(self, batch: Any, image_indices: Sequence[int] | None = None) -> None:
        idx = resolve_indices(len(batch), image_indices, self._next_index)
        if not len(idx):
            return
        self._next_index = max(self._next_index, int(idx.max()) + 1)
        x = check_features(to_numpy(batch), layer=self.layer, image_indices=idx)
        self._set_grid(x.shape)
        train = idx < self.n_train
        if train.any():
            self._add_train(x[train], idx[train])
        if (~train).any():
            self._pending.append((np.asarray(x[~train], np.float32), idx[~train]))
        self._flush()

    def _set_grid(self, shape) -> None:
        grid = (int(shape[2]), int(shape[3]))
        if self._grid is None:
            self._grid = grid
            self._tokens = np.zeros((0, int(shape[1])), np.float32)
        elif grid != self._grid or int(shape[1]) != self._tokens.shape[1]:
            raise ValueError(f"layer {self.layer!r}: shape changed to {tuple(shape[1:])}")

    def _add_train(self, x: np.ndarray, idx: np.ndarray) -> None:
        if self._clf is not None or self._n_tr_img + len(idx) > self.n_train:
            raise ValueError(f"layer {self.layer!r}: more than n_train={self.n_train} training images "
                             "(an image given twice?)")
        h, w = self._grid
        keys = np.concatenate([np.random.default_rng([self.training.seed, int(i)]).random(h * w) for i in idx])
        tokens = x.transpose(0, 2, 3, 1).reshape(-1, x.shape[1]).astype(np.float32)
        self._keep(keys, tokens, np.tile(np.arange(h * w), len(idx)))
        self._n_tr_img += len(idx)
        self._n_tr_tok += len(keys)

    def _keep(self, keys: np.ndarray, tokens: np.ndarray, pos: np.ndarray) -> None:
        """Add tokens to the sample and keep the ``max_train_tokens`` with the smallest keys."""
        keys = np.concatenate([self._keys, keys])
        tokens = np.concatenate([self._tokens, tokens])
        pos = np.concatenate([self._pos, pos])
        if len(keys) > self.max_train_tokens:
            keep = np.sort(np.argpartition(keys, self.max_train_tokens - 1)[:self.max_train_tokens])
            keys, tokens, pos = keys[keep], tokens[keep], pos[keep]
        self._keys, self._tokens, self._pos = keys, tokens, pos

    @property
    def train_complete(self) -> bool:
        return self._n_tr_img == self.n_train

    def _flush(self) -> None:
        if not (self.train_complete and self._pending):
            return
        if self._clf is None:
            self._fit()
        import torch

        for x, idx in self._pending:
            tokens = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 2, 3, 1).reshape(-1, x.shape[1])))
            hr, hc = _evaluate(self._clf, tokens, self._grid, self.resolutions)
            h, w = self._grid
            self.per_image.add(idx, test_rows(hr, hc, h * w))
        self._pending = []

    def _fit(self) -> None:
        import torch

        order = np.lexsort((self._pos, self._keys))  # a fixed order: the sample's, not the arrival's
        w = self._grid[1]
        pos = torch.from_numpy(self._pos[order])
        losses = []
        self._clf = _train(torch.from_numpy(self._tokens[order]), (pos // w, pos % w), self._grid, self.training,
                           epoch_tokens=self._n_tr_tok, on_epoch=lambda clf, loss: losses.append(loss))
        self._loss = losses[-1] if losses else float("nan")

    # -- merge / result / state ----------------------------------------------------------------
    def merge(self, other: "PaperProbeAccumulator") -> "PaperProbeAccumulator":
        self._check_mergeable(other)
        if other._grid is not None:
            self._set_grid((0, other._tokens.shape[1], *other._grid))
        if other._n_tr_img:
            if self._clf is not None or other._clf is not None:
                raise ValueError("merge the training shards before any of them trains its probe")
            if self._n_tr_img + other._n_tr_img > self.n_train:
                raise ValueError("merged shards hold more than n_train training images (overlap?)")
            self._keep(other._keys, other._tokens, other._pos)
            self._n_tr_img += other._n_tr_img
            self._n_tr_tok += other._n_tr_tok
        self.per_image.merge(other.per_image)
        self._pending += [(x.copy(), i.copy()) for x, i in other._pending]
        self._next_index = max(self._next_index, other._next_index)
        self._flush()
        return self

    def result(self) -> ProbeResult:
        if not self.train_complete:
            raise ValueError(f"layer {self.layer!r}: only {self._n_tr_img} of {self.n_train} training images seen")
        self._flush()
        index, rows = self.per_image.arrays()
        if not len(index):
            raise ValueError(f"layer {self.layer!r}: no test images seen")
        details = {**self.training.details(), "final_train_loss": self._loss, "train_tokens_seen": self._n_tr_tok,
                   "train_tokens_kept": int(len(self._keys)), "max_train_tokens": self.max_train_tokens}
        counts = ProbeCounts(self._grid, rows, self._n_tr_img, self._n_tr_tok)
        return make_result("paper", self.resolutions, counts, layer=self.layer, provenance=self.provenance,
                           details=details, boot=self._boot)

    def terms(self, resolution: int) -> Terms:
        """Bootstrap terms of the accuracy at ``resolution`` over the test images (for paired intervals)."""
        return accuracy_terms(self.per_image, self.resolutions, resolution)

    def _state_arrays(self):
        z = np.zeros(0, np.float32)
        weight = z if self._clf is None else self._clf.weight.detach().numpy()
        bias = z if self._clf is None else self._clf.bias.detach().numpy()
        return {"grid": np.array(self._grid or (0, 0)), "keys": self._keys, "tokens": self._tokens, "pos": self._pos,
                "counts": np.array([self._n_tr_img, self._n_tr_tok]), "loss": np.array(self._loss),
                "weight": weight, "bias": bias, **pending_state(self._pending),
                **nest("per_image", self.per_image.state())}

    @classmethod
    def train_only_state(cls, state: dict) -> dict:
        """``state`` without test images (pending or scored): what shards exchange before training."""
        if np.asarray(state["weight"]).size:
            raise ValueError("the probe is trained already: exchange training samples before testing")
        return without_test_images(state)

    @classmethod
    def test_only_state(cls, state: dict) -> dict:
        """``state`` without the training sample and the trained probe (only this shard's test images)."""
        width = np.asarray(state["tokens"]).shape[-1]
        return dict(state, keys=np.zeros(0), tokens=np.zeros((0, width), np.float32), pos=np.zeros(0, np.int64),
                    counts=np.zeros(2, np.int64), weight=np.zeros(0, np.float32), bias=np.zeros(0, np.float32),
                    loss=np.array(np.nan))

    def _load_state_arrays(self, st):
        g = tuple(int(v) for v in st["grid"])
        self._grid = g if g != (0, 0) else None
        self._keys, self._tokens, self._pos = st["keys"], st["tokens"].astype(np.float32), st["pos"].astype(np.int64)
        self._n_tr_img, self._n_tr_tok = (int(v) for v in st["counts"])
        self._loss = float(st["loss"])
        self._clf = None
        if st["weight"].size:
            import torch

            self._clf = torch.nn.Linear(st["weight"].shape[1], st["weight"].shape[0])
            with torch.no_grad():
                self._clf.weight.copy_(torch.from_numpy(st["weight"]))
                self._clf.bias.copy_(torch.from_numpy(st["bias"]))
            self._clf.eval()
        self._pending = load_pending(st)
        self.per_image.load(unnest("per_image", st))
