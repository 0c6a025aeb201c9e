"""``audit``: from a model and images to results.json, figures and report.html in one call."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ..audit_results import RESULTS_NAME
from ..errors import UsageError
from ..keypoint_pairs import load_keypoint_pairs
from ..settings import AuditSettings
from ..terminal import Stages
from .checkpoint import audit_fingerprint, store_key
from .controls import run_controls
from .progress import progress_bars
from .results import ResultsWriter
from .run import AuditRun, RunOptions, RunOutcome
from .sharding import SingleProcess, init_from_env
from .sources import AuditInputs
from .variants import run_variants


class _KeptStore:
    """``keep_store``: the full pass's batches appended to ``path`` (skipping images already in it); the store
    (holding its writer lock) is closed by :meth:`close`."""

    def __init__(self, path: Path, model, batch_size: int):
        self.path, self.model, self.batch_size, self.store = path, model, batch_size, None

    def writer(self, extractor):
        from ..extraction.run import store_config
        from ..store import create_store

        config = store_config(self.model, extractor, "float16", self.batch_size)
        self.store = create_store(self.path, config, extractor.shapes, dtype="float16")
        return self.write

    def write(self, batch, images, reps) -> None:
        if batch[0].index < self.store.num_images:
            return  # committed before an interruption
        entries = [replace(item.ref, mode="RGB") for item in batch]  # the store holds the prepared RGB inputs
        arrays = {name: tensor.numpy() for name, tensor in reps.items()}
        self.store.write_batch(batch[0].index, arrays, entries, inputs=np.stack([np.asarray(im) for im in images]))

    def close(self) -> None:
        if self.store is not None:
            self.store.close()


def _sharding(shard):
    """The sharding strategy of ``audit(shard=...)``: "auto" joins a launcher's process group if there is one."""
    if shard == "auto":
        shard = init_from_env()
    return SingleProcess() if shard is None else shard


def audit(model, images=None, out: str | Path = "sdaudit-audit", settings: AuditSettings | None = None, *,
          store: str | Path | None = None, keep_store: bool = False, skip_bad: bool = False,
          progress: bool = True, report: bool = True, compare_paper: bool = False,
          checkpoint_seconds: float = 120.0, shard="auto", console=None) -> dict:
    """Audit ``model`` on ``images`` (or on the images of an existing ``store``) and write the results to ``out``.

    Args:
        model: a :class:`~sdaudit.models.LoadedModel` or a model spec.
        images: any image source :func:`sdaudit.images.iter_images` accepts; or None with ``store``.
        out: output folder; rerunning into it with the same settings resumes an interrupted audit, and returns
            a finished one's results without redoing anything (its checkpoints are removed when it finishes).
        settings: :class:`~sdaudit.settings.AuditSettings` (layers, protocol, timestep, seed, analyses, ...);
            never changed by the audit (the model's size is filled into a copy).
        store: an existing store whose images (its prepared inputs) are audited.
        keep_store: also write the full pass's representations to ``out/store``.
        skip_bad: skip invalid images (listed in results.json) instead of stopping.
        report: draw the figures and write report.html.
        compare_paper: overlay the published curves of the matching model on the figure.
        progress: stage lines with their times, progress bars with images/s (rank 0 only); quiet when False.
        console: the rich Console of the stage lines (default: a new one on stdout).
        shard: for multi-process runs, a :class:`~sdaudit.audit.sharding.Shard`; "auto" (default) joins
            the process group that ``accelerate launch`` / ``torchrun`` describe in the environment (and
            is a single-process audit otherwise); None: always a single-process audit. Each process
            audits its share of the images, the accumulators are merged, rank 0 writes the outputs and
            every process returns the same results (see :mod:`sdaudit.audit.sharding`).

    Returns the results dict that was written to results.json.
    """
    from ..models import load_model

    settings = (settings or AuditSettings()).validated()
    sharding = _sharding(shard)
    stages = Stages(console, enabled=progress and sharding.is_main)
    if sharding.world_size > 1 and keep_store:
        raise UsageError("keep_store is not supported with several processes")
    if keep_store and store is not None:
        raise UsageError("--keep-store with --store: the audited store already holds the representations")
    if settings.keypoints:  # a bad pair file stops the audit before the model loads (the run reads it again)
        load_keypoint_pairs(settings.keypoints)
    if isinstance(model, str):
        with stages("loading the model", done=f"model loaded ({model})"):
            model = load_model(model)
    with stages("checking the images") as stage:
        inputs = _inputs(model, images, store, settings, skip_bad)
        stage.done = f"{len(inputs.items)} images checked" + (f", {len(inputs.errors)} skipped" if inputs.errors else "")
    job = _Audit(model, inputs, inputs.settings.for_model(model.default_size), Path(out),
                 RunOptions(sharding=sharding, checkpoint_seconds=checkpoint_seconds), stages)
    stamp = audit_fingerprint(model, job.settings, inputs.items, from_store=store_key(inputs.full_source),
                              keep_store=keep_store)
    finished = finished_results(job.out, stamp)
    if finished is not None:
        stages.note(f"{job.out} already holds this finished audit (same model, settings and images): nothing to "
                    f"redo; 'sdaudit report {job.out}' rebuilds its figures and report")
        return finished
    job.out.mkdir(parents=True, exist_ok=True)
    show = progress and sharding.is_main
    run, main = job.main_run(keep_store, show)
    variants, controls = job.other_runs(run, show)
    main.stats["audit_fingerprint"] = stamp  # in results.json: a rerun with the same audit finds it finished
    writer = ResultsWriter(model, inputs, job.settings, job.out)
    results = sharding.finish(lambda: writer.write(main, variants, controls, report=report,
                                                   compare_paper=compare_paper, stages=stages))
    remove_checkpoints(job.out, sharding.checkpoint_path(job.out).name)
    return results


