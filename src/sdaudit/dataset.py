"""Backend of ``sdaudit dataset imagenet-subset``: the paper's ImageNet image set.

The paper used ImageNet (ILSVRC-2012) classes 235 (German shepherd), 242 (boxer),
282 (tiger cat), 717 (pickup) and 980 (volcano), 100 training images each, skipping images
whose short side is below 350 px, centre-cropped to a square and resized to 512 x 512 px.

:func:`build_imagenet_subset` rebuilds that set from a local ILSVRC train folder
(``<root>/<wnid>/*.JPEG``) or from a Hugging Face ``datasets`` source with an integer label
column. Selection is deterministic: candidates come in dataset (stream) order (``datasets``), in
the order of an order file (folder with ``order_file``), or class by class in sorted relative-path
order (folder); the first ``per_class`` eligible images of each class are kept, in the order they
came. Ineligible images are listed in ``manifest.json``: ``skipped_small`` (short side
< ``min_side``) and ``skipped_bad`` (unreadable/corrupt, with the reason). Files are named
``<seq>_<class>_<wnid>.png``, seq the selection index zero-padded to at least 3 digits, so that
their sorted order is the selection order; the manifest's ``order`` says whether that is the
published order (see :mod:`sdaudit.paper_set`: the published labels index it). Images get the
published crop arithmetic and resize filter (:func:`sdaudit.paper_set.published_crop`).

Writing, crash safety and which existing folders may be rebuilt: :mod:`sdaudit.dataset_files`.
"""

from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from .dataset_files import MANIFEST_NAME, commit, file_name, previous_build, remove_own_temps, write_temp
from .errors import UsageError
from .images import (
    DEFAULT_MAX_PIXELS, BadImageError, ImageRecord, ImageSourceError, decode_dataset_value, is_saved_dataset,
    load_image, open_dataset_source, pixel_sha256, scan_folder, to_rgb,
)
from .paper_set import published_crop, read_order_file

__all__ = ["PAPER_CLASSES", "IMAGENET_WNIDS", "MANIFEST_NAME", "build_imagenet_subset", "read_synset_mapping"]

#: The paper's ImageNet class indices.
PAPER_CLASSES = (235, 242, 282, 717, 980)
#: ILSVRC-2012 class index -> WordNet id, for the paper's classes (standard sorted-wnid order).
IMAGENET_WNIDS = {
    235: "n02106662",  # German shepherd
    242: "n02108089",  # boxer
    282: "n02123159",  # tiger cat
    717: "n03930630",  # pickup, pickup truck
    980: "n09472597",  # volcano
}
_WNID_RE = re.compile(r"^n\d{8}$")
_MAPPING_NAMES = ("LOC_synset_mapping.txt", "synset_mapping.txt", "synsets.txt")


@dataclass
class _Selection:
    """Running state of one build: kept entries, skips and temporary files."""

    per_class: int
    counts: dict[int, int]
    files: list[dict] = field(default_factory=list)
    skipped_small: list[dict] = field(default_factory=list)
    skipped_bad: list[dict] = field(default_factory=list)
    temps: list[tuple[Path, Path]] = field(default_factory=list)

    def full(self, cls: int) -> bool:
        return self.counts[cls] >= self.per_class

    def all_full(self) -> bool:
        return all(self.full(c) for c in self.counts)


# --------------------------------------------------------------------------- class -> wnid


def read_synset_mapping(path: str | os.PathLike) -> dict[int, str]:
    """Read a ``LOC_synset_mapping.txt``-style file: line i (0-based) starts with class i's wnid."""
    mapping = {}
    lines = [ln for ln in Path(path).read_text(encoding="utf-8").splitlines() if ln.strip()]
    for index, line in enumerate(lines):
        wnid = line.split()[0]
        if not _WNID_RE.match(wnid):
            raise ImageSourceError(f"{path}: line {index + 1} does not start with a WordNet id: {line!r}")
        mapping[index] = wnid
    return mapping


def _find_mapping_file(root: Path) -> Path | None:
    """A synset mapping file in ``root`` or up to four folders above it (Kaggle layout)."""
    for folder in [root, *list(root.parents)[:4]]:
        for name in _MAPPING_NAMES:
            if (folder / name).is_file():
                return folder / name
    return None


def _wnid_table(root: Path | None, split: str,
                synset_mapping: Any) -> tuple[dict[int, str], str]:
    """Class index -> wnid: an explicit/found mapping file, else 1000 sorted wnid folders,
    else the built-in table of the paper's five classes. Returns (table, provenance)."""
    path = Path(synset_mapping) if synset_mapping else (_find_mapping_file(root) if root else None)
    if path is not None:
        return read_synset_mapping(path), str(path)
    for folder in ([root, root / split] if root is not None else []):
        if not folder.is_dir():
            continue
        wnids = sorted(d.name for d in folder.iterdir() if d.is_dir() and _WNID_RE.match(d.name))
        if len(wnids) == 1000:
            return dict(enumerate(wnids)), f"sorted wnid folders of {folder}"
    return dict(IMAGENET_WNIDS), "built-in table"


