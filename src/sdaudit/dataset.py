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

Crash safety: every PNG is first written to a hidden temporary file in ``out_dir``; only when
the whole selection succeeded are they renamed into place (``os.replace``, atomic), between two
atomic writes of ``manifest.json``: before, marked ``"complete": false`` and listing the new and the
previous files; after, ``"complete": true``. A failed or interrupted run leaves no partial PNGs under
final names and no file of its own unlisted; rerunning rebuilds the same set.

Ownership: ``out_dir`` must be new, empty, or a folder this function built before, recognised by
its ``manifest.json`` with ``"format": "sdaudit-imagenet-subset/1"``; any other non-empty folder
is refused (:class:`~sdaudit.errors.OutputPathError`) before anything is read or written. Of the
files that manifest lists, those not part of the new set are removed, but only names of exactly the
form this function writes (``<seq>_<class>_<wnid>.png``, or an earlier build's ``<class>_<wnid>_<k>.png``:
no folders, no ``..``) that are regular files,
not links. Nothing else in ``out_dir`` is ever deleted.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from .errors import OutputPathError, UsageError
from .images import (
    DEFAULT_MAX_PIXELS, BadImageError, ImageRecord, decode_dataset_value, is_saved_dataset,
    load_image, open_dataset_source, pixel_sha256, scan_folder, to_rgb,
)
from .paper_set import published_crop, read_order_file
from .validation import check_output_dir

__all__ = ["PAPER_CLASSES", "IMAGENET_WNIDS", "build_imagenet_subset", "read_synset_mapping"]

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
MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "sdaudit-imagenet-subset/1"
# Exactly the names _file_name() writes, and the temporary names of an interrupted build.
# (``<seq>_<class>_<wnid>.png``; ``<class>_<wnid>_<k>.png`` of builds before the published order was kept)
_OWN_FILE_RE = re.compile(r"\d{3,}_\d+_(?:n\d{8}|unknown)\.png|\d+_(?:n\d{8}|unknown)_\d{3,}\.png")
_OWN_TEMP_RE = re.compile(r"\.(?:\d{3,}_\d+_(?:n\d{8}|unknown)\.png|\d+_(?:n\d{8}|unknown)_\d{3,}\.png|"
                          r"manifest\.json)\.partial")


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
            raise UsageError(f"{path}: line {index + 1} does not start with a WordNet id: {line!r}")
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


