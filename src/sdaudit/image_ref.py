"""The one reference to an image of a run: :class:`ImageRef` (which image, by index, name and pixel hash).

A store's committed rows (``images.jsonl``), the audit's images and the ``images`` of results.json
are all ImageRefs; a decoded :class:`~sdaudit.images.ImageRecord` becomes one with
:meth:`~sdaudit.images.ImageRecord.ref` once it has an index. The JSON keys are those the store and
results.json have always written, so older files stay readable. Torch- and Pillow-free: the report
and the store read it without either.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any


@dataclass(frozen=True)
class ImageRef:
    """One image of a run: its index, printable ``source``, pixel ``sha256``, original size and mode.

    Parameters:
        index: position of the image in the run (store row, audit image index).
        source: path or ``hf:`` item name, always printable UTF-8.
        sha256: SHA-256 of the converted pixels (:func:`~sdaudit.images.pixel_sha256`).
        width, height: original (upright) size in pixels.
        mode: the Pillow mode the image had before conversion to RGB; None where not recorded
            (results.json does not record it).
        source_bytes: hex of the exact path bytes when ``source`` is not the exact name (a name that
            is not valid UTF-8), else None.
    """

    index: int
    source: str
    sha256: str
    width: int
    height: int
    mode: str | None = None
    source_bytes: str | None = None

    def to_json(self, *, with_mode: bool = True) -> dict[str, Any]:
        """The JSON record: index, source, sha256, width, height, then mode (if recorded and ``with_mode``) and
        source_bytes (only for a name that is not valid UTF-8), as the store and results.json write them."""
        out: dict[str, Any] = {"index": self.index, "source": self.source, "sha256": self.sha256,
                               "width": self.width, "height": self.height}
        if with_mode and self.mode is not None:
            out["mode"] = self.mode
        if self.source_bytes:
            out["source_bytes"] = self.source_bytes
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ImageRef:
        """The reference a JSON record describes; TypeError for a record with unknown or missing keys."""
        if not isinstance(data, Mapping):
            raise TypeError(f"an image record is a JSON object, not {type(data).__name__}")
        unknown = set(data) - _FIELDS
        if unknown:
            raise TypeError(f"unknown image record key(s): {', '.join(sorted(map(str, unknown)))}")
        return cls(**data)


_FIELDS = frozenset(f.name for f in fields(ImageRef))