def _classlabel_wnids(src: Any, label_column: str) -> dict[int, str]:
    """Index -> wnid from a ``ClassLabel`` label column whose names are WordNet ids, else {}."""
    import datasets

    feature = (src.dataset.features or {}).get(label_column)
    if isinstance(feature, datasets.ClassLabel):
        return {i: n for i, n in enumerate(feature.names) if _WNID_RE.match(n)}
    return {}


# --------------------------------------------------------------------------- candidates

# A candidate: (class index, original name, loader(min_side, max_pixels) -> ImageRecord)
_Candidate = tuple[int, str, Callable[[int, int], ImageRecord]]


def _train_root(root: Path, split: str, wnids: list[str]) -> Path:
    """The folder holding the wnid folders: ``root`` itself or ``root/<split>``."""
    if not any((root / w).is_dir() for w in wnids) and (root / split).is_dir():
        return root / split
    return root


def _folder_candidates(root: Path, classes: tuple[int, ...], wnids: dict[int, str], opts: "_Options",
                       order: list[str] | None = None) -> Iterator[_Candidate]:
    """Check every class folder up front, then yield its files class by class, sorted; with ``order`` (file
    names in the published order) those files in that order instead."""
    listing = {}
    for cls in classes:
        folder = root / wnids[cls]
        if not folder.is_dir():
            raise FileNotFoundError(
                f"ImageNet class {cls} ({wnids[cls]}): folder {folder} not found; expected the "
                f"ILSVRC-2012 train layout <root>/<wnid>/*.JPEG under {root}")
        listing[cls] = scan_folder(folder)
        if len(listing[cls]) < opts.per_class and not opts.allow_fewer:
            raise ImageSourceError(f"ImageNet class {cls} ({wnids[cls]}): folder {folder} has only "
                                   f"{len(listing[cls])} image files, {opts.per_class} needed "
                                   "(use allow_fewer=True to accept fewer)")
    if order is None:
        for cls in classes:
            for path in listing[cls]:
                yield cls, path.relative_to(root).as_posix(), _file_loader(path)
        return
    found = {path.name: (cls, path) for cls in classes for path in listing[cls]}
    missing = [name for name in order if name not in found]
    if missing:
        raise FileNotFoundError(f"{len(missing)} file(s) of the order file are not in the class folders under {root}, "
                                f"e.g. {missing[0]}")
    for name in order:
        cls, path = found[name]
        yield cls, path.relative_to(root).as_posix(), _file_loader(path)


def _file_loader(path: Path) -> Callable[[int, int], ImageRecord]:
    return lambda min_side, max_pixels: load_image(path, min_side=min_side, max_pixels=max_pixels)


def _cell_loader(value: Any, name: str) -> Callable[[int, int], ImageRecord]:
    return lambda min_side, max_pixels: decode_dataset_value(
        value, name, min_side=min_side, max_pixels=max_pixels)


def _label_values(ds: Any, label_column: str) -> list[int] | None:
    """All labels of a map-style dataset (without touching images); None for streaming ones."""
    import datasets

    if not isinstance(ds, datasets.Dataset):
        return None
    return [int(v) for v in ds.select_columns([label_column]).with_format(None)[label_column]]


def _dataset_candidates(src: Any, classes: tuple[int, ...],
                        label_column: str) -> Iterator[_Candidate]:
    """Yield dataset items of the wanted classes in dataset order (images still encoded)."""
    col = src.image_column
    features = src.dataset.features
    if features is not None and label_column not in features:
        raise ImageSourceError(f"dataset {src.name} has no label column {label_column!r}; "
                               f"columns: {list(features)}")
    ds = src.dataset.select_columns([col, label_column])
    wanted = set(classes)
    labels = _label_values(ds, label_column)
    if labels is not None:
        rows = ((i, ds[i]) for i, lab in enumerate(labels) if lab in wanted)
    else:
        rows = ((i, r) for i, r in enumerate(ds) if int(r[label_column]) in wanted)
    for i, row in rows:
        name = f"hf:{src.name}[{src.split}]#{i}"
        yield int(row[label_column]), name, _cell_loader(row[col], name)




# --------------------------------------------------------------------------- builder


@dataclass(frozen=True)
class _Options:
    """What a build keeps and how it writes it (the sizes and limits given to :func:`build_imagenet_subset`)."""

    per_class: int
    min_side: int
    size: int
    max_pixels: int
    allow_fewer: bool


