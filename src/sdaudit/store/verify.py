"""Checking a whole store against its records: every committed row of every layer and of the inputs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .records import StoreDamagedError, StoreError

_BATCH = 16  # rows read at once: bounded memory, few calls


@dataclass
class VerifyReport:
    """What :func:`verify_store` found. ``intact`` is False as soon as anything is damaged."""

    path: Path
    num_images: int = 0
    layers: int = 0
    verifiable: bool = True  # False for format-1 stores: rows were read, but there is nothing to check them against
    problems: list[str] = field(default_factory=list)  # store-wide damage (records, manifest, a whole array)
    damaged: dict[int, list[str]] = field(default_factory=dict)  # image index -> what is wrong with it

    @property
    def intact(self) -> bool:
        return not self.problems and not self.damaged


def damaged_rows(store, rows: Sequence[int] | None = None) -> dict[int, list[str]]:
    """{image index: ['layer X: checksum mismatch', ...]} over ``rows`` (default: every committed row).

    A layer whose whole array cannot be opened marks every row as damaged at that layer.
    """
    from .representation import INPUTS

    rows = list(range(store.num_images)) if rows is None else sorted(set(rows))
    out: dict[int, list[str]] = {}
    names = list(store.layers) + ([INPUTS] if store.config.get("size") else [])  # stores with a size keep inputs
    for name in names:
        for lo in range(0, len(rows), _BATCH):
            chunk = rows[lo:lo + _BATCH]
            try:
                store._read_rows(name, chunk)
                continue
            except StoreDamagedError:
                pass
            for i in chunk:  # which rows, and why
                try:
                    store._read_rows(name, [i])
                except StoreDamagedError as error:
                    out.setdefault(i, []).append(f"{_label(name)}: {_reason(str(error))}")
    return dict(sorted(out.items()))


def _label(name: str) -> str:
    return "inputs" if name == "inputs" else f"layer {name}"


def _reason(message: str) -> str:
    if "checksum" in message:
        return "does not match its checksum"
    if "cannot be opened" in message:
        return "its array cannot be opened"
    return "cannot be read"


def verify_store(path: str | Path) -> VerifyReport:
    """Check every committed row of a store against its checksums (and its records and manifest).

    A store that does not exist, or is not an sdaudit store, raises :class:`StoreError`; damage is
    reported, not raised.
    """
    from . import open_store

    report = VerifyReport(Path(path))
    try:
        store = open_store(path)
    except StoreDamagedError as error:
        report.problems.append(str(error))
        return report
    report.num_images, report.layers, report.verifiable = store.num_images, len(store.layers), store.verifiable
    report.damaged = damaged_rows(store)
    return report


__all__ = ["StoreError", "VerifyReport", "damaged_rows", "verify_store"]
