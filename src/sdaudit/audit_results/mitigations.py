"""results.csv's rows of the mitigations' measured effect (results.json's ``"mitigations"``, ``--mitigations``).

Tidy, in results.csv's columns: one row per layer, mitigation, number and state, with metric
``mitigation_<name>_<number>_<state>``: number ``match_<view>_acc`` (matching accuracy within one token),
``match_<view>_bias`` (positional-bias rate) or ``artifact`` (the artifact measure the mitigation targets,
named in results.json); state ``before`` / ``after`` (value and its bootstrap interval) or ``difference``
(after - before and its paired interval over the same images).
"""

from __future__ import annotations

from collections.abc import Sequence

from ..mitigations.effects import Change, MitigationEvaluation

PREFIX = "mitigation_"
STATES = ("before", "after", "difference")


def _state_rows(metric: str, change: Change) -> list[tuple[str, float, float, float]]:
    return [(f"{metric}_{state}", i.estimate, i.low, i.high)
            for state, i in zip(STATES, (change.before, change.after, change.difference))]


def mitigation_csv_rows(evaluations: Sequence[MitigationEvaluation]) -> list[tuple[str, str, float, float, float]]:
    """(layer, metric, value, low, high) of every evaluation's numbers (module docstring), in layer order."""
    rows = []
    for ev in evaluations:
        for e in ev.effects:
            base = f"{PREFIX}{e.name}_"
            numbers = [(f"match_{v}_acc", e.accuracy[v]["all"]) for v in ev.views]
            numbers += [(f"match_{v}_bias", e.bias_rate[v]["all"]) for v in ev.views]
            if e.artifact is not None:
                numbers.append(("artifact", e.artifact.change))
            rows += [(ev.layer, *row) for name, change in numbers for row in _state_rows(base + name, change)]
    return rows
