"""``AuditRun``: one run of the extraction passes an audit needs, streamed through the analyses' accumulators.

A run is one (timestep, seed) of the settings on one model: the audit's main run, each extra timestep
or noise seed (:mod:`sdaudit.audit.variants`) and each control (:mod:`sdaudit.audit.controls`) are
runs alike. It plans the passes (:func:`~sdaudit.audit.passes.pass_plan`: one full pass, one cropped
pass per grid size), feeds every batch to the :class:`~sdaudit.audit.state.AuditState`, and resumes:
the state and the progress of each pass are checkpointed (:class:`~sdaudit.audit.checkpoint.Checkpointer`,
every ``checkpoint_seconds`` and at the end of every pass); a rerun with the same settings and images
continues where the last checkpoint left off. How the images are spread over processes is the
:class:`~sdaudit.audit.sharding.SingleProcess` or :class:`~sdaudit.audit.sharding.Shard` strategy the
run calls at fixed points.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from ..analyses import n_train_images
from ..errors import UsageError
from ..layer_names import normalize_name
from ..extraction import Extractor, prepare_for_model
from ..extraction.extractor import auto_batch_size
from ..settings import AuditSettings
from ..validation import did_you_mean
from .checkpoint import Checkpointer, fingerprint, store_key
from .feeder import Feeder
from .passes import Pass, batches, pass_plan
from .progress import labelled
from .sharding import SingleProcess
from .state import AuditState
from .keypoints import PASS_NAME as KEYPOINT_PASS
from .keypoints import KeypointPass
from .views import ViewPasses


@dataclass(frozen=True)
class RunOptions:
    """How runs go, not what they measure: shared by an audit's main run, its variants and its controls.

    ``sharding``: :class:`SingleProcess` or this process's :class:`~sdaudit.audit.sharding.Shard`;
    ``progress``: a rich progress (None: no bars); ``overlap``: analyses in a background thread one
    batch behind the U-Net (default: on for CUDA, off on the CPU, where both cores are busy anyway).
    """

    sharding: object = SingleProcess()
    progress: object = None
    checkpoint_seconds: float = 120.0
    overlap: bool | None = None

    def labelled(self, prefix: str) -> RunOptions:
        """The same options whose progress bars say which run they belong to."""
        return replace(self, progress=labelled(self.progress, prefix))


@dataclass(frozen=True)
class RunOutcome:
    """A finished run: its state (merged over processes; None on the processes other than rank 0), the
    full pass's extractor (layers, shapes, and the model for the maps' extra pass) and run statistics."""

    state: AuditState | None
    full: Extractor
    stats: dict


def choose_anomaly_layer(family, layers: Sequence[str], requested: str | None) -> str:
    """The layer anomalies are detected on: as requested (it must be audited), else the family's default
    (the paper's layer for SD: the output of up_blocks[1])."""
    if requested:
        name = normalize_name(requested)
        if name not in layers:
            raise UsageError(f"anomaly layer '{requested}' (--anomaly-layer) is not among the audited layers"
                             f"{did_you_mean(name, layers)}")
        return name
    return family.default_anomaly_layer(layers)


def _anomaly_labels(spec: str | None, grid: tuple[int, int], items: Sequence):
    """The labels whose norms the audit measures (None: the detector's own finds), checked against the audit:
    the published ones also need the paper's image set in the published order."""
    if spec is None:
        return None
    from ..analyses import resolve_labels

    if str(spec).startswith("paper:"):  # then the order: 500 images in another order would pass the count
        from ..analyses.labels import published_labels_key
        from ..paper_set import check_paper_order

        published_labels_key(str(spec))
        check_paper_order([item.source for item in items], str(spec))
    return resolve_labels(spec, grid=grid, n_images=len(items))


class AuditRun:
    """One run of the passes of ``settings`` (one timestep and seed) with ``model`` over ``items``, in ``out``.

    Args:
        make_store_writer: ``make_store_writer(extractor)`` may return a callback ``(batch, images, reps)``
            that keeps the full pass's representations (``keep_store``).
        full_source: ``full_source(indices)`` returns the full pass's representations instead of running
            the model (an existing store).

    On CUDA the representations stay on the GPU (the accumulators work there; only token-norm maps and
    small statistics come back) unless a store writer needs them on the host.
    """

    def __init__(self, model, items: Sequence, settings: AuditSettings, out: Path, options: RunOptions = RunOptions(),
                 *, make_store_writer: Callable | None = None, full_source: Callable | None = None):
        self.model, self.items, self.out, self.options = model, list(items), Path(out), options
        self.settings = settings.validated().for_model(model.default_size)
        self.full_source = full_source
        self.full = Extractor(model, self.settings.layers, self.settings.extraction)
        self.grids = {name: (shape[1], shape[2]) for name, shape in self.full.shapes.items()}
        self.batch_size = self.settings.batch_size or auto_batch_size(
            self.full, fraction=0.5, device_output=model.device.type == "cuda")
        size = self.settings.extraction.size
        self.keypoints = KeypointPass(self.settings.keypoints, size) if self.settings.keypoints else None
        self.state = self._new_state()
        self.views = ViewPasses(self.settings.views, self.grids, self.settings.extraction.size, len(self.items)) \
            if "correspondence" in self.settings.analyses else None
        sharding = options.sharding
        key = fingerprint(model, self.settings, self.items, from_store=store_key(full_source))
        self.checkpointer = Checkpointer(sharding.checkpoint_path(self.out), sharding.own_fingerprint(key),
                                         options.checkpoint_seconds)
        self.store_writer = make_store_writer(self.full) if make_store_writer is not None else None
        self.stats = {"passes": [], "unet_passes_per_image": 0, "batch_size": self.batch_size, **sharding.stats()}
        self.feeder: Feeder | None = None

    def _new_state(self) -> AuditState:
        settings, n = self.settings, len(self.items)
        anomaly_layer = choose_anomaly_layer(self.model.family, self.full.layers, settings.anomaly_layer) \
            if "anomalies" in settings.analyses else None
        if "position" in settings.analyses and n < 2:
            raise UsageError("the position probe needs at least 2 images (train and test)")
        labels = _anomaly_labels(settings.anomaly_labels, self.grids[anomaly_layer], self.items) \
            if anomaly_layer else None
        return AuditState(self.full.layers, self.grids, n, set(settings.analyses), anomaly_layer,
                          probe=settings.probe_kwargs(), detector=settings.detector.kwargs(), labels=labels,
                          matching={"views": list(settings.views), "size": settings.extraction.size},
                          keypoint_pairs=self.keypoints.pairs if self.keypoints else None,
                          mitigations={"names": list(settings.mitigations), "train_fraction": settings.train_fraction})

    def derived(self, model, settings: AuditSettings, out: Path, options: RunOptions, *,
                keep_mitigations: bool = False) -> AuditRun:
        """Another run over the same images into ``out`` (a variant or a control; its own checkpoint), without
        the mitigations unless ``keep_mitigations`` (the untrained control's: its artifact measures are the
        "no learned artifact" reference of the main run's)."""
        out.mkdir(parents=True, exist_ok=True)
        return AuditRun(model, self.items, settings if keep_mitigations else replace(settings, mitigations=()), out,
                        options)

    # ----- running -----------------------------------------------------------------------------------------
    def execute(self) -> RunOutcome:
        """Run every pass (resuming from the checkpoint when it matches); the outcome, merged over processes."""
        n = len(self.items)
        segments = self.options.sharding.segments(
            self.items, n_train_images(n, self.settings.train_fraction) if n >= 2 else n)
        self.checkpointer.load(self.state)
        on_gpu = self.model.device.type == "cuda"
        self.feeder = Feeder(on_gpu if self.options.overlap is None else self.options.overlap, self.model.device)
        try:
            for p in pass_plan(self.grids, self.settings.extraction.size, self.settings.analyses):
                self._run_pass(p, segments)
            if self.keypoints is not None:
                self._run_keypoints()
        finally:
            self.feeder.close()
        return RunOutcome(self.options.sharding.reduce_state(self.state), self.full, self.stats)

    def _run_pass(self, p: Pass, segments: list[list]) -> None:
        extractor = self._extractor(p)
        done, started = self.state.progress.get(p.name, 0), time.perf_counter()
        self._count_cost(p)
        mine = [item for segment in segments for item in segment]
        progress = self.options.progress
        task = progress.add_task(f"pass {p.name} ({len(p.layers)} layers)", total=len(mine), completed=done,
                                 resumed_at=done) \
            if progress else None
        position = 0
        for k, segment in enumerate(segments if p.is_full else [mine]):
            if k == 1:  # every process's training statistics, before any test image is scored
                self.feeder.drain()
                self.options.sharding.share_training(self.state)
                self._save()
            self._run_segment(p, extractor, segment, position, task)
            position += len(segment)
        self.state.progress[p.name] = len(mine)
        self._save()
        self.stats["passes"].append({"name": p.name, "crop_px": p.crop_px, "layers": len(p.layers),
                                     "seconds": round(time.perf_counter() - started, 3), "resumed_at": done})

    def _run_segment(self, p: Pass, extractor: Extractor, segment: list, position: int, task) -> None:
        """Feed the batches of ``segment`` (images ``position ..`` of this process's pass) not yet done."""
        skip = min(max(self.state.progress.get(p.name, 0) - position, 0), len(segment))
        for batch in batches(segment[skip:], self.batch_size):
            self._feed(p, extractor, batch)
            skip += len(batch)
            self.state.progress[p.name] = position + skip
            if task is not None:
                self.options.progress.update(task, completed=self.state.progress[p.name])
            if self.checkpointer.due():
                self._save()

    def _feed(self, p: Pass, extractor: Extractor, batch: list) -> None:
        indices = [item.index for item in batch]
        if p.is_full and self.full_source is not None:
            images, reps = None, self.full_source(indices)
        else:
            size = self.settings.extraction.size
            images = [prepare_for_model(item.load(), size, p.crop_px) for item in batch]
            # on a GPU the accumulators work there, unless the store writer needs the arrays on the host
            on_device = self.model.device.type == "cuda" and self.store_writer is None
            reps = extractor.run(images, indices, device_output=on_device)
        if p.is_full and self.store_writer is not None:
            self.store_writer(batch, images, reps)
        if p.is_full and self.views is not None:  # the views' representations beside the images' (audit.views)
            if images is None:
                images = [prepare_for_model(item.load(), self.settings.extraction.size) for item in batch]
            reps = {**reps, **self.views.extract(self.full, images, indices,
                                                 device_output=self.model.device.type == "cuda")}
        self.feeder.submit(self.state.update_full if p.is_full else self.state.update_cropped, reps, indices)

    def _run_keypoints(self) -> None:
        """The keypoint pass (:mod:`sdaudit.audit.keypoints`): this process's share of the pairs, both images of
        each through the full pass's extractor, resumed from the checkpoint's count of pairs done."""
        pairs = len(self.keypoints.pairs)
        mine = self.options.sharding.segments(list(range(pairs)), pairs)[0]
        step, done = max(1, self.batch_size // 2), self.state.progress.get(KEYPOINT_PASS, 0)
        self.stats["keypoint_pairs"], self.stats["unet_passes_per_pair"] = pairs, 2
        for start in range(done, len(mine), step):
            chunk = mine[start:start + step]
            reps = self.keypoints.extract(self.full, chunk, device_output=self.model.device.type == "cuda")
            self.feeder.submit(self.state.update_keypoints, reps, chunk)
            self.state.progress[KEYPOINT_PASS] = start + len(chunk)
            if self.checkpointer.due():
                self._save()
        self.state.progress[KEYPOINT_PASS] = len(mine)
        self._save()

    def _extractor(self, p: Pass) -> Extractor:
        if p.is_full:
            return self.full
        extractor = Extractor(self.model, p.layers, replace(self.settings.extraction, crop_px=p.crop_px))
        extractor.max_batch = self.full.max_batch  # a batch size that ran out of GPU memory once is not tried again
        return extractor

    def _count_cost(self, p: Pass) -> None:
        """U-Net passes per image, and their cost in full passes: a crop of size - 2 px costs ((size - 2 px) /
        size)^2 of one, as the U-Net's cost grows with the pixel area. A store's full pass costs none; the
        correspondence probe's views cost one full pass each."""
        views = len(self.views.views) if p.is_full and self.views is not None else 0
        own = 0 if p.is_full and self.full_source is not None else 1
        if not own + views:
            return
        samples, size = self.settings.extraction.noise_samples, self.settings.extraction.size
        self.stats["unet_passes_per_image"] += samples * (own + views)
        self.stats["full_pass_equivalents_per_image"] = (
            self.stats.get("full_pass_equivalents_per_image", 0)
            + samples * (views + own * (size - 2 * p.crop_px) ** 2 / size ** 2))

    def _save(self) -> None:
        self.feeder.drain()  # the state must hold every batch submitted
        self.checkpointer.save(self.state)
