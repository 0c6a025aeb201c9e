"""Corner / border token similarity (paper Fig. 2 middle row), without n^4 similarity tensors.

Groups of an H x W grid: corner = the 4 corner tokens, border = the rest of the outer ring,
other = the interior. A group's within-similarity is the mean cosine over ordered pairs of
distinct tokens of the group within one image, pooled over images; between two groups, the mean
over all pairs (one token of each) within one image. With u = x/|x| (u = 0 for a zero token,
which then has cosine 0 with everything) and per image group sums S_g = sum u, q_g = sum |u|^2:

    within(g)     = sum_images (|S_g|^2 - q_g) / (N k_g (k_g - 1))
    between(a, b) = sum_images S_a . S_b       / (N k_a k_b)

So the whole state is a 3x3 matrix of summed group-sum Gram entries plus 3 numbers.

Border artifacts: for a layer with an n x n grid (token size ts = image_size / n pixels), crop
every image by ts on each side and extract the layer again at the model's input size, giving an
n x n grid that shows the content of the full grid's interior. Compare (a) the cropped images'
own groups with (b) the same content in the full images: the full maps with the outer ring
removed, groups on that (n-2) x (n-2) grid. relative = (a) / (b) per group. The published code
counted the border/other pairs with the full grid's n for (b); here every count comes from the
grid the groups are defined on.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from ._arrays import as_float32, check_finite, is_torch, resolve_indices
from ._base import Accumulator, nest, unnest
from .intervals import DEFAULT_BOOT, DEFAULT_LEVEL, Bootstrap, Interval, PerImageStats, Terms
from .results import GROUPS, UNDEFINED_SMALL_GRID, BorderArtifactsResult, GroupSimilarityResult

_CHUNK_VALUES = 1 << 24  # images are processed in chunks of about this many float32 values


def group_masks(rows: int, cols: int | None = None) -> np.ndarray:
    """(3, rows, cols) boolean masks for corner, border, other on a rows x cols grid."""
    cols = rows if cols is None else cols
    ring = np.zeros((rows, cols), bool)
    ring[[0, -1], :] = True
    ring[:, [0, -1]] = True
    corner = np.zeros((rows, cols), bool)
    corner[[0, 0, -1, -1], [0, -1, 0, -1]] = True
    return np.stack([corner, ring & ~corner, ~ring])


def crop_pixels(image_size: int, n: int) -> int:
    """Pixels to crop on each side of an ``image_size`` image for a layer with an n-token grid:
    one token, ts = image_size / n (rounded to whole pixels if n does not divide image_size)."""
    if n < 3:
        raise ValueError(f"a {n}x{n} grid has no interior to compare; need n >= 3")
    ts = int(round(image_size / n))
    if image_size - 2 * ts < 1:
        raise ValueError(f"cropping {ts}px per side leaves nothing of a {image_size}px image")
    return ts


def crop_box(image_size: int, n: int) -> tuple[int, int, int, int]:
    """PIL-style (left, top, right, bottom) box of the cropped image for an n-token grid."""
    ts = crop_pixels(image_size, n)
    return (ts, ts, image_size - ts, image_size - ts)


def crop_plan(layer_grids: Mapping[str, int | Sequence[int]], image_size: int = 512) -> dict[int, list[str]]:
    """Group layers by the crop they need: {pixels per side: [layer names]}.

    One cropped extraction per entry serves every layer listed under it (all layers of one grid
    size). For SD at 512 px: grids 64, 32, 16, 8 need crops of 8, 16, 32, 64 px, so 4 cropped
    passes (plus the full one) cover all layers. Layers whose grid is smaller than 3 are left out.
    """
    plan: dict[int, list[str]] = {}
    for name, g in layer_grids.items():
        n = int(g) if np.isscalar(g) else int(g[-1])
        if not np.isscalar(g) and int(g[0]) != n:
            raise ValueError(f"layer {name!r}: border artifacts need a square grid, got {tuple(g)}")
        if n < 3:
            continue
        plan.setdefault(crop_pixels(image_size, n), []).append(name)
    return plan


def _features(x: Any, *, layer: str | None, name: str = "features", image_indices: Sequence[int] | None = None,
              min_grid: int = 1) -> Any:
    """Shape-checked (N, C, rows, cols) features: float32 numpy, or a torch tensor that is not on the CPU
    (kept on its device). Unlike :func:`check_features` this does not scan the values for NaN/Inf:
    the group statistics find them from the token norms at no extra cost."""
    arr = x if is_torch(x) and x.device.type != "cpu" else as_float32(x)
    where = f" (layer {layer!r})" if layer is not None else ""
    shape = tuple(int(v) for v in arr.shape)
    if len(shape) != 4:
        raise ValueError(f"{name}{where}: expected shape (N, C, rows, cols), got {shape}")
    if shape[1] < 1:
        raise ValueError(f"{name}{where}: no channels, shape {shape}")
    if shape[2] < min_grid or shape[3] < min_grid:
        raise ValueError(f"{name}{where}: grid {shape[2]}x{shape[3]} is smaller than {min_grid}x{min_grid}")
    if image_indices is not None and len(image_indices) != shape[0]:
        raise ValueError(f"{name}{where}: {shape[0]} images but {len(image_indices)} image indices")
    return arr


def _check_ring_finite(x: Any, layer: str | None, name: str, image_indices: Sequence[int]) -> None:
    """Raise :class:`NonFiniteInputError` (counting the whole array) if the outer ring holds NaN/Inf."""
    if is_torch(x):
        import torch

        finite = torch.isfinite
    else:
        finite = np.isfinite
    ring_finite = bool(finite(x[:, :, [0, -1], :]).all()) and bool(finite(x[:, :, :, [0, -1]]).all())
    if not ring_finite:
        check_finite(x, layer, image_indices, name=name)


def _group_stats(x: np.ndarray, masks: np.ndarray, *, layer: str | None = None, name: str = "features",
                 image_indices: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per image: the 3x3 Gram of group sums of unit vectors (N, 3, 3) and |u|^2 summed per group (N, 3).

    ``x`` is float32 (N, C, rows, cols), not yet checked for NaN/Inf: a non-finite value makes its
    token's norm non-finite, so the finiteness check costs nothing extra (on such a norm the whole
    batch is checked value by value, which raises :class:`NonFiniteInputError`).

    For the standard corner/border/other masks on a grid of at least 3x3 no (tokens x groups)
    product is formed: per image, the sum of all unit vectors (one matrix-vector product), the sum
    over the outer ring (four edge slices) and over the 4 corners give the three group sums, so the
    cost is two reads of the data (norms, then the weighted sum) while the chunk is in cache.
    """
    n, c, h, w = x.shape
    standard = h >= 3 and w >= 3 and masks.shape == (3, h, w) and np.array_equal(masks, group_masks(h, w))
    m = masks.reshape(3, h * w).T.astype(np.float32)  # (hw, 3)
    gram = np.zeros((n, 3, 3))
    q = np.zeros((n, 3))
    step = max(1, _CHUNK_VALUES // max(1, c * h * w))
    for s in range(0, n, step):
        x4 = x[s:s + step]
        b = x4.shape[0]
        xi = x4.reshape(b, c, h * w)  # view when x is contiguous
        norms = np.sqrt(np.einsum("bct,bct->bt", xi, xi))
        if not np.isfinite(norms).all():
            check_finite(x, layer, image_indices, name=name)  # raises unless a finite token's norm overflowed
            norms = np.sqrt(np.einsum("bct,bct->bt", xi, xi, dtype=np.float64)).astype(np.float32)
        inv = np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0)
        nonzero = (norms > 0).astype(np.float64)
        if standard:
            sums = _standard_group_sums(x4, xi, inv.reshape(b, h, w))
        else:
            sums = np.matmul(xi * inv[:, None, :], m).astype(np.float64)  # (b, c, 3)
        gram[s:s + b] = np.einsum("bci,bcj->bij", sums, sums)
        q[s:s + b] = nonzero @ m.astype(np.float64)
    return gram, q


