"""Every supported image source as one lazy stream of validated records (:func:`iter_images`), and its
size without decoding anything (:func:`count_images`)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from .decode import decode_dataset_value, load_image
from .folders import LIST_FILE_EXTENSIONS, is_saved_dataset, read_list_file, scan_folder
from .hf import DatasetSource, is_datasets_object, open_dataset_source, parse_hf_spec
from .records import (DEFAULT_MAX_PIXELS, DEFAULT_MIN_SIDE, IMAGE_EXTENSIONS, BadImageError, ImageRecord, ImageSourceError,
                      printable_path)


@dataclass
class _Candidates:
    """Resolved source: a count (None if unknown) and a factory of (name, loader) pairs."""

    count: int | None
    items: Callable[[], Iterator[tuple[str, Callable[[int, int], ImageRecord]]]]
    skipped: list = field(default_factory=list)  # BadImageError of what a folder scan left out


def _file_candidates(paths: list[Path], skipped: list | None = None) -> _Candidates:
    def items():
        for p in paths:
            yield printable_path(os.path.abspath(p))[0], partial(_load_file, p)
    return _Candidates(len(paths), items, skipped or [])


def _load_file(path: Path, min_side: int, max_pixels: int) -> ImageRecord:
    return load_image(path, min_side=min_side, max_pixels=max_pixels)


def _expand_paths(entries: Iterable[Any], skipped: list) -> list[Path]:
    """Expand a list of paths: folders are scanned, everything else is taken as an image file."""
    out: list[Path] = []
    for entry in entries:
        p = Path(entry).expanduser()
        out.extend(scan_folder(p, skipped=skipped) if p.is_dir() else [p])
    return out


def _resolve(source: Any) -> _Candidates:
    """Turn any supported source into candidates (eager: checks paths and datasets columns)."""
    if is_datasets_object(source) or (isinstance(source, str) and source.startswith("hf:")):
        return _dataset_candidates(open_dataset_source(source))
    if isinstance(source, (list, tuple)):
        skipped: list = []
        return _file_candidates(_expand_paths(source, skipped), skipped)
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"unsupported image source of type {type(source).__name__}")
    p = Path(source).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"image source not found: {printable_path(os.path.abspath(p))[0]}")
    if is_saved_dataset(p):
        return _dataset_candidates(open_dataset_source(p))
    if p.is_dir():
        return _folder_candidates(p)
    if p.suffix.lower() in LIST_FILE_EXTENSIONS:
        return _file_candidates(read_list_file(p))
    return _file_candidates([p])


def _folder_candidates(folder: Path) -> _Candidates:
    """The image files of a folder; a folder without any is an error naming what the scan left out."""
    skipped: list = []
    files = scan_folder(folder, skipped=skipped)
    if files:
        return _file_candidates(files, skipped)
    unreadable = [e for e in skipped if e.code == "unreadable_folder"]
    if unreadable:
        raise unreadable[0]
    left_out = f"; left out: {'; '.join(str(e) for e in skipped[:3])}" if skipped else ""
    raise ImageSourceError(f"no image files found in folder {printable_path(os.path.abspath(folder))[0]} "
                           f"(extensions: {', '.join(sorted(IMAGE_EXTENSIONS))}){left_out}")


def iter_images(source: Any, *, skip_bad: bool = False, errors: list | None = None,
                min_side: int = DEFAULT_MIN_SIDE,
                max_pixels: int = DEFAULT_MAX_PIXELS) -> Iterator[ImageRecord]:
    """Yield validated RGB :class:`ImageRecord` objects from any supported source, lazily.

    ``source``: a folder (recursive, see :func:`scan_folder`), one image file, a ``.txt``/``.lst``
    file listing paths (relative to it), a list/tuple of paths (folders expanded), a
    ``datasets.Dataset``/``DatasetDict``/``IterableDataset``, a ``save_to_disk`` folder, or
    ``"hf:NAME[:SPLIT[:IMAGE_COLUMN]]"`` (see :func:`open_dataset_source`). Record sources are
    absolute paths (printable: see :func:`printable_path`), or ``"hf:NAME[SPLIT]#INDEX"`` for
    dataset items (SPLIT is ``all`` for a dataset without a split; NAME is the dataset name, the
    absolute ``save_to_disk`` path, or ``dataset-<fingerprint>`` for an unnamed in-memory dataset).
    A missing top-level path or an unusable dataset raises at once (not a bad image). With
    ``skip_bad=False`` the first bad image raises :class:`BadImageError`; with ``skip_bad=True``
    it is skipped and ``(source, reason)`` is appended to ``errors``. What a folder scan left out
    (see :func:`scan_folder`) is appended to ``errors`` first; a folder that cannot be listed raises
    unless ``skip_bad``. One image is decoded at a time.
    """
    candidates = _resolve(source)
    return _generate(candidates, skip_bad, errors, min_side, max_pixels)


def _generate(candidates: _Candidates, skip_bad: bool, errors: list | None, min_side: int,
              max_pixels: int) -> Iterator[ImageRecord]:
    # what the scan left out is listed first; a folder that cannot be listed stops the run without skip_bad
    for e in candidates.skipped:
        if e.code == "unreadable_folder" and not skip_bad:
            raise BadImageError(e.source, f"{e.reason} (skip_bad / --skip-bad lists it and goes on)", e.code)
        if errors is not None:
            errors.append((e.source, e.reason))
    for _name, loader in candidates.items():
        try:
            record = loader(min_side, max_pixels)
        except BadImageError as e:
            if not skip_bad:
                raise
            if errors is not None:
                errors.append((e.source, e.reason))
            continue
        yield record


def count_images(source: Any) -> int | None:
    """Number of candidate items in ``source`` without decoding any image (for progress bars).

    ``None`` when unknown: streaming datasets, and ``"hf:NAME"`` hub names (counting them would
    need a download); a local ``save_to_disk`` folder named after ``hf:`` is counted.
    """
    if isinstance(source, str) and source.startswith("hf:"):
        name = parse_hf_spec(source)[0]
        if not is_saved_dataset(Path(name).expanduser()):
            return None
    return _resolve(source).count


def _dataset_candidates(src: DatasetSource) -> _Candidates:
    """Candidates over one image column; map-style datasets are read by index, one at a time."""
    import datasets

    ds = src.dataset.select_columns([src.image_column])
    count = len(ds) if isinstance(ds, datasets.Dataset) else None

    def items():
        rows = (ds[i] for i in range(count)) if count is not None else iter(ds)
        for i, row in enumerate(rows):
            name = f"hf:{src.name}[{src.split}]#{i}"
            yield name, partial(_load_cell, row[src.image_column], name)
    return _Candidates(count, items)


def _load_cell(value: Any, name: str, min_side: int, max_pixels: int) -> ImageRecord:
    return decode_dataset_value(value, name, min_side=min_side, max_pixels=max_pixels)


