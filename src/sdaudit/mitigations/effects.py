"""The measured effect of mitigations on one layer: typed results and the plain verdict they support.

A :class:`Change` is one number measured on the same test images before and after a mitigation, with
the paired bootstrap interval of the difference after - before (images resampled jointly). An
:class:`MitigationEffect` holds, for one mitigation, the matching changes per view and region
(accuracy within one token and positional-bias rate, :mod:`sdaudit.analyses.correspondence`), the
change of the artifact measure it targets (:data:`ARTIFACT_MEASURES`) and a verdict that states only
what the intervals support; :class:`MitigationEvaluation` is all mitigations of one layer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from ..analyses.intervals import Interval
from ..analyses.results import _Result

#: mitigation kind -> (the artifact measure, what it is compared with after a mitigation)
ARTIFACT_MEASURES = {
    "position": ("position probe accuracy", "chance"),
    "position-subspace": ("position probe accuracy", "chance"),
    "anomalies": ("anomaly relative norm", "no anomaly"),
    "channels": ("largest massive-channel ratio", "no massive channel"),
    "border": ("interior matching accuracy, ring candidates masked", None),
}


@dataclass(frozen=True)
class Change:
    """A number before and after a mitigation on the same images, and the paired interval of after - before."""

    before: Interval
    after: Interval
    difference: Interval

    def to_dict(self) -> dict:
        return {"before": self.before.to_dict(), "after": self.after.to_dict(),
                "difference": self.difference.to_dict()}

    @classmethod
    def from_dict(cls, d: dict) -> "Change":
        return cls(*(Interval.from_dict(d[k]) for k in ("before", "after", "difference")))


@dataclass(frozen=True)
class ArtifactChange:
    """The change of the artifact measure a mitigation targets: ``measure`` names it, ``reference`` is the
    value it would have without the artifact (probe chance, relative norm 1) or None."""

    measure: str
    change: Change
    reference: float | None = None
    reference_label: str | None = None

    def to_dict(self) -> dict:
        return {"measure": self.measure, "change": self.change.to_dict(), "reference": _finite(self.reference),
                "reference_label": self.reference_label}

    @classmethod
    def from_dict(cls, d: dict) -> "ArtifactChange":
        ref = d.get("reference")
        return cls(d["measure"], Change.from_dict(d["change"]), None if ref is None else float(ref),
                   d.get("reference_label"))


@dataclass
class MitigationEffect(_Result):
    """One mitigation on one layer. ``accuracy[view][region]`` and ``bias_rate[view][region]`` are
    :class:`Change` s (regions: all, corner, border, other); ``chance_bias_rate[view][region]`` the bias
    rate of random matches; ``control_of`` names the mitigation this one is the control of (mean
    substitution for the neighbour repair)."""

    kind = "mitigation_effect"

    name: str
    mitigation: str
    params: dict
    accuracy: dict[str, dict[str, Change]]
    bias_rate: dict[str, dict[str, Change]]
    chance_bias_rate: dict[str, dict[str, float]]
    artifact: ArtifactChange | None
    verdict: str
    control_of: str | None = None

    @classmethod
    def _convert(cls, kw: dict[str, Any]) -> dict[str, Any]:
        for key in ("accuracy", "bias_rate"):
            kw[key] = {v: {g: Change.from_dict(c) for g, c in per.items()} for v, per in kw[key].items()}
        kw["chance_bias_rate"] = {v: {g: math.nan if x is None else float(x) for g, x in per.items()}
                                  for v, per in kw["chance_bias_rate"].items()}
        kw["artifact"] = None if kw.get("artifact") is None else ArtifactChange.from_dict(kw["artifact"])
        return kw


@dataclass
class MitigationEvaluation(_Result):
    """Every evaluated mitigation of one layer: fitted on ``n_fit_images`` images, measured on
    ``n_test_images`` others; ``views`` in order (the first is the one the verdicts quote)."""

    kind = "mitigation_evaluation"

    layer: str | None
    grid: tuple[int, int]
    views: list[str]
    n_fit_images: int
    n_test_images: int
    effects: list[MitigationEffect]
    provenance: dict = field(default_factory=dict)

    @classmethod
    def _convert(cls, kw: dict[str, Any]) -> dict[str, Any]:
        kw["grid"] = tuple(int(v) for v in kw["grid"])
        kw["effects"] = [MitigationEffect.from_dict(e) for e in kw["effects"]]
        return kw

    def effect(self, name: str) -> MitigationEffect:
        """The effect of the mitigation evaluated under ``name``."""
        for e in self.effects:
            if e.name == name:
                return e
        raise KeyError(f"no mitigation {name!r} evaluated; have {[e.name for e in self.effects]}")


def _finite(v: float | None) -> float | None:
    return None if v is None or not math.isfinite(v) else float(v)


def _digits(v: float) -> int:
    """Decimals of a percentage-point number: one, or two under 0.1 pp (so that a small effect is not '0.0')."""
    return 1 if abs(100 * v) >= 0.1 else 2


def _pp(v: float) -> str:
    return f"{100 * v:.{_digits(v)}f} pp"


def _signed_interval(d: Interval) -> str:
    k = max(_digits(d.low), _digits(d.high))
    return f"[{100 * d.low:+.{k}f}, {100 * d.high:+.{k}f}]"


def _accuracy_clause(d: Interval, view: str) -> str | None:
    """'costs 3.1 pp [-5.0, -1.2] flip matching accuracy' when the interval excludes 0, else None."""
    if not d.excludes(0.0):
        return None
    verb = "costs" if d.estimate < 0 else "gains"
    return f"{verb} {_pp(abs(d.estimate))} {_signed_interval(d)} {view} matching accuracy"


def _bias_clause(c: Change) -> str | None:
    """'lowers the positional-bias rate by 40.0 pp [-45.1, -35.2]' when the interval excludes 0, else None."""
    d = c.difference
    if math.isfinite(c.before.estimate) and not math.isfinite(c.after.estimate):
        return "leaves no wrong match to measure a positional-bias rate on"
    if not d.excludes(0.0):
        return None
    return f"{'lowers' if d.estimate < 0 else 'raises'} the positional-bias rate by {_pp(abs(d.estimate))} " \
           f"{_signed_interval(d)}"


def _artifact_clause(a: ArtifactChange) -> str:
    c = a.change
    if not math.isfinite(c.before.estimate):
        return f"{a.measure}: not defined on these images (nothing detected)"
    text = f"{a.measure} {c.before.estimate:.3g} -> {c.after.estimate:.3g}"
    if a.reference is not None:
        text += f" ({a.reference_label}: {a.reference:.3g})"
    if not c.difference.excludes(0.0):
        text += ", no measurable change"
    return text


def verdict(name: str, accuracy: Change, bias_rate: Change, artifact: ArtifactChange | None, view: str) -> str:
    """The plain verdict of one mitigation: only the differences whose interval excludes 0 are stated as
    effects; 'no measurable effect on matching' when neither matching interval does."""
    clauses = [c for c in (_accuracy_clause(accuracy.difference, view), _bias_clause(bias_rate)) if c is not None]
    lead = ", ".join(clauses) if clauses else f"no measurable effect on {view} matching"
    d = accuracy.difference
    if not (math.isfinite(d.low) and math.isfinite(d.high)):
        lead += " (too few images for an interval)"
    tail = f"; {_artifact_clause(artifact)}" if artifact is not None else ""
    return f"{name}: {lead}{tail}"
