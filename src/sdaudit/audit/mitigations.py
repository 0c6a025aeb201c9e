"""Mitigations in the audit (``--mitigations``): what each one buys and costs on every audited layer.

One :class:`~sdaudit.mitigations.evaluate.MitigationEvaluator` per audited layer (state part
``"mitigations/<layer>"``) is fed in the full pass with the layer's representations and its views' (the
correspondence probe's, :mod:`sdaudit.audit.views`, so the views and their shift step are the probe's).
The position probe's split decides its role: images below the probe's ``n_train`` fit the mitigations,
the others measure them. The run streams the training images first (one process: they come first; shards:
the training segment, then :func:`share_fits`, then the test segment), so every image is measured with the
fit of all training images.

Results: results.json's ``"mitigations"`` (one :class:`~sdaudit.mitigations.effects.MitigationEvaluation`
per layer, :func:`mitigation_results`), whence results.csv's rows
(:func:`sdaudit.audit_results.mitigations.mitigation_csv_rows`), the report's "Mitigations" section
(:mod:`sdaudit.report.mitigations`) and one terminal line (``sdaudit.report.mitigations.mitigation_line``).
"""

from __future__ import annotations

from collections.abc import Sequence

from ..analyses import n_train_images
from ..analyses._arrays import as_float32
from ..errors import UsageError
from ..mitigations.evaluate import MitigationEvaluator
from .views import view_correspondences, view_key


def mitigation_evaluators(layers: Sequence[str], grids: dict, *, names: Sequence[str], views: Sequence[str],
                          size: int, n_images: int, train_fraction: float) -> dict[str, MitigationEvaluator]:
    """{layer: MitigationEvaluator} of the mitigations ``names`` measured on ``views`` (module docstring)."""
    n_train = n_train_images(n_images, train_fraction) if n_images >= 2 else 0
    if n_images - n_train < 2:
        raise UsageError(f"--mitigations needs at least 2 test images of the position probe's split; {n_images} "
                         f"images with train fraction {train_fraction} leave {max(n_images - n_train, 0)}: "
                         "give more images")
    corr = view_correspondences(layers, grids, views=views, size=size)
    return {layer: MitigationEvaluator(list(names), {v: corr[view_key(v, layer)].to_dict() for v in views},
                                       n_images=n_images, n_train=n_train, layer=layer) for layer in layers}


def update_evaluator(evaluator: MitigationEvaluator, x, reps: dict, indices: Sequence[int]) -> None:
    """Feed one batch of the full pass: the layer's features ``x`` and its views' in ``reps`` (numpy, or torch
    tensors on any device: brought to the host once, as float32, for the mitigations' numpy transforms)."""
    views = {v: as_float32(reps[view_key(v, evaluator.layer)]) for v in evaluator.views}
    evaluator.update(as_float32(x), views, list(indices))


def fit_states(evaluators: dict[str, MitigationEvaluator]) -> dict[str, dict]:
    """{layer: state_dict} of this process's evaluators: what the shards exchange after the training segment."""
    return {layer: ev.state_dict() for layer, ev in evaluators.items()}


def share_fits(evaluators: dict[str, MitigationEvaluator], gathered: list[dict[str, dict]], rank: int) -> None:
    """Give each of this process's evaluators the fit of every process's training images.

    ``gathered``: every rank's :func:`fit_states`, in rank order. An evaluator already holding the complete
    fit (resumed after the exchange) keeps it; where another rank holds the complete fit it is taken over;
    else the other ranks' partial fits are merged into this one's. The evaluator's own measures stay its own.
    """
    for layer, ev in evaluators.items():
        if ev.n_fitted == ev.n_train:
            continue
        others = [MitigationEvaluator.from_state_dict(states[layer]) for r, states in enumerate(gathered) if r != rank]
        complete = [o for o in others if o.n_fitted == o.n_train]
        if complete:
            ev.transforms = complete[0].transforms
            continue
        for other in others:
            for label, m in ev.transforms.items():
                m.merge(other.transforms[label])


def mitigation_results(state) -> list:
    """results.json's ``"mitigations"``: each audited (finite) layer's
    :class:`~sdaudit.mitigations.effects.MitigationEvaluation`, in layer order."""
    return [ev.result() for layer, ev in state.mitigations.items() if layer not in state.failed]
