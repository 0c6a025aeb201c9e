"""Turning the final audit state into results: the per-layer table, its warnings, the anomaly recurrence,
anomalies.npy (results.json and results.csv are written by :mod:`sdaudit.audit_results`)."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

from ..analyses import save_labels
from ..analyses.channels import channel_summary
from ..analyses.intervals import MIN_IMAGES as MIN_BOOT_IMAGES
from ..analyses.intervals import Terms, item_mean_terms
from ..analyses.results import UNDEFINED_SMALL_GRID
from ..audit_results import finite
from ..constants import DEGENERATE_GRID, MIN_PROBE_GRID, RESOLUTIONS
from ..layer_names import block_of, kind_of
from ..audit_results.schema import KEYPOINT_PREFIX, MATCHING_PREFIX
from .keypoints import keypoint_columns, keypoint_terms
from .views import matching_columns, matching_terms


def layer_results(state, grids: dict[str, tuple[int, int]]) -> tuple[dict, dict, list[dict]]:
    """Per-layer results of every analysis: (position dicts, border dicts, wide table rows)."""
    position, borders, table = {}, {}, []
    # anomalies are found on the anomaly layer: once it turned non-finite, the other layers' anomaly norms
    # would describe only the batches before that, so none are reported
    usable_norms = state.norms is not None and state.anomaly_layer not in state.failed
    norms = state.norms.stats() if usable_norms else {}
    for layer in state.layers:
        row = {"layer": layer, "block": block_of(layer), "kind": kind_of(layer), "grid": grids[layer][0]}
        if layer in state.failed:
            row["error"] = state.failed[layer]
        elif layer in state.probe:
            result = state.probe[layer].result()
            position[layer] = result.to_dict()
            for s in result.resolutions:
                row[f"probe_acc_{s}"] = finite(result.accuracy[s])
                row[f"probe_chance_{s}"] = finite(result.chance[s])
                _interval(row, f"probe_acc_{s}", result.intervals.get(s))
            row["probe_test_images"] = result.n_test_images
        if layer in state.borders and layer not in state.failed:
            result = state.borders[layer].result()
            borders[layer] = result.to_dict()
            for g in ("corner", "border", "other"):
                row[f"{g}_rel_sim"] = finite(result.relative[g])
                _interval(row, f"{g}_rel_sim", result.intervals.get(g))
        elif "borders" in state.analyses and layer not in state.failed:
            row["borders_undefined"] = UNDEFINED_SMALL_GRID
        if layer in norms and layer not in state.failed:
            row["anomaly_rel_norm_mean"] = finite(norms[layer]["mean"])
            row["anomaly_rel_norm_std"] = finite(norms[layer]["std"])
            row["anomaly_count"] = norms[layer]["count"]
            row["anomaly_rel_norm_mean_low"] = finite(norms[layer]["low"])
            row["anomaly_rel_norm_mean_high"] = finite(norms[layer]["high"])
        if layer in state.channels and layer not in state.failed:
            row.update(channel_summary(state.channels[layer].result()))
        if state.matching and layer not in state.failed:
            row.update(matching_columns(state, layer))
        if layer in state.keypoints and layer not in state.failed:
            row.update(keypoint_columns(state.keypoints[layer]))
        table.append(row)
    return position, borders, table


def anomalies_without_massive(state) -> dict | None:
    """The detector rerun on the anomaly layer's token norms without that layer's massive channels
    (:mod:`sdaudit.analyses.norms_without`), next to the plain detection; None unless the "channels" analysis
    ran there and the layer stayed finite. Without massive channels the maps are the plain ones (in float64)."""
    layer = state.anomaly_layer
    if layer not in state.without or layer in state.failed or state.detector is None:
        return None
    channels = state.channels[layer].result().channels
    return state.without[layer].result(channels, state.detector.params)


def metric_terms(state, layer: str, metric: str) -> Terms | None:
    """Bootstrap terms of one table metric of ``layer`` in an audit state (None where it has none)."""
    if layer in state.failed:
        return None
    if metric.startswith("probe_acc_") and layer in state.probe:
        resolution = int(metric.rsplit("_", 1)[1])  # the audit's resolutions may differ from the paper's
        probe = state.probe[layer]
        return probe.terms(resolution) if resolution in probe.resolutions else None
    if metric.endswith("_rel_sim") and layer in state.borders:
        return state.borders[layer].terms(metric.split("_", 1)[0])
    if metric.startswith(MATCHING_PREFIX):
        return matching_terms(state, layer, metric)
    if metric.startswith(KEYPOINT_PREFIX):
        return keypoint_terms(state.keypoints.get(layer), metric)
    if metric == "anomaly_rel_norm_mean" and state.norms is not None and state.anomaly_layer not in state.failed:
        return item_mean_terms(state.norms.images[layer], state.norms.values[layer])
    return None


def _interval(row: dict, metric: str, interval) -> None:
    """``<metric>_low`` / ``<metric>_high`` from an :class:`~sdaudit.analyses.Interval` (None when undefined)."""
    row[f"{metric}_low"] = finite(interval.low) if interval is not None else None
    row[f"{metric}_high"] = finite(interval.high) if interval is not None else None


MIN_IMAGES = 100  # below this, intervals are wide: the paper used 500 images
MIN_TEST_IMAGES = 20


def audit_warnings(n_images: int, table: list[dict], settings) -> list[str]:
    """What the reader must know before trusting the numbers: few images, a small probe test split."""
    out = []
    if n_images < MIN_IMAGES:
        out.append(f"only {n_images} images (fewer than {MIN_IMAGES}): the intervals are wide and verdicts "
                   "uncertain; the paper used 500")
    tests = [row["probe_test_images"] for row in table if row.get("probe_test_images")]
    if tests and min(tests) < MIN_TEST_IMAGES:
        out.append(f"the position probe's test split holds {min(tests)} images (fewer than {MIN_TEST_IMAGES}): "
                   f"its accuracies rest on few images (train fraction {settings.train_fraction})"
                   + (f"; with fewer than {MIN_BOOT_IMAGES} no interval is given" if min(tests) < MIN_BOOT_IMAGES else ""))
    if "position" in settings.analyses:
        out += grid_warnings([(row["layer"], row["grid"]) for row in table if "error" not in row],
                             settings.extraction.size)
    return out


def grid_warnings(grids: list[tuple[str, int]], size: int) -> list[str]:
    """Layers whose grid is too small for the position probe, and comparison resolutions s that no layer's
    grid reaches at this ``size`` (their columns repeat the finest one reached); each starts with
    :data:`~sdaudit.constants.DEGENERATE_GRID`. Grids scale with the size, so each names the size that helps."""
    out = []
    small: dict[int, list[str]] = {}
    for layer, grid in grids:
        if grid < MIN_PROBE_GRID:
            small.setdefault(grid, []).append(layer)
    for grid, layers in sorted(small.items()):
        out.append(f"{DEGENERATE_GRID}{len(layers)} layer(s) at {grid}x{grid} ({', '.join(layers)}): the position "
                   f"probe has {grid} classes per axis there (chance {100 / grid:.0f} %), so a high accuracy is "
                   f"trivial, not a positional code; at {size * MIN_PROBE_GRID // grid} px their grid is "
                   f"{MIN_PROBE_GRID}x{MIN_PROBE_GRID}")
    largest = max((grid for _, grid in grids), default=0)
    unreached = [s for s in RESOLUTIONS if s > largest]
    if largest and unreached:
        columns = ", ".join(f"s = {s}" for s in unreached)
        out.append(f"{DEGENERATE_GRID}at {size} px no layer's grid exceeds {largest}x{largest}: the {columns} "
                   f"column(s) repeat the coarser ones (the probe has min(s, grid) classes per axis); at {size * unreached[-1] // largest} px "
                   f"every s = {', '.join(map(str, RESOLUTIONS))} is resolved by some layer")
    return out


def anomaly_recurrence(state, detection) -> dict | None:
    """Whether the anomalies (labelled, or else detected) recur at the same positions across images."""
    from ..analyses import position_recurrence

    rows = state.labels if state.labels is not None else detection.rows
    if rows is None or len(rows) < 2:
        return None
    return position_recurrence(rows, detection.grid).to_dict()


def write_anomalies(path: Path, detection) -> None:
    """anomalies.npy in the published label format: int rows [image, x, y] on the anomaly layer's grid."""
    save_labels(path, detection.rows, grid=detection.grid)


def now_iso() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
