"""The smaller records of results.json: model identity, layer shapes, anomaly summary, maps, timesteps."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .rows import LayerRow, split_known, record_dict


class _Record:
    """A record of results.json: its declared fields plus ``extra`` (every other key, written back as read)."""

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None):
        known, extra = split_known(cls, data or {})
        return cls(**known, extra=extra)

    def to_dict(self) -> dict[str, Any]:
        return record_dict(self)


@dataclass
class ModelInfo(_Record):
    """What identifies the audited weights."""

    name: str | None = None
    kind: str | None = None
    location: str | None = None
    revision: str | None = None
    weights_sha256: str | None = None
    random_weights: bool | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = record_dict(self)
        if self.random_weights is None:
            del out["random_weights"]  # a model identity, as stores and controls record it, has no such key
        return out


@dataclass
class AnomalySummary(_Record):
    """The detector's finds on the anomaly layer: counts, its grid and parameters, the rows [image, x, y]."""

    layer: str | None = None
    grid: list[int] | None = None
    count: int | None = None
    images_with: int | None = None
    n_images: int | None = None
    params: dict[str, Any] | None = None
    rows: list[list[int]] | None = None
    scores: list[float] | None = None
    #: the detector rerun without the anomaly layer's massive channels (analyses.norms_without), when measured
    without_massive: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in record_dict(self).items() if v is not None or k in self.extra}

    def grid_size(self) -> int | None:
        """Rows (= columns) of the anomaly layer's token grid, when recorded."""
        grid = self.grid
        if not grid:
            return None
        return int(grid[0] if isinstance(grid, (list, tuple)) else grid)


@dataclass
class MapExample(_Record):
    """One similarity-map row of the qualitative figure: a layer, a measure and a reference token [image, row, col]."""

    id: str
    layer: str
    key: str
    title: str | None = None
    measure: str | None = None
    ref: list[int] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MapExample:
        known, extra = split_known(cls, data)
        return cls(**{"id": "", "layer": "", "key": "", **known}, extra=extra)


@dataclass
class MapsInfo(_Record):
    """What maps.npz holds: the shown images, the similarity examples, the norm layers."""

    images: list[int] = field(default_factory=list)
    examples: list[MapExample] = field(default_factory=list)
    norm_layers: list[str] = field(default_factory=list)
    anomaly_layer: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MapsInfo:
        known, extra = split_known(cls, data)
        known["examples"] = [MapExample.from_dict(e) for e in known.get("examples") or []]
        return cls(**known, extra=extra)

    def to_dict(self) -> dict[str, Any]:
        return {**record_dict(self), "examples": [e.to_dict() for e in self.examples]}


@dataclass
class TimestepTable:
    """The table of one audited timestep (seed-averaged)."""

    timestep: int
    table: list[LayerRow]

    def to_dict(self) -> dict[str, Any]:
        return {"timestep": self.timestep, "table": [r.to_dict() for r in self.table]}


@dataclass
class Recurrence(_Record):
    """Whether anomalies recur at the same positions: coincident cross-image pairs against a permutation null."""

    pairs: int | None = None
    null_mean: float | None = None
    p_value: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)
