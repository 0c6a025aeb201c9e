"""The common base of the mitigations: scikit-learn style fitted transforms of one layer's features.

A mitigation is fitted on (N, C, rows, cols) features of one layer (numpy or torch, any float dtype;
computed in float32/float64) and transforms features of that same layer, grid and channel count into
an array of the same shape (float32 numpy). The API is scikit-learn's:

- the constructor takes keyword-only hyper-parameters and stores them verbatim (``get_params`` is
  derived from the signature, never hand-written);
- ``fit(X)`` = reset + ``partial_fit(X)``; ``partial_fit`` streams over batches and the fitted result
  does not depend on how the images were cut into batches (sufficient statistics, not running updates);
- fitted attributes end in ``_`` (``layer_``, ``grid_``, ``n_channels_``, ``n_images_`` here, more in
  each subclass); ``transform`` before any fit raises :class:`NotFittedError`.

A subclass keeps its sufficient statistics in ``self._state`` (a dict of numpy arrays: what
:mod:`sdaudit.mitigations.io` saves), derives its fitted attributes from them in ``_derive`` and
implements ``_empty_state``, ``_accumulate`` and ``_apply``.
"""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np

from ..analyses._arrays import check_features
from ..errors import SdauditError, UsageError
from .io import MitigationFileError, read_file, write_file

#: kind -> class of every mitigation (filled as the subclasses are defined; see ``sdaudit.mitigations.REGISTRY``)
KINDS: dict[str, type["Mitigation"]] = {}


class NotFittedError(SdauditError, ValueError):
    """``transform`` (or ``save``) called on a mitigation that has seen no images."""


class MitigationMismatchError(SdauditError, ValueError):
    """Features of another layer, grid or channel count than the mitigation was fitted on."""