@dataclass
class _Opened:
    """An opened source: ``kind`` "folder" (``src`` the train folder) or "datasets" (``src`` a DatasetSource),
    class index -> wnid and where that table came from, and the published order of a folder's files."""

    kind: str
    src: Any
    table: dict[int, str]
    provenance: str
    wnids: dict[int, str] = field(default_factory=dict)
    order: list[str] | None = None
    order_file: str | None = None


def _process(cand: _Candidate, sel: _Selection, out_dir: Path, wnids: dict[int, str], opts: _Options) -> None:
    """Validate one candidate; keep it (temp PNG + manifest entry) or record why it was skipped."""
    cls, original, loader = cand
    try:
        rec = loader(opts.min_side, opts.max_pixels)
    except BadImageError as e:
        target = sel.skipped_small if e.code == "too_small" else sel.skipped_bad
        target.append({"class": cls, "source": original, "reason": e.reason})
        return
    k = sel.counts[cls]
    seq = len(sel.files)
    final = out_dir / file_name(seq, cls, wnids[cls], sel.per_class * len(sel.counts))
    out = published_crop(to_rgb(rec.image, original), opts.size)
    sel.temps.append((write_temp(out, final), final))
    sel.counts[cls] = k + 1
    sel.files.append({
        "file": final.name, "order": seq, "class": cls, "wnid": wnids[cls], "k": k, "original": original,
        "original_size": [rec.width, rec.height], "original_mode": rec.original_mode,
        "source_sha256": rec.sha256, "sha256": pixel_sha256(out),
    })


def _check_counts(sel: _Selection, wnids: dict[int, str], opts: _Options) -> None:
    """Raise (or warn, with ``allow_fewer``) if a class has fewer than ``per_class`` images."""
    short = {c: n for c, n in sel.counts.items() if n < sel.per_class}
    if not short:
        return
    details = "; ".join(
        f"class {c} ({wnids[c]}): {n} eligible of {sel.per_class} needed, "
        f"{sum(s['class'] == c for s in sel.skipped_small)} with short side < {opts.min_side} px, "
        f"{sum(s['class'] == c for s in sel.skipped_bad)} unreadable" for c, n in short.items())
    if not opts.allow_fewer:
        raise ImageSourceError(f"too few eligible images: {details} (use allow_fewer=True to accept)")
    warnings.warn(f"writing fewer images than requested: {details}", RuntimeWarning, stacklevel=3)


def _open_source(source: Any, split: str, image_column: str | None, synset_mapping: Any) -> _Opened:
    """Classify ``source`` as a local folder or a ``datasets`` source and find its class -> wnid table."""
    is_folder = isinstance(source, (str, os.PathLike)) and not str(source).startswith("hf:")
    if is_folder and not is_saved_dataset(source):
        root = Path(source).expanduser()
        if not root.is_dir():
            raise FileNotFoundError(f"ImageNet source folder not found: {os.path.abspath(root)}")
        return _Opened("folder", root, *_wnid_table(root, split, synset_mapping))
    src = open_dataset_source(source, split=split, image_column=image_column)
    return _Opened("datasets", src, *_wnid_table(None, split, synset_mapping))


def _resolve_classes(opened: _Opened, classes: tuple[int, ...], label_column: str, order_file: Any,
                     split: str) -> None:
    """Fill in the wnids of ``classes`` and the folder's order; a folder also needs every wnid and its train root."""
    if order_file is not None:
        opened.order, opened.order_file = read_order_file(order_file), os.path.abspath(order_file)
        if opened.kind != "folder":
            raise UsageError("order_file is for a local ILSVRC folder; a datasets source keeps its own stream order")
    table = opened.table
    if opened.kind == "datasets":
        table = {**_classlabel_wnids(opened.src, label_column), **table}
    opened.wnids = {c: table.get(c, "unknown") for c in classes}
    if opened.kind == "folder":
        unknown = [c for c in classes if opened.wnids[c] == "unknown"]
        if unknown:
            raise ImageSourceError(f"no WordNet id known for class(es) {unknown}: pass synset_mapping="
                                   "<LOC_synset_mapping.txt> (ILSVRC class index order)")
        opened.src = _train_root(opened.src, split, list(opened.wnids.values()))


def _candidates(opened: _Opened, classes: tuple[int, ...], opts: _Options, label_column: str) -> Iterator[_Candidate]:
    if opened.kind == "folder":
        return _folder_candidates(opened.src, classes, opened.wnids, opts, opened.order)
    return _dataset_candidates(opened.src, classes, label_column)


