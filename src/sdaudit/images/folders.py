"""What a folder or list file holds: the image files a scan reads (and what it leaves out, and why),
audit output folders that are never inputs, and ``datasets`` ``save_to_disk`` folders."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from PIL import Image

from .records import IMAGE_EXTENSIONS, OTHER_IMAGE_EXTENSIONS, BadImageError, printable_path

#: A source file with one of these endings lists image paths, one per line.
LIST_FILE_EXTENSIONS = frozenset({".txt", ".lst"})


def _hidden(name: str) -> bool:
    return name.startswith(".")


def scan_folder(root: str | os.PathLike, *, skipped: list | None = None) -> list[Path]:
    """Image files under ``root`` (recursive), hidden files/folders skipped, image extensions
    only (case-insensitive), sorted by relative path (component-wise) for determinism.

    Left out, and appended to ``skipped`` as :class:`BadImageError` (code in parentheses): sub-folders
    that hold an sdaudit audit's outputs (``sdaudit_output``, see :func:`is_sdaudit_output`), files of
    an image format Pillow cannot read here (``unsupported_format``, see :data:`OTHER_IMAGE_EXTENSIONS`)
    and folders that cannot be listed (``unreadable_folder``). Without ``skipped``, an unreadable
    folder raises that error; the rest is left out silently. Other files (.txt, .json...) are ignored.
    """
    root = Path(root)
    scan = _Scan(root, IMAGE_EXTENSIONS | (OTHER_IMAGE_EXTENSIONS & frozenset(Image.registered_extensions())),
                 raise_unreadable=skipped is None)
    for dirpath, dirnames, filenames in os.walk(root, onerror=scan.unreadable):
        dirnames[:] = [d for d in dirnames if scan.enters(Path(dirpath, d))]
        for name in filenames:
            scan.file(Path(dirpath, name))
    scan.found.sort(key=lambda p: p.relative_to(root).parts)
    if skipped is not None:
        skipped.extend(sorted(scan.notes, key=lambda e: e.source))
    return scan.found


class _Scan:
    """What one :func:`scan_folder` walk found and left out (as :class:`BadImageError` notes)."""

    def __init__(self, root: Path, readable: frozenset, *, raise_unreadable: bool):
        self.root, self.readable, self.raise_unreadable = root, readable, raise_unreadable
        self.found: list[Path] = []
        self.notes: list[BadImageError] = []

    def note(self, path: Any, reason: str, code: str) -> None:
        self.notes.append(BadImageError(printable_path(path)[0], reason, code))

    def unreadable(self, err: OSError) -> None:
        """``os.walk``'s error handler: a folder that cannot be listed."""
        self.note(err.filename, f"cannot list this folder ({err.strerror or err}); its images are not read",
                  "unreadable_folder")
        if self.raise_unreadable:
            raise self.notes[-1] from err

    def enters(self, folder: Path) -> bool:
        """Whether the walk goes into ``folder``: not hidden, not an audit's outputs (noted)."""
        if _hidden(folder.name):
            return False
        if is_sdaudit_output(folder):
            self.note(folder, "folder of an sdaudit audit's outputs (its figures are not inputs)", "sdaudit_output")
            return False
        return True

    def file(self, path: Path) -> None:
        """Keep an image file Pillow reads here; note one of another image format; ignore the rest."""
        ext = path.suffix.lower()
        if _hidden(path.name):
            return
        if ext in self.readable:
            self.found.append(path)
        elif ext in OTHER_IMAGE_EXTENSIONS:
            self.note(path, f"'{ext}' is not a supported image format here; convert it to PNG or JPEG",
                      "unsupported_format")


def is_sdaudit_output(folder: str | os.PathLike) -> bool:
    """True for a folder an sdaudit audit wrote (its ``results.json``), or the ``figures`` folder in one,
    so that an audit whose output lies inside its image folder never audits its own figures."""
    folder = Path(folder)
    return _has_audit_results(folder) or (folder.name == "figures" and _has_audit_results(folder.parent))


def _has_audit_results(folder: Path) -> bool:
    try:
        with open(folder / "results.json", "rb") as f:
            head = f.read(256)  # results.json starts with its format; the rest can be megabytes
    except OSError:
        return False
    return b'"format": "sdaudit-audit/' in head


def is_saved_dataset(path: str | os.PathLike) -> bool:
    """True if ``path`` is a folder written by ``save_to_disk`` (Dataset or DatasetDict)."""
    p = Path(path)
    return p.is_dir() and ((p / "dataset_dict.json").is_file() or (
        (p / "state.json").is_file() and (p / "dataset_info.json").is_file()))


def read_list_file(path: Path) -> list[Path]:
    """Paths listed one per line (blank lines and '#' comments skipped), relative to the file."""
    out = []
    # bytes decoded as the OS decodes file names, so that a listed non-UTF-8 name still opens
    for line in os.fsdecode(path.read_bytes()).splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            p = Path(line).expanduser()
            out.append(p if p.is_absolute() else path.parent / p)
    return out


