"""Mitigations: fitted, saved, reusable transforms that remove or reduce an artifact of one layer's features.

Model-independent: each is fitted on (N, C, rows, cols) features of one layer (numpy or torch) and
turns features of that layer into a float32 numpy array of the same shape, with scikit-learn's API
(keyword-only constructor, ``fit`` / ``partial_fit`` / ``transform`` / ``fit_transform``, fitted
attributes ending in ``_``) plus ``save(path)`` / ``load(path)`` (format: :mod:`sdaudit.mitigations.io`).

=====================  ================================================================================
``position``           :class:`PositionMean`: subtract the fitted mean feature at each grid position
``position-subspace``  :class:`PositionSubspace`: project out the directions that predict row and column
``anomalies``          :class:`AnomalyRepair`: anomalous tokens -> mean of non-anomalous neighbours
                       (``method="mean"``: mean-substitution control, ``"zero"``: zeroing comparison)
``channels``           :class:`MassiveChannels`: massive channels set to their mean, or normalised
``border``             :class:`BorderWeight`: scale (or mask) the outer ring; ``weights(grid)`` for matchers
=====================  ================================================================================

A fitted mitigation is applied to a whole store by :func:`sdaudit.clean.clean_store` (``sdaudit clean``).
"""

from __future__ import annotations

from typing import Any

from ..errors import UsageError
from .anomalies import METHODS, AnomalyRepair
from .base import KINDS, Mitigation, MitigationMismatchError, NotFittedError
from .border import BorderWeight
from .channels import MODES, MassiveChannels
from .io import FORMAT_VERSION, MitigationFileError
from .position import PositionMean, PositionSubspace

#: name -> class, in the order the report lists them
REGISTRY: dict[str, type[Mitigation]] = {cls.kind: cls for cls in (
    PositionMean, PositionSubspace, AnomalyRepair, MassiveChannels, BorderWeight)}
assert set(REGISTRY) == set(KINDS)  # every subclass is registered under its kind


def make_mitigation(name: str, **options: Any) -> Mitigation:
    """An unfitted mitigation by registry name with its keyword options; unknown names or options are a
    UsageError naming them."""
    if name not in REGISTRY:
        raise UsageError(f"unknown mitigation {name!r}; choose one of {', '.join(REGISTRY)}")
    try:
        return REGISTRY[name](**options)
    except TypeError as error:  # an option the class does not take
        raise UsageError(f"mitigation {name!r}: {error}") from None


def fit_mitigation(name: str, features: Any, *, layer: str | None = None, **options: Any) -> Mitigation:
    """Fit the mitigation ``name`` (registry) with ``options`` on ``features``: an (N, C, rows, cols) array
    or an iterable of such batches (streamed) of ``layer``."""
    return make_mitigation(name, **options).fit(features, layer=layer)


def load_mitigation(path) -> Mitigation:
    """The mitigation saved at ``path``, whatever its kind."""
    return Mitigation.load(path)


__all__ = ["AnomalyRepair", "BorderWeight", "FORMAT_VERSION", "METHODS", "MODES", "MassiveChannels", "Mitigation",
           "MitigationFileError", "MitigationMismatchError", "NotFittedError", "PositionMean", "PositionSubspace",
           "REGISTRY", "fit_mitigation", "load_mitigation", "make_mitigation"]
