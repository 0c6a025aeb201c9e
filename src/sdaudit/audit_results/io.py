"""Reading and writing an audit's results: results.json (one atomic writer in the current format, one checked
reader) and its tidy table results.csv."""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..analyses.results import to_jsonable
from ..constants import RESOLUTIONS
from .mitigations import mitigation_csv_rows
from .results import AuditResults
from .rows import LayerRow
from .schema import (FORMAT, FORMAT_PREFIX, READABLE_VERSIONS, RESULTS_NAME, ResultsFormatError, ResultsNotFoundError,
                     csv_metrics, finite, matching_metrics)


def _results_file(path: str | Path) -> Path:
    path = Path(path)
    return path / RESULTS_NAME if path.is_dir() else path


def read_results(path: str | Path) -> AuditResults:
    """The results of ``path`` (a results.json, or an audit folder holding one), checked to be readable.

    Raises :class:`ResultsNotFoundError` without the file and :class:`ResultsFormatError`, naming the
    file, when it is damaged, not an audit's, or of a format this version cannot read.
    """
    file = _results_file(path)
    if not file.is_file():
        raise ResultsNotFoundError(f"no {RESULTS_NAME} in '{file.parent}': is it an sdaudit audit folder?")
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ResultsFormatError(f"'{file}' cannot be read as JSON ({error}): rerun the audit") from error
    if not isinstance(data, Mapping):
        raise ResultsFormatError(f"'{file}' is not an sdaudit audit result (expected '{FORMAT}')")
    _check_format(file, str(data.get("format") or ""))
    try:
        return AuditResults.from_dict(data)
    except ResultsFormatError as error:
        raise ResultsFormatError(f"'{file}': {error}") from None


def _check_format(file: Path, fmt: str) -> None:
    if not fmt.startswith(FORMAT_PREFIX):
        raise ResultsFormatError(f"'{file}' is not an sdaudit audit result (format '{fmt}', expected '{FORMAT}')")
    version = fmt[len(FORMAT_PREFIX):]
    if not version.isdigit() or int(version) not in READABLE_VERSIONS:
        readable = ", ".join(f"{FORMAT_PREFIX}{v}" for v in READABLE_VERSIONS)
        raise ResultsFormatError(f"'{file}' has results format '{fmt}', which this sdaudit cannot read (it reads "
                                 f"{readable}): rerun the audit with this version, or update sdaudit")


def write_results(path: str | Path, results: AuditResults | Mapping[str, Any]) -> Path:
    """Write ``results`` (typed, or a results dict) to ``path`` in the current format, atomically.

    The JSON goes to a temporary file beside ``path`` and is renamed over it, so a reader never sees
    half a file; non-finite numbers are written as null.
    """
    path = Path(path)
    data = {**AuditResults.coerce(results).to_dict(), "format": FORMAT}
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(json.dumps(to_jsonable(data), indent=1, allow_nan=False), encoding="utf-8")
    os.replace(tmp, path)
    return path


CSV_HEADER = ("model", "timestep", "layer_index", "layer", "block", "kind", "grid", "metric", "value", "low", "high",
              "seed_sd")


def write_results_csv(path: str | Path, results: AuditResults) -> Path:
    """results.csv: one row per timestep, layer and metric of :data:`CSV_HEADER`, atomically.

    ``low`` / ``high`` are the 95 % bootstrap interval where the metric has one, ``seed_sd`` the spread
    between noise seeds where several were drawn (else empty). The timesteps are those of
    ``results.timesteps``, else the audit's one timestep with the main table.
    """
    path = Path(path)
    tables = [(t.timestep, t.table) for t in results.timesteps] or [(results.settings.get("timestep"), results.table)]
    metrics = csv_metrics(results.settings.get("resolutions") or RESOLUTIONS)
    tmp = path.with_name(path.name + ".partial")
    with open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(CSV_HEADER)
        for timestep, table in tables:
            for i, row in enumerate(table):
                writer.writerows([results.model.name, timestep, i, row.layer, row.block, row.kind, row.grid, metric,
                                  *_csv_values(row, metric)]
                                 for metric in (*metrics, *matching_metrics(row.values))
                                 if row.values.get(metric) not in (None, []))
        _write_mitigation_rows(writer, results)
    os.replace(tmp, path)
    return path


def _write_mitigation_rows(writer, results: AuditResults) -> None:
    """The mitigations' rows (:mod:`sdaudit.audit_results.mitigations`), at the main timestep, no seed spread."""
    place = {row.layer: (i, row) for i, row in enumerate(results.table)}
    for layer, metric, value, low, high in mitigation_csv_rows(results.mitigations):
        i, row = place[layer]
        writer.writerow([results.model.name, results.settings.get("timestep"), i, layer, row.block, row.kind,
                         row.grid, metric, *(repr(float(v)) if finite(v) is not None else "" for v in
                                             (value, low, high)), ""])


def _csv_values(row: LayerRow, metric: str) -> list:
    """(value, low, high, seed_sd) of ``metric`` as results.csv writes them: floats exactly, absent as empty."""
    def text(value):
        if isinstance(value, (list, tuple)):  # massive_channel_ids
            return " ".join(str(v) for v in value)
        return "" if value is None else repr(value) if isinstance(value, float) else value

    values = row.values
    return [text(values[metric]), text(values.get(f"{metric}_low")), text(values.get(f"{metric}_high")),
            text(values.get(f"{metric}_seed_sd"))]
