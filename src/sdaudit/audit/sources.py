"""The audit's images: scanned once (validated, hashed, counted), then re-read pass after pass.

Pixels are never held for the whole set: files are reopened by path, a store's prepared inputs
are read by index, and ``datasets`` sources are iterated again for each pass.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

from ..errors import SdauditError, UsageError
from ..image_ref import ImageRef
from ..settings import AuditSettings, ExtractionSettings


@dataclass
class ImageItem:
    """An image of the audit: its reference (index, source, hash, size) and how to get its pixels again."""

    ref: ImageRef
    load: Callable[[], object] | None = None  # -> PIL image (original size) or prepared input

    # the fields the run reads most, as shortcuts to the reference
    @property
    def index(self) -> int:
        return self.ref.index

    @property
    def source(self) -> str:
        return self.ref.source

    @property
    def sha256(self) -> str:
        return self.ref.sha256


class SourceChangedError(SdauditError, RuntimeError):
    """An image that changed (or vanished) between the audit's scan and a later pass over it."""


def _reread(path: str, item: ImageItem):
    """The image of ``item`` read again, after checking its pixels are those the scan hashed (else the
    numbers would mix two pictures under one recorded sha256)."""
    from ..images import BadImageError, load_image

    try:
        record = load_image(path)
    except BadImageError as error:
        raise SourceChangedError(f"{item.source}: image changed during the audit ({error.reason}); "
                                 "rerun the audit") from error
    if record.sha256 != item.sha256:
        raise SourceChangedError(f"{item.source}: image changed during the audit (sha256 {record.sha256[:12]}... "
                                 f"now, {item.sha256[:12]}... when scanned); rerun the audit")
    return record.image


class _SequentialSource:
    """Random access by index over a source that can only be iterated (a ``datasets`` dataset)."""

    def __init__(self, source, sha_by_index: dict[int, str]):
        self.source, self.sha_by_index = source, sha_by_index
        self._iter, self._pos = None, 0

    def get(self, index: int):
        from ..images import iter_images

        if self._iter is None or index < self._pos:
            self._iter, self._pos = iter(iter_images(self.source, skip_bad=True, errors=[])), 0
        for record in self._iter:
            if record.sha256 == self.sha_by_index.get(self._pos):
                self._pos += 1
                if self._pos - 1 == index:
                    return record.image
        raise SourceChangedError(f"image {index} of '{self.source}' is no longer there: the source changed during "
                                 "the audit; rerun the audit")


def scan_images(source, *, skip_bad: bool = False, errors: list | None = None) -> list[ImageItem]:
    """Validate and hash every image of ``source`` once; duplicates (same pixels) are dropped."""
    from ..images import iter_images

    items: list[ImageItem] = []
    paths: list[str | None] = []  # the exact path of each file (its source is only printable)
    seen: set[str] = set()
    for record in iter_images(source, skip_bad=skip_bad, errors=errors):
        if record.sha256 in seen:
            continue
        seen.add(record.sha256)
        items.append(ImageItem(record.ref(len(items))))
        paths.append(record.path)
    if not items:
        raise UsageError(f"no usable images in '{source}'")
    if all(path is not None for path in paths):  # files: reopened by their exact path, checked against the scan
        for item, path in zip(items, paths):
            item.load = (lambda path=path, item=item: _reread(path, item))
    else:
        sequential = _SequentialSource(source, {item.index: item.sha256 for item in items})
        for item in items:
            item.load = (lambda i=item.index: sequential.get(i))
    return items


def store_images(store) -> list[ImageItem]:
    """The images of an existing store, read back from its prepared inputs."""
    from PIL import Image

    def loader(i):
        return lambda: Image.fromarray(store.read_inputs(i))

    return [ImageItem(entry, loader(entry.index)) for entry in store.images]


@dataclass
class AuditInputs:
    """What an audit runs on: its images, the ones skipped, where they came from, the settings adapted to
    them, and (for an existing store) the full pass read from the store instead of the model."""

    items: list[ImageItem]
    settings: AuditSettings
    errors: list = field(default_factory=list)  # (source, reason) of skipped images
    provenance: dict = field(default_factory=dict)
    full_source: Callable | None = None

    @classmethod
    def from_images(cls, images, settings: AuditSettings, *, skip_bad: bool = False) -> AuditInputs:
        errors: list = []
        return cls(scan_images(images, skip_bad=skip_bad, errors=errors), settings, errors)

    @classmethod
    def from_store(cls, path, model, settings: AuditSettings) -> AuditInputs:
        """The images of the store at ``path``, after checking it was made by ``model`` (before anything is
        computed: another model's store would mix two models' numbers) and with the audit's settings."""
        from ..store import open_store
        from .checks import check_raw_store, check_store_model

        store = open_store(path)
        check_raw_store(store)
        provenance = {"store": {"path": str(store.path), "model_check": check_store_model(store, model)}}
        made_with = ExtractionSettings.from_dict(store.config)
        # what the store fixes: its size where none was asked for; under 'paper' its batch size (quirk 3)
        settings = settings.for_model(made_with.size)
        if made_with.protocol == "paper":
            settings = replace(settings, batch_size=store.config["batch_size"])
        return cls(store_images(store), settings, [], provenance,
                   _store_source(store, settings.for_model(model.default_size), model))


class StoreSource:
    """The full pass read from an existing store (instead of running the model): ``source(indices)`` gives
    {layer: float32 tensor}; ``storage_dtype`` (the store's float16 or float32) decides its rounding, so it is
    part of an audit's checkpoint fingerprint."""

    def __init__(self, store, layers):
        self.store, self.layers = store, list(layers)
        self.storage_dtype = str(store.config.get("dtype"))

    def __call__(self, indices):
        import numpy as np
        import torch

        return {layer: torch.from_numpy(self.store.read(layer, indices).astype(np.float32)) for layer in self.layers}


def _store_source(store, settings: AuditSettings, model) -> StoreSource:
    """Read the full pass from an existing store, after checking it was made with the audit's settings."""
    have = ExtractionSettings.from_dict(store.config).to_dict()
    want = settings.validated().extraction.to_dict()
    diffs = [f"{k}: store has {have.get(k)!r}, audit asks for {v!r}" for k, v in want.items() if have.get(k) != v]
    if diffs:
        raise UsageError(f"store '{store.path}' was extracted with other settings than this audit:\n  "
                         + "\n  ".join(diffs))
    layers = model.family.select_layers(settings.layers)
    missing = [layer for layer in layers if layer not in store.layers]
    if missing:
        raise UsageError(f"store '{store.path}' lacks layers the audit needs: {', '.join(missing)}")
    return StoreSource(store, layers)
