"""User keypoints in the audit (``settings.keypoints``, CLI ``--keypoints PAIRS``): PCK per layer on annotated pairs.

The pairs (a pair file or a folder of them, sdaudit's format or SPair-71k's: :mod:`sdaudit.keypoint_pairs`) are
read when the run is set up, so a bad file stops the audit before any U-Net pass with one
:class:`~sdaudit.keypoint_pairs.KeypointFileError`. After the image passes, a ``keypoints`` pass runs both images
of every pair through the full pass's extractor at the model size (prepared like the audited images: centre
crop, resize), and each layer's :class:`~sdaudit.analyses.KeypointMatchingAccumulator` scores nearest-neighbour
keypoint predictions (PCK with SPair's threshold, split by the source keypoint's ring / interior token, chance
PCK of uniformly random predictions; intervals over pairs). Pair p's images get noise indices 2p and 2p + 1,
so the two images of a pair never share a noise pattern at the same position. The pass is checkpointed like the
others (its progress counts pairs) and shared between processes like the images.

Results per layer: ``keypoint_pck<100 alpha>`` (``_ring``, ``_interior``) with ``_low`` / ``_high``,
``keypoint_pck<100 alpha>_chance``, ``keypoint_pairs`` and ``keypoint_skipped`` (source keypoints outside the
model's square view).
"""

from __future__ import annotations

from collections.abc import Sequence

from PIL import Image

from ..analyses.intervals import Terms
from ..analyses.keypoints import KEYPOINT_REGIONS, KeypointMatchingAccumulator
from ..audit_results import finite
from .views import interval_columns, pck_name
from ..audit_results.schema import KEYPOINT_PREFIX as PREFIX
from ..extraction import prepare_for_model
from ..keypoint_pairs import KeypointPair, load_keypoint_pairs

PASS_NAME = "keypoints"
REGION_NAMES = {"all": "", "ring": "_ring", "interior": "_interior"}  # column suffixes


def keypoint_accumulators(layers: Sequence[str]) -> dict[str, KeypointMatchingAccumulator]:
    """{layer: KeypointMatchingAccumulator} (SPair's alphas, the model's square centre crop)."""
    return {layer: KeypointMatchingAccumulator(layer=layer) for layer in layers}


class KeypointPass:
    """The pairs of ``spec`` and how a batch of them is extracted: ``extract(extractor, chunk)`` returns
    {layer: (2 B, C, h, w)} with pair k's image A in row 2 k and its image B in row 2 k + 1."""

    def __init__(self, spec: str, size: int):
        self.pairs: list[KeypointPair] = load_keypoint_pairs(spec)
        self.size = int(size)

    def extract(self, extractor, chunk: Sequence[int], *, device_output: bool = False) -> dict:
        images, indices = [], []
        for p in chunk:
            for k, path in enumerate((self.pairs[p].image_a, self.pairs[p].image_b)):
                with Image.open(path) as img:  # the sizes the keypoints refer to: as stored, no EXIF rotation
                    images.append(prepare_for_model(img.convert("RGB"), self.size))
                indices.append(2 * int(p) + k)
        return extractor.run(images, indices, device_output=device_output)


def update_keypoints(accumulators: dict, pairs: Sequence[KeypointPair], reps: dict, chunk: Sequence[int]) -> None:
    """Feed one batch of pairs (:meth:`KeypointPass.extract` output) to every layer's accumulator."""
    for layer, acc in accumulators.items():
        x = reps[layer]
        for k, p in enumerate(chunk):
            acc.update(x[2 * k], x[2 * k + 1], pairs[p].keypoints, pair_index=int(p))


def keypoint_columns(acc: KeypointMatchingAccumulator) -> dict:
    """A layer's ``keypoint_*`` columns (module docstring)."""
    result = acc.result()
    row = {}
    for region in KEYPOINT_REGIONS:
        for j, alpha in enumerate(result.alphas):
            metric = f"{PREFIX}{pck_name(alpha)}{REGION_NAMES[region]}"
            iv = result.pck[region][j]
            row.update(interval_columns(metric, iv))
    for j, alpha in enumerate(result.alphas):
        row[f"{PREFIX}{pck_name(alpha)}_chance"] = finite(result.chance_pck["all"][j])
    row[f"{PREFIX}pairs"], row[f"{PREFIX}skipped"] = result.n_pairs, result.skipped
    return row


def keypoint_terms(acc: KeypointMatchingAccumulator | None, metric: str) -> Terms | None:
    """Bootstrap terms (over pairs) of one ``keypoint_pck*`` metric, None where there are none."""
    if acc is None or not len(acc.per_pair):
        return None
    which = {f"{PREFIX}{pck_name(a)}{REGION_NAMES[g]}": (g, j)
             for g in KEYPOINT_REGIONS for j, a in enumerate(acc.alphas)}.get(metric)
    return None if which is None else acc.terms(*which)
