"""The representation store: per-layer arrays on disk (zarr), with a manifest, resumable.

Layout of a store folder (a zarr v3 group)::

    STORE/
      zarr.json            group metadata; attributes hold the manifest (see below)
      layers/<key>/        one array per layer, shape (capacity, C, h, w), chunked one image per chunk
      inputs               the prepared model inputs, (capacity, size, size, 3) uint8, one image per chunk
                           (what the U-Net saw; for figures and the explorer)
      images.jsonl         one JSON record per committed image: index, source, sha256, width, height, mode

The manifest (group attribute ``sdaudit``) records the extraction configuration (model identity,
protocol, timestep, seed, size, dtype, layers, prompt, ...), the package versions, and
``num_images``: how many images are committed. Images are committed in order, a batch at a time:
first every layer's chunks are written, then their ``images.jsonl`` lines, then ``num_images`` is
raised. zarr writes every file atomically (temporary file + rename), so a process killed at any
point leaves either the old or the new ``num_images``; anything past it is ignored when reading
and overwritten when the extraction resumes. A new store is built in a scratch folder beside its
final place and renamed into it, so a store folder is never half created either.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import SdauditError

FORMAT_VERSION = 1
MANIFEST_ATTR = "sdaudit"
# Fields of the configuration that must match for two extractions to share a store.
IDENTITY_FIELDS = ("model", "protocol", "timestep", "seed", "size", "dtype", "layers", "prompt", "latent",
                   "noise_samples", "batch_size", "crop_px")


class StoreError(SdauditError, RuntimeError):
    """A store that cannot be opened, or a request that does not fit its contents."""


class StoreConfigMismatch(StoreError):
    """An extraction whose configuration differs from the one the store was made with."""


@dataclass(frozen=True)
class ImageEntry:
    """One committed image of a store."""

    index: int
    source: str
    sha256: str
    width: int
    height: int
    mode: str

    def to_json(self) -> dict:
        return {"index": self.index, "source": self.source, "sha256": self.sha256, "width": self.width,
                "height": self.height, "mode": self.mode}


def _zarr():
    import zarr

    return zarr


class RepresentationStore:
    """A folder of per-layer representations. Open with :func:`open_store` or :func:`create_store`."""

    def __init__(self, path: str | Path, mode: str = "r"):
        self.path = Path(path)
        self.mode = mode
        if not (self.path / "zarr.json").is_file():
            raise StoreError(f"'{self.path}' is not an sdaudit store (no zarr.json)")
        zarr = _zarr()
        try:
            self._group = zarr.open_group(str(self.path), mode="r+" if mode != "r" else "r")
        except Exception as error:  # noqa: BLE001
            raise StoreError(f"cannot open store '{self.path}': {error}") from error
        manifest = self._group.attrs.get(MANIFEST_ATTR)
        if not isinstance(manifest, dict) or manifest.get("format_version") != FORMAT_VERSION:
            raise StoreError(f"'{self.path}' is not an sdaudit store of format version {FORMAT_VERSION}")
        self._manifest = manifest
        self._arrays: dict[str, object] = {}

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
        return int(self._manifest["num_images"])

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
        from .layers import normalize_name

        name = normalize_name(layer)
        if name not in self._manifest["layers"]:
            raise StoreError(f"layer '{layer}' is not in store '{self.path}'; it has: {', '.join(self.layers)}")
        return self._manifest["layers"][name]

    @property
    def images(self) -> list[ImageEntry]:
        """The committed images' records, in index order."""
        return self._read_image_lines()[: self.num_images]

    def _read_image_lines(self) -> list[ImageEntry]:
        path = self.path / "images.jsonl"
        if not path.exists():
            return []
        entries = []
        with open(path, encoding="utf-8") as f:
            for line in f:
                if not line.endswith("\n"):
                    break  # a line cut off by a kill: never committed
                try:
                    entries.append(ImageEntry(**json.loads(line)))
                except (json.JSONDecodeError, TypeError):
                    break
        return entries

    # ----- reading --------------------------------------------------------------------------------
    def _array(self, layer: str):
        key = self._layer_meta(layer)["key"]
        if key not in self._arrays:
            self._arrays[key] = self._group[f"layers/{key}"]
        return self._arrays[key]

    def read(self, layer: str, images: int | slice | Sequence[int] | None = None) -> np.ndarray:
        """Representations of ``layer`` for the chosen committed images: (N, C, h, w) (or (C, h, w) for one int).

        Only the chunks of the chosen images are read from disk.
        """
        return self._read_rows(self._array(layer), images)

    def read_inputs(self, images: int | slice | Sequence[int] | None = None) -> np.ndarray:
        """The prepared RGB model inputs, uint8 (N, size, size, 3) (or one (size, size, 3) for an int)."""
        if "inputs" not in self._arrays:
            self._arrays["inputs"] = self._group["inputs"]
        return self._read_rows(self._arrays["inputs"], images)

    def _read_rows(self, arr, images) -> np.ndarray:
        n = self.num_images
        if images is None:
            images = slice(0, n)
        if isinstance(images, (int, np.integer)):
            i = int(images)
            if not -n <= i < n:
                raise StoreError(f"image index {images} out of range: store '{self.path}' has {n} images")
            return np.asarray(arr[i % n])
        if isinstance(images, slice):
            start, stop, step = images.indices(n)
            if step == 1:
                return np.asarray(arr[start:stop])
            images = range(start, stop, step)
        idx = [int(i) for i in images]
        bad = [i for i in idx if not 0 <= i < n]
        if bad:
            raise StoreError(f"image indices {bad[:5]} out of range: store '{self.path}' has {n} images")
        if not idx:
            return np.zeros((0, *arr.shape[1:]), dtype=arr.dtype)
        return np.asarray(arr.get_orthogonal_selection((idx,) + (slice(None),) * (arr.ndim - 1)))

    def iter_batches(self, layers: Sequence[str] | None = None, batch_size: int = 16,
                     start: int = 0, stop: int | None = None) -> Iterator[tuple[range, dict[str, np.ndarray]]]:
        """Yield (image index range, {layer: (B, C, h, w) array}) over the committed images."""
        layers = list(layers) if layers is not None else self.layers
        stop = self.num_images if stop is None else min(stop, self.num_images)
        for lo in range(start, stop, batch_size):
            hi = min(lo + batch_size, stop)
            yield range(lo, hi), {layer: self.read(layer, slice(lo, hi)) for layer in layers}

    # ----- writing --------------------------------------------------------------------------------
    def write_batch(self, start: int, arrays: dict[str, np.ndarray], entries: Sequence[ImageEntry],
                    inputs: np.ndarray | None = None) -> None:
        """Write and commit images ``start .. start+B-1``: every layer's data and the prepared inputs
        (uint8 (B, size, size, 3)), then the records, then the count.

        ``start`` must equal :attr:`num_images` (images are committed in order).
        """
        if self.mode == "r":
            raise StoreError(f"store '{self.path}' is open read-only")
        if start != self.num_images:
            raise StoreError(f"batch starts at image {start} but store '{self.path}' has {self.num_images} committed")
        b = len(entries)
        missing = [layer for layer in self.layers if layer not in arrays]
        if missing:
            raise StoreError(f"batch lacks layers {missing}")
        for layer in self.layers:
            data = arrays[layer]
            if data.shape != (b, *self.layer_shape(layer)):
                raise StoreError(f"layer '{layer}': batch of shape {data.shape}, expected {(b, *self.layer_shape(layer))}")
            arr = self._array(layer)
            if arr.shape[0] < start + b:
                arr.resize((max(start + b, 2 * arr.shape[0]), *arr.shape[1:]))
            arr[start:start + b] = data.astype(arr.dtype, copy=False)
        if inputs is not None:
            arr = self._group["inputs"]
            if inputs.shape != (b, *arr.shape[1:]):
                raise StoreError(f"inputs of shape {inputs.shape}, expected {(b, *arr.shape[1:])}")
            if arr.shape[0] < start + b:
                arr.resize((max(start + b, 2 * arr.shape[0]), *arr.shape[1:]))
            arr[start:start + b] = inputs.astype(np.uint8, copy=False)
        self._append_image_lines(start, entries)
        self._manifest["num_images"] = start + b
        self._group.attrs[MANIFEST_ATTR] = self._manifest

    def _append_image_lines(self, start: int, entries: Sequence[ImageEntry]) -> None:
        path = self.path / "images.jsonl"
        committed = self._read_image_lines()[:start]
        if len(committed) != start:
            raise StoreError(f"store '{self.path}' is damaged: images.jsonl has {len(committed)} records, expected {start}")
        # Drop whatever a killed run left past the committed records, then append.
        with open(path, "a+b") as f:
            f.seek(0)
            offset = 0
            for _ in range(start):
                offset += len(f.readline())
            f.truncate(offset)
            f.seek(offset)
            for entry in entries:
                f.write((json.dumps(entry.to_json(), ensure_ascii=False) + "\n").encode("utf-8"))
            f.flush()
            os.fsync(f.fileno())


