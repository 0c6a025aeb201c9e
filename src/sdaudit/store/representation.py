"""The :class:`RepresentationStore`: reading verified rows, committing batches, repairing rows in place."""

from __future__ import annotations

import json
from contextlib import contextmanager
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from .damage import damaged_rows
from .lock import WriterLock
from .records import (MANIFEST_ATTR, RECORDS_FILE, Float16OverflowError, ImageEntry, StoreDamagedError,
                      StoreError, append_records, checksum, read_records, record_line, rewrite_records,
                      validate_manifest)

INPUTS = "inputs"  # the array of prepared model inputs; checksummed like a layer
# What a damaged or unreadable chunk or array raises inside zarr (decompression errors are RuntimeErrors,
# broken JSON metadata ValueErrors, a missing array's metadata a KeyError).
_READ_ERRORS = (RuntimeError, ValueError, OSError, KeyError)


def _zarr():
    import zarr

    return zarr


class RepresentationStore:
    """A folder of per-layer representations. Open with :func:`open_store` or :func:`create_store`.

    Opened for writing (``mode="r+"``), it holds the store's writer lock until :meth:`close` (or the end
    of a ``with`` block); closed, it stays readable.
    """

    def __init__(self, path: str | Path, mode: str = "r", *, lock: WriterLock | None = None):
        self.path = Path(path)
        self.mode = mode
        self._lock = lock
        if not (self.path / "zarr.json").is_file():
            raise StoreError(f"'{self.path}' is not an sdaudit store (no zarr.json)")
        try:
            if mode != "r" and lock is None:
                self._lock = WriterLock(self.path)  # before reading the manifest: it may still change until then
            self._load()
        except BaseException:
            self.close()
            raise

    def _load(self) -> None:
        zarr = _zarr()
        try:
            self._group = zarr.open_group(str(self.path), mode="r+" if self.mode != "r" else "r")
            manifest = self._group.attrs.get(MANIFEST_ATTR)
        except (*_READ_ERRORS, TypeError) as error:  # a zarr.json that is not (valid) group metadata
            raise StoreDamagedError(f"store '{self.path}' is damaged: its zarr.json cannot be read "
                                    f"({type(error).__name__}: {error})") from error
        self._manifest = validate_manifest(manifest, self.path)  # refuses older formats
        self._entries, self._checksums, self._records_end = read_records(
            self.path / RECORDS_FILE, self.num_images, self.path, with_checksums=True)
        self._arrays: dict[str, object] = {}

    # ----- life cycle -----------------------------------------------------------------------------
    def close(self) -> None:
        """Release the writer lock (the store stays open for reading)."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None
        self.mode = "r"

    def __enter__(self) -> RepresentationStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ----- manifest -------------------------------------------------------------------------------
    @property
    def manifest(self) -> dict:
        """A copy of the manifest: ``config``, ``versions``, ``layers`` (name -> key, shape) and ``num_images``."""
        return json.loads(json.dumps(self._manifest))

    @property
    def config(self) -> dict:
        return dict(self._manifest["config"])

    @property
    def num_images(self) -> int:
        """Committed images; only these are ever read."""
        return self._manifest["num_images"]

    def __len__(self) -> int:
        return self.num_images

    @property
    def layers(self) -> list[str]:
        """Layer names in execution order."""
        return list(self._manifest["layers"])

    def layer_shape(self, layer: str) -> tuple[int, int, int]:
        """(C, h, w) of one image's representation at ``layer``."""
        return tuple(self._layer_meta(layer)["shape"])  # type: ignore[return-value]

    def _layer_meta(self, layer: str) -> dict:
        from ..layer_names import normalize_name

        name = normalize_name(layer)
        if name not in self._manifest["layers"]:
            raise StoreError(f"layer '{layer}' is not in store '{self.path}'; it has: {', '.join(self.layers)}")
        return self._manifest["layers"][name]

    @property
    def images(self) -> list[ImageEntry]:
        """The committed images' records, in index order."""
        return list(self._entries)

    # ----- reading --------------------------------------------------------------------------------
    def _array(self, name: str):
        """The zarr array of a layer (or of :data:`INPUTS`); a missing or broken one is a StoreDamagedError."""
        key = f"layers/{self._layer_meta(name)['key']}" if name != INPUTS else INPUTS
        if key not in self._arrays:
            try:
                self._arrays[key] = self._group[key]
            except _READ_ERRORS as error:
                raise StoreDamagedError(f"store '{self.path}' is damaged: the array of "
                                        f"{'layer ' + repr(name) if name != INPUTS else 'the inputs'} ({key}) cannot "
                                        f"be opened: {type(error).__name__} {error}") from error
        return self._arrays[key]

    def read(self, layer: str, images: int | slice | Sequence[int] | None = None) -> np.ndarray:
        """Representations of ``layer`` for the chosen committed images: (N, C, h, w) (or (C, h, w) for one int).

        Only the chunks of the chosen images are read from disk, and each image's row is checked against
        its checksum: a damaged row raises :class:`StoreDamagedError` naming the layer and image.
        """
        from ..layer_names import normalize_name

        self._layer_meta(layer)
        return self._read_rows(normalize_name(layer), images)

    def read_inputs(self, images: int | slice | Sequence[int] | None = None) -> np.ndarray:
        """The prepared RGB model inputs, uint8 (N, size, size, 3) (or one (size, size, 3) for an int)."""
        return self._read_rows(INPUTS, images)

    def _indices(self, images) -> tuple[list[int], bool]:
        n = self.num_images
        if images is None:
            images = slice(0, n)
        if isinstance(images, (int, np.integer)):
            i = int(images)
            if not -n <= i < n:
                raise StoreError(f"image index {images} out of range: store '{self.path}' has {n} images")
            return [i % n], True
        if isinstance(images, slice):
            return list(range(*images.indices(n))), False
        idx = [int(i) for i in images]
        bad = [i for i in idx if not 0 <= i < n]
        if bad:
            raise StoreError(f"image indices {bad[:5]} out of range: store '{self.path}' has {n} images")
        return idx, False

    def _read_rows(self, name: str, images) -> np.ndarray:
        idx, single = self._indices(images)
        arr = self._array(name)
        if not idx:
            return np.zeros((0, *arr.shape[1:]), dtype=arr.dtype)
        try:
            if idx == list(range(idx[0], idx[-1] + 1)):
                data = np.asarray(arr[idx[0]:idx[-1] + 1])
            else:
                data = np.asarray(arr.get_orthogonal_selection((idx,) + (slice(None),) * (arr.ndim - 1)))
        except _READ_ERRORS:
            data = np.stack([self._read_row(arr, name, i) for i in idx])  # find the row at fault
        if len(data) != len(idx):  # committed rows beyond the array's capacity
            raise StoreDamagedError(f"store '{self.path}' is damaged: {self._what(name, idx[-1])} lies beyond "
                                    f"its array ({arr.shape[0]} rows)")
        for row, i in zip(data, idx):
            self._check_row(name, i, row)
        return data[0] if single else data

    def _read_row(self, arr, name: str, i: int) -> np.ndarray:
        try:
            return np.asarray(arr[i])
        except _READ_ERRORS as error:
            raise StoreDamagedError(f"store '{self.path}' is damaged: {self._what(name, i)} cannot be read "
                                    f"({type(error).__name__}: {error})") from error

    def _what(self, name: str, i: int) -> str:
        part = f"layer '{name}'" if name != INPUTS else "the inputs"
        return f"{part} of image {i} ({self._entries[i].source})"

    def _expected(self, name: str, i: int) -> int | None:
        crc = self._checksums[i]
        return crc.get("inputs") if name == INPUTS else crc["layers"].get(name)

    def _check_row(self, name: str, i: int, row: np.ndarray) -> None:
        expected = self._expected(name, i)
        if expected is not None and checksum(row) != expected:
            raise StoreDamagedError(f"store '{self.path}' is damaged: {self._what(name, i)} does not match its "
                                    "checksum (a chunk was deleted or altered); see 'sdaudit verify' and rerun "
                                    "extract with that image to repair it")

    def iter_batches(self, layers: Sequence[str] | None = None, batch_size: int = 16,
                     start: int = 0, stop: int | None = None) -> Iterator[tuple[range, dict[str, np.ndarray]]]:
        """Yield (image index range, {layer: (B, C, h, w) array}) over the committed images."""
        layers = list(layers) if layers is not None else self.layers
        stop = self.num_images if stop is None else min(stop, self.num_images)
        for lo in range(start, stop, batch_size):
            hi = min(lo + batch_size, stop)
            yield range(lo, hi), {layer: self.read(layer, slice(lo, hi)) for layer in layers}

    def damaged_rows(self, rows: Sequence[int] | None = None) -> dict[int, list[str]]:
        """{image index: [what is wrong, ...]} for every committed row (or ``rows``) that fails verification."""
        return damaged_rows(self, rows)

    # ----- writing --------------------------------------------------------------------------------
    def write_batch(self, start: int, arrays: dict[str, np.ndarray], entries: Sequence[ImageEntry],
                    inputs: np.ndarray | None = None) -> None:
        """Write and commit images ``start .. start+B-1``: every layer's data and the prepared inputs
        (uint8 (B, size, size, 3)), then the records with their checksums, then the count.

        ``start`` must equal :attr:`num_images` (images are committed in order). Nothing is written when
        a float16 store would turn finite values into inf (:class:`Float16OverflowError`). A write that
        fails (disk full, read-only) raises StoreError and leaves the committed images as they were.
        """
        self._check_writable()
        if start != self.num_images:
            raise StoreError(f"batch starts at image {start} but store '{self.path}' has {self.num_images} committed")
        rows = self._prepare(arrays, [e.source for e in entries], inputs)
        with self._write_errors():
            self._write_rows(range(start, start + len(entries)), rows)
            sums = self._row_checksums(rows, len(entries))
            lines = [record_line(entry, crc) for entry, crc in zip(entries, sums)]
            end = append_records(self.path / RECORDS_FILE, self._records_end, lines)
            manifest = {**self._manifest, "num_images": start + len(entries)}
            self._group.attrs[MANIFEST_ATTR] = manifest  # the commit
        self._manifest, self._records_end = manifest, end
        self._entries += list(entries)
        self._checksums += sums

    def rewrite_rows(self, indices: Sequence[int], arrays: dict[str, np.ndarray], inputs: np.ndarray | None = None) -> None:
        """Replace the rows of committed images ``indices`` (a repair), then their checksums.

        Until the new checksums are recorded (atomically), the rows still fail verification, so an
        interrupted repair is simply repeated.
        """
        self._check_writable()
        indices = [int(i) for i in indices]
        if any(not 0 <= i < self.num_images for i in indices):
            raise StoreError(f"rows {indices} are not all committed in store '{self.path}'")
        rows = self._prepare(arrays, [self._entries[i].source for i in indices], inputs)
        with self._write_errors():
            self._write_rows(indices, rows)
            sums = list(self._checksums)
            for i, crc in zip(indices, self._row_checksums(rows, len(indices))):
                sums[i] = {**crc, "inputs": crc["inputs"] if INPUTS in rows else sums[i].get("inputs")}
            lines = [record_line(entry, crc) for entry, crc in zip(self._entries, sums)]
            end = rewrite_records(self.path / RECORDS_FILE, lines)
        self._checksums, self._records_end = sums, end

    def _check_writable(self) -> None:
        if self.mode == "r":
            raise StoreError(f"store '{self.path}' is open read-only")

    def _prepare(self, arrays: dict[str, np.ndarray], sources: list[str], inputs) -> dict[str, np.ndarray]:
        """The batch's rows in the store's dtypes, checked before anything is written."""
        b = len(sources)
        missing = [layer for layer in self.layers if layer not in arrays]
        if missing:
            raise StoreError(f"batch lacks layers {missing}")
        rows, overflow = {}, {}
        for layer in self.layers:
            data, shape = arrays[layer], (b, *self.layer_shape(layer))
            if data.shape != shape:
                raise StoreError(f"layer '{layer}': batch of shape {data.shape}, expected {shape}")
            with np.errstate(over="ignore", invalid="ignore"):  # overflow is detected (and refused) just below
                rows[layer] = data.astype(self._array(layer).dtype, copy=False)
            # Only what the cast itself made infinite: non-finite model outputs are stored as they are.
            turned = np.isfinite(data) & ~np.isfinite(rows[layer])
            if turned.any():
                overflow[layer] = turned.reshape(b, -1).any(axis=1)
        if overflow:
            hit = np.any(list(overflow.values()), axis=0)
            raise Float16OverflowError(
                f"store '{self.path}' is {self.config.get('dtype', 'float16')}, but layer(s) {', '.join(overflow)} of "
                f"image(s) {', '.join(s for s, h in zip(sources, hit) if h)} hold finite values beyond its range "
                "(|x| > 65504) that would be stored as inf; nothing of this batch was written: rerun with "
                "--dtype float32 and another --out")
        if inputs is not None:
            shape = (b, *self._array(INPUTS).shape[1:])
            if inputs.shape != shape:
                raise StoreError(f"inputs of shape {inputs.shape}, expected {shape}")
            rows[INPUTS] = inputs.astype(np.uint8, copy=False)
        return rows

    def _write_rows(self, indices: Sequence[int], rows: dict[str, np.ndarray]) -> None:
        indices = list(indices)
        if not indices:
            return
        for name, data in rows.items():
            arr = self._array(name)
            top = max(indices) + 1
            if arr.shape[0] < top:
                arr.resize((max(top, 2 * arr.shape[0]), *arr.shape[1:]))
            if indices == list(range(indices[0], top)):
                arr[indices[0]:top] = data
            else:
                for k, i in enumerate(indices):
                    arr[i] = data[k]

    def _row_checksums(self, rows: dict[str, np.ndarray], b: int) -> list[dict]:
        return [{"layers": {name: checksum(data[k]) for name, data in rows.items() if name != INPUTS},
                 "inputs": checksum(rows[INPUTS][k]) if INPUTS in rows else None} for k in range(b)]

    @contextmanager
    def _write_errors(self):
        """An OSError while writing (disk full, read-only files) becomes one StoreError naming the store."""
        try:
            yield
        except OSError as error:
            raise StoreError(f"cannot write to store '{self.path}': {error.strerror or error}; its "
                             f"{self.num_images} committed images are intact") from error


def open_store(path: str | Path, mode: str = "r") -> RepresentationStore:
    """Open an existing store for reading (``mode="r"``) or appending (``"r+"``, taking its writer lock)."""
    if not Path(path).exists():
        raise StoreError(f"store '{path}' does not exist")
    return RepresentationStore(path, mode=mode)