def _folder_candidates(root: Path, classes: tuple[int, ...], wnids: dict[int, str],
                       per_class: int, allow_fewer: bool, order: list[str] | None = None) -> Iterator[_Candidate]:
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
        if len(listing[cls]) < per_class and not allow_fewer:
            raise UsageError(f"ImageNet class {cls} ({wnids[cls]}): folder {folder} has only "
                             f"{len(listing[cls])} image files, {per_class} needed "
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
        raise UsageError(f"dataset {src.name} has no label column {label_column!r}; "
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


# --------------------------------------------------------------------------- writing


def _write_temp(img: Any, final: Path) -> Path:
    """Write ``img`` as PNG to a hidden temporary file beside ``final``; returns its path."""
    tmp = final.with_name(f".{final.name}.partial")
    with open(tmp, "wb") as fh:
        img.save(fh, format="PNG")
        fh.flush()
        os.fsync(fh.fileno())
    return tmp


def _write_json_atomic(path: Path, data: dict) -> None:
    """Write JSON to ``path`` via a temporary file and ``os.replace``."""
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _own_manifest_names(out_dir: Path) -> list[str] | None:
    """The file names listed by ``out_dir``'s manifest if this module wrote it (its format tag), else None."""
    try:
        old = json.loads((out_dir / MANIFEST_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(old, dict) or old.get("format") != MANIFEST_FORMAT or not isinstance(old.get("files"), list):
        return None
    return [e["file"] for e in old["files"] if isinstance(e, dict) and isinstance(e.get("file"), str)]


def _is_own_file(out_dir: Path, name: str) -> bool:
    """``name`` is a PNG name this module writes, directly in ``out_dir``, and a regular file (not a link)."""
    path = out_dir / name
    return (_OWN_FILE_RE.fullmatch(name) is not None and not path.is_symlink()
            and path.resolve().parent == out_dir.resolve())


def _previous_build(out_dir: Path) -> list[str]:
    """Files of an earlier build in ``out_dir`` that may be replaced or removed; [] for a new or empty folder.

    A non-empty folder without this module's manifest (someone else's files, or another tool's
    ``manifest.json``) is refused: a rebuild there could overwrite or delete what is not ours.
    """
    check_output_dir(out_dir, name="output folder")
    if not out_dir.is_dir():
        return []
    names = _own_manifest_names(out_dir)
    if names is None:
        foreign = sorted(p.name for p in out_dir.iterdir() if not _OWN_TEMP_RE.fullmatch(p.name))
        if foreign:
            raise OutputPathError(
                f"{out_dir}: not empty ({', '.join(foreign[:3])}{', ...' if len(foreign) > 3 else ''}) and not "
                f"an image set built by sdaudit (no manifest.json with format {MANIFEST_FORMAT}); "
                "choose a new or empty output folder")
        return []
    return [name for name in names if _is_own_file(out_dir, name)]


def _remove_own_temps(out_dir: Path) -> None:
    """Delete the hidden temporary files an interrupted build of this module left (its own names only)."""
    for path in out_dir.iterdir():
        if _OWN_TEMP_RE.fullmatch(path.name) and path.is_file() and not path.is_symlink():
            path.unlink(missing_ok=True)


def _remove_stale(out_dir: Path, previous: list[str], keep: set[str]) -> None:
    """Delete the earlier build's PNGs (checked by :func:`_previous_build`) that are not in ``keep``."""
    for name in previous:
        if name not in keep and _is_own_file(out_dir, name):
            (out_dir / name).unlink(missing_ok=True)


def _file_name(seq: int, cls: int, wnid: str, total: int) -> str:
    """``<seq>_<class>_<wnid>.png``, seq = the selection index zero-padded to max(3, digits of total - 1), so
    that the folder's sorted order is the selection order (the published labels index that order)."""
    width = max(3, len(str(total - 1)))
    return f"{seq:0{width}d}_{cls}_{wnid}.png"


# --------------------------------------------------------------------------- builder


def _process(cand: _Candidate, sel: _Selection, out_dir: Path, wnids: dict[int, str],
             min_side: int, size: int, max_pixels: int) -> None:
    """Validate one candidate; keep it (temp PNG + manifest entry) or record why it was skipped."""
    cls, original, loader = cand
    try:
        rec = loader(min_side, max_pixels)
    except BadImageError as e:
        target = sel.skipped_small if e.code == "too_small" else sel.skipped_bad
        target.append({"class": cls, "source": original, "reason": e.reason})
        return
    k = sel.counts[cls]
    seq = len(sel.files)
    final = out_dir / _file_name(seq, cls, wnids[cls], sel.per_class * len(sel.counts))
    out = published_crop(to_rgb(rec.image, original), size)
    sel.temps.append((_write_temp(out, final), final))
    sel.counts[cls] = k + 1
    sel.files.append({
        "file": final.name, "order": seq, "class": cls, "wnid": wnids[cls], "k": k, "original": original,
        "original_size": [rec.width, rec.height], "original_mode": rec.original_mode,
        "source_sha256": rec.sha256, "sha256": pixel_sha256(out),
    })


def _check_counts(sel: _Selection, wnids: dict[int, str], allow_fewer: bool,
                  min_side: int) -> None:
    """Raise (or warn, with ``allow_fewer``) if a class has fewer than ``per_class`` images."""
    short = {c: n for c, n in sel.counts.items() if n < sel.per_class}
    if not short:
        return
    details = "; ".join(
        f"class {c} ({wnids[c]}): {n} eligible of {sel.per_class} needed, "
        f"{sum(s['class'] == c for s in sel.skipped_small)} with short side < {min_side} px, "
        f"{sum(s['class'] == c for s in sel.skipped_bad)} unreadable" for c, n in short.items())
    if not allow_fewer:
        raise UsageError(f"too few eligible images: {details} (use allow_fewer=True to accept)")
    warnings.warn(f"writing fewer images than requested: {details}", RuntimeWarning, stacklevel=3)


def _open_source(source: Any, split: str, image_column: str | None, synset_mapping: Any):
    """Classify ``source``: returns (kind, folder root or DatasetSource, wnid table, provenance)."""
    is_folder = isinstance(source, (str, os.PathLike)) and not str(source).startswith("hf:")
    if is_folder and not is_saved_dataset(source):
        root = Path(source).expanduser()
        if not root.is_dir():
            raise FileNotFoundError(f"ImageNet source folder not found: {os.path.abspath(root)}")
        table, provenance = _wnid_table(root, split, synset_mapping)
        return "folder", root, table, provenance
    src = open_dataset_source(source, split=split, image_column=image_column)
    table, provenance = _wnid_table(None, split, synset_mapping)
    return "datasets", src, table, provenance


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
    out_dir = Path(out_dir)
    previous = _previous_build(out_dir)  # before reading the source: a folder that is not ours fails at once
    kind, src, table, provenance = _open_source(source, split, image_column, synset_mapping)
    order = read_order_file(order_file) if order_file is not None else None
    if order is not None and kind != "folder":
        raise UsageError("order_file is for a local ILSVRC folder; a datasets source keeps its own stream order")
    if kind == "datasets":
        table = {**_classlabel_wnids(src, label_column), **table}
    wnids = {c: table.get(c, "unknown") for c in classes}
    if kind == "folder":
        unknown = [c for c in classes if wnids[c] == "unknown"]
        if unknown:
            raise UsageError(f"no WordNet id known for class(es) {unknown}: pass synset_mapping="
                             "<LOC_synset_mapping.txt> (ILSVRC class index order)")
        src = _train_root(src, split, list(wnids.values()))
        candidates = _folder_candidates(src, classes, wnids, per_class, allow_fewer, order)
    else:
        candidates = _dataset_candidates(src, classes, label_column)
    out_dir.mkdir(parents=True, exist_ok=True)
    _remove_own_temps(out_dir)
    sel = _Selection(per_class, {c: 0 for c in classes})
    try:
        for cand in candidates:
            if not sel.full(cand[0]):
                kept = len(sel.files)
                _process(cand, sel, out_dir, wnids, min_side, size, max_pixels)
                if progress is not None and len(sel.files) > kept:
                    progress(len(sel.files), per_class * len(classes))
            if sel.all_full():
                break
        _check_counts(sel, wnids, allow_fewer, min_side)
        order_kind = "stream" if kind == "datasets" else "order-file" if order is not None else "folder"
        return _commit(sel, out_dir, previous, kind, src, classes, wnids, provenance,
                       dict(per_class=per_class, min_side=min_side, size=size, split=split, order=order_kind,
                            order_file=os.path.abspath(order_file) if order_file is not None else None))
    finally:
        for tmp, _final in sel.temps:
            tmp.unlink(missing_ok=True)


def _commit(sel: _Selection, out_dir: Path, previous: list[str], kind: str, src: Any, classes: tuple[int, ...],
            wnids: dict[int, str], provenance: str, params: dict) -> list[Path]:
    """Rename the temporary PNGs into place, drop stale files, write the manifest.

    A manifest marked ``"complete": false`` that lists the new and the previous files goes first: a
    crash at any moment then leaves every PNG written here listed in an sdaudit manifest (so a rerun
    may replace or remove it) and the folder marked unfinished, never an old manifest over new PNGs.
    """
    keep = {e["file"] for e in sel.files}  # sel.files is in selection order: the order the labels index
    source_name = os.path.abspath(src) if kind == "folder" else src.name
    manifest = {
        "format": MANIFEST_FORMAT, "complete": False,
        "source": source_name, "source_kind": kind, "wnid_mapping": provenance,
        "classes": list(classes), "wnids": {str(c): wnids[c] for c in classes},
        **params,
        "preprocessing": "EXIF-upright 8-bit RGB; the published crop box (w//2 - s//2, h//2 - s//2, w//2 + s//2, "
                         "h//2 + s//2), s = short side; PIL's default resize filter (bicubic)",
        "order_note": {"stream": "the datasets source's order: the published order when the source is the "
                                 "imagenet-1k train stream", "order-file": "the order file's order",
                       "folder": "class by class, sorted file names: NOT the published order (the stream order "
                                 "cannot be known from a folder); give --order-file for the published labels"}[
            params["order"]],
        "counts": {str(c): sel.counts[c] for c in classes},
        "files": sel.files, "skipped_small": sel.skipped_small, "skipped_bad": sel.skipped_bad,
    }
    _write_json_atomic(out_dir / MANIFEST_NAME,
                       {**manifest, "files": sel.files + [{"file": n} for n in previous if n not in keep]})
    by_name = {final.name: (tmp, final) for tmp, final in sel.temps}
    paths = []
    for entry in sel.files:
        tmp, final = by_name[entry["file"]]
        os.replace(tmp, final)
        paths.append(final)
    _remove_stale(out_dir, previous, keep)
    manifest["complete"] = True
    _write_json_atomic(out_dir / MANIFEST_NAME, manifest)
    return paths
