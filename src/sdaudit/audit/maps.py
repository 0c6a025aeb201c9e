"""Qualitative examples: which tokens to show, and their similarity and norm maps on a few images."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..analyses import NonFiniteInputError, norm_map, similarity_map
from ..layer_names import norm_key


def finest_accuracy(row: dict) -> float | None:
    """Probe accuracy at the finest comparison resolution a layer has (its own grid, capped at 64)."""
    grid = row.get("grid") or 0
    candidates = [s for s in (64, 32, 16, 8) if s <= grid and row.get(f"probe_acc_{s}") is not None]
    return row.get(f"probe_acc_{candidates[0]}") if candidates else None


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


def choose_examples(table: Sequence[dict], anomaly_layer: str | None, top_anomaly: tuple[int, int] | None,
                    grids: dict[str, tuple[int, int]]) -> list[dict]:
    """The four examples of the paper's Fig. 1/3, chosen from the measured results.

    * position: the layer whose probe is most accurate at its finest resolution; an interior token;
    * corner: the layer with the largest corner relative similarity; the top-left corner token;
    * anomaly: the detector's strongest anomaly on the anomaly layer (if any was found);
    * semantic: the up_blocks[1]/[2] layer with the least positional information; the centre token.
    """
    rows = {r["layer"]: r for r in table}
    examples = []
    scored = [(finest_accuracy(r), r["layer"]) for r in table if finest_accuracy(r) is not None]
    if scored:
        layer = max(scored)[1]
        n = grids[layer][0]
        examples.append({"id": "position", "title": "Positional embedding", "layer": layer, "measure": "cosine",
                         "ref": [0, n // 2, n // 4]})
    # conv_in / conv_out have few channels (4 for conv_out): their cosine maps are mostly noise
    corners = [(r["corner_rel_sim"], r["layer"]) for r in table
               if r.get("corner_rel_sim") is not None and r.get("kind") != "conv"]
    if corners:
        examples.append({"id": "corner", "title": "Corner token", "layer": max(corners)[1], "measure": "cosine",
                         "ref": [0, 0, 0]})
    if anomaly_layer and top_anomaly is not None:
        x, y = top_anomaly
        examples.append({"id": "anomaly", "title": "High-norm anomaly", "layer": anomaly_layer, "measure": "cosine",
                         "ref": [0, y, x]})
    semantic = [(finest_accuracy(rows[n]) or 0.0, n) for n in rows if n.startswith(("up_blocks[1]", "up_blocks[2]"))]
    layer = min(semantic)[1] if semantic else table[len(table) // 2]["layer"]
    n = grids[layer][0]
    examples.append({"id": "semantic", "title": "Semantic similarity", "layer": layer, "measure": "cosine",
                     "ref": [0, n // 2, n // 2]})
    for example in examples:
        example["key"] = f"ex_{example['id']}"
    return examples


def norm_layers(table: Sequence[dict], anomaly_layer: str | None) -> list[str]:
    """Layers whose norm maps are shown: the anomaly layer and the layer with the largest anomaly norm."""
    layers = [anomaly_layer] if anomaly_layer else []
    ranked = [(r["anomaly_rel_norm_mean"], r["layer"]) for r in table if r.get("anomaly_rel_norm_mean") is not None]
    if ranked and max(ranked)[1] not in layers:
        layers.append(max(ranked)[1])
    if not layers:
        layers.append(table[-2]["layer"] if len(table) > 1 else table[0]["layer"])
    return layers


def compute_maps(reps: dict, examples: list[dict], shown_norm_layers: list[str], inputs: np.ndarray,
                 anomaly_rows: np.ndarray, *, skipped: dict[str, str] | None = None) -> dict[str, np.ndarray]:
    """The arrays of maps.npz for the shown images (``reps``: layer -> (k, C, n, n)).

    A map whose layer has non-finite values on the shown images is left out (its key is missing), and
    ``skipped`` (if given) gets ``{layer: message}``: one bad layer must not cost the other maps.
    """
    arrays = {"inputs": inputs.astype(np.uint8), "anomalies": np.asarray(anomaly_rows, dtype=np.int64).reshape(-1, 3)}
    jobs = [(example["key"], example["layer"], lambda e=example: similarity_map(
        reps[e["layer"]], ref=tuple(e["ref"]), measure=e["measure"], layer=e["layer"])) for example in examples]
    jobs += [(norm_key(layer), layer, lambda layer=layer: norm_map(reps[layer], layer=layer))
             for layer in shown_norm_layers]
    for key, layer, make in jobs:
        try:
            arrays[key] = make().astype(np.float32)
        except NonFiniteInputError as error:
            if skipped is not None:
                skipped[layer] = str(error)
    return arrays
