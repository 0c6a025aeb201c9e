"""The writer lock of a store: one writing process at a time.

``fcntl.flock`` on ``STORE/.writer.lock``, held from the moment a store is opened for writing (or,
for a new store, from before it appears at its final path) until it is closed. The kernel releases
the lock when its process dies, so a killed writer (even by SIGKILL) never leaves a stale lock.
The file records the holder's pid and host, only to name them in the message of a refused writer.
Locks are per open file, so even two writers in one process exclude each other.
"""

from __future__ import annotations

import fcntl
import os
import socket
from pathlib import Path

from .records import StoreBusyError, StoreError

LOCK_FILE = ".writer.lock"


class WriterLock:
    """An exclusive lock on one store folder; :meth:`release` (or garbage collection) frees it."""

    def __init__(self, folder: str | Path):
        folder = Path(folder)
        try:
            # A Python file object: should its owner forget to release it, collecting it closes the
            # file, which frees the lock.
            self._file = open(folder / LOCK_FILE, "a+b")  # noqa: SIM115
        except OSError as error:
            raise StoreError(f"cannot write to store '{folder}': {error.strerror or error} "
                             f"(cannot create its lock file {LOCK_FILE})") from error
        try:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = self._holder()
            self._file.close()
            raise StoreBusyError(f"store '{folder}' is being written by {holder}; wait for it or use another "
                                 "--out") from None
        except OSError as error:  # e.g. a file system without locks
            self._file.close()
            raise StoreError(f"cannot lock store '{folder}' for writing: {error.strerror or error}") from error
        self._file.truncate(0)
        self._file.write(f"{os.getpid()} {socket.gethostname()}\n".encode())
        self._file.flush()

    def _holder(self) -> str:
        self._file.seek(0)
        fields = self._file.read(200).decode("utf-8", "replace").split()
        if len(fields) == 2 and fields[0].isdigit():
            return f"pid {fields[0]} on {fields[1]}"
        return "another process"  # it has the lock but has not written its name yet

    @property
    def held(self) -> bool:
        return not self._file.closed

    def release(self) -> None:
        if not self._file.closed:
            self._file.close()  # closing the file releases the lock
