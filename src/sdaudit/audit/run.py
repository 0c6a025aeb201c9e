"""``run_audit``: the extraction passes an audit needs, streamed through the analyses' accumulators.

Plan for L layers with G distinct grid sizes: one full pass (all layers at once) and one cropped
pass per grid size n >= 5 (the image cropped by one token of that grid, ts = size / n px, on each
side and extracted at its own size, size - 2 ts, as published: that grid becomes (n-2) x (n-2),
aligned with the full grid's interior). So at most 1 + G U-Net passes per image (5 for SD), against
about 92 in the published pipeline; as the crops are smaller, they cost sum((size - 2 ts)^2) / size^2
full passes: about 4.15 full-pass equivalents per image for SD at 512 px (grids 64, 32, 16, 8).
Grids under 5 tokens have no cropped pass: their (n-2) grid has no border and no interior.
Each pass stops after its last needed layer. A final small pass over the few images shown in the
qualitative figures feeds the similarity maps.

The audit resumes: the accumulators and the progress of each pass are checkpointed to
``DIR/.checkpoint.npz`` (every ``checkpoint_seconds`` and at the end of every pass); a rerun with
the same settings and images continues where the last checkpoint left off.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..analyses import crop_pixels
from ..analyses.position import n_train_images
from ..errors import UsageError
from ..extraction import ExtractionSettings, Extractor, prepare_for_model
from ..extraction.extractor import auto_batch_size, check_batch_size
from .state import AuditState

ANALYSES = ("position", "borders", "anomalies", "maps")
PROBES = ("lda", "ridge", "paper")
CONTROLS = ("untrained", "circular-padding")
MIN_CROPPED_GRID = 3  # the cropped (n-2) grid needs corners, a border and an interior
PREFERRED_ANOMALY_LAYER = "up_blocks[1].upsamplers[0]"


@dataclass
class AuditSettings:
    """What an audit measures and how; recorded in results.json and part of the resume fingerprint."""

    layers: str | list[str] = "paper"
    protocol: str = "clean"
    timestep: int = 50
    seed: int = 42
    size: int | None = None
    prompt: str = ""
    latent: str | None = None
    noise_samples: int = 1
    analyses: list[str] = field(default_factory=lambda: list(ANALYSES))
    probe_method: str = "lda"  # "lda" (closed form, default), "ridge", or "paper" (the published trained probe)
    probe_max_tokens: int = 65536  # "paper": training tokens kept per layer (a uniform, order-free sample)
    train_fraction: float = 0.8
    resolutions: list[int] = field(default_factory=lambda: [8, 16, 32, 64])
    detector: dict = field(default_factory=lambda: {"z_threshold": 3.5, "ratio_threshold": 2.0})
    anomaly_layer: str | None = None
    anomaly_labels: str | None = None  # 'paper:sd15' etc. or a label file: measure these anomalies' norms
    controls: list[str] = field(default_factory=list)  # "untrained", "circular-padding": rerun as a control
    control_seed: int = 1  # seed of the untrained control's initialisation (tiny and arch:* are drawn with 0)
    timesteps: list[int] = field(default_factory=list)  # more than one: one audit, its numbers per timestep
    noise_seeds: int = 1  # K > 1: K independent noise draws per image (seeds seed .. seed+K-1), numbers averaged
    batch_size: int = 4  # images per U-Net pass; 0: as many as fit in GPU memory (auto_batch_size; 4 on the CPU)
    n_show: int = 4

    def validated(self) -> AuditSettings:
        from ..errors import UsageError
        from ..validation import check_seed, check_size

        unknown = [a for a in self.analyses if a not in ANALYSES]
        if unknown or not self.analyses:  # none at all would write an empty report
            raise UsageError(f"unknown analyses {unknown}; choose from {', '.join(ANALYSES)}" if unknown
                             else f"no analyses given; choose one or more of {', '.join(ANALYSES)}")
        if self.size is not None:  # None: the model's size; 0 must not silently mean that too
            check_size(self.size)
        check_seed(self.seed)
        if self.probe_method not in PROBES:
            raise UsageError(f"unknown probe '{self.probe_method}'; choose one of {', '.join(PROBES)}")
        if self.probe_max_tokens < 1:
            raise UsageError(f"probe_max_tokens must be at least 1, got {self.probe_max_tokens}")
        unknown = [c for c in self.controls if c not in CONTROLS]
        if unknown:
            raise UsageError(f"unknown control {unknown[0]!r}; choose from {', '.join(CONTROLS)}")
        if not 0 < self.train_fraction < 1:
            raise UsageError("train_fraction must be in (0, 1)")
        bad = [t for t in [self.timestep, *self.timesteps] if not 0 <= int(t) <= 999]
        if bad:
            raise UsageError(f"invalid value for '--timestep': {bad[0]} is outside 0..999")
        if len(set(self.timesteps)) != len(self.timesteps):
            raise UsageError(f"--timestep lists a timestep twice: {self.timesteps}")
        if self.timesteps and self.timestep != self.timesteps[0]:
            self.timestep = int(self.timesteps[0])  # the first listed is the audit's main timestep
        if self.noise_seeds < 1:
            raise UsageError(f"--noise-seeds must be at least 1, got {self.noise_seeds}")
        check_seed(self.seed + self.noise_seeds - 1)
        if self.noise_seeds > 1 and self.controls:
            raise UsageError("--noise-seeds with --control is not supported yet: run the control with one noise seed")
        check_batch_size(self.batch_size, self.protocol)
        return self

    def variants(self) -> list[tuple[int, int]]:
        """Every (timestep, seed) the audit runs: the main one first."""
        return [(t, self.seed + k) for t in (self.timesteps or [self.timestep]) for k in range(self.noise_seeds)]

    def single(self, timestep: int | None = None, seed: int | None = None) -> AuditSettings:
        """The settings of one run of the passes: one timestep, one seed, no controls (what its checkpoint
        depends on, so that adding a timestep, a seed or a control later reuses the finished runs)."""
        import dataclasses

        return dataclasses.replace(self, timestep=self.timestep if timestep is None else int(timestep),
                                   seed=self.seed if seed is None else int(seed), timesteps=[], noise_seeds=1,
                                   controls=[], control_seed=1)


@dataclass
class ImageItem:
    """An image of the audit: its record (source, hash, size) and how to get its pixels again."""

    index: int
    source: str
    sha256: str
    width: int
    height: int
    load: object  # callable -> PIL image (original size) or prepared input
    source_bytes: str | None = None  # hex of the exact path bytes when ``source`` (printable) is not the exact name


def _fingerprint(model_identity: dict, settings: AuditSettings, items: Sequence[ImageItem]) -> str:
    h = hashlib.sha256(json.dumps({"model": model_identity, "settings": asdict(settings)}, sort_keys=True,
                                  default=str).encode())
    for item in items:
        h.update(item.sha256.encode())
    return h.hexdigest()


def _grids(extractor: Extractor) -> dict[str, tuple[int, int]]:
    return {name: (shape[1], shape[2]) for name, shape in extractor.shapes.items()}


def pass_plan(grids: dict[str, tuple[int, int]], size: int, analyses: Sequence[str]) -> list[tuple[str, int, list[str]]]:
    """The passes: ("full", 0, all layers) then ("crop<px>", px, layers of that grid) per grid size n >= 5."""
    passes = [("full", 0, list(grids))]
    if "borders" in analyses:
        by_crop: dict[int, list[str]] = {}
        for name, (h, w) in grids.items():
            if h == w and h - 2 >= MIN_CROPPED_GRID:
                by_crop.setdefault(crop_pixels(size, h), []).append(name)
        for px in sorted(by_crop):
            passes.append((f"crop{px}", px, by_crop[px]))
    return passes


def _anomaly_labels(spec: str | None, grids: dict, anomaly_layer: str, items: Sequence[ImageItem]):
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
    return resolve_labels(spec, grid=grids[anomaly_layer], n_images=len(items))


def choose_anomaly_layer(layers: Sequence[str], grids: dict[str, tuple[int, int]], requested: str | None) -> str:
    """The layer anomalies are detected on: as requested, else the paper's (up_blocks[1] output), else the
    last up-block layer with the coarsest grid above 8x8."""
    from ..layer_names import normalize_name

    if requested:
        name = normalize_name(requested)
        if name not in layers:
            raise UsageError(f"anomaly layer '{requested}' is not among the audited layers")
        return name
    if PREFERRED_ANOMALY_LAYER in layers:
        return PREFERRED_ANOMALY_LAYER
    ups = [n for n in layers if n.startswith("up_blocks") and n.split(".")[-1].startswith("upsamplers")]
    return ups[1] if len(ups) > 1 else (ups[0] if ups else layers[len(layers) // 2])


def _batches(items: Sequence[ImageItem], size: int):
    for start in range(0, len(items), size):
        yield items[start:start + size]


class _Feeder:
    """Feeds extracted batches to the audit state: inline, or (``overlap``) from a background thread one batch
    behind the extraction, so that the analyses' host-side work and small device-to-host transfers overlap
    the next batch's forward pass. On CUDA the thread works on its own stream, after an event that marks
    the batch's outputs as complete; ``record_stream`` keeps their memory until it is done. At most two
    batches wait (bounded memory). :meth:`drain` waits until the state holds every batch submitted
    (before a checkpoint or a merge) and re-raises an error of the thread.
    """

    def __init__(self, overlap: bool, device=None):
        self.overlap, self.error = overlap, None
        if not overlap:
            return
        import queue
        import threading

        import torch

        self.cuda = device is not None and torch.device(device).type == "cuda"
        self.stream = torch.cuda.Stream(device=device) if self.cuda else None
        self.queue: queue.Queue = queue.Queue(maxsize=1)
        self.thread = threading.Thread(target=self._work, name="sdaudit-analyses", daemon=True)
        self.thread.start()

    def submit(self, fn, reps: dict, indices: list[int]) -> None:
        if not self.overlap:
            fn(reps, indices)
            return
        self._raise()
        event = None
        if self.cuda:
            import torch

            event = torch.cuda.Event()
            event.record()
        self.queue.put((fn, reps, indices, event))

    def _work(self) -> None:
        import torch

        while True:
            item = self.queue.get()
            try:
                if item is None:
                    return
                fn, reps, indices, event = item
                if self.error is not None:
                    continue
                with torch.no_grad():
                    if self.cuda:
                        with torch.cuda.stream(self.stream):
                            self.stream.wait_event(event)
                            for tensor in reps.values():
                                if tensor.device.type == "cuda":
                                    tensor.record_stream(self.stream)
                            fn(reps, indices)
                    else:
                        fn(reps, indices)
            except BaseException as error:  # noqa: BLE001 - handed to the main thread
                self.error = error
            finally:
                del item
                self.queue.task_done()

    def _raise(self) -> None:
        if self.error is not None:
            error, self.error = self.error, None
            raise error

    def drain(self) -> None:
        if self.overlap:
            self.queue.join()
            self._raise()

    def close(self) -> None:
        if self.overlap and self.thread.is_alive():
            self.queue.put(None)
            self.thread.join()


def run_passes(model, items: Sequence[ImageItem], settings: AuditSettings, out: Path, *, progress=None,
               checkpoint_seconds: float = 120.0, make_store_writer=None,
               full_source=None, shard=None, overlap: bool | None = None) -> tuple[AuditState, Extractor, dict]:
    """Run every pass of the plan, resuming from ``out/.checkpoint.npz`` when it matches.

    ``make_store_writer(extractor)`` may return a callback ``(batch, images, reps)`` that keeps the
    full pass's representations; ``full_source(indices)`` may return them instead of running the
    model (an existing store). Returns the final state, the full-pass extractor and run statistics
    (passes, U-Net passes per image, seconds per pass).

    ``shard`` (a :class:`sdaudit.audit.distributed.Shard`) makes this process audit only its share of
    the images: its block of the probe's training images, then (after the shards' training
    statistics are merged) its block of the test images, and the same images in every cropped pass.
    The returned state then holds this shard only; :meth:`Shard.reduce_state` merges the shards.
    Each process checkpoints to its own ``.checkpoint.rank<R>of<K>.npz``.

    On CUDA the representations stay on the GPU (the accumulators work there; only token-norm maps and
    small statistics come back), and ``overlap`` (default: on for CUDA, off on the CPU, where both
    cores are busy anyway) runs the analyses in a background thread one batch behind the U-Net.
    """
    settings = settings.validated()
    size = settings.size or model.default_size
    base = ExtractionSettings(protocol=settings.protocol, timestep=settings.timestep, seed=settings.seed, size=size,
                              prompt=settings.prompt, latent=settings.latent, noise_samples=settings.noise_samples)
    full = Extractor(model, settings.layers, base)
    batch_size = settings.batch_size or auto_batch_size(full, fraction=0.5, device_output=model.device.type == "cuda")
    grids = _grids(full)
    n = len(items)
    anomaly_layer = choose_anomaly_layer(full.layers, grids, settings.anomaly_layer) \
        if "anomalies" in settings.analyses else None
    if "position" in settings.analyses and n < 2:
        raise UsageError("the position probe needs at least 2 images (train and test)")
    probe = {"train_fraction": settings.train_fraction, "method": settings.probe_method,
             "resolutions": settings.resolutions}
    if settings.probe_method == "paper":
        probe["max_train_tokens"] = settings.probe_max_tokens
    labels = _anomaly_labels(settings.anomaly_labels, grids, anomaly_layer, items) if anomaly_layer else None
    state = AuditState(full.layers, grids, n, set(settings.analyses), anomaly_layer, probe=probe,
                       detector=dict(settings.detector), labels=labels)
    fingerprint = _fingerprint(model.identity(), settings, items)
    if shard is None:
        checkpoint = out / ".checkpoint.npz"
        segments = [list(items)]  # one segment: the probe scores test images as soon as training is complete
    else:
        shard.check_same(fingerprint, "the audit's model, settings and images")
        checkpoint = out / f".checkpoint.rank{shard.rank}of{shard.world_size}.npz"
        fingerprint = f"{fingerprint}|rank {shard.rank} of {shard.world_size}"
        n_train = n_train_images(n, settings.train_fraction) if n >= 2 else n
        segments = shard.split(items, n_train)  # [my training images, my test images]
    mine = [item for segment in segments for item in segment]
    state.load(checkpoint, fingerprint)
    plan = pass_plan(grids, size, settings.analyses)
    store_writer = make_store_writer(full) if make_store_writer is not None else None
    stats = {"passes": [], "unet_passes_per_image": 0, "batch_size": batch_size}
    if shard is not None:
        stats["processes"] = shard.world_size
    clock = {"last_save": time.monotonic()}
    on_gpu = model.device.type == "cuda"
    device_output = on_gpu and store_writer is None
    feeder = _Feeder(on_gpu if overlap is None else overlap, model.device)

    def save():
        feeder.drain()
        state.save(checkpoint, fingerprint)
        clock["last_save"] = time.monotonic()

    try:
        _run_plan(plan, model, base, full, mine, segments, state, settings, size, batch_size, stats, progress, shard,
                  feeder, device_output, store_writer, full_source, save, clock, checkpoint_seconds)
    finally:
        feeder.close()
    return state, full, stats


def _run_plan(plan, model, base, full, mine, segments, state, settings, size, batch_size, stats, progress, shard,
              feeder, device_output, store_writer, full_source, save, clock, checkpoint_seconds) -> None:
    for name, crop, layers in plan:
        extractor = full if crop == 0 else Extractor(
            model, layers, ExtractionSettings(**{**base.to_dict(), "crop_px": crop}))
        extractor.max_batch = full.max_batch  # a batch size that ran out of GPU memory once is not tried again
        done = state.progress.get(name, 0)
        started = time.perf_counter()
        if not (crop == 0 and full_source is not None):
            stats["unet_passes_per_image"] += settings.noise_samples
            # the U-Net's cost grows with the pixel area: a crop of size - 2 px costs ((size - 2 px) / size)^2 passes
            stats["full_pass_equivalents_per_image"] = (stats.get("full_pass_equivalents_per_image", 0)
                                                        + settings.noise_samples * (size - 2 * crop) ** 2 / size ** 2)
        task = progress.add_task(f"pass {name} ({len(layers)} layers)", total=len(mine), completed=done) \
            if progress else None
        position = 0
        for k, segment in enumerate(segments if crop == 0 else [mine]):
            if crop == 0 and k == 1:
                feeder.drain()
                shard.sync_probe(state)  # every shard's training statistics, before any test image is scored
                save()
            skip = min(max(done - position, 0), len(segment))
            for batch in _batches(segment[skip:], batch_size):
                indices = [item.index for item in batch]
                if crop == 0 and full_source is not None:
                    images, reps = None, full_source(indices)
                else:
                    images = [prepare_for_model(item.load(), size, crop) for item in batch]
                    reps = extractor.run(images, indices, device_output=device_output)
                if crop == 0:
                    if store_writer is not None:
                        store_writer(batch, images, reps)
                    feeder.submit(state.update_full, reps, indices)
                else:
                    feeder.submit(state.update_cropped, reps, indices)
                del reps
                skip += len(batch)
                state.progress[name] = position + skip
                if progress:
                    progress.update(task, completed=state.progress[name])
                if time.monotonic() - clock["last_save"] > checkpoint_seconds:
                    save()
            position += len(segment)
        state.progress[name] = len(mine)
        save()
        stats["passes"].append({"name": name, "crop_px": crop, "layers": len(layers),
                                "seconds": round(time.perf_counter() - started, 3), "resumed_at": done})
