"""A store's own records: the errors, the manifest (validated on every open), the committed image
records of ``images.jsonl`` and their per-row checksums."""

from __future__ import annotations

import json
import os
import re
import zlib
from pathlib import Path

import numpy as np

from ..errors import SdauditError
from ..image_ref import ImageRef

# 2: every committed image record carries a crc32 of each of its rows (every layer and the inputs).
# 3: the configuration is the settings tree's (``ExtractionSettings.to_dict()``, latent resolved, plus model,
#    layers, dtype, batch_size: see ``store_config``). Older stores are refused: re-extract them.
FORMAT_VERSION = 3
MANIFEST_ATTR = "sdaudit"
RECORDS_FILE = "images.jsonl"
_KEY = re.compile(r"^[A-Za-z_][\w.\-]*$")  # a layer's array name: never a path that leaves layers/


class StoreError(SdauditError, RuntimeError):
    """A store that cannot be opened, or a request that does not fit its contents."""


class StoreConfigMismatch(StoreError):
    """An extraction whose configuration differs from the one the store was made with."""


class StoreDamagedError(StoreError):
    """A store whose files were altered, truncated or deleted after they were committed."""


class StoreBusyError(StoreError):
    """A store that another process is writing."""


class Float16OverflowError(StoreError):
    """Finite values too large for a float16 store (they would be stored as inf)."""


#: A store's committed row: an :class:`~sdaudit.image_ref.ImageRef` (the name is kept for compatibility).
ImageEntry = ImageRef


def checksum(row: np.ndarray) -> int:
    """crc32 of one image's row (as stored: the store's dtype, C order)."""
    return zlib.crc32(np.ascontiguousarray(row).view(np.uint8).reshape(-1))


def validate_manifest(manifest, where: Path) -> dict:
    """The manifest if every field has the expected type, else a :class:`StoreDamagedError` naming the field."""
    if not isinstance(manifest, dict):
        raise StoreError(f"'{where}' is not an sdaudit store (its zarr.json has no '{MANIFEST_ATTR}' manifest)")
    version = manifest.get("format_version")
    if type(version) is int and 0 < version < FORMAT_VERSION:
        raise StoreError(f"store '{where}' was written by format {version}; this sdaudit reads format "
                         f"{FORMAT_VERSION}: re-extract")
    if version != FORMAT_VERSION:
        raise StoreError(f"'{where}' is not an sdaudit store of format version {FORMAT_VERSION} "
                         f"(it says {version!r})")

    def bad(field: str, value) -> StoreDamagedError:
        return StoreDamagedError(f"store '{where}' is damaged: manifest field {field} is {str(value)[:80]!r}")

    n = manifest.get("num_images")
    if type(n) is not int or n < 0:
        raise bad("num_images", n)
    for field in ("config", "versions", "layers"):
        if not isinstance(manifest.get(field), dict):
            raise bad(field, manifest.get(field))
    for name, meta in manifest["layers"].items():
        shape = meta.get("shape") if isinstance(meta, dict) else None
        if not (isinstance(meta.get("key") if isinstance(meta, dict) else None, str) and _KEY.match(meta["key"])
                and isinstance(shape, list) and len(shape) == 3
                and all(type(s) is int and s > 0 for s in shape)):
            raise bad(f"layers['{name}']", meta)
    return manifest


def read_records(path: Path, n: int, where: Path, *, with_checksums: bool) -> tuple[list[ImageRef], list, int]:
    """The first ``n`` records of ``images.jsonl``: (entries, checksums, byte offset after them).

    Every committed record must parse; lines past ``n`` are a killed run's leftovers and are ignored.
    """
    entries: list[ImageRef] = []
    sums: list = []
    offset = 0
    if n == 0:
        return entries, sums, offset

    def damaged(what: str) -> StoreDamagedError:
        return StoreDamagedError(f"store '{where}' is damaged: {RECORDS_FILE} {what}")

    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise damaged(f"is missing, but the manifest counts {n} committed images") from None
    with f:
        for lineno, line in enumerate(f, 1):
            if lineno > n:
                break
            if not line.endswith(b"\n"):
                raise damaged(f"line {lineno} is cut off")
            try:
                data = json.loads(line)
                crc = data.pop("crc32", None)
                entry = ImageRef.from_json(data)
                if entry.mode is None:  # a store row always records the mode its image had
                    raise TypeError("no mode")
            except (ValueError, TypeError, AttributeError):  # bad JSON or UTF-8, not an object, wrong fields
                raise damaged(f"line {lineno} is not a valid image record") from None
            if entry.index != lineno - 1 or (with_checksums and not _valid_checksums(crc)):
                raise damaged(f"line {lineno} is not the record of image {lineno - 1}")
            entries.append(entry)
            sums.append(crc)
            offset += len(line)
    if len(entries) < n:
        raise damaged(f"has {len(entries)} records, but the manifest counts {n} committed images")
    return entries, sums, offset


def _valid_checksums(crc) -> bool:
    return (isinstance(crc, dict) and isinstance(crc.get("layers"), dict)
            and all(type(v) is int for v in crc["layers"].values())
            and (crc.get("inputs") is None or type(crc["inputs"]) is int))


def record_line(entry: ImageRef, crc: dict | None) -> bytes:
    data = entry.to_json()
    if crc is not None:
        data["crc32"] = crc
    return (json.dumps(data, ensure_ascii=False) + "\n").encode("utf-8")


def append_records(path: Path, offset: int, lines: list[bytes]) -> int:
    """Drop whatever a killed run left past ``offset``, append ``lines``; the new end offset."""
    with open(path, "r+b" if path.exists() else "w+b") as f:
        f.truncate(offset)
        f.seek(offset)
        for line in lines:
            f.write(line)
        f.flush()
        os.fsync(f.fileno())
    return offset + sum(len(line) for line in lines)


def rewrite_records(path: Path, lines: list[bytes]) -> int:
    """Replace ``images.jsonl`` atomically (temporary file + rename): the old or the new records, never half."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        with open(tmp, "wb") as f:
            f.writelines(lines)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return sum(len(line) for line in lines)
