"""The audit's images: scanned once (validated, hashed, counted), then re-read pass after pass.

Pixels are never held for the whole set: files are reopened by path, a store's prepared inputs
are read by index, and ``datasets`` sources are iterated again for each pass.
"""

from __future__ import annotations

from .run import ImageItem


class _SequentialSource:
    """Random access by index over a source that can only be iterated (a ``datasets`` dataset)."""

    def __init__(self, source, sha_by_index: dict[int, str]):
        self.source, self.sha_by_index = source, sha_by_index
        self._iter, self._pos = None, 0

    def get(self, index: int):
        from ..images import iter_images

        if self._iter is None or index < self._pos:
            self._iter, self._pos = iter(iter_images(self.source, skip_bad=True, errors=[])), 0
            self._seen = 0
        for record in self._iter:
            if record.sha256 == self.sha_by_index.get(self._pos):
                self._pos += 1
                if self._pos - 1 == index:
                    return record.image
        raise RuntimeError(f"image {index} of '{self.source}' is no longer there: the source changed during the audit")


def scan_images(source, *, skip_bad: bool = False, errors: list | None = None) -> list[ImageItem]:
    """Validate and hash every image of ``source`` once; duplicates (same pixels) are dropped."""
    from ..images import iter_images, load_image

    items: list[ImageItem] = []
    seen: set[str] = set()
    for record in iter_images(source, skip_bad=skip_bad, errors=errors):
        if record.sha256 in seen:
            continue
        seen.add(record.sha256)
        items.append(ImageItem(len(items), record.source, record.sha256, record.width, record.height, record.path,
                               source_bytes=record.source_bytes))
    if not items:
        raise ValueError(f"no usable images in '{source}'")
    if all(item.load is not None for item in items):  # files: reopened by their exact path
        for item in items:
            item.load = (lambda path=item.load: load_image(path).image)
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

    return [ImageItem(e.index, e.source, e.sha256, e.width, e.height, loader(e.index)) for e in store.images]
