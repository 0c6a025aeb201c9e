"""Checks of option values and output paths that are the user's to fix, each failing with one clear line.

Shared by the command line (which checks every ``--out`` before loading a model) and the Python API's
settings objects (``ExtractionSettings.validated()``, ``AuditSettings.validated()``), so both refuse
the same values with the same words.
"""

from __future__ import annotations

import difflib
import errno
import os
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from .errors import OutputPathError, UsageError

#: Pixels per U-Net input step: 8 px per latent token and 3 U-Net downsamplings (SD's layout).
SIZE_FACTOR = 64
#: Largest input side accepted: 4096 px is a 512 x 512 latent, already ~16 GB of activations per image
#: for SD; beyond that the first allocation fails (a MemoryError instead of a message).
MAX_SIZE = 4096
#: numpy's seeds are unsigned 32-bit integers.
MAX_SEED = 2**32 - 1

# errno values that only a write can produce: whatever the file, the output cannot be written.
_WRITE_ONLY_ERRNOS = {errno.ENOSPC, errno.EROFS, getattr(errno, "EDQUOT", errno.ENOSPC)}
# errno values that a read can produce too: an output error only for a file under an output folder.
_PATH_ERRNOS = {errno.EACCES, errno.EPERM, errno.ENOTDIR}


def check_size(size: int, *, name: str = "size", factor: int = SIZE_FACTOR, maximum: int = MAX_SIZE) -> int:
    """``size`` if a multiple of ``factor`` from ``factor`` to ``maximum`` px, else a UsageError naming ``name``."""
    if not factor <= size <= maximum or size % factor:
        raise UsageError(f"{name} {size}: give a multiple of {factor} px between {factor} and {maximum} "
                         f"(8 px per latent token, 3 U-Net downsamplings)")
    return int(size)


def check_seed(seed: int, *, name: str = "seed") -> int:
    """``seed`` if numpy and torch both accept it (0 <= seed < 2**32), else a UsageError naming ``name``."""
    if not 0 <= seed <= MAX_SEED:
        raise UsageError(f"{name} {seed}: give an integer from 0 to {MAX_SEED}")
    return int(seed)


def close_matches(value: str, known: Sequence[str], *, n: int = 3) -> list[str]:
    """The few names of ``known`` closest to ``value`` (difflib's ratio, case-insensitive, at least 0.6), best
    first; ties go to the longer common prefix ('sd16' -> 'sd15' before 'sd21')."""
    value = str(value).lower()

    def score(name: str) -> tuple[float, int]:
        name = name.lower()
        return difflib.SequenceMatcher(None, value, name).ratio(), len(os.path.commonprefix([value, name]))

    scored = sorted(((score(str(k)), str(k)) for k in known), key=lambda item: item[0], reverse=True)
    return [name for (ratio, _), name in scored if ratio >= 0.6][:n]


def did_you_mean(value: str, known: Sequence[str], *, n: int = 3) -> str:
    """" (did you mean 'a' or 'b'?)" for the names of ``known`` closest to ``value``; '' when none is close.
    Appended to an "unknown NAME" message, so a typo is answered with its fix instead of a list to scan."""
    matches = close_matches(value, known, n=n)
    return f" (did you mean {' or '.join(map(repr, matches))}?)" if matches else ""


def check_choices(values: Sequence[str], known: Sequence[str], *, name: str) -> list[str]:
    """A non-empty list of known names, else a UsageError naming ``name`` and listing ``known``."""
    unknown = [v for v in values if v not in known]
    if not values or unknown:
        what = f"unknown {', '.join(map(repr, unknown))}" if unknown else "none given"
        hint = did_you_mean(unknown[0], known) if unknown else ""
        raise UsageError(f"{name}: {what}{hint}; choose one or more of {', '.join(known)}")
    return list(values)


def parse_int_list(text: str, *, name: str) -> list[int]:
    """'50' or '0,50,200' -> [50] or [0, 50, 200]; a :class:`UsageError` naming ``name`` otherwise."""
    parts = [p.strip() for p in str(text).split(",")]
    if not parts or not all(p.isascii() and p.isdigit() for p in parts):
        raise UsageError(f"{name} takes a whole number or a comma-separated list of them (e.g. 0,50,200), got {text!r}")
    return [int(p) for p in parts]


def _nearest_existing(path: Path) -> Path:
    """``path`` or its closest ancestor that exists (a link counts, dangling or not)."""
    path = Path(os.path.abspath(path))
    while not os.path.lexists(path) and path != path.parent:
        path = path.parent
    return path


def check_output_dir(path: str | os.PathLike, *, name: str = "--out") -> Path:
    """``path`` if it is, or can become, a writable folder; else an OutputPathError naming it.

    Checked up front, before any model is loaded: a file in the way, a folder under a file, or a
    folder that cannot be written would otherwise only fail after minutes of work.
    """
    path = Path(path)
    existing = _nearest_existing(path)
    if existing == Path(os.path.abspath(path)) and not existing.is_dir():
        raise OutputPathError(f"{name} {path}: is a file, not a folder")
    if not existing.is_dir():
        raise OutputPathError(f"{name} {path}: {existing} is a file, so no folder can be made under it")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputPathError(f"{name} {path}: {existing} is not writable")
    return path


def _inside(filename, folders: Sequence[Path]) -> bool:
    target = Path(os.path.abspath(os.fsdecode(filename)))
    return any(target == folder or folder in target.parents for folder in folders)


@contextmanager
def output_errors(*outputs: str | os.PathLike | None) -> Iterator[None]:
    """Turn an OSError of writing the outputs (disk full, quota, read-only, no permission) into an
    :class:`~sdaudit.errors.OutputPathError` naming the file or folder; every other error passes unchanged.

    Disk full, quota and read-only file system can only come from a write, so they always qualify;
    permission and not-a-folder errors only for a file inside one of ``outputs`` (an unreadable input
    image raises them too, and that is not an output error).
    """
    folders = [Path(os.path.abspath(p)) for p in outputs if p is not None]
    try:
        yield
    except OutputPathError:
        raise
    except OSError as error:
        filename = error.filename
        if error.errno in _WRITE_ONLY_ERRNOS or (
                error.errno in _PATH_ERRNOS and filename is not None and _inside(filename, folders)):
            where = filename if filename is not None else (folders[0] if folders else "the output")
            raise OutputPathError(f"cannot write {where}: {error.strerror or error}") from error
        raise


def _holds_work(folder: Path) -> bool:
    """Whether ``folder`` holds work worth resuming: a store that committed an image (a non-empty images.jsonl),
    an audit's checkpoint (``.checkpoint*.npz``) or its results."""
    stores = any(p.is_file() and p.stat().st_size > 0 for p in folder.rglob("images.jsonl"))
    return stores or any(folder.rglob(".checkpoint*.npz")) or any(folder.rglob("results.json"))


@contextmanager
def removed_on_failure(out: str | os.PathLike | None) -> Iterator[None]:
    """Remove the output folder ``out`` made by a command that then failed before committing any work.

    A bad image or option found after the store was created would otherwise leave an empty folder and a
    0-image store behind; a folder that existed before, or holds work to resume, is kept.
    """
    path = None if out is None else Path(out)
    existed = path is None or os.path.lexists(path)
    try:
        yield
    except Exception:
        if not existed and path.is_dir() and not path.is_symlink() and not _holds_work(path):
            shutil.rmtree(path, ignore_errors=True)
        raise
