"""The audit's results as types: :class:`AuditResults` (one ``results.json``) and :class:`LayerRow` (one table row).

This module is the only place that knows the keys of ``results.json``: the audit writes it with
:func:`write_results`, the report, the demo and the maps read it with :func:`read_results` (or take an
:class:`AuditResults` built with :meth:`AuditResults.from_dict`) and use attributes. Keys this
module does not know are kept in ``extra`` and written back, so a round trip loses nothing. The
audited images are :class:`~sdaudit.image_ref.ImageRef`; results.csv is written from the typed rows
(:func:`write_results_csv`).

Per-layer numbers stay named by metric (``probe_acc_64``, ``corner_rel_sim``, ...), the same names
as the ``metric`` column of ``results.csv``; :class:`LayerRow` reads them as finite floats or None,
with their 95 % interval (``<metric>_low`` / ``<metric>_high``) and the difference to the first
control (``beyond_<metric>*``). Torch-free: the report needs no model.
"""

from __future__ import annotations

from ..layer_names import LayerInfo
from .io import CSV_HEADER, read_results, write_results, write_results_csv
from .records import AnomalySummary, MapExample, MapsInfo, ModelInfo, Recurrence, TimestepTable
from .results import AuditResults
from .rows import ControlRun, LayerRow
from .schema import (ANOMALY_MEAN, ANOMALY_STD, CSV_METRICS, FORMAT, FORMAT_PREFIX, INTERVAL_METRICS,
                     READABLE_VERSIONS, RESULTS_NAME, SCHEMA_VERSION, ResultsFormatError, ResultsNotFoundError, finite,
                     interval_metrics, probe_metric, ratio_metric, row_resolutions)

__all__ = ["interval_metrics", "row_resolutions", "ANOMALY_MEAN", "ANOMALY_STD", "CSV_HEADER", "CSV_METRICS", "FORMAT", "FORMAT_PREFIX", "INTERVAL_METRICS",
           "READABLE_VERSIONS", "RESULTS_NAME", "SCHEMA_VERSION", "AnomalySummary", "AuditResults", "ControlRun",
           "LayerInfo", "LayerRow", "MapExample", "MapsInfo", "ModelInfo", "Recurrence", "ResultsFormatError",
           "ResultsNotFoundError", "TimestepTable", "finite", "probe_metric", "ratio_metric", "read_results",
           "write_results", "write_results_csv"]