def _versions() -> dict:
    import diffusers
    import torch
    import zarr

    from . import __version__

    return {"sdaudit": __version__, "diffusers": diffusers.__version__, "torch": torch.__version__,
            "zarr": zarr.__version__, "numpy": np.__version__}


def config_differences(a: dict, b: dict) -> list[str]:
    """The identity fields in which two extraction configurations differ, as 'field: a != b' lines."""
    out = []
    for key in IDENTITY_FIELDS:
        if a.get(key) != b.get(key):
            out.append(f"{key}: store has {a.get(key)!r}, this run asks for {b.get(key)!r}")
    return out


def create_store(path: str | Path, config: dict, layer_shapes: dict[str, tuple[int, int, int]],
                 dtype: str = "float16", capacity: int = 16) -> RepresentationStore:
    """Create an empty store, or open an existing one made with the same configuration.

    An existing store with a different configuration raises :class:`StoreConfigMismatch` and is
    left untouched.
    """
    path = Path(path)
    if path.exists() and (path / "zarr.json").exists():
        store = RepresentationStore(path, mode="r+")
        diffs = config_differences(store.config, config)
        if diffs:
            raise StoreConfigMismatch(
                f"store '{path}' was made with a different configuration; refusing to mix them:\n  "
                + "\n  ".join(diffs) + "\nUse another --out folder, or repeat the original settings.")
        return store
    if path.exists() and any(path.iterdir()):
        raise StoreError(f"'{path}' exists and is not an sdaudit store; refusing to write into it")
    # Built beside its final place and renamed into it: a process killed while creating leaves no half
    # store at ``path`` (which a rerun would refuse to open), only a scratch folder the next run removes.
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned_scratch(path)
    scratch = path.parent / f".{path.name}.creating-{os.getpid()}"
    shutil.rmtree(scratch, ignore_errors=True)
    try:
        _write_empty_store(scratch, config, layer_shapes, dtype, capacity)
        os.rename(scratch, path)  # atomic; replaces an empty folder at ``path``
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    return RepresentationStore(path, mode="r+")


