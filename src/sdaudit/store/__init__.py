"""The representation store: per-layer arrays on disk (zarr), with a manifest, resumable, verified.

Layout of a store folder (a zarr v3 group)::

    STORE/
      zarr.json            group metadata; attributes hold the manifest (see below)
      layers/<key>/        one array per layer, shape (capacity, C, h, w), chunked one image per chunk
      inputs               the prepared model inputs, (capacity, size, size, 3) uint8, one image per chunk
                           (what the U-Net saw; for figures and the explorer)
      images.jsonl         one JSON record per committed image: index, source, sha256, width, height, mode,
                           and ``crc32``: the crc32 of the image's row of every layer and of the inputs
      .writer.lock         the writer lock (see :mod:`sdaudit.store.lock`)

The manifest (group attribute ``sdaudit``) records the extraction configuration (model identity,
protocol, timestep, seed, size, dtype, layers, prompt, ...), the package versions, and
``num_images``: how many images are committed. It is validated whenever a store is opened.

Writing. One process at a time: opening a store for writing takes its writer lock (a second writer
gets :class:`StoreBusyError`, naming the holder's pid and host). Images are committed in order, a
batch at a time: first every layer's chunks are written, then their ``images.jsonl`` lines (with
checksums), then ``num_images`` is raised. zarr writes every file atomically (temporary file +
rename), so a process killed at any point leaves either the old or the new ``num_images``; anything
past it is ignored when reading and overwritten when the extraction resumes. A new store is built in
a scratch folder beside its final place and renamed into it (with its lock already held), so a store
folder is never half created either.

Reading. Every committed record must parse, and every row read is checked against its checksum: a
deleted or altered chunk raises :class:`StoreDamagedError` naming the store, layer and image instead
of reading as zeros. :func:`verify_store` (``sdaudit verify``) checks a whole store; ``extract``
re-extracts damaged rows whose images it is given. Stores of an older format are refused with a
message to re-extract (format 3 records the configuration as the settings tree writes it).
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

import numpy as np

from ..settings import EXTRACTION_FIELDS
from .lock import WriterLock
from .records import (FORMAT_VERSION, MANIFEST_ATTR, Float16OverflowError, ImageEntry, StoreBusyError,
                      StoreConfigMismatch, StoreDamagedError, StoreError)
from .representation import RepresentationStore, _zarr, open_store
from .verify import VerifyReport, verify_store

# Fields of the configuration that must match for two extractions to share a store: the extraction
# settings (one home: sdaudit.settings) plus what the store adds (see extraction.run.store_config).
STORE_FIELDS = ("model", "layers", "dtype", "compute_dtype", "batch_size")
# "transforms": the mitigations a cleaned store's features went through (sdaudit.clean); none for raw features
IDENTITY_FIELDS = (*EXTRACTION_FIELDS, *STORE_FIELDS, "transforms")

__all__ = ["FORMAT_VERSION", "Float16OverflowError", "IDENTITY_FIELDS", "ImageEntry", "RepresentationStore", "STORE_FIELDS",
           "StoreBusyError", "StoreConfigMismatch", "StoreDamagedError", "StoreError", "VerifyReport",
           "config_differences", "create_store", "open_store", "verify_store"]


def _versions() -> dict:
    import diffusers
    import torch
    import zarr

    from .. import __version__

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
    """Create an empty store, or open an existing one made with the same configuration, for writing.

    The returned store holds the writer lock until it is closed (use it in a ``with`` block). An
    existing store with a different configuration raises :class:`StoreConfigMismatch` and is left
    untouched; one that another process is writing raises :class:`StoreBusyError`.
    """
    path = Path(path)
    if (path / "zarr.json").exists():
        return _open_for_writing(path, config)
    _prepare_new_place(path)
    # Built beside its final place and renamed into it: a process killed while creating leaves no half
    # store at ``path`` (which a rerun would refuse to open), only a scratch folder the next run removes.
    _remove_abandoned_scratch(path)
    scratch = path.parent / f".{path.name}.creating-{os.getpid()}"
    shutil.rmtree(scratch, ignore_errors=True)
    try:
        _write_empty_store(scratch, config, layer_shapes, dtype, capacity)
        lock = WriterLock(scratch)  # held before the store appears: no other writer can come in between
        if not _move_into_place(scratch, path, lock):
            return _open_for_writing(path, config)  # another process created the store first: join it
    except OSError as error:
        shutil.rmtree(scratch, ignore_errors=True)
        raise StoreError(f"cannot create store '{path}': {error.strerror or error}") from error
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    return RepresentationStore(path, mode="r+", lock=lock)


def _prepare_new_place(path: Path) -> None:
    """Refuse a file or a non-empty folder that is no store at ``path``; create its parent folders."""
    if path.exists() and not path.is_dir():
        raise StoreError(f"'{path}' is a file, not a store folder; refusing to write into it")
    if path.is_dir() and any(path.iterdir()):
        raise StoreError(f"'{path}' exists and is not an sdaudit store; refusing to write into it")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as error:
        raise StoreError(f"cannot create store '{path}': a part of its path is a file") from error
    except OSError as error:
        raise StoreError(f"cannot create store '{path}': {error.strerror or error}") from error


def _move_into_place(scratch: Path, path: Path, lock: WriterLock) -> bool:
    """Rename the finished scratch store to ``path`` (atomic; replaces an empty folder there). False, with the
    scratch folder removed and its lock released, when another process's store got there first."""
    try:
        os.rename(scratch, path)
    except OSError as error:
        lock.release()
        if error.errno not in (errno.ENOTEMPTY, errno.EEXIST) or not (path / "zarr.json").exists():
            raise
        shutil.rmtree(scratch, ignore_errors=True)
        return False
    return True


def _open_for_writing(path: Path, config: dict) -> RepresentationStore:
    store = RepresentationStore(path, mode="r+")
    diffs = config_differences(store.config, config)
    if diffs:
        store.close()
        raise StoreConfigMismatch(
            f"store '{path}' was made with a different configuration; refusing to mix them:\n  "
            + "\n  ".join(diffs) + "\nUse another --out folder, or repeat the original settings.")
    return store


def _write_empty_store(path: Path, config: dict, layer_shapes: dict[str, tuple[int, int, int]], dtype: str,
                       capacity: int) -> None:
    from ..layer_names import store_key

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
        layers_meta[name] = {"key": key, "shape": [int(s) for s in shape]}
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
