"""Per-layer rows: :class:`LayerRow` (one row of a table) and :class:`ControlRun` (a control's table)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from .schema import finite, probe_metric, ratio_metric


def split_known(cls, data: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(values of ``cls``'s declared fields, the other keys) of ``data``; ``extra`` is never a declared key."""
    names = {f.name for f in fields(cls)} - {"extra"}
    return {k: v for k, v in data.items() if k in names}, {k: v for k, v in data.items() if k not in names}


def record_dict(record) -> dict[str, Any]:
    """A record's declared fields (all of them, None included) followed by its extra keys."""
    out = {f.name: getattr(record, f.name) for f in fields(record) if f.name != "extra"}
    return {**out, **record.extra}


@dataclass
class LayerRow:
    """One layer's row of the table: identity (layer, block, kind, grid), failure, and its numbers by metric.

    ``values`` holds every other key of the row (metrics, their intervals, ``beyond_*``, ``*_seed_sd``,
    counts) exactly as written.
    """

    layer: str
    block: str | None = None
    kind: str | None = None
    grid: int | None = None
    error: str | None = None
    borders_undefined: str | None = None
    values: dict[str, Any] = field(default_factory=dict)

    _IDENTITY = ("layer", "block", "kind", "grid", "error", "borders_undefined")

    @classmethod
    def from_dict(cls, row: Mapping[str, Any]) -> LayerRow:
        known = {k: row[k] for k in cls._IDENTITY if k in row}
        known["layer"] = str(known.get("layer"))
        return cls(**known, values={k: v for k, v in row.items() if k not in cls._IDENTITY})

    @classmethod
    def coerce(cls, row: LayerRow | Mapping[str, Any]) -> LayerRow:
        """``row`` itself, or the row a table dict describes (for callers that still hold dicts)."""
        return row if isinstance(row, LayerRow) else cls.from_dict(row)

    def to_dict(self) -> dict[str, Any]:
        """The row as results.json holds it: identity keys that are set, then ``values``."""
        out = {k: getattr(self, k) for k in self._IDENTITY if getattr(self, k) is not None or k == "layer"}
        return {**out, **self.values}

    def has(self, key: str) -> bool:
        """Whether the audit wrote ``key`` for this layer (its value may be null)."""
        return key in self.values

    def value(self, metric: str) -> float | None:
        """A number of this row as a finite float; None where absent, null or not finite."""
        return finite(self.values.get(metric))

    def has_interval(self, metric: str) -> bool:
        """Whether the audit wrote an interval for ``metric`` (its bounds may still be null)."""
        return f"{metric}_low" in self.values or f"{metric}_high" in self.values

    def interval(self, metric: str) -> tuple[float | None, float | None]:
        """(low, high) of ``metric``'s 95 % interval; None where absent or undefined."""
        return self.value(f"{metric}_low"), self.value(f"{metric}_high")

    def beyond(self, metric: str) -> tuple[float | None, float | None, float | None] | None:
        """(model - control, low, high) the audit wrote for ``metric``, or None when it wrote none."""
        key = f"beyond_{metric}"
        if key not in self.values:
            return None
        return self.value(key), self.value(f"{key}_low"), self.value(f"{key}_high")

    def has_beyond(self) -> bool:
        return any(k.startswith("beyond_") for k in self.values)

    def accuracy(self, s: int) -> float | None:
        """Probe accuracy at comparison resolution ``s``."""
        return self.value(probe_metric(s))

    def chance(self, s: int) -> float | None:
        """Chance accuracy at ``s``: the table's ``probe_chance_s``, else 1 / min(s, grid)."""
        written = self.value(f"probe_chance_{s}")
        if written is not None:
            return written
        grid = finite(self.grid)
        return 1.0 / min(s, grid) if grid else None

    def ratio(self, group: str) -> float | None:
        """Relative similarity of ``group`` (corner, border, other)."""
        return self.value(ratio_metric(group))

    @property
    def probe_test_images(self) -> int | None:
        count = self.value("probe_test_images")
        return int(count) if count else None


def as_rows(table: Any) -> list[LayerRow]:
    return [LayerRow.coerce(r) for r in table or [] if isinstance(r, (Mapping, LayerRow))]


def reference_of(borders: Mapping[str, Any], layer: str | None, group: str) -> float | None:
    """The full image's mean cosine of ``group`` at ``layer`` (the denominator of its relative similarity)."""
    result = borders.get(str(layer)) if isinstance(borders, Mapping) else None
    full = result.get("full") if isinstance(result, Mapping) else None
    return finite(full.get(group)) if isinstance(full, Mapping) else None


@dataclass
class ControlRun:
    """A control audited beside the model (untrained twin, circular padding, ...): its identity and table."""

    label: str
    kind: str | None = None
    model: dict[str, Any] = field(default_factory=dict)
    table: list[LayerRow] = field(default_factory=list)
    non_finite: dict[str, Any] = field(default_factory=dict)
    borders: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ControlRun:
        known, extra = split_known(cls, data)
        known["label"] = str(known.get("label") or known.get("kind") or "control")
        known["table"] = as_rows(known.get("table"))
        for key in ("model", "non_finite", "borders"):
            known[key] = dict(known.get(key) or {})
        return cls(**known, extra=extra)

    def to_dict(self) -> dict[str, Any]:
        out = record_dict(self)
        out["table"] = [r.to_dict() for r in self.table]
        if not self.borders:
            del out["borders"]  # the audit writes a control's reference similarities only when it has them
        return out

    def by_layer(self) -> dict[str, LayerRow]:
        return {r.layer: r for r in self.table}

    def reference(self, layer: str, group: str) -> float | None:
        return reference_of(self.borders, layer, group)