class Mitigation:
    """Base class: ``fit`` / ``partial_fit`` / ``transform`` / ``fit_transform`` / ``save`` / ``load``.

    ``kind`` is the registry name (``sdaudit.mitigations.REGISTRY``) and the saved file's kind.
    """

    kind = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        KINDS[cls.kind] = cls

    def __init__(self) -> None:
        self._reset()

    # -- parameters ----------------------------------------------------------------------------
    def get_params(self) -> dict[str, Any]:
        """The constructor's keyword arguments as stored on the object: ``type(self)(**get_params())``
        is an unfitted copy."""
        names = [p.name for p in inspect.signature(type(self).__init__).parameters.values()
                 if p.kind == p.KEYWORD_ONLY]
        return {name: getattr(self, name) for name in names}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"

    # -- fitting -------------------------------------------------------------------------------
    def _reset(self) -> None:
        self.layer_: str | None = None
        self.grid_: tuple[int, int] | None = None
        self.n_channels_: int | None = None
        self.n_images_ = 0
        self.source_: str | None = None  # the file it was loaded from, named in mismatch errors
        self._state: dict[str, np.ndarray] = {}

    def fit(self, X: Any, *, layer: str | None = None) -> "Mitigation":
        """Fit on features X (N, C, rows, cols) of ``layer`` (or an iterable of such batches); returns self."""
        self._reset()
        batches = [X] if _is_array(X) else X
        for batch in batches:
            self.partial_fit(batch, layer=layer)
        if not self.n_images_:
            raise UsageError("fit: no images given")
        return self

    def partial_fit(self, X: Any, *, layer: str | None = None) -> "Mitigation":
        """Add one batch of images to the fit (streaming); returns self."""
        if self.n_images_ and layer is not None and self.layer_ is not None and layer != self.layer_:
            raise MitigationMismatchError(f"partial_fit: layer {layer!r}, but earlier batches were {self.layer_!r}")
        x = check_features(X, layer=layer or self.layer_)
        if self.n_images_:
            self._check_shape(x, "partial_fit")
        else:
            self.layer_, self.grid_, self.n_channels_ = layer, (x.shape[2], x.shape[3]), x.shape[1]
            self._state = self._empty_state(x.shape[1], (x.shape[2], x.shape[3]))
        self._accumulate(x)
        self.n_images_ += x.shape[0]
        self._derive()
        return self

    def merge(self, other: "Mitigation") -> "Mitigation":
        """Add the fit of ``other`` (the same kind and parameters, fitted on other images of the same layer: a
        shard) to this one, as if its images had been streamed through ``partial_fit``; returns self."""
        if type(other) is not type(self) or other.get_params() != self.get_params():
            raise MitigationMismatchError(f"cannot merge {other!r} into {self!r}")
        if not other.n_images_:
            return self
        if not self.n_images_:
            self.layer_, self.grid_, self.n_channels_ = other.layer_, other.grid_, other.n_channels_
            self._state = {k: v.copy() for k, v in other._state.items()}
        else:
            if (other.layer_, other.grid_, other.n_channels_) != (self.layer_, self.grid_, self.n_channels_):
                raise MitigationMismatchError(f"merge: {other._what()} was fitted on another layer, grid or "
                                              f"channel count than {self._what()}")
            self._state = self._merged_state(other._state)
        self.n_images_ += other.n_images_
        self._derive()
        return self

    def transform(self, X: Any, *, layer: str | None = None) -> np.ndarray:
        """The mitigated features: float32 numpy of X's shape. ``layer``, when given, must be the fitted one."""
        self._check_fitted("transform")
        if layer is not None and self.layer_ is not None and layer != self.layer_:
            raise MitigationMismatchError(f"{self._what()} was fitted on layer {self.layer_!r}, "
                                          f"not on {layer!r}")
        x = check_features(X, layer=layer or self.layer_)
        self._check_shape(x, "transform")
        return self._apply(x.copy())

    def fit_transform(self, X: Any, *, layer: str | None = None) -> np.ndarray:
        """``fit(X).transform(X)`` for an array X."""
        return self.fit(X, layer=layer).transform(X, layer=layer)

    # -- saving --------------------------------------------------------------------------------
    def save(self, path) -> None:
        """Write the fitted mitigation to ``path`` (one safetensors file; see :mod:`sdaudit.mitigations.io`)."""
        self._check_fitted("save")
        header = {"kind": self.kind, "params": self.get_params(), "layer": self.layer_, "grid": list(self.grid_),
                  "n_channels": self.n_channels_, "n_images": self.n_images_}
        write_file(path, self._state, header)

    @classmethod
    def load(cls, path) -> "Mitigation":
        """A mitigation saved by :meth:`save`. ``Mitigation.load`` returns whatever kind the file holds;
        a subclass's ``load`` refuses a file of another kind (as it refuses another format version)."""
        arrays, header = read_file(path)
        kind = header.get("kind")
        if kind not in KINDS:
            raise MitigationFileError(f"mitigation file '{path}' holds an unknown kind {kind!r}; "
                                      f"known: {', '.join(KINDS)}")
        if cls is not Mitigation and KINDS[kind] is not cls:
            raise MitigationFileError(f"mitigation file '{path}' holds a '{kind}' mitigation, not '{cls.kind}'")
        try:
            obj = KINDS[kind](**header["params"])
            obj._restore(arrays, header)
        except (KeyError, TypeError, ValueError) as error:
            raise MitigationFileError(f"mitigation file '{path}' is damaged: "
                                      f"{type(error).__name__}: {error}") from error
        obj.source_ = str(path)
        return obj

    def _restore(self, arrays: dict[str, np.ndarray], header: dict) -> None:
        """Set the fitted state from a file's arrays and header (shapes checked against an empty state)."""
        self.layer_, self.grid_ = header["layer"], (int(header["grid"][0]), int(header["grid"][1]))
        self.n_channels_, self.n_images_ = int(header["n_channels"]), int(header["n_images"])
        empty = self._empty_state(self.n_channels_, self.grid_)
        if set(arrays) != set(empty) or self.n_images_ < 1:
            raise ValueError(f"arrays {sorted(arrays)} for {self.n_images_} images, expected {sorted(empty)}")
        for key, value in empty.items():
            if arrays[key].shape[1:] != value.shape[1:] or arrays[key].ndim != value.ndim:
                raise ValueError(f"array {key!r} of shape {arrays[key].shape}, expected (..., {value.shape[1:]})")
        self._state = {key: arrays[key].astype(empty[key].dtype) for key in empty}
        self._derive()

    # -- checks --------------------------------------------------------------------------------
    def _what(self) -> str:
        where = f" (from {self.source_})" if self.source_ else ""
        return f"the '{self.kind}' mitigation{where}"

    def _check_fitted(self, action: str) -> None:
        if not self.n_images_:
            raise NotFittedError(f"{action}: {self._what()} is not fitted; call fit(features) first")

    def _check_shape(self, x: np.ndarray, action: str) -> None:
        if x.shape[1] != self.n_channels_:
            raise MitigationMismatchError(f"{action}: {self._what()} was fitted on {self.n_channels_} channels "
                                          f"(layer {self.layer_!r}), these features have {x.shape[1]}")
        if (x.shape[2], x.shape[3]) != self.grid_:
            raise MitigationMismatchError(f"{action}: {self._what()} was fitted on a {self.grid_[0]}x{self.grid_[1]} "
                                          f"grid (layer {self.layer_!r}), these features are "
                                          f"{x.shape[2]}x{x.shape[3]}")

    # -- to override ---------------------------------------------------------------------------
    def _empty_state(self, n_channels: int, grid: tuple[int, int]) -> dict[str, np.ndarray]:
        """The sufficient statistics of zero images."""
        return {}

    def _accumulate(self, x: np.ndarray) -> None:
        """Add a validated float32 batch to ``self._state``."""

    def _derive(self) -> None:
        """Set the fitted attributes (ending in ``_``) from ``self._state``."""

    def _merged_state(self, other: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """This fit's sufficient statistics with another fit's added (sums add; override for other kinds)."""
        return {key: value + other[key] for key, value in self._state.items()}

    def _apply(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError


def _is_array(x: Any) -> bool:
    return hasattr(x, "shape") and hasattr(x, "dtype")
