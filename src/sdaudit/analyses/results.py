"""Result types of the analyses. Each carries the caller's ``provenance`` dict and ``layer`` and
serialises with ``to_dict()`` to JSON-native types only (NaN/Inf become ``null``);
``from_dict`` reads that back (``null`` in a number array becomes NaN).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ._jsonable import to_jsonable
from .intervals import Interval

__all__ = ["GROUPS", "UNDEFINED_SMALL_GRID", "AnomalyDetectionResult", "AnomalyNormResult", "BorderArtifactsResult",
           "GroupSimilarityResult", "ProbeResult", "to_jsonable"]

GROUPS = ("corner", "border", "other")
UNDEFINED_SMALL_GRID = "not defined (grid too small)"


def _denull(v: Any) -> Any:
    return [_denull(x) for x in v] if isinstance(v, (list, tuple)) else (np.nan if v is None else v)


def _float_array(v: Any, ndim: int | None = None) -> np.ndarray:
    """JSON list (nested, ``None`` for NaN) -> float64 array."""
    a = np.array(_denull(v), dtype=np.float64)
    return a.reshape((0,) * ndim) if ndim and a.size == 0 else a


def _nan(v: Any) -> float:
    return float("nan") if v is None else float(v)


class _Result:
    """Mixin: ``to_dict`` / ``to_json`` / ``from_dict``."""

    kind: str = ""

    def to_dict(self) -> dict[str, Any]:
        d = {"kind": self.kind}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            d[f.name] = to_jsonable(getattr(self, f.name))
        return d

    def to_json(self, **kw: Any) -> str:
        return json.dumps(self.to_dict(), **kw)

    @classmethod
    def from_dict(cls, d: dict[str, Any]):
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        kw = {k: v for k, v in d.items() if k in names}
        return cls(**cls._convert(kw))

    @classmethod
    def _convert(cls, kw: dict[str, Any]) -> dict[str, Any]:
        return kw


@dataclass
class ProbeResult(_Result):
    """Position probe test accuracy per comparison resolution ``s`` (dict keys are ``s``).

    ``accuracy[s]`` = mean of ``row_accuracy[s]`` and ``col_accuracy[s]``; ``chance[s]`` =
    mean over axes of 1/min(s, n_axis). Accuracies are fractions in [0, 1].
    """

    method: str
    resolutions: list[int]
    accuracy: dict[int, float]
    row_accuracy: dict[int, float]
    col_accuracy: dict[int, float]
    chance: dict[int, float]
    grid: tuple[int, int]
    n_train_images: int
    n_test_images: int
    n_train_tokens: int
    n_test_tokens: int
    layer: str | None = None
    provenance: dict[str, Any] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    intervals: dict[int, Any] = field(default_factory=dict)  # s -> Interval of ``accuracy[s]`` (over test images)
    kind = "position_probe"

    @classmethod
    def _convert(cls, kw):
        for k in ("accuracy", "row_accuracy", "col_accuracy", "chance"):
            kw[k] = {int(s): _nan(v) for s, v in kw[k].items()}
        kw["intervals"] = {int(s): v if isinstance(v, Interval) else Interval.from_dict(v)
                           for s, v in (kw.get("intervals") or {}).items()}
        kw["grid"] = tuple(kw["grid"])
        return kw


@dataclass
class GroupSimilarityResult(_Result):
    """Mean pairwise cosine similarity within/between token groups (order: corner, border, other).

    ``matrix[a, b]``: a == b: mean over ordered pairs of distinct tokens of group a within the same
    image, pooled over images; a != b: mean over all pairs (one token of each group) within the
    same image. ``pair_counts`` gives the number of pairs behind each entry. NaN (JSON null) where
    a group has too few tokens (e.g. the interior of a 2x2 grid).
    """

    matrix: np.ndarray
    pair_counts: np.ndarray
    grid: tuple[int, int]
    n_images: int
    groups: tuple[str, ...] = GROUPS
    layer: str | None = None
    provenance: dict[str, Any] = field(default_factory=dict)
    kind = "group_similarity"

    @property
    def within(self) -> dict[str, float]:
        return {g: float(self.matrix[i, i]) for i, g in enumerate(self.groups)}

    @classmethod
    def _convert(cls, kw):
        kw["matrix"] = _float_array(kw["matrix"], 2)
        kw["pair_counts"] = np.array(kw["pair_counts"], dtype=np.int64)
        kw["grid"] = tuple(kw["grid"])
        kw["groups"] = tuple(kw.get("groups", GROUPS))
        return kw


@dataclass
class BorderArtifactsResult(_Result):
    """Relative within-group similarity of edge tokens: ``relative[g] = cropped[g] / full[g]``.

    ``cropped`` = (a): the cropped images' own n x n groups; ``full`` = (b): the same content in
    the full images, i.e. the full maps without their outer ring, groups on that (n-2)x(n-2) grid.
    ``> 1`` means tokens become more alike just for being at the edge.
    """

    relative: dict[str, float]
    cropped: dict[str, float]
    full: dict[str, float]
    cropped_result: GroupSimilarityResult
    full_result: GroupSimilarityResult
    grid: tuple[int, int]
    layer: str | None = None
    provenance: dict[str, Any] = field(default_factory=dict)
    intervals: dict[str, Any] = field(default_factory=dict)  # group -> Interval of ``relative``
    undefined: str | None = None  # why no ratio is given (e.g. the cropped grid is under 3x3)
    kind = "border_artifacts"

    @classmethod
    def _convert(cls, kw):
        for k in ("relative", "cropped", "full"):
            kw[k] = {g: _nan(v) for g, v in kw[k].items()}
        kw["intervals"] = {g: v if isinstance(v, Interval) else Interval.from_dict(v)
                           for g, v in (kw.get("intervals") or {}).items()}
        for k in ("cropped_result", "full_result"):
            if isinstance(kw[k], dict):
                kw[k] = GroupSimilarityResult.from_dict(kw[k])
        kw["grid"] = tuple(kw["grid"])
        return kw


@dataclass
class AnomalyDetectionResult(_Result):
    """Detected high-norm anomalies: ``rows`` (K, 3) int64 ``[image, x (column), y (row)]`` of each
    2x2 patch's upper-left token on this layer's grid, sorted by (image, y, x); ``scores`` = robust
    z-score of the patch's peak token; ``relative_norms`` = mean patch norm / mean map norm.
    """

    rows: np.ndarray
    scores: np.ndarray
    relative_norms: np.ndarray
    grid: tuple[int, int]
    n_images: int
    params: dict[str, Any] = field(default_factory=dict)
    layer: str | None = None
    provenance: dict[str, Any] = field(default_factory=dict)
    kind = "anomaly_detection"

    @property
    def images_with_anomalies(self) -> int:
        return int(np.unique(self.rows[:, 0]).size)

    @classmethod
    def _convert(cls, kw):
        kw["rows"] = np.array(kw["rows"], dtype=np.int64).reshape(-1, 3)
        kw["scores"] = _float_array(kw["scores"])
        kw["relative_norms"] = _float_array(kw["relative_norms"])
        kw["grid"] = tuple(kw["grid"])
        return kw


@dataclass
class AnomalyNormResult(_Result):
    """Relative norm of labelled anomalies per layer.

    ``stats[layer]`` = {"mean", "std", "count", "missing", "undefined", "grid", "low", "high", "level",
    "n_images"}: mean and
    (population, ddof=0) std over the anomalies' relative norms (mean patch norm / mean map
    norm of that image); ``missing`` = anomalies whose image was not in the data, ``undefined``
    = anomalies whose map has zero mean norm (excluded, counted); ``low``/``high`` the bootstrap
    interval of the mean over the ``n_images`` images holding anomalies. ``values[layer]`` = one value
    per anomaly row (NaN where missing/undefined). Layers keep the caller's order.
    """

    stats: dict[str, dict[str, Any]]
    values: dict[str, np.ndarray]
    anomalies: np.ndarray
    ref_grid: int
    provenance: dict[str, Any] = field(default_factory=dict)
    kind = "anomaly_relative_norms"

    def mean(self, layer: str) -> float:
        return float(self.stats[layer]["mean"])

    def std(self, layer: str) -> float:
        return float(self.stats[layer]["std"])

    @classmethod
    def combine(cls, results: list["AnomalyNormResult"], provenance: dict[str, Any] | None = None):
        """Join single-layer results (e.g. from one accumulator per layer) into one result."""
        if not results:
            raise ValueError("nothing to combine")
        first = results[0]
        stats: dict[str, dict[str, Any]] = {}
        values: dict[str, np.ndarray] = {}
        for r in results:
            if r.ref_grid != first.ref_grid or not np.array_equal(r.anomalies, first.anomalies):
                raise ValueError("cannot combine anomaly norm results for different anomaly lists")
            for name in r.stats:
                if name in stats:
                    raise ValueError(f"layer {name!r} appears twice")
                stats[name] = r.stats[name]
                values[name] = r.values[name]
        return cls(stats, values, first.anomalies, first.ref_grid,
                   dict(first.provenance) if provenance is None else provenance)

    @classmethod
    def _convert(cls, kw):
        kw["values"] = {k: _float_array(v) for k, v in kw["values"].items()}
        kw["anomalies"] = np.array(kw["anomalies"], dtype=np.int64).reshape(-1, 3)
        for s in kw["stats"].values():
            for k in ("mean", "std"):
                s[k] = _nan(s[k])
        return kw
