"""The results.json schema's fixed parts: its format version, the metric names, the reading errors.

Torch-free and free of the other ``audit_results`` modules, which all import it.
"""

from __future__ import annotations

import math
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
#: Metrics with a 95 % bootstrap interval over images: a row holds ``<metric>_low`` and ``<metric>_high``.
INTERVAL_METRICS = tuple(f"probe_acc_{s}" for s in RESOLUTIONS) + tuple(f"{g}_rel_sim" for g in GROUPS) + (
    ANOMALY_MEAN,)
#: The metrics of results.csv, in its order: probe accuracies and chances, relative similarities, anomaly norms.
CSV_METRICS = (tuple(f"probe_acc_{s}" for s in RESOLUTIONS) + tuple(f"probe_chance_{s}" for s in RESOLUTIONS)
               + tuple(f"{g}_rel_sim" for g in GROUPS) + (ANOMALY_MEAN, ANOMALY_STD, "anomaly_count"))


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
