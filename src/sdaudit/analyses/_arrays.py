"""Array helpers shared by the analyses: float32 conversion, shape checks, finiteness policy.

Policy for non-finite input (NaN, +Inf, -Inf): every analysis checks its input and raises
:class:`NonFiniteInputError`, naming the layer (the ``layer=`` argument passed through), the
number of bad values and the images that hold them. Nothing is ever averaged over silently;
an audit that wants to go on with other layers catches the error and records it per layer.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ..errors import SdauditError


class NonFiniteInputError(SdauditError, ValueError):
    """Input features contain NaN or Inf. Attributes: ``layer``, ``count``, ``images``."""

    def __init__(self, layer: str | None, count: int, images: Sequence[int], name: str = "features"):
        self.layer = layer
        self.count = int(count)
        self.images = [int(i) for i in images]
        where = f"layer {layer!r}" if layer is not None else "an unnamed layer"
        shown = ", ".join(str(i) for i in self.images[:10]) + (" ..." if len(self.images) > 10 else "")
        super().__init__(
            f"{name} of {where} contain {self.count} non-finite value(s) (NaN/Inf) in image(s) "
            f"[{shown}]; refusing to average over them"
        )


def is_torch(x: Any) -> bool:
    """True for a torch.Tensor (without importing torch when it is not loaded)."""
    mod = type(x).__module__
    return mod.startswith("torch") and hasattr(x, "detach")


def as_float32(x: Any) -> np.ndarray:
    """Return ``x`` (numpy array, torch tensor or nested sequence) as a float32 numpy array.

    float16/bfloat16 inputs are upcast; torch tensors are detached and moved to the CPU.
    """
    if is_torch(x):
        t = x.detach()
        if t.dtype != _torch().float32:
            t = t.float()
        return np.ascontiguousarray(t.cpu().numpy())
    arr = np.asarray(x)
    if arr.dtype.kind not in "fiub":
        raise TypeError(f"expected a numeric array, got dtype {arr.dtype}")
    return np.ascontiguousarray(arr, dtype=np.float32)


def _torch():
    import torch  # lazily: analyses must not need torch for numpy input

    return torch


def check_finite(arr: np.ndarray, layer: str | None = None, image_indices: Sequence[int] | None = None,
                 name: str = "features") -> None:
    """Raise :class:`NonFiniteInputError` if ``arr`` (first axis = images) has NaN/Inf."""
    finite = np.isfinite(arr)
    if finite.all():
        return
    bad = ~finite
    count = int(bad.sum())
    per_image = bad.reshape(bad.shape[0], -1).any(axis=1) if arr.ndim > 1 else bad
    idx = np.nonzero(per_image)[0]
    if image_indices is not None:
        idx = np.asarray(image_indices)[idx]
    raise NonFiniteInputError(layer, count, idx.tolist(), name=name)


def check_features(x: Any, *, layer: str | None = None, name: str = "features",
                   image_indices: Sequence[int] | None = None, min_grid: int = 1) -> np.ndarray:
    """Validate a (N, C, rows, cols) feature array and return it as finite float32 numpy.

    Raises ValueError with the array's name and layer on a wrong shape, and
    :class:`NonFiniteInputError` on NaN/Inf.
    """
    arr = as_float32(x)
    where = f" (layer {layer!r})" if layer is not None else ""
    if arr.ndim != 4:
        raise ValueError(f"{name}{where}: expected shape (N, C, rows, cols), got {tuple(arr.shape)}")
    if arr.shape[1] < 1:
        raise ValueError(f"{name}{where}: no channels, shape {tuple(arr.shape)}")
    if arr.shape[2] < min_grid or arr.shape[3] < min_grid:
        raise ValueError(f"{name}{where}: grid {arr.shape[2]}x{arr.shape[3]} is smaller than {min_grid}x{min_grid}")
    if image_indices is not None and len(image_indices) != arr.shape[0]:
        raise ValueError(f"{name}{where}: {arr.shape[0]} images but {len(image_indices)} image indices")
    check_finite(arr, layer, image_indices, name=name)
    return arr


def resolve_indices(n: int, image_indices: Sequence[int] | None, start: int = 0) -> np.ndarray:
    """Global image indices of a batch of ``n`` images (default: ``start .. start+n-1``)."""
    if image_indices is None:
        return np.arange(start, start + n, dtype=np.int64)
    idx = np.asarray(image_indices, dtype=np.int64).reshape(-1)
    if idx.shape[0] != n:
        raise ValueError(f"batch has {n} images but {idx.shape[0]} image indices were given")
    if np.any(idx < 0):
        raise ValueError("image indices must be non-negative")
    return idx


def token_norms(arr: np.ndarray) -> np.ndarray:
    """L2 norm over channels of a float32 (N, C, rows, cols) array -> (N, rows, cols) float32."""
    out = np.empty((arr.shape[0],) + arr.shape[2:], np.float32)
    for i in range(arr.shape[0]):  # per image: same result whatever the batching
        out[i] = np.sqrt(np.einsum("chw,chw->hw", arr[i], arr[i]))
    return out
