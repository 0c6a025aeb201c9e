"""Cleaned stores: a saved mitigation applied to one layer of a store, written as a new, complete store.

:func:`clean_store` reads a store (never writing to it), applies a mitigation file
(:mod:`sdaudit.mitigations`) to the layer the mitigation was fitted on, copies the other layers, the
prepared inputs and the image records unchanged, and writes everything to a new store folder with the
store's own commit protocol (checksums, manifest). The new store's configuration (``manifest["config"]``)
gains ``"transforms"``: the list of mitigations applied so far (a cleaned store can be cleaned again),
each ``{"kind", "params", "layer", "file", "sha256", "fitted_images"}``. The key is part of a store's
identity (:data:`sdaudit.store.IDENTITY_FIELDS`), so ``sdaudit extract`` refuses to append raw images
to a cleaned store; :func:`store_transforms` is how any reader asks whether a store holds cleaned features.

:func:`fit_on_store` fits a mitigation on a layer of a store, streamed batch by batch;
:func:`fit_and_save` does that and writes the mitigation file (``sdaudit clean --fit``).
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import Any, Sequence

from .errors import OutputPathError, UsageError
from .layer_names import normalize_name
from .mitigations import Mitigation, MitigationMismatchError, load_mitigation, make_mitigation
from .store import RepresentationStore, create_store, open_store

TRANSFORMS_KEY = "transforms"


def store_transforms(store: RepresentationStore) -> list[dict]:
    """The mitigations applied to a store's features (empty for a store of raw features)."""
    return list(store.config.get(TRANSFORMS_KEY) or [])


def fit_on_store(name: str, store: str | Path | RepresentationStore, *, layer: str,
                 images: Sequence[int] | None = None, batch_size: int = 16, **options: Any) -> Mitigation:
    """Fit the mitigation ``name`` (``sdaudit.mitigations.REGISTRY``) with ``options`` on ``layer`` of a store,
    over ``images`` (indices; default all committed images), ``batch_size`` images at a time."""
    source = store if isinstance(store, RepresentationStore) else open_store(store)
    layer = normalize_name(layer)
    source.layer_shape(layer)  # an unknown layer is a StoreError naming the store's layers
    idx = list(range(source.num_images)) if images is None else [int(i) for i in images]
    batches = (source.read(layer, idx[lo:lo + batch_size]) for lo in range(0, len(idx), batch_size))
    return make_mitigation(name, **options).fit(batches, layer=layer)


def fit_and_save(name: str, store: str | Path, save: str | Path, *, layers: str | Sequence[str] | None,
                 batch_size: int = 16, **options: Any) -> Mitigation:
    """Fit the mitigation ``name`` on the one layer named by ``layers`` of ``store`` (all its images) and save
    it to ``save`` (a new or replaced file, never inside the store); returns the fitted mitigation."""
    source = open_store(store)
    names = [s.strip() for s in layers.split(",") if s.strip()] if isinstance(layers, str) else list(layers or [])
    if len(names) != 1:
        raise UsageError(f"--fit needs exactly one layer in --layers (the layer to fit), got {len(names)}")
    save = _check_save(Path(save), source.path)
    mitigation = fit_on_store(name, source, layer=names[0], batch_size=batch_size, **options)
    mitigation.save(save)
    return mitigation


def _check_save(save: Path, store: Path) -> Path:
    """``save`` if a mitigation file can be written there: its folder exists, it is no folder, not in the store."""
    inside = Path(store).resolve()
    if inside in save.resolve().parents:
        raise OutputPathError(f"--save {save}: lies in the input store '{store}', which is never written to")
    if save.is_dir():
        raise OutputPathError(f"--save {save}: is a folder; give a file name (e.g. position.safetensors)")
    if not save.parent.is_dir():
        raise OutputPathError(f"--save {save}: folder '{save.parent}' does not exist")
    return save


