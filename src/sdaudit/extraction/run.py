"""``extract``: images from any source into a resumable representation store."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import UsageError
from ..settings import ExtractionSettings, check_batch_size
from ..store import STORE_FIELDS, RepresentationStore, _versions, create_store
from ..store.writer import BackgroundWriter
from ..validation import did_you_mean
from .extractor import Extractor, auto_batch_size

STORAGE_DTYPES = ("float16", "float32")


def prepare_for_model(image: Image.Image, size: int, crop_px: int = 0) -> Image.Image:
    """Centre-crop to a square, resize to ``size`` px; with ``crop_px``, crop that much off each side (no resize:
    the crop is ``size - 2 crop_px`` px, extracted at its own size as in the published border experiment)."""
    from ..images import prepare_image

    out = prepare_image(image, size)
    if crop_px:
        out = out.crop((crop_px, crop_px, size - crop_px, size - crop_px))
    return out


@dataclass
class ExtractionReport:
    """What an :func:`extract` call did."""

    store: RepresentationStore  # closed (its writer lock released), still readable
    added: int = 0
    already_present: int = 0
    errors: list[tuple[str, str]] = field(default_factory=list)  # (source, reason) of skipped bad images
    repaired: list[int] = field(default_factory=list)  # damaged rows re-extracted in place (image indices)
    unrepaired: dict[int, list[str]] = field(default_factory=dict)  # damaged rows whose image was not given


def store_config(model, extractor: Extractor, dtype: str, batch_size: int) -> dict:
    """The configuration recorded in (and required to match) a store: the extractor's
    :class:`~sdaudit.settings.ExtractionSettings` plus :data:`~sdaudit.store.STORE_FIELDS`."""
    store_fields = {"model": model.identity(), "layers": list(extractor.layers), "dtype": dtype,
                    # the denoiser's compute dtype (float32, float16, bfloat16) changes the representations:
                    # a store extracted on the CPU (float32) must not be continued on a GPU (float16)
                    "compute_dtype": str(model.dtype).removeprefix("torch."),
                    # Under 'paper' the batch size changes the representations (quirk 3), so it is part of
                    # the configuration; under 'clean' it is not.
                    "batch_size": batch_size if extractor.settings.protocol == "paper" else None}
    assert tuple(store_fields) == STORE_FIELDS
    return {**extractor.settings.to_dict(), **store_fields}


def extract(model, images, out: str | Path, settings: ExtractionSettings | None = None, *,
            layers: str | Sequence[str] = "paper", batch_size: int = 4, dtype: str = "float16",
            skip_bad: bool = False, progress: bool = True, verify: bool = True, **fields) -> ExtractionReport:
    """Extract representations of ``images`` with ``model`` into the store at ``out``.

    Args:
        model: a :class:`~sdaudit.models.LoadedModel` or a model spec string (loaded on 'auto' device).
        images: a folder, file, list of files, or ``datasets`` source (see :func:`sdaudit.images.iter_images`).
        out: store folder. If it exists with the same configuration, images already in it (by
            content hash) are skipped and new ones appended: a killed run resumes where it stopped.
            A different configuration is refused.
        settings: :class:`~sdaudit.settings.ExtractionSettings` (protocol, timestep, seed, size, prompt,
            latent, noise_samples, crop_px); ``size`` None is the model's size. Instead of it, its fields
            may be given as keywords (``extract(model, images, out, size=64, protocol="paper")``).
        layers: 'paper' (45 layers), 'all' (46), block names or layer names.
        batch_size: images per U-Net pass. Changes nothing under 'clean'; under 'paper' it is part
            of the configuration, since the published code shares noise within a batch. 0 (under
            'clean'): as many as fit in GPU memory (:func:`~sdaudit.extraction.extractor.auto_batch_size`;
            4 on the CPU).
        dtype: storage dtype, 'float16' (default) or 'float32'. A float16 store refuses a batch whose finite
            values would become inf (:class:`~sdaudit.store.Float16OverflowError`, before writing any of it).
        skip_bad: skip unreadable or invalid images (listed in the report) instead of stopping.
        progress: show a progress bar.
        verify: first check every committed row of an existing store against its checksums (one read
            of the store); damaged rows whose image is among ``images`` (same sha256) are re-extracted
            in place (``report.repaired``), the others are listed in ``report.unrepaired``.

    The store's writer lock is held for the whole call: a concurrent extract into the same store gets
    :class:`~sdaudit.store.StoreBusyError`.
    """
    from ..images import count_images
    from ..models import load_model

    if settings is not None and fields:
        raise TypeError("give either settings or its fields as keywords, not both")
    settings = (settings or ExtractionSettings(**fields)).validated()
    if dtype not in STORAGE_DTYPES:
        raise UsageError(f"unknown storage dtype '{dtype}'{did_you_mean(dtype, STORAGE_DTYPES)}; choose one of "
                         f"{', '.join(STORAGE_DTYPES)}")
    check_batch_size(batch_size, settings.protocol)
    if isinstance(model, str):
        model = load_model(model)
    extractor = Extractor(model, layers, settings.for_model(model.default_size))
    batch_size = batch_size or auto_batch_size(extractor)
    config = store_config(model, extractor, dtype, batch_size)
    total = count_images(images)  # counted once (a folder is walked): the store's first capacity, the progress bar
    # The store's writer lock is held from here to the end: a second extract into it is refused.
    with create_store(out, config, extractor.shapes, dtype=dtype, capacity=max(total or 16, 1)) as store:
        if store.manifest["versions"] != _versions():
            warnings.warn(f"store '{out}' was written with {store.manifest['versions']}, this run uses "
                          f"{_versions()}", stacklevel=2)
        report = ExtractionReport(store=store)
        damaged = store.damaged_rows() if verify and store.num_images else {}
        # Batches are written on a background thread while the next one is extracted; leaving this block
        # waits for the last write and raises a failed write's error here (on an exception: drops the queue).
        with BackgroundWriter(store) as writer:
            _Filler(writer, extractor, batch_size, report).fill(images, damaged, skip_bad=skip_bad,
                                                                progress=_progress(progress, total))
        report.unrepaired = {i: why for i, why in damaged.items() if i not in report.repaired}
    return report


class _Filler:
    """Appends new images to a store and re-extracts (in place, at their index) damaged rows whose image
    is given, a batch at a time; the writes go through ``writer`` (a :class:`BackgroundWriter` of the store)."""

    def __init__(self, writer: BackgroundWriter, extractor: Extractor, batch_size: int, report: ExtractionReport):
        self.writer, self.store, self.extractor = writer, writer.store, extractor
        self.batch_size, self.report = batch_size, report

    def fill(self, images, damaged: dict, *, skip_bad: bool, progress: _progress) -> None:
        new: list = []  # records to append
        fixes: list = []  # (index, record) of damaged rows to rewrite; batched apart, since their indices are not new
        with progress as advance:
            for index, record in self._records(images, damaged, skip_bad):
                if index is None:
                    new.append(record)
                else:
                    fixes.append((index, record))
                self._flush(new, self._append, advance, full=True)
                self._flush(fixes, self._repair, advance, full=True)
            self._flush(new, self._append, advance, full=False)
            self._flush(fixes, self._repair, advance, full=False)

    def _records(self, images, damaged: dict, skip_bad: bool):
        """(None, record) for each new image, (index, record) for each damaged row's image; counts the rest."""
        from ..images import iter_images

        present = {entry.sha256: entry.index for entry in self.store.images}
        for record in iter_images(images, skip_bad=skip_bad, errors=self.report.errors):
            index = present.get(record.sha256)
            if index is None:
                present[record.sha256] = -1  # a duplicate later in the input is already present
                yield None, record
            elif index in damaged and index not in self.report.repaired:
                self.report.repaired.append(index)
                yield index, record
            else:
                self.report.already_present += 1

    def _flush(self, pending: list, write, advance, full: bool) -> None:
        if pending and (len(pending) == self.batch_size or not full):
            write(pending)
            advance(len(pending), self.report.already_present)
            pending.clear()

    def _run(self, batch, indices):
        settings = self.extractor.settings
        prepared = [prepare_for_model(r.image, settings.size, settings.crop_px) for r in batch]
        reps = self.extractor.run(prepared, indices)
        return {name: tensor.numpy() for name, tensor in reps.items()}, np.stack([np.asarray(im) for im in prepared])

    def _append(self, batch) -> None:
        start = self.writer.next_index  # the store's count lags behind while batches wait to be written
        indices = list(range(start, start + len(batch)))
        arrays, inputs = self._run(batch, indices)
        entries = [r.ref(i) for i, r in zip(indices, batch)]
        self.writer.submit(start, arrays, entries, inputs=inputs)
        self.report.added += len(batch)

    def _repair(self, pairs) -> None:
        indices = [i for i, _ in pairs]
        arrays, inputs = self._run([r for _, r in pairs], indices)
        self.writer.submit_repair(indices, arrays, inputs=inputs)


