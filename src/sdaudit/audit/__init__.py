"""``audit``: from a model and images to results.json, figures and report.html in one call.

Outputs in ``out``: ``results.json`` (every number, with provenance), ``results.csv`` (tidy: one
row per layer and metric), ``anomalies.npy`` (published label format), ``maps.npz`` (the
qualitative maps), ``figures/`` and ``report.html``; optionally ``store/`` with the full pass's
representations (``keep_store``).

The parts: :mod:`~sdaudit.settings` (what to measure), :mod:`.sources` (the images),
:mod:`.run` (:class:`AuditRun`: one run of the passes), :mod:`.passes`, :mod:`.state`,
:mod:`.checkpoint`, :mod:`.sharding` (one process or several), :mod:`.variants` and :mod:`.controls`
(more runs), :mod:`.results` (the outputs), :mod:`.api` (the :func:`audit` call).
"""

from ..settings import ANALYSES, AuditSettings
from .api import audit
from .passes import Pass, pass_plan
from .run import AuditRun, RunOptions

__all__ = ["ANALYSES", "AuditRun", "AuditSettings", "Pass", "RunOptions", "audit", "pass_plan"]
