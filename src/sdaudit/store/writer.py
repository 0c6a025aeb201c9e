"""Writing a store from a background thread, so that store writes overlap the next batch's compute.

Measured on the issue's workload, store writes cost 63 ms per image in the critical path. A
:class:`BackgroundWriter` hands each ``write_batch`` (and ``rewrite_rows``, a repair) call to one
worker thread through a bounded queue (``depth`` batches, 1-2: the memory of at most that many
batches waits), so the caller goes on extracting while the previous batch is written. Order is
preserved (one thread, FIFO), and the store's own commit protocol is unchanged: each batch is
committed, or not at all, exactly as a direct call would (a float16 store still refuses an
overflowing batch before writing any of it). The first failed write stops the worker; its exception
is raised in the caller at the next :meth:`~BackgroundWriter.submit` or at
:meth:`~BackgroundWriter.close`, and batches queued after it are not written (the store keeps every
batch committed before the failure, and a rerun resumes from there). Only the worker touches the
store while the writer is open: the caller counts indices itself (:attr:`BackgroundWriter.next_index`).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Sequence

import numpy as np

_STOP = object()


class BackgroundWriter:
    """Runs ``store.write_batch`` calls in order on one background thread.

    Args:
        store: an open, writable :class:`~sdaudit.store.RepresentationStore` (anything with ``write_batch``).
        depth: batches that may wait in the queue (1 or 2); :meth:`submit` blocks while it is full.

    Use as a context manager, or call :meth:`close` (which waits for every queued batch): leaving the
    ``with`` block on an exception still writes what is queued (those batches are complete), then re-raises.
    """

    def __init__(self, store, *, depth: int = 1):
        if depth not in (1, 2):
            raise ValueError(f"depth {depth}: a background writer queues 1 or 2 batches")
        self.store = store
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None  # the failed write's error, until the caller has seen it
        self._failed = False  # sticky: after a failure nothing more is written, so order cannot break
        self._closed = False
        self.next_index: int = getattr(store, "num_images", 0)  # the image index after the batches submitted
        self._thread = threading.Thread(target=self._work, name="sdaudit-store-writer", daemon=True)
        self._thread.start()

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is _STOP:
                    return
                if not self._failed:  # after a failure, drain without writing
                    method, args, kwargs = item
                    getattr(self.store, method)(*args, **kwargs)
            except BaseException as error:  # noqa: BLE001 - handed to the caller, which re-raises it
                self._failed, self._error = True, error
            finally:
                self._queue.task_done()

    def _raise_pending(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def submit(self, start: int, arrays: dict[str, np.ndarray], entries: Sequence, inputs: np.ndarray | None = None) -> None:
        """Queue ``store.write_batch(start, arrays, entries, inputs=inputs)``; raises an earlier write's error.

        The arrays must not be changed by the caller afterwards (they are written later).
        """
        self._put("write_batch", start, arrays, entries, inputs=inputs)
        self.next_index = start + len(entries)

    def submit_repair(self, indices: Sequence[int], arrays: dict[str, np.ndarray], inputs: np.ndarray | None = None) -> None:
        """Queue ``store.rewrite_rows(indices, arrays, inputs=inputs)`` (in order with the batches); as :meth:`submit`."""
        self._put("rewrite_rows", list(indices), arrays, inputs=inputs)

    def _put(self, method: str, *args, **kwargs) -> None:
        if self._closed:
            raise RuntimeError("submit() on a closed BackgroundWriter")
        self._raise_pending()
        self._queue.put((method, args, kwargs))
        self._raise_pending()  # a failure that happened while this call waited for room

    def close(self) -> None:
        """Wait until every queued batch is written, stop the thread, and raise a write's error if one failed."""
        if not self._closed:
            self._closed = True
            self._queue.put(_STOP)
            self._thread.join()
        self._raise_pending()

    def __enter__(self) -> BackgroundWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        """Write what is queued in every case: those batches were extracted before the caller failed and are
        valid, and a direct write would have committed them (a bad image or an interruption mid-run must not
        lose finished batches). The caller's exception stays the one raised; a write error is noted on it."""
        if exc_type is None:
            self.close()
            return
        try:
            self.close()
        except Exception as error:  # noqa: BLE001 - the caller's exception is raised; this one is attached
            exc.add_note(f"and a queued store write failed: {type(error).__name__}: {error}")
