"""Qualitative examples: which tokens to show, and their similarity and norm maps on a few images.

The choices read the per-layer table as :class:`~sdaudit.audit_results.LayerRow` (table dicts are accepted too);
the examples are written as :class:`~sdaudit.audit_results.MapExample` records."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..analyses import NonFiniteInputError, norm_map, similarity_map
from ..audit_results import ANOMALY_MEAN, LayerRow, MapExample
from ..constants import RESOLUTIONS
from ..layer_names import norm_key


def finest_accuracy(row: LayerRow | Mapping[str, Any]) -> float | None:
    """Probe accuracy at the finest comparison resolution a layer has (its own grid, capped at the finest)."""
    row = LayerRow.coerce(row)
    grid = row.grid or 0
    candidates = [s for s in reversed(RESOLUTIONS) if s <= grid and row.accuracy(s) is not None]
    return row.accuracy(candidates[0]) if candidates else None


def choose_shown_images(n_images: int, detections: np.ndarray, scores: np.ndarray, n_show: int) -> list[int]:
    """Images for the qualitative figures: the one with the strongest anomaly first, then the first others."""
    shown: list[int] = []
    if len(detections):
        shown.append(int(detections[int(np.argmax(scores)), 0]))
    for i in range(n_images):
        if len(shown) >= n_show:
            break
        if i not in shown:
            shown.append(i)
    return shown


def _example(kind: str, title: str, layer: str, ref: list[int]) -> dict:
    """An example's record in results.json (``maps.examples``): a cosine map to token ``ref`` = [image, row, col]."""
    return MapExample(id=kind, layer=layer, key=f"ex_{kind}", title=title, measure="cosine", ref=ref).to_dict()


def choose_examples(table: Sequence[LayerRow | Mapping[str, Any]], anomaly_layer: str | None,
                    top_anomaly: tuple[int, int] | None, grids: dict[str, tuple[int, int]], *,
                    semantic_layers: Sequence[str] = ()) -> list[dict]:
    """The four examples of the paper's Fig. 1/3, chosen from the measured results.

    * position: the layer whose probe is most accurate at its finest resolution; an interior token;
    * corner: the layer with the largest corner relative similarity; the top-left corner token;
    * anomaly: the detector's strongest anomaly on the anomaly layer (if any was found);
    * semantic: of ``semantic_layers`` (the model family's, e.g. SD's up_blocks[1]/[2]), the layer with the least
      positional information (else the middle layer); the centre token.
    """
    rows = [LayerRow.coerce(r) for r in table]
    examples = []
    scored = [(finest_accuracy(r), r.layer) for r in rows if finest_accuracy(r) is not None]
    if scored:
        layer = max(scored)[1]
        n = grids[layer][0]
        examples.append(_example("position", "Positional embedding", layer, [0, n // 2, n // 4]))
    # conv_in / conv_out have few channels (4 for conv_out): their cosine maps are mostly noise
    corners = [(r.ratio("corner"), r.layer) for r in rows if r.ratio("corner") is not None and r.kind != "conv"]
    if corners:
        examples.append(_example("corner", "Corner token", max(corners)[1], [0, 0, 0]))
    if anomaly_layer and top_anomaly is not None:
        x, y = top_anomaly
        examples.append(_example("anomaly", "High-norm anomaly", anomaly_layer, [0, y, x]))
    semantic = [(finest_accuracy(r) or 0.0, r.layer) for r in rows if r.layer in set(semantic_layers)]
    layer = min(semantic)[1] if semantic else rows[len(rows) // 2].layer
    n = grids[layer][0]
    examples.append(_example("semantic", "Semantic similarity", layer, [0, n // 2, n // 2]))
    return examples


def norm_layers(table: Sequence[LayerRow | Mapping[str, Any]], anomaly_layer: str | None) -> list[str]:
    """Layers whose norm maps are shown: the anomaly layer and the layer with the largest anomaly norm."""
    rows = [LayerRow.coerce(r) for r in table]
    layers = [anomaly_layer] if anomaly_layer else []
    ranked = [(r.value(ANOMALY_MEAN), r.layer) for r in rows if r.value(ANOMALY_MEAN) is not None]
    if ranked and max(ranked)[1] not in layers:
        layers.append(max(ranked)[1])
    if not layers:
        layers.append(rows[-2].layer if len(rows) > 1 else rows[0].layer)
    return layers


def compute_maps(reps: dict, examples: Sequence[MapExample | Mapping[str, Any]], shown_norm_layers: list[str],
                 inputs: np.ndarray, anomaly_rows: np.ndarray, *, skipped: dict[str, str] | None = None) -> dict[str, np.ndarray]:
    """The arrays of maps.npz for the shown images (``reps``: layer -> (k, C, n, n)).

    A map whose layer has non-finite values on the shown images is left out (its key is missing), and
    ``skipped`` (if given) gets ``{layer: message}``: one bad layer must not cost the other maps.
    """
    arrays = {"inputs": inputs.astype(np.uint8), "anomalies": np.asarray(anomaly_rows, dtype=np.int64).reshape(-1, 3)}
    chosen = [e if isinstance(e, MapExample) else MapExample.from_dict(e) for e in examples]
    jobs = [(e.key, e.layer, lambda e=e: similarity_map(reps[e.layer], ref=tuple(e.ref), measure=e.measure,
                                                          layer=e.layer)) for e in chosen]
    jobs += [(norm_key(layer), layer, lambda layer=layer: norm_map(reps[layer], layer=layer))
             for layer in shown_norm_layers]
    for key, layer, make in jobs:
        try:
            arrays[key] = make().astype(np.float32)
        except NonFiniteInputError as error:
            if skipped is not None:
                skipped[layer] = str(error)
    return arrays