def extract_like(store_path: str | Path, model, images, *, skip_bad: bool = False, progress: bool = False,
                 batch_size: int | None = None, verify: bool = False) -> ExtractionReport:
    """Append ``images`` to an existing store with exactly the settings it was made with.

    ``model`` must be the store's model (checked by its identity). ``verify`` as in :func:`extract`; off by
    default, since adding a few images (the explorer's uploads) should not read the whole store.
    """
    from ..store import open_store

    with open_store(store_path) as existing:  # read-only, closed before extract() opens it to write
        config = existing.config
    if isinstance(model, str):
        from ..models import load_model

        model = load_model(model)
    if model.identity() != config["model"]:
        raise UsageError(f"model {model.identity()['name']} is not the model of store '{store_path}' "
                         f"({config['model']['name']})")
    return extract(model, images, store_path, ExtractionSettings.from_dict(config), layers=config["layers"],
                   batch_size=config.get("batch_size") or batch_size or 4, dtype=config["dtype"], skip_bad=skip_bad,
                   progress=progress, verify=verify)


class _progress:
    """A rich progress bar over images (or nothing when disabled)."""

    def __init__(self, enabled: bool, total: int | None):
        self.enabled, self.total = enabled, total

    def __enter__(self):
        if not self.enabled:
            return lambda n, skipped: None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self._bar = Progress(TextColumn("extracting"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                             TextColumn("{task.fields[note]}"))
        self._bar.start()
        task = self._bar.add_task("extract", total=self.total, note="")
        done = {"n": 0}

        def advance(n: int, skipped: int):
            done["n"] += n
            self._bar.update(task, completed=done["n"] + skipped, note=f"{skipped} already in store" if skipped else "")

        return advance

    def __exit__(self, *exc):
        if self.enabled:
            self._bar.stop()
        return False
