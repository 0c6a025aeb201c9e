"""The correspondence probe in the audit (opt-in analysis "correspondence"): every audited image is matched,
layer by layer, to known views of itself (:mod:`sdaudit.analyses.views`, :mod:`sdaudit.analyses.correspondence`).

In the full pass each batch's prepared images (model size) are also transformed by every view of
``settings.views`` (flip, shift, crop: the same size, so each layer's view representations share its grid)
and run through the same extractor: one more U-Net pass per image and view. A layer's
:class:`~sdaudit.analyses.ViewMatchingAccumulator` per view (correspondence from the layer's grid, with
``pixels_per_token`` = size / grid) then gets the image's and the view's representations. The views' reps
travel in the batch's reps dict under :func:`view_key` names, so the feeder and checkpoints treat them alike.

Choices:

* a shift must move every audited layer's grid by whole tokens: it is one token of the COARSEST audited grid
  horizontally (size / coarsest px), i.e. grid / coarsest tokens of a finer grid; grids that the coarsest
  does not divide are refused;
* each view has its own noise draw (protocol clean seeds the noise by image index; a view's index is
  ``index + (k + 1) * n_images``): the same noise at the same absolute position in image and view would pull
  matches onto the source position and pass for a positional bias of the model. Under protocol 'paper' one
  noise tensor is shared by all images (as published), so there image and view share it: compare with a
  control run under the same protocol.

Results: per layer and view, ``match_<view>_acc`` (within one token; ``_corner`` / ``_border`` /
``_interior``: by the source token's region), ``match_<view>_pck<100 alpha>``, ``match_<view>_bias``
(positional-bias rate) each with ``_low`` / ``_high``, and ``match_<view>_bias_chance``.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..analyses.correspondence import REGIONS, ViewMatchingAccumulator
from ..analyses.intervals import Terms
from ..analyses.views import KnownView
from ..audit_results import finite
from ..audit_results.schema import MATCHING_PREFIX as PREFIX  # match_
from ..errors import UsageError

REGION_NAMES = {"all": "", "corner": "_corner", "border": "_border", "other": "_interior"}  # column suffixes
_SEP = ":"  # view_key's separator: layer names never hold it (nor the "|" of state dicts)


def interval_columns(metric: str, interval) -> dict:
    """``metric``, ``metric_low`` and ``metric_high`` of an :class:`~sdaudit.analyses.Interval` (None if undefined)."""
    return {metric: finite(interval.estimate), f"{metric}_low": finite(interval.low),
            f"{metric}_high": finite(interval.high)}


def view_key(view: str, layer: str) -> str:
    """The name of a view's representations of ``layer`` in a batch's reps dict (and its accumulator's part)."""
    return f"{view}{_SEP}{layer}"


def shift_steps(grids: dict[str, tuple[int, int]]) -> dict[str, int]:
    """{layer: columns the shift view moves its grid}: one token of the coarsest grid, in each layer's tokens."""
    coarsest = min(cols for _, cols in grids.values())
    bad = sorted(layer for layer, (_, cols) in grids.items() if cols % coarsest)
    if bad:
        raise UsageError(f"the shift view moves by one token of the coarsest audited grid ({coarsest} columns), which "
                         f"is not a whole number of tokens on {', '.join(bad)}: leave 'shift' out of --views or "
                         "audit layers whose grids are multiples of each other")
    return {layer: cols // coarsest for layer, (_, cols) in grids.items()}


def layer_view(view: str, steps: int) -> KnownView:
    """The known view ``view`` as seen on a layer whose grid the shift moves by ``steps`` tokens."""
    return KnownView(view, shift=(0, steps)) if view == "shift" else KnownView(view)


def view_correspondences(layers: Sequence[str], grids: dict, *, views: Sequence[str], size: int) -> dict:
    """{view_key(view, layer): Correspondence} of every view and layer of an audit at ``size`` px."""
    steps = shift_steps({layer: grids[layer] for layer in layers}) if "shift" in views else {}
    return {view_key(view, layer): layer_view(view, steps.get(layer, 1)).correspondence(
        grids[layer][0], grids[layer][1], size / grids[layer][1]) for view in views for layer in layers}


def matching_accumulators(layers: Sequence[str], grids: dict, *, views: Sequence[str], size: int) -> dict:
    """{view_key(view, layer): ViewMatchingAccumulator} for every view and layer of an audit at ``size`` px."""
    corr = view_correspondences(layers, grids, views=views, size=size)
    return {view_key(view, layer): ViewMatchingAccumulator(corr[view_key(view, layer)].to_dict(), layer=layer,
                                                           provenance={"view": view})
            for view in views for layer in layers}


class ViewPasses:
    """The views' extra passes of a batch: ``extract(extractor, images, indices)`` returns the views'
    representations under :func:`view_key` names. ``grids``: the audited layers' grids; ``n_images``: the
    audit's image count (each view's noise indices start past the images', see the module docstring)."""

    def __init__(self, views: Sequence[str], grids: dict, size: int, n_images: int):
        self.views, self.size, self.n_images = tuple(views), int(size), int(n_images)
        coarsest = min(cols for _, cols in grids.values())
        self.shift = KnownView("shift", shift=(0, 1))  # applied in pixels of the coarsest grid's token
        self.pixels_per_token = self.size / coarsest
        if "shift" in self.views:
            shift_steps(grids)

    def images(self, view: str, images: Sequence) -> list:
        """The view ``view`` of each prepared (model-size) image."""
        known = self.shift if view == "shift" else KnownView(view)
        return [known.apply(image, self.pixels_per_token) for image in images]

    def extract(self, extractor, images: Sequence, indices: Sequence[int], *, device_output: bool = False) -> dict:
        out = {}
        for k, view in enumerate(self.views):
            noise_indices = [int(i) + (k + 1) * self.n_images for i in indices]
            reps = extractor.run(self.images(view, images), noise_indices, device_output=device_output)
            out.update({view_key(view, layer): value for layer, value in reps.items()})
        return out


def pck_name(alpha: float) -> str:
    """The column name of PCK at ``alpha`` (a fraction): pck05, pck10, pck20, ..."""
    return f"pck{int(round(alpha * 100)):02d}"


def _metric_of(name: str, alphas) -> tuple[str, str] | None:
    """(region, accumulator metric) of a ``match_<view>_<name>`` column name, None for a name without terms."""
    if name == "bias":
        return "all", "bias"
    for region, suffix in REGION_NAMES.items():
        if name == f"acc{suffix}":
            return region, "accuracy"
    pcks = {pck_name(a): f"pck{j}" for j, a in enumerate(alphas)}
    return ("all", pcks[name]) if name in pcks else None


def matching_columns(state, layer: str) -> dict:
    """A layer's ``match_*`` columns (module docstring) from the state's accumulators, every view."""
    row = {}
    for key, acc in state.matching.items():
        if acc.layer != layer:
            continue
        view = acc.provenance["view"]
        result = acc.result()
        intervals = {f"acc{REGION_NAMES[g]}": result.accuracy[g] for g in REGIONS}
        intervals.update({pck_name(a): result.pck["all"][j] for j, a in enumerate(result.alphas)})
        intervals["bias"] = result.bias_rate["all"]
        for name, iv in intervals.items():
            metric = f"{PREFIX}{view}_{name}"
            row.update(interval_columns(metric, iv))
        row[f"{PREFIX}{view}_bias_chance"] = finite(result.chance_bias_rate["all"])
    return row


def matching_terms(state, layer: str, metric: str) -> Terms | None:
    """Bootstrap terms of one ``match_<view>_<name>`` metric of ``layer`` (None where the state has none)."""
    view, _, name = metric[len(PREFIX):].partition("_")
    acc = getattr(state, "matching", {}).get(view_key(view, layer))
    which = _metric_of(name, acc.alphas) if acc is not None else None
    if which is None or not len(acc.per_image):
        return None
    return acc.terms(*which)

