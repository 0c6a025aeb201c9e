"""The whole of one results.json: :class:`AuditResults`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..image_ref import ImageRef
from ..layer_names import LayerInfo
from ..mitigations.effects import MitigationEvaluation
from .records import AnomalySummary, MapsInfo, ModelInfo, Recurrence, TimestepTable
from .rows import ControlRun, LayerRow, split_known, reference_of, as_rows
from .schema import FORMAT, ResultsFormatError, finite


#: keys every results.json has, written even when empty (in this order)
_ALWAYS = ("format", "created", "model", "settings", "versions", "images", "skipped_images", "layers", "table",
           "position", "borders", "non_finite", "run", "warnings")


@dataclass
class AuditResults:
    """One audit's results (``results.json``): provenance, the per-layer table, controls, anomalies, maps.

    ``settings`` is the audit's settings as recorded (a plain mapping: their type belongs to the audit);
    ``images`` are the audited images' :class:`~sdaudit.image_ref.ImageRef` (results.json records no mode),
    ``skipped_images`` the ``{"source", "reason"}`` of each image left out. ``label`` is a display name the
    report gives a run when it draws several; the audit never sets it.
    """

    table: list[LayerRow]
    format: str = FORMAT
    created: str | None = None
    model: ModelInfo = field(default_factory=ModelInfo)
    settings: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, Any] = field(default_factory=dict)
    images: list[ImageRef] = field(default_factory=list)
    skipped_images: list[dict[str, Any]] = field(default_factory=list)
    layers: list[LayerInfo] = field(default_factory=list)
    position: dict[str, Any] = field(default_factory=dict)
    borders: dict[str, Any] = field(default_factory=dict)
    non_finite: dict[str, Any] = field(default_factory=dict)
    run: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    controls: list[ControlRun] = field(default_factory=list)
    timesteps: list[TimestepTable] = field(default_factory=list)
    anomalies: AnomalySummary | None = None
    recurrence: Recurrence | None = None
    maps: MapsInfo | None = None
    mitigations: list[MitigationEvaluation] = field(default_factory=list)  # --mitigations: one per layer
    label: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AuditResults:
        """The typed results of a results.json dict (or of a bare ``{"label", "table"}`` run); no format check."""
        if not isinstance(data.get("table"), list):
            raise ResultsFormatError("audit results need a per-layer 'table' (a list of rows)")
        known, extra = split_known(cls, data)
        extra.pop("control", None)  # the first control, also listed in "controls"
        known.update(table=as_rows(data["table"]), model=ModelInfo.from_dict(data.get("model")),
                     layers=[LayerInfo.from_dict(i) for i in data.get("layers") or [] if isinstance(i, Mapping)],
                     images=_images(data.get("images")), warnings=_warnings(data.get("warnings")),
                     controls=_controls(data),
                     timesteps=[TimestepTable(int(t["timestep"]), as_rows(t["table"]))
                                for t in data.get("timesteps") or []],
                     mitigations=[MitigationEvaluation.from_dict(m) for m in data.get("mitigations") or []])
        for key, kind in (("anomalies", AnomalySummary), ("recurrence", Recurrence), ("maps", MapsInfo)):
            known[key] = kind.from_dict(data[key]) if isinstance(data.get(key), Mapping) else None
        for key in ("settings", "versions", "position", "borders", "non_finite", "run"):
            known[key] = dict(known.get(key) or {})
        return cls(**known, extra=extra)

    @classmethod
    def coerce(cls, results: AuditResults | Mapping[str, Any]) -> AuditResults:
        """``results`` itself, or the typed form of a results dict."""
        return results if isinstance(results, AuditResults) else cls.from_dict(results)

    def to_dict(self) -> dict[str, Any]:
        """The results.json dict: every key read, unknown ones included."""
        out: dict[str, Any] = {key: getattr(self, key) for key in _ALWAYS}
        out.update(model=self.model.to_dict(), images=[ref.to_json(with_mode=False) for ref in self.images],
                   layers=[i.to_dict() for i in self.layers],
                   table=[r.to_dict() for r in self.table])
        if self.controls:
            controls = [c.to_dict() for c in self.controls]
            out["control"], out["controls"] = controls[0], controls
        if self.timesteps:
            out["timesteps"] = [t.to_dict() for t in self.timesteps]
        if self.mitigations:
            out["mitigations"] = [m.to_dict() for m in self.mitigations]
        for key in ("anomalies", "recurrence", "maps"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key).to_dict()
        if self.label is not None:
            out["label"] = self.label
        return {**out, **self.extra}

    # -- what the readers ask of the results

    @property
    def model_name(self) -> str | None:
        return self.model.name

    @property
    def random_weights(self) -> bool:
        return bool(self.model.random_weights)

    @property
    def n_images(self) -> int | None:
        """Images audited: the image records, else the anomaly summary's count."""
        if self.images:
            return len(self.images)
        return self.anomalies.n_images if self.anomalies is not None else None

    @property
    def anomaly_layer(self) -> str | None:
        """The layer anomalies were detected on (else the one the settings name)."""
        found = self.anomalies.layer if self.anomalies is not None else None
        return found or self.settings.get("anomaly_layer")

    @property
    def probe_method(self) -> str | None:
        return self.settings.get("probe_method")

    @property
    def protocol(self) -> str | None:
        return self.settings.get("protocol")

    @property
    def image_size(self) -> int | None:
        """Side of the model inputs in pixels, as set for the audit."""
        return self.settings.get("size")

    @property
    def unet_passes_per_image(self) -> int | None:
        return self.run.get("unet_passes_per_image")

    @property
    def n_runs(self) -> int:
        """Runs of the audit: one per timestep and noise seed, plus one per control."""
        timesteps = len(self.settings.get("timesteps") or [0])
        return timesteps * int(self.settings.get("noise_seeds") or 1) + len(self.controls)

    def skipped(self) -> list[tuple[str, str]]:
        """(source, reason) of every image left out of the audit."""
        return [(str(s.get("source")), str(s.get("reason"))) for s in self.skipped_images if isinstance(s, Mapping)]

    def reference(self, layer: str, group: str) -> float | None:
        """The full image's mean cosine of ``group`` at ``layer``: the denominator of its relative similarity."""
        return reference_of(self.borders, layer, group)

    def channels(self) -> dict[str, int]:
        """Channels per layer, where recorded."""
        return {i.name: int(i.channels) for i in self.layers if finite(i.channels) is not None}

    def layer_grid(self, layer: str | None) -> int | None:
        """Rows of ``layer``'s token grid: from the anomaly summary, the layer records, else the table."""
        if not layer:
            return None
        if self.anomalies is not None and self.anomalies.layer == layer and self.anomalies.grid_size():
            return self.anomalies.grid_size()
        for info in self.layers:
            if info.name == layer:
                size = info.height or info.width
                return int(size) if size else None
        return next((int(r.grid) for r in self.table if r.layer == layer and r.grid), None)

    def image_source(self, index: int) -> str | None:
        """The source (path or name) of audited image ``index``."""
        return next((ref.source for ref in self.images if ref.index == int(index)), None)

    def first_control_has_beyond(self) -> bool:
        """Whether the table carries (model - control) differences."""
        return any(r.has_beyond() for r in self.table)


def _images(raw: Any) -> list[ImageRef]:
    """The image records as references; a record that is not one is a damaged file."""
    try:
        return [ImageRef.from_json(entry) for entry in raw or []]
    except TypeError as error:
        raise ResultsFormatError(f"'images' holds a record that is not an image's ({error})") from None


def _warnings(raw: Any) -> list[str]:
    """Warnings as a list of strings (a single string is one warning)."""
    if isinstance(raw, str):
        return [raw]
    return [str(w) for w in raw] if isinstance(raw, list) else []


def _controls(data: Mapping[str, Any]) -> list[ControlRun]:
    """``controls`` (a list), else ``control`` as a one-element list."""
    raw = data.get("controls")
    if not isinstance(raw, list):
        raw = [data["control"]] if isinstance(data.get("control"), Mapping) else []
    return [ControlRun.from_dict(c) for c in raw if isinstance(c, Mapping)]
