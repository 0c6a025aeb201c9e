"""The published per-layer numbers of Loos & Linhardt (2025), shipped as ``paper_results.csv``.

The csv holds the authors' result files for SD-1.5, SD-2.1 and SD-Turbo (45 layers each, the
paper's layer set). :func:`load_paper_results` returns them as rows with the keys of an audit's
``results.json`` ``"table"``, so that they can be drawn and compared like any audit.

Border / other similarity: the authors' code counted the border and other token pairs of the
uncropped reference with the full grid's n instead of the (n-2) x (n-2) grid the groups live on
(design.md, section 4). The csv has both the published values (``border_rel_sim``,
``other_rel_sim``) and the values recomputed with the right counts (``border_rel_sim_corrected``,
``other_rel_sim_corrected``). sdaudit computes the fixed definition, so ``border_rel_sim`` /
``other_rel_sim`` here are the *corrected* columns; the printed-in-the-paper values are kept as
``border_rel_sim_published`` / ``other_rel_sim_published``. Corner values were not affected.
"""

from __future__ import annotations

import csv
import functools
import io
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

from ..errors import UsageError
from ..audit_results import FORMAT, AuditResults, LayerRow, finite
from ..constants import PAPER_ANOMALY_LAYER, PAPER_N_IMAGES, PAPER_SEED, PAPER_TIMESTEP, PAPER_TRAIN_FRACTION, \
    RESOLUTIONS
from ..layer_names import kind_of

#: csv model key -> the names (squashed: lower case, no separators) that mean it
_MODEL_ALIASES: dict[str, tuple[str, ...]] = {
    "sd15": ("sd15", "stablediffusion15", "stablediffusionv15", "stablediffusionv15/stablediffusionv15",
             "runwayml/stablediffusionv15"),
    "sd21": ("sd21", "stablediffusion21", "stabilityai/stablediffusion21"),
    "sdturbo": ("sdturbo", "stabilityai/sdturbo"),
}
#: display names of the published models
PAPER_MODEL_NAMES = {"sd15": "SD-1.5", "sd21": "SD-2.1", "sdturbo": "SD-Turbo"}

#: who published the numbers (legend labels and page text)
PAPER_CITATION = "Loos & Linhardt 2025"
#: the published model whose curves are overlaid on a model without its own when layer names match
#: (SD-1.5's layer names are the diffusers U-Net names every SD-like model, tiny included, uses)
NAME_MATCH_MODEL = "sd15"

#: published hand-label statistics (design.md, section 4): anomalies, images with one, images labelled
PAPER_ANOMALY_LABELS = {"sd15": (196, 144, PAPER_N_IMAGES), "sd21": (93, 76, PAPER_N_IMAGES),
                        "sdturbo": (457, 438, PAPER_N_IMAGES)}


def _squash(text: str) -> str:
    return re.sub(r"[\s._\-]", "", text).lower()


def paper_model_key(model: str | None) -> str | None:
    """The csv's key (``sd15``, ``sd21``, ``sdturbo``) for a model name in any usual spelling, or None.

    Accepts sdaudit's registry names (``sd15``, ``sd21``, ``sd-turbo``), spellings such as ``SD1.5``,
    ``sd-1.5``, ``SD-Turbo``, ``sdturbo`` and the Hugging Face repo ids. Untrained twins
    (``arch:sd15``), ``tiny``, folders and files have no published numbers and give None.
    """
    if not model or not isinstance(model, str):
        return None
    squashed = _squash(model.strip())
    for key, aliases in _MODEL_ALIASES.items():
        if squashed in aliases:
            return key
    return None


@functools.lru_cache(maxsize=1)
def _csv_rows() -> tuple[dict[str, str], ...]:
    text = resources.files("sdaudit.report").joinpath("paper_results.csv").read_text(encoding="utf-8")
    return tuple(csv.DictReader(io.StringIO(text)))


def _num(value: Any) -> float | None:
    """A csv cell or row value as a finite float; None when empty or not a number."""
    return finite(value)



def load_paper_results(model: str | None) -> list[dict[str, Any]] | None:
    """The published per-layer numbers for ``model`` as "table" rows, in the paper's layer order.

    Each row has ``layer``, ``block``, ``kind``, ``grid``, ``probe_acc_{8,16,32,64}``,
    ``probe_chance_{8,16,32,64}`` (1 / min(s, n)), ``corner_rel_sim``, ``border_rel_sim`` and
    ``other_rel_sim`` (the corrected columns, see the module docstring), ``border_rel_sim_published``,
    ``other_rel_sim_published``, ``anomaly_rel_norm_mean``, ``anomaly_rel_norm_std`` and
    ``probe_acc_64_epoch4``. Returns None for a model without published numbers.
    """
    key = paper_model_key(model)
    if key is None:
        return None
    rows = []
    for r in _csv_rows():
        if r["model"] != key:
            continue
        grid = int(float(r["spatial"]))
        row: dict[str, Any] = {"layer": r["layer"], "block": r["block"], "kind": kind_of(r["layer"]), "grid": grid}
        for s in RESOLUTIONS:
            row[f"probe_acc_{s}"] = _num(r.get(f"probe_acc_{s}"))
            row[f"probe_chance_{s}"] = 1.0 / min(s, grid)
        row["corner_rel_sim"] = _num(r.get("corner_rel_sim"))
        row["border_rel_sim"] = _num(r.get("border_rel_sim_corrected"))
        row["other_rel_sim"] = _num(r.get("other_rel_sim_corrected"))
        row["border_rel_sim_published"] = _num(r.get("border_rel_sim"))
        row["other_rel_sim_published"] = _num(r.get("other_rel_sim"))
        row["anomaly_rel_norm_mean"] = _num(r.get("anomaly_rel_norm_mean"))
        row["anomaly_rel_norm_std"] = _num(r.get("anomaly_rel_norm_std"))
        row["probe_acc_64_epoch4"] = _num(r.get("probe_acc_64_epoch4"))
        rows.append((int(float(r["layer_idx"])), row))
    rows.sort(key=lambda t: t[0])
    return [row for _, row in rows]