def _write_empty_store(path: Path, config: dict, layer_shapes: dict[str, tuple[int, int, int]], dtype: str,
                       capacity: int) -> None:
    from .layers import store_key

    zarr = _zarr()
    group = zarr.open_group(str(path), mode="w")
    layers_group = group.create_group("layers")
    layers_meta = {}
    size = config.get("size")
    if size:
        group.create_array("inputs", shape=(capacity, size, size, 3), chunks=(1, size, size, 3), dtype="uint8",
                           fill_value=0)
    for name, shape in layer_shapes.items():
        key = store_key(name)
        layers_group.create_array(key, shape=(capacity, *shape), chunks=(1, *shape), dtype=dtype, fill_value=0,
                                  attributes={"layer": name})
        layers_meta[name] = {"key": key, "shape": list(shape)}
    manifest = {"format_version": FORMAT_VERSION, "config": config, "versions": _versions(),
                "layers": layers_meta, "num_images": 0}
    group.attrs[MANIFEST_ATTR] = manifest
    (path / "images.jsonl").touch()


def _remove_abandoned_scratch(path: Path) -> None:
    """Delete scratch folders of ``path`` left by store creations whose process no longer runs."""
    for scratch in path.parent.glob(f".{path.name}.creating-*"):
        pid = scratch.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _process_alive(int(pid)):
            shutil.rmtree(scratch, ignore_errors=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def open_store(path: str | Path, mode: str = "r") -> RepresentationStore:
    """Open an existing store for reading (``mode="r"``) or appending (``"r+"``)."""
    if not Path(path).exists():
        raise StoreError(f"store '{path}' does not exist")
    return RepresentationStore(path, mode=mode)
