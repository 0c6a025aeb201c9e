"""Checking a whole store against its records: every committed row of every layer and of the inputs."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .damage import damaged_rows
from .records import StoreDamagedError, StoreError
from .representation import open_store


@dataclass
class VerifyReport:
    """What :func:`verify_store` found. ``intact`` is False as soon as anything is damaged."""

    path: Path
    num_images: int = 0
    layers: int = 0
    problems: list[str] = field(default_factory=list)  # store-wide damage (records, manifest, a whole array)
    damaged: dict[int, list[str]] = field(default_factory=dict)  # image index -> what is wrong with it

    @property
    def intact(self) -> bool:
        return not self.problems and not self.damaged


def verify_store(path: str | Path) -> VerifyReport:
    """Check every committed row of a store against its checksums (and its records and manifest).

    A store that does not exist, or is not an sdaudit store, raises :class:`StoreError`; damage is
    reported, not raised.
    """
    report = VerifyReport(Path(path))
    try:
        store = open_store(path)
    except StoreDamagedError as error:
        report.problems.append(str(error))
        return report
    report.num_images, report.layers = store.num_images, len(store.layers)
    report.damaged = damaged_rows(store)
    return report


__all__ = ["StoreError", "VerifyReport", "damaged_rows", "verify_store"]