@dataclass(frozen=True)
class PublishedCurves:
    """The published numbers overlaid on an audit: which published model, its rows, and whether it is the
    audited model itself (``own``) or a model whose layer names match (e.g. SD-1.5 on ``tiny``)."""

    key: str
    rows: list[dict[str, Any]]
    own: bool = True

    @property
    def name(self) -> str:
        return PAPER_MODEL_NAMES[self.key]

    @property
    def label(self) -> str:
        """The legend label: ``published SD-1.5 (Loos & Linhardt 2025)``."""
        return f"published {self.name} ({PAPER_CITATION})"


def published_for(results: AuditResults) -> PublishedCurves | None:
    """The published curves to overlay on ``results``: its own model's, else SD-1.5's where any layer name
    matches (drawn only at those layers); None when neither applies."""
    key = paper_model_key(results.model_name)
    if key is not None:
        return PublishedCurves(key, load_paper_results(key) or [])
    rows = load_paper_results(NAME_MATCH_MODEL) or []
    names = {r.layer for r in results.table}
    matched = [row for row in rows if row["layer"] in names]
    return PublishedCurves(NAME_MATCH_MODEL, matched, own=False) if matched else None


def paper_as_results(model: str) -> dict[str, Any]:
    """The published numbers of ``model`` as an audit ``results.json`` dict (no images, no maps).

    Lets the report render the paper's own figures, and serves as a realistic fixture.
    """
    table = load_paper_results(model)
    key = paper_model_key(model)
    if table is None or key is None:
        raise UsageError(f"no published numbers for model '{model}'; known: sd15, sd21, sd-turbo")
    count, images_with, n_images = PAPER_ANOMALY_LABELS[key]
    for row in table:
        row["anomaly_count"] = count
    name = {"sd15": "sd15", "sd21": "sd21", "sdturbo": "sd-turbo"}[key]
    return {
        "format": FORMAT,
        "created": None,
        "model": {"name": name, "kind": "published", "location": "Loos & Linhardt (2025), published result files",
                  "revision": None, "weights_sha256": None},
        "settings": {"protocol": "paper", "timestep": PAPER_TIMESTEP, "seed": PAPER_SEED, "size": 512, "prompt": "", "latent": "sample",
                     "noise_samples": 1, "layers": "paper", "analyses": ["position", "borders", "anomalies"],
                     "probe_method": "adam-5-epochs", "train_fraction": PAPER_TRAIN_FRACTION, "detector": None,
                     "anomaly_layer": PAPER_ANOMALY_LAYER},
        "versions": {},
        "images": [],
        "layers": [{"name": r["layer"], "block": r["block"], "kind": r["kind"], "channels": None,
                    "height": r["grid"], "width": r["grid"]} for r in table],
        "table": table,
        "anomalies": {"layer": PAPER_ANOMALY_LAYER, "count": count, "images_with": images_with, "n_images": n_images},
    }


_PROBE_NAMES = {"lda": "the closed-form LDA probe", "ridge": "the closed-form ridge probe"}


def probe_mismatch_note(probe_method: str | None) -> str | None:
    """What to say next to a published overlay when the audit's probe is not the paper's, else None.

    The published accuracies come from a probe trained with Adam for 5 epochs (``probe_method ==
    "paper"`` reproduces it); a closed-form probe reaches other accuracies on the same features."""
    if probe_method == "paper":
        return None
    head = "The published curves come from the paper's trained probe (Adam, 5 epochs)"
    if not probe_method:
        return f"{head}; this audit does not record which probe it used."
    used = _PROBE_NAMES.get(str(probe_method), f"the '{probe_method}' probe")
    return f"{head}; this audit used {used}."


def _pearson(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Pearson correlation of two equally long series; None under 3 points or without spread."""
    n = len(a)
    if n < 3:
        return None
    ma, mb = sum(a) / n, sum(b) / n
    va = sum((x - ma) ** 2 for x in a)
    vb = sum((y - mb) ** 2 for y in b)
    if va <= 0 or vb <= 0:
        return None
    return sum((x - ma) * (y - mb) for x, y in zip(a, b)) / math.sqrt(va * vb)


PAPER_METRICS = [(f"probe_acc_{s}", f"probe accuracy, s = {s}") for s in RESOLUTIONS] + [
    ("corner_rel_sim", "corner relative similarity"),
    ("border_rel_sim", "border relative similarity (corrected counts)"),
    ("anomaly_rel_norm_mean", "anomaly relative norm (mean)"),
]


def paper_agreement(table: Sequence[LayerRow], published: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per metric: layers compared, Pearson r, median and largest absolute difference."""
    pub = {r["layer"]: r for r in published}
    out = []
    for key, label in PAPER_METRICS:
        pairs = [(r.layer, r.value(key), _num(pub[r.layer].get(key))) for r in table if r.layer in pub]
        pairs = [(n, a, b) for n, a, b in pairs if a is not None and b is not None]
        if not pairs:
            continue
        diffs = sorted(abs(a - b) for _, a, b in pairs)
        worst = max(pairs, key=lambda t: abs(t[1] - t[2]))
        out.append({"key": key, "label": label, "n": len(pairs),
                    "r": _pearson([a for _, a, _ in pairs], [b for _, _, b in pairs]),
                    "median": diffs[len(diffs) // 2], "worst_layer": worst[0], "worst": abs(worst[1] - worst[2]),
                    "ours": worst[1], "theirs": worst[2]})
    return out
