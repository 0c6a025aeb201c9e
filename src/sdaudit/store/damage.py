"""Which committed rows of a store fail their checksums: the row-by-row check behind ``sdaudit verify`` and
the repair of damaged rows by ``extract``. It uses only the store's public reading methods, so the store
class can offer it (``RepresentationStore.damaged_rows``) without an import cycle."""

from __future__ import annotations

from collections.abc import Sequence

from .records import StoreDamagedError

_BATCH = 16  # rows read at once: bounded memory, few calls
_INPUTS = "inputs"  # how the prepared model inputs are named in the report


def damaged_rows(store, rows: Sequence[int] | None = None) -> dict[int, list[str]]:
    """{image index: ['layer X: does not match its checksum', ...]} over ``rows`` (default: every committed row)
    of a :class:`~sdaudit.store.representation.RepresentationStore`.

    A layer whose whole array cannot be opened marks every row as damaged at that layer.
    """
    rows = list(range(store.num_images)) if rows is None else sorted(set(rows))
    out: dict[int, list[str]] = {}
    readers = [(f"layer {name}", _layer_reader(store, name)) for name in store.layers]
    if store.config.get("size"):  # stores with a size keep the inputs
        readers.append((_INPUTS, store.read_inputs))
    for label, read in readers:
        for lo in range(0, len(rows), _BATCH):
            for i, reason in _damaged_in(read, rows[lo:lo + _BATCH]):
                out.setdefault(i, []).append(f"{label}: {reason}")
    return dict(sorted(out.items()))


def _layer_reader(store, name: str):
    return lambda rows: store.read(name, rows)


def _damaged_in(read, chunk: list[int]) -> list[tuple[int, str]]:
    """(row, reason) for the rows of ``chunk`` that ``read`` refuses; one read when all are intact."""
    try:
        read(chunk)
        return []
    except StoreDamagedError:
        pass
    found = []
    for i in chunk:  # which rows, and why
        try:
            read([i])
        except StoreDamagedError as error:
            found.append((i, _reason(str(error))))
    return found


def _reason(message: str) -> str:
    if "checksum" in message:
        return "does not match its checksum"
    if "cannot be opened" in message:
        return "its array cannot be opened"
    return "cannot be read"
