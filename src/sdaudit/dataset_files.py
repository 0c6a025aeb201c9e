"""The files of an image set built by ``sdaudit dataset imagenet-subset``: its ``manifest.json``, the names it
writes, and the crash-safe protocol that puts a new build in place of an earlier one.

Crash safety: every PNG is first written to a hidden temporary file in the output folder; only when the
whole selection succeeded are they renamed into place (``os.replace``, atomic), between two atomic writes of
``manifest.json``: before, marked ``"complete": false`` and listing the new and the previous files; after,
``"complete": true``. A failed or interrupted run leaves no partial PNGs under final names and no file of
its own unlisted.

Ownership: the folder must be new, empty, or one built before, recognised by its ``manifest.json`` with
``"format": "sdaudit-imagenet-subset/1"``; any other non-empty folder is refused
(:class:`~sdaudit.errors.OutputPathError`). Of the files that manifest lists, those not part of the new set
are removed, but only names of exactly the form written here (``<seq>_<class>_<wnid>.png``, or an earlier
build's ``<class>_<wnid>_<k>.png``: no folders, no ``..``) that are regular files, not links.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from .errors import OutputPathError
from .validation import check_output_dir

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "sdaudit-imagenet-subset/1"
# Exactly the names file_name() writes, and the temporary names of an interrupted build.
# (``<seq>_<class>_<wnid>.png``; ``<class>_<wnid>_<k>.png`` of builds before the published order was kept)
_OWN_FILE_RE = re.compile(r"\d{3,}_\d+_(?:n\d{8}|unknown)\.png|\d+_(?:n\d{8}|unknown)_\d{3,}\.png")
_OWN_TEMP_RE = re.compile(r"\.(?:\d{3,}_\d+_(?:n\d{8}|unknown)\.png|\d+_(?:n\d{8}|unknown)_\d{3,}\.png|"
                          r"manifest\.json)\.partial")


def read_manifest(folder: str | os.PathLike) -> dict | None:
    """The manifest of an image set built by sdaudit in ``folder`` (its format tag checked), else None."""
    try:
        data = json.loads((Path(folder) / MANIFEST_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("format") == MANIFEST_FORMAT else None


def file_name(seq: int, cls: int, wnid: str, total: int) -> str:
    """``<seq>_<class>_<wnid>.png``, seq = the selection index zero-padded to max(3, digits of total - 1), so
    that the folder's sorted order is the selection order (the published labels index that order)."""
    width = max(3, len(str(total - 1)))
    return f"{seq:0{width}d}_{cls}_{wnid}.png"


def write_temp(img: Any, final: Path) -> Path:
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
    """The file names listed by ``out_dir``'s manifest if sdaudit wrote it (its format tag), else None."""
    old = read_manifest(out_dir)
    if old is None or not isinstance(old.get("files"), list):
        return None
    return [e["file"] for e in old["files"] if isinstance(e, dict) and isinstance(e.get("file"), str)]


def _is_own_file(out_dir: Path, name: str) -> bool:
    """``name`` is a PNG name this module writes, directly in ``out_dir``, and a regular file (not a link)."""
    path = out_dir / name
    return (_OWN_FILE_RE.fullmatch(name) is not None and not path.is_symlink()
            and path.resolve().parent == out_dir.resolve())


def previous_build(out_dir: Path) -> list[str]:
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


def remove_own_temps(out_dir: Path) -> None:
    """Delete the hidden temporary files an interrupted build left (this module's names only)."""
    for path in out_dir.iterdir():
        if _OWN_TEMP_RE.fullmatch(path.name) and path.is_file() and not path.is_symlink():
            path.unlink(missing_ok=True)


def _remove_stale(out_dir: Path, previous: list[str], keep: set[str]) -> None:
    """Delete the earlier build's PNGs (checked by :func:`previous_build`) that are not in ``keep``."""
    for name in previous:
        if name not in keep and _is_own_file(out_dir, name):
            (out_dir / name).unlink(missing_ok=True)


def commit(out_dir: Path, manifest: dict, temps: list[tuple[Path, Path]], previous: list[str]) -> list[Path]:
    """Rename the temporary PNGs into place, drop stale files, write the manifest; returns the PNG paths.

    ``manifest["files"]`` lists the new files in selection order (the order the labels index), ``temps`` the
    (temporary, final) path pairs. A manifest marked ``"complete": false`` that lists the new and the previous
    files goes first: a crash at any moment then leaves every PNG written here listed in an sdaudit manifest
    (so a rerun may replace or remove it) and the folder marked unfinished, never an old manifest over new PNGs.
    """
    files = manifest["files"]
    keep = {e["file"] for e in files}
    head = {"format": MANIFEST_FORMAT, "complete": False}
    _write_json_atomic(out_dir / MANIFEST_NAME,
                       {**head, **manifest, "files": files + [{"file": n} for n in previous if n not in keep]})
    by_name = {final.name: (tmp, final) for tmp, final in temps}
    paths = []
    for entry in files:
        tmp, final = by_name[entry["file"]]
        os.replace(tmp, final)
        paths.append(final)
    _remove_stale(out_dir, previous, keep)
    _write_json_atomic(out_dir / MANIFEST_NAME, {**head, **manifest, "complete": True})
    return paths