def _standard_group_sums(x4: np.ndarray, xi: np.ndarray, inv: np.ndarray) -> np.ndarray:
    """(b, C, 3) float64 sums of unit vectors over corner, border and other tokens (grid >= 3x3)."""
    total = np.einsum("bct,bt->bc", xi, inv.reshape(inv.shape[0], -1))
    ring = (np.einsum("bcw,bw->bc", x4[:, :, 0, :], inv[:, 0, :])
            + np.einsum("bcw,bw->bc", x4[:, :, -1, :], inv[:, -1, :])
            + np.einsum("bch,bh->bc", x4[:, :, 1:-1, 0], inv[:, 1:-1, 0])
            + np.einsum("bch,bh->bc", x4[:, :, 1:-1, -1], inv[:, 1:-1, -1]))
    corner = sum(x4[:, :, i, j] * inv[:, None, i, j] for i in (0, -1) for j in (0, -1))
    out = np.empty(total.shape + (3,))
    out[..., 0] = corner
    out[..., 1] = ring - corner
    out[..., 2] = total - ring
    return out


def _group_stats_torch(x, masks: np.ndarray, *, layer: str | None = None, name: str = "features",
                       image_indices: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_group_stats` for a torch tensor on its own device (e.g. a GPU): same formulas, float32
    products, float64 accumulation; only the per-image 3x3 results leave the device. Checks finiteness."""
    import torch

    n, c, h, w = x.shape
    xf = x.float().reshape(n, c, h * w)
    norms = torch.linalg.vector_norm(xf, dim=1)  # (n, hw)
    if not bool(torch.isfinite(norms).all()):
        check_finite(xf, layer, image_indices, name=name)  # raises unless a finite token's norm overflowed
        norms = torch.linalg.vector_norm(xf.double(), dim=1).float()
    inv = torch.where(norms > 0, 1.0 / norms, torch.zeros_like(norms))
    m = torch.as_tensor(masks.reshape(3, h * w).T, dtype=torch.float32, device=xf.device)
    sums = torch.bmm(xf, inv[:, :, None] * m).double()  # (n, c, 3)
    gram = torch.einsum("bci,bcj->bij", sums, sums)
    q = (norms > 0).double() @ m.double()
    return gram.cpu().numpy(), q.cpu().numpy()


def _pairs_per_image(grid: tuple[int, int], group: int) -> float:
    """Ordered pairs of distinct tokens of one group within one image of ``grid``."""
    k = float(group_masks(*grid).reshape(3, -1).sum(axis=1)[group])
    return k * (k - 1)


class GroupSimilarityAccumulator(Accumulator):
    """Streamed :func:`group_similarity`; state = a 3x3 matrix, 3 numbers and the image count, plus per image
    the three within-group numerators |S_g|^2 - q_g (for bootstrap intervals; 3 floats per image).

    ``inner=True`` drops the outer ring of every map first (used for (b) of border artifacts).
    """

    def __init__(self, *, layer: str | None = None, inner: bool = False, provenance: dict | None = None):
        super().__init__()
        self.layer, self.inner, self.provenance = layer, inner, dict(provenance or {})
        self._gram = np.zeros((3, 3))
        self._q = np.zeros(3)
        self._n = 0
        self._grid: tuple[int, int] | None = None
        self.per_image = PerImageStats(3)

    def update(self, batch: Any, image_indices: Sequence[int] | None = None) -> None:
        self._update(batch, image_indices)

    def _update(self, batch: Any, image_indices: Sequence[int] | None, name: str = "features") -> None:
        idx = resolve_indices(len(batch), image_indices, self._next_index)
        x = _features(batch, layer=self.layer, name=name, image_indices=idx, min_grid=3 if self.inner else 1)
        if self.inner:
            _check_ring_finite(x, self.layer, name, idx)  # the dropped ring must be finite too
            x = x[:, :, 1:-1, 1:-1]
        grid = (int(x.shape[2]), int(x.shape[3]))
        if self._grid is not None and grid != self._grid:
            raise ValueError(f"layer {self.layer!r}: grid changed from {self._grid} to {grid}")
        if is_torch(x):
            g, q = _group_stats_torch(x, group_masks(*grid), layer=self.layer, name=name, image_indices=idx)
        else:
            g, q = _group_stats(x, group_masks(*grid), layer=self.layer, name=name, image_indices=idx)
        self._next_index = max(self._next_index, int(idx.max()) + 1) if len(idx) else self._next_index
        self._grid = grid
        self._gram += g.sum(axis=0)
        self._q += q.sum(axis=0)
        self._n += x.shape[0]
        self.per_image.add(idx, np.diagonal(g, axis1=1, axis2=2) - q)

    def merge(self, other: "GroupSimilarityAccumulator") -> "GroupSimilarityAccumulator":
        self._check_mergeable(other)
        if other._n:
            if self._grid is not None and other._grid != self._grid:
                raise ValueError(f"cannot merge grids {self._grid} and {other._grid}")
            self._grid = other._grid
            self._gram += other._gram
            self._q += other._q
            self._n += other._n
            self.per_image.merge(other.per_image)
        return self

    def result(self) -> GroupSimilarityResult:
        if not self._n:
            raise ValueError(f"layer {self.layer!r}: no images seen")
        k = group_masks(*self._grid).reshape(3, -1).sum(axis=1).astype(np.float64)
        counts = self._n * (np.outer(k, k) - np.diag(k))  # pairs of distinct tokens over all images
        num = self._gram - np.diag(self._q)
        with np.errstate(invalid="ignore", divide="ignore"):
            matrix = np.where(counts > 0, num / np.where(counts > 0, counts, 1), np.nan)
        return GroupSimilarityResult(matrix=matrix, pair_counts=counts.astype(np.int64), grid=tuple(self._grid),
                                     n_images=int(self._n), layer=self.layer, provenance=dict(self.provenance or {}))

    def _state_arrays(self):
        return {"gram": self._gram, "q": self._q, "n": np.array(self._n),
                "grid": np.array(self._grid if self._grid else (0, 0)), **nest("per_image", self.per_image.state())}

    def _load_state_arrays(self, state):
        self._gram, self._q = state["gram"].astype(float), state["q"].astype(float)
        self._n = int(state["n"])
        g = tuple(int(v) for v in state["grid"])
        self._grid = g if self._n else None
        self.per_image.load(unnest("per_image", state))


def group_similarity(features: Any, *, layer: str | None = None, provenance: dict | None = None) -> GroupSimilarityResult:
    """3x3 mean pairwise cosine similarity within/between corner, border, other tokens.

    ``features``: (N, C, rows, cols). Cost O(N C rows cols); no pairwise tensor is formed.
    """
    acc = GroupSimilarityAccumulator(layer=layer, provenance=provenance)
    acc.update(features)
    return acc.result()


class BorderArtifactsAccumulator(Accumulator):
    """Streamed :func:`border_artifacts`. Full and cropped batches may come separately (e.g. from
    different extraction passes): ``update(full=..., cropped=...)``; either may be None. The full grid
    is n x n, the cropped one (n-2) x (n-2) (the crop extracted at its own size, as published).

    ``n_boot``, ``level``, ``seed``: the bootstrap interval of each relative similarity, over the images
    seen in both passes (see :mod:`sdaudit.analyses.intervals`).
    """

    def __init__(self, *, layer: str | None = None, provenance: dict | None = None, n_boot: int = DEFAULT_BOOT,
                 level: float = DEFAULT_LEVEL, seed: int = 0):
        super().__init__()
        self.layer, self.provenance = layer, dict(provenance or {})
        self.bootstrap = Bootstrap(int(n_boot), float(level), int(seed))
        self.cropped = GroupSimilarityAccumulator(layer=layer)
        self.full = GroupSimilarityAccumulator(layer=layer, inner=True)
        self._full_grid: tuple[int, int] | None = None

    def update(self, full: Any = None, cropped: Any = None, image_indices: Sequence[int] | None = None) -> None:
        if full is not None:
            x = _features(full, layer=self.layer, name="full", image_indices=image_indices, min_grid=3)
            self._check_grid(tuple(x.shape[2:]), "full")
            self.full._update(x, image_indices, "full")
        if cropped is not None:
            x = _features(cropped, layer=self.layer, name="cropped", image_indices=image_indices, min_grid=1)
            g = tuple(int(v) for v in x.shape[2:])
            self._check_grid((g[0] + 2, g[1] + 2), "cropped")
            self.cropped._update(x, image_indices, "cropped")

    def _check_grid(self, grid: tuple[int, int], what: str) -> None:
        """``grid``: the full grid this batch implies (a cropped batch of (n-2) implies n)."""
        grid = tuple(int(v) for v in grid)
        if self._full_grid is None:
            self._full_grid = grid
        elif grid != self._full_grid:
            n = self._full_grid
            raise ValueError(f"layer {self.layer!r}: {what} batch implies a full grid of {grid}, not {n}; the "
                             f"crop must be extracted at its own size, giving a {n[0] - 2}x{n[1] - 2} grid")

    def merge(self, other: "BorderArtifactsAccumulator") -> "BorderArtifactsAccumulator":
        self._check_mergeable(other)
        if other._full_grid is not None:
            self._check_grid(other._full_grid, "merged")
        self.cropped.merge(other.cropped)
        self.full.merge(other.full)
        return self

    def result(self) -> BorderArtifactsResult:
        a, b = self.cropped.result(), self.full.result()
        if min(self._full_grid) - 2 < 3:
            nan = {g: float("nan") for g in GROUPS}
            return BorderArtifactsResult(relative=dict(nan), cropped=dict(nan), full=dict(nan), cropped_result=a,
                                         full_result=b, grid=self._full_grid, layer=self.layer,
                                         provenance=dict(self.provenance), undefined=UNDEFINED_SMALL_GRID)
        ca, cb = a.within, b.within
        with np.errstate(invalid="ignore", divide="ignore"):
            rel = {g: float(np.float64(ca[g]) / np.float64(cb[g])) if cb[g] != 0 else float("nan")
                   for g in GROUPS}
        return BorderArtifactsResult(relative=rel, cropped=ca, full=cb, cropped_result=a, full_result=b,
                                     grid=self._full_grid, layer=self.layer, provenance=dict(self.provenance),
                                     intervals=self._intervals(a, b))

    def _intervals(self, a: GroupSimilarityResult, b: GroupSimilarityResult) -> dict[str, Interval]:
        """Bootstrap intervals of the relative similarities over the images seen in both passes."""
        terms = {g: self.terms(g) for g in GROUPS}
        return {g: self.bootstrap.interval(t.rows, t.statistic) for g, t in terms.items()}

    def terms(self, group: str) -> Terms:
        """Bootstrap terms of ``relative[group]``: per image the cropped and the full within-group numerators."""
        ia, ra = self.cropped.per_image.arrays()
        ib, rb = self.full.per_image.arrays()
        common, pa, pb = np.intersect1d(ia, ib, return_indices=True)
        rows = np.concatenate([ra[pa], rb[pb]], axis=1)  # (N, 6): cropped numerators, full numerators
        # relative = (sum a_g / (N ka_g)) / (sum b_g / (N kb_g)), ka / kb the pairs per image of each grid
        i = GROUPS.index(group)
        ka = _pairs_per_image(self.cropped._grid, i)
        kb = _pairs_per_image(self.full._grid, i)
        factor = kb / ka if ka else float("nan")
        return Terms(common, rows, lambda s: s[..., i] / s[..., 3 + i] * factor)

    def _state_arrays(self):
        return {**nest("cropped", self.cropped._state_arrays()), **nest("full", self.full._state_arrays()),
                "full_grid": np.array(self._full_grid or (0, 0))}

    def _load_state_arrays(self, state):
        self.cropped._load_state_arrays(unnest("cropped", state))
        self.full._load_state_arrays(unnest("full", state))
        g = tuple(int(v) for v in state["full_grid"])
        self._full_grid = g if g != (0, 0) else None


def border_artifacts(full: Any, cropped: Any, *, layer: str | None = None, provenance: dict | None = None,
                     bootstrap: Bootstrap = Bootstrap()) -> BorderArtifactsResult:
    """Relative within-group similarity of edge tokens, (a) cropped / (b) full-interior, with ``bootstrap`` intervals.

    ``full``: the layer for the original images, (N, C, n, n). ``cropped``: the same layer for the
    images cropped by :func:`crop_pixels` on each side and extracted at their own size (no resize),
    so (N, C, n-2, n-2), aligned token for token with the full grid's interior. See the module
    docstring. For n - 2 < 3 the groups are not defined: the result's ``undefined`` says so and
    every ratio is NaN.
    """
    acc = BorderArtifactsAccumulator(layer=layer, provenance=provenance, n_boot=bootstrap.n_boot, level=bootstrap.level,
                                     seed=bootstrap.seed)
    acc.update(full=full, cropped=cropped)
    return acc.result()
