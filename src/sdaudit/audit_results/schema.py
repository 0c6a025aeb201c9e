"""The results.json schema's fixed parts: its format version, the metric names, the reading errors.

Torch-free and free of the other ``audit_results`` modules, which all import it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from ..analyses.results import GROUPS
from ..constants import RESOLUTIONS
from ..errors import SdauditError

#: Version of the results.json layout; bumped whenever a key changes meaning or moves.
SCHEMA_VERSION = 2
FORMAT_PREFIX = "sdaudit-audit/"
FORMAT = f"{FORMAT_PREFIX}{SCHEMA_VERSION}"
#: Versions :func:`read_results` reads: version 1 has the same keys as version 2, so it is read as is.
READABLE_VERSIONS = (1, 2)
RESULTS_NAME = "results.json"

ANOMALY_MEAN, ANOMALY_STD = "anomaly_rel_norm_mean", "anomaly_rel_norm_std"


def interval_metrics(resolutions=RESOLUTIONS) -> tuple[str, ...]:
    """Metrics with a 95 % bootstrap interval over images (a row holds ``<metric>_low`` and ``<metric>_high``):
    probe accuracies at ``resolutions``, the relative similarities, the anomalies' mean relative norm."""
    return tuple(f"probe_acc_{s}" for s in resolutions) + tuple(f"{g}_rel_sim" for g in GROUPS) + (ANOMALY_MEAN,)


def row_resolutions(row: Mapping[str, Any]) -> list[int]:
    """The probe resolutions a table row holds accuracies for (the audit's, which need not be the paper's)."""
    return sorted(int(key[len("probe_acc_"):]) for key in row if re.fullmatch(r"probe_acc_\d+", key))


#: The interval metrics at the paper's resolutions.
INTERVAL_METRICS = interval_metrics()


#: The massive-channel columns (opt-in analysis "channels"); the ids are a list, written to results.csv as
#: space-separated indices, largest ratio first.
CHANNEL_METRICS = ("massive_channels", "massive_ratio_max", "massive_consistency_min", "massive_channel_ids")


def csv_metrics(resolutions=RESOLUTIONS) -> tuple[str, ...]:
    """The metrics of results.csv, in its order: probe accuracies and chances at the audit's ``resolutions``,
    relative similarities, anomaly norms, massive channels."""
    return (tuple(f"probe_acc_{s}" for s in resolutions) + tuple(f"probe_chance_{s}" for s in resolutions)
            + tuple(f"{g}_rel_sim" for g in GROUPS) + (ANOMALY_MEAN, ANOMALY_STD, "anomaly_count") + CHANNEL_METRICS)


#: results.csv's metrics for the paper's resolutions.
CSV_METRICS = csv_metrics()


class ResultsFormatError(SdauditError, ValueError):
    """A results.json that is not an audit's, is damaged, or has a format this sdaudit cannot read."""


class ResultsNotFoundError(SdauditError, FileNotFoundError):
    """A folder without results.json where an audit folder was expected."""


def finite(value: Any) -> float | None:
    """``value`` as a finite float, else None (None, bool, text, NaN and infinities)."""
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def probe_metric(s: int) -> str:
    """The table's name of the probe accuracy at comparison resolution ``s``."""
    return f"probe_acc_{s}"


def ratio_metric(group: str) -> str:
    """The table's name of a token group's relative similarity (corner, border, other)."""
    return f"{group}_rel_sim"


#: Prefixes of the matching numbers, optional in every version-2 row: the correspondence probe's (opt-in analysis
#: "correspondence", :mod:`sdaudit.audit.views`) ``match_<view>_<name>``, and user keypoints' (``--keypoints``,
#: :mod:`sdaudit.audit.keypoints`) ``keypoint_<name>``.
MATCHING_PREFIX, KEYPOINT_PREFIX = "match_", "keypoint_"


def matching_metrics(row: Mapping[str, Any], *, with_interval: bool = False) -> tuple[str, ...]:
    """The matching numbers a row holds (correspondence probe and keypoints; not their bounds), in its order;
    ``with_interval``: only those with a 95 % interval (``<metric>_low`` / ``_high``)."""
    names = [k for k in row if k.startswith((MATCHING_PREFIX, KEYPOINT_PREFIX))
             and not k.endswith(("_low", "_high", "_seed_sd"))]
    return tuple(k for k in names if not with_interval or f"{k}_low" in row)