def _validate_args(classes: Any, per_class: int, min_side: int, size: int) -> tuple[int, ...]:
    classes = tuple(int(c) for c in classes)
    if not classes or len(set(classes)) != len(classes):
        raise UsageError(f"classes must be a non-empty list of distinct indices, got {classes}")
    if per_class < 1 or size < 1 or min_side < 1:
        raise UsageError("per_class, size and min_side must all be >= 1")
    return classes


def build_imagenet_subset(
    source: Any, out_dir: str | os.PathLike, *, classes: tuple[int, ...] = PAPER_CLASSES,
    per_class: int = 100, min_side: int = 350, size: int = 512, split: str = "train",
    allow_fewer: bool = False, synset_mapping: str | os.PathLike | None = None,
    label_column: str = "label", image_column: str | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS, order_file: str | os.PathLike | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> list[Path]:
    """Build the paper's ImageNet subset as ``size`` x ``size`` px PNGs plus ``manifest.json``.

    ``source``: an ILSVRC train folder (``<root>/<wnid>/*.JPEG``, or its parent holding
    ``<split>/``), a ``datasets`` object, a ``save_to_disk`` folder, or ``"hf:NAME[:SPLIT]"``
    (with an integer ``label_column`` holding ILSVRC class indices). ``min_side``: images with
    a shorter short side (px) are skipped; ``size``: output side (px). Class -> wnid comes from
    ``synset_mapping`` (or a ``LOC_synset_mapping.txt`` found in/above the folder), else 1000
    sorted wnid folders, else :data:`IMAGENET_WNIDS`. A missing class folder, or a class with
    fewer than ``per_class`` eligible images, is an error unless ``allow_fewer=True`` (then a
    warning). ``order_file``: for a folder source, file names in the published order (one per
    line; see :mod:`sdaudit.paper_set`): candidates are taken in that order. ``progress(done, total)`` is
    called after each kept image. Returns the PNG paths in selection order (their sorted order).
    """
    classes = _validate_args(classes, per_class, min_side, size)
    opts = _Options(per_class, min_side, size, max_pixels, allow_fewer)
    out_dir = Path(out_dir)
    previous = previous_build(out_dir)  # before reading the source: a folder that is not ours fails at once
    opened = _open_source(source, split, image_column, synset_mapping)
    _resolve_classes(opened, classes, label_column, order_file, split)
    candidates = _candidates(opened, classes, opts, label_column)
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_own_temps(out_dir)
    sel = _Selection(per_class, {c: 0 for c in classes})
    try:
        _select(candidates, sel, out_dir, (opened.wnids, opts), progress)
        _check_counts(sel, opened.wnids, opts)
        return commit(out_dir, _manifest(sel, opened, classes, opts, split), sel.temps, previous)
    finally:
        for tmp, _final in sel.temps:
            tmp.unlink(missing_ok=True)


def _select(candidates: Iterator[_Candidate], sel: _Selection, out_dir: Path,
            how: tuple[dict[int, str], _Options], progress: Callable[[int, int], None] | None) -> None:
    """Take candidates until every class is full; ``how`` = (class -> wnid, options)."""
    wnids, opts = how
    for cand in candidates:
        if not sel.full(cand[0]):
            kept = len(sel.files)
            _process(cand, sel, out_dir, wnids, opts)
            if progress is not None and len(sel.files) > kept:
                progress(len(sel.files), opts.per_class * len(sel.counts))
        if sel.all_full():
            break


_ORDER_NOTES = {
    "stream": "the datasets source's order: the published order when the source is the imagenet-1k train stream",
    "order-file": "the order file's order",
    "folder": "class by class, sorted file names: NOT the published order (the stream order cannot be known from "
              "a folder); give --order-file for the published labels",
}


def _manifest(sel: _Selection, opened: _Opened, classes: tuple[int, ...], opts: _Options, split: str) -> dict:
    """The manifest of a finished selection (without its format and completion marks: see ``commit``)."""
    order = "stream" if opened.kind == "datasets" else "order-file" if opened.order is not None else "folder"
    return {
        "source": os.path.abspath(opened.src) if opened.kind == "folder" else opened.src.name,
        "source_kind": opened.kind, "wnid_mapping": opened.provenance,
        "classes": list(classes), "wnids": {str(c): opened.wnids[c] for c in classes},
        "per_class": opts.per_class, "min_side": opts.min_side, "size": opts.size, "split": split, "order": order,
        "order_file": opened.order_file,
        "preprocessing": "EXIF-upright 8-bit RGB; the published crop box (w//2 - s//2, h//2 - s//2, w//2 + s//2, "
                         "h//2 + s//2), s = short side; PIL's default resize filter (bicubic)",
        "order_note": _ORDER_NOTES[order],
        "counts": {str(c): sel.counts[c] for c in classes},
        "files": sel.files, "skipped_small": sel.skipped_small, "skipped_bad": sel.skipped_bad,
    }