def _inputs(model, images, store, settings: AuditSettings, skip_bad: bool) -> AuditInputs:
    """The audited images: a store's, or ``images`` checked and hashed (bad ones skipped with ``skip_bad``)."""
    if store is not None:
        return AuditInputs.from_store(store, model, settings)
    if images is not None:
        return AuditInputs.from_images(images, settings, skip_bad=skip_bad)
    raise UsageError("give images or a store to audit")


def finished_results(out: Path, stamp: str) -> dict | None:
    """The results of a finished audit in ``out`` whose fingerprint is ``stamp`` (same model, settings and
    images); None when there is none, it is unreadable, or it is another audit's."""
    try:
        written = json.loads((Path(out) / RESULTS_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return written if written.get("run", {}).get("audit_fingerprint") == stamp else None


def remove_checkpoints(out: Path, name: str) -> None:
    """Remove the checkpoints of a finished audit's runs (``out`` and its variants' and controls' folders):
    results.json now holds everything they did."""
    for path in [out / name, *out.glob(f"variants/*/{name}"), *out.glob(f"controls/*/{name}")]:
        path.unlink(missing_ok=True)


@dataclass(frozen=True)
class _Audit:
    """One audit's model, inputs, settings (the model's size filled in), output folder, run options and the
    stage lines it prints."""

    model: object
    inputs: AuditInputs
    settings: AuditSettings
    out: Path
    options: RunOptions
    stages: Stages = Stages(enabled=False)

    def main_run(self, keep_store: bool, show: bool) -> tuple[AuditRun, RunOutcome]:
        """The main run (the first timestep and seed), keeping its full pass in ``out/store`` if asked."""
        kept = _KeptStore(self.out / "store", self.model, self.settings.batch_size) if keep_store else None
        try:  # the kept store's writer lock is released when the passes end
            with self.stages("preparing the passes (layer shapes, batch size)") as stage:
                run = AuditRun(self.model, self.inputs.items, self.settings.single(), self.out, self.options,
                               make_store_writer=kept.writer if kept else None, full_source=self.inputs.full_source)
                stage.done = f"passes prepared ({len(run.full.layers)} layers, batch size {run.batch_size})"
            with progress_bars(show) as bars:
                run.options = replace(run.options, progress=bars.progress)  # the bars exist only while it runs
                return run, run.execute()
        finally:
            if kept is not None:
                kept.close()

    def other_runs(self, main: AuditRun, show: bool) -> tuple[list[dict], list[dict]]:
        """The variants' (other timesteps and noise seeds) and the controls' runs."""
        with progress_bars(show) as bars:
            options = replace(self.options, progress=bars.progress)
            return run_variants(main, self.settings, options), run_controls(main, self.settings, options)
