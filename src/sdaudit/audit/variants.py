"""Several timesteps and noise seeds in one audit.

``settings.timesteps`` (e.g. 0, 50, 200, 500) gives the audit's numbers per timestep; ``settings.noise_seeds``
= K draws K independent noises per image (seeds seed .. seed+K-1; under protocol ``clean`` the VAE
encoding is the posterior mean, so it is shared by the draws) and averages the numbers over them. Each
(timestep, seed) pair is one run of the passes with its own checkpoint: the main one in ``OUT``, the others
in ``OUT/variants/t<timestep>-s<seed>/``, so each resumes on its own and adding a timestep or a seed later
reuses the finished runs. The averaged number's interval is a bootstrap over images of the average
(:func:`sdaudit.analyses.intervals.mean_interval`); ``<metric>_seed_sd`` is the spread between the seeds'
own numbers (standard deviation, ddof 1).
"""

from __future__ import annotations

import numpy as np

from ..analyses.intervals import mean_interval
from ..audit_results import finite, interval_metrics, row_resolutions
from ..audit_results.schema import matching_metrics
from ..settings import AuditSettings
from .outputs import metric_terms
from .run import AuditRun, RunOptions


def run_variants(main: AuditRun, settings: AuditSettings, options: RunOptions) -> list[dict]:
    """Run every (timestep, seed) of ``settings`` but the main one, on ``main``'s model and images;
    [{timestep, seed, state}] (states merged over processes)."""
    runs = []
    for timestep, seed in settings.variants()[1:]:
        folder = main.out / "variants" / f"t{timestep}-s{seed}"
        run = main.derived(main.model, settings.single(timestep, seed), folder,
                           options.labelled(f"t={timestep} seed={seed}: "))
        runs.append({"timestep": timestep, "seed": seed, "state": run.execute().state})
    return runs


def average_over_seeds(table: list[dict], states: list) -> None:
    """Replace each metric of ``table`` (computed on ``states[0]``) by its average over the seeds' states, with
    the interval of the average and ``<metric>_seed_sd``; nothing changes with one state."""
    if len(states) < 2:
        return
    for row in table:
        for metric in interval_metrics(row_resolutions(row)) + matching_metrics(row, with_interval=True):
            terms = [metric_terms(state, row["layer"], metric) for state in states]
            if any(t is None or not len(t.index) for t in terms):
                continue
            iv = mean_interval(terms)
            per_seed = [float(t.statistic(t.rows.sum(axis=0)[None])[0]) for t in terms]
            row[metric], row[f"{metric}_low"], row[f"{metric}_high"] = (finite(iv.estimate), finite(iv.low),
                                                                       finite(iv.high))
            row[f"{metric}_seed_sd"] = finite(np.std(per_seed, ddof=1))
        row["noise_seeds"] = len(states)