def clean_store(store: str | Path, transform: str | Path, out: str | Path, *,
                layers: str | Sequence[str] | None = None, batch_size: int = 16) -> RepresentationStore:
    """Write the store at ``store`` with the mitigation file ``transform`` applied, as a new store at ``out``.

    Parameters:
        store: the input store (only read).
        transform: a mitigation file (``Mitigation.save``); it names its layer, which must be in the store,
            with the grid and channel count it was fitted on.
        out: the new store's folder: must not exist or be empty.
        layers: the layers to write (names, or a comma-separated string; default: all of the store's); the
            transform's layer must be among them. The others are copied unchanged.
        batch_size: images read, transformed and written at a time.

    Returns the new store, open for reading. On failure nothing is left at ``out`` (an empty folder given
    as ``out`` is left empty).
    """
    source = open_store(store)
    mitigation = load_mitigation(transform)
    selected = _selected_layers(source, layers)
    target = _check_target(source, mitigation, selected, Path(transform))
    out = _check_out(Path(out), source.path)
    existed = out.exists()
    config = {**source.config, "layers": selected,
              TRANSFORMS_KEY: [*store_transforms(source), _record(mitigation, Path(transform))]}
    shapes = {layer: source.layer_shape(layer) for layer in selected}
    dtype = str(source.read(selected[0], []).dtype)
    try:
        with create_store(out, config, shapes, dtype=dtype, capacity=max(source.num_images, 1)) as new:
            _copy(source, new, mitigation, target, batch_size)
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        if existed:
            out.mkdir()
        raise
    return open_store(out)


def _copy(source: RepresentationStore, new: RepresentationStore, mitigation: Mitigation, target: str,
          batch_size: int) -> None:
    """Every committed image of ``source``, the ``target`` layer transformed, committed to ``new`` in order."""
    with_inputs = bool(source.config.get("size"))
    entries = source.images
    for lo in range(0, source.num_images, max(int(batch_size), 1)):
        rows = slice(lo, min(lo + max(int(batch_size), 1), source.num_images))
        arrays = {layer: source.read(layer, rows) for layer in new.layers}
        arrays[target] = mitigation.transform(arrays[target])  # its own checks: grid, channel count
        new.write_batch(lo, arrays, entries[rows], inputs=source.read_inputs(rows) if with_inputs else None)


def _selected_layers(source: RepresentationStore, layers: str | Sequence[str] | None) -> list[str]:
    if layers is None:
        return source.layers
    names = [s.strip() for s in layers.split(",")] if isinstance(layers, str) else list(layers)
    wanted = {normalize_name(name) for name in names if name}
    if not wanted:
        raise UsageError("--layers: no layer named")
    for name in wanted:
        source.layer_shape(name)  # an unknown layer is a StoreError naming the store's layers
    return [layer for layer in source.layers if layer in wanted]  # in the store's (execution) order


def _check_target(source: RepresentationStore, mitigation: Mitigation, selected: list[str], path: Path) -> str:
    """The transform's layer, after checking it is written and that its grid and channels match the store's."""
    if mitigation.layer_ is None:
        raise UsageError(f"mitigation file '{path}' names no layer (it was fitted without layer=...); "
                         "fit it again with the layer it is for")
    layer = normalize_name(mitigation.layer_)
    if layer not in source.layers:
        raise MitigationMismatchError(f"mitigation file '{path}' is for layer '{layer}', which store "
                                      f"'{source.path}' does not have")
    if layer not in selected:
        raise UsageError(f"--layers leaves out '{layer}', the layer mitigation file '{path}' transforms")
    c, h, w = source.layer_shape(layer)
    if (c, (h, w)) != (mitigation.n_channels_, tuple(mitigation.grid_)):
        raise MitigationMismatchError(
            f"mitigation file '{path}' was fitted on {mitigation.n_channels_} channels x "
            f"{mitigation.grid_[0]}x{mitigation.grid_[1]} of layer '{layer}', store '{source.path}' has {c} x {h}x{w}")
    return layer


def _check_out(out: Path, source: Path) -> Path:
    """``out`` if a new store can be written there: not a file, not a non-empty folder, not in the input store."""
    inside = Path(source).resolve()
    if out.resolve() == inside or inside in out.resolve().parents:
        raise OutputPathError(f"--out {out}: lies in the input store '{source}', which is never written to")
    if out.exists() and not out.is_dir():
        raise OutputPathError(f"--out {out}: is a file, not a folder")
    if out.is_dir() and any(out.iterdir()):
        raise OutputPathError(f"--out {out}: exists and is not empty; a cleaned store is written to a new folder")
    return out


def _record(mitigation: Mitigation, path: Path) -> dict:
    """What the manifest records of an applied mitigation file."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return {"kind": mitigation.kind, "params": mitigation.get_params(), "layer": mitigation.layer_,
            "file": str(path.resolve()), "sha256": digest.hexdigest(), "fitted_images": mitigation.n_images_}
