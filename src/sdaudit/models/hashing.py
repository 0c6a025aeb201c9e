"""What identifies a model's weights: content hashes of modules, files and diffusers folders.

Hashing a multi-gigabyte weights file costs seconds; :class:`InBackground` lets the loader hash a file
while it loads the same file (the second read comes from the page cache, and hashlib releases the GIL).
"""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import torch

__all__ = ["InBackground", "file_sha256", "folder_weights_sha256", "state_dict_sha256"]


def state_dict_sha256(module: torch.nn.Module) -> str:
    """A content hash of a module's parameters and buffers (names, dtypes, shapes and values)."""
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def file_sha256(path: str | Path, chunk: int = 1 << 22) -> str:
    """SHA-256 of a file's bytes, read in 4 MiB pieces."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def folder_weights_sha256(folder: Path) -> str:
    """Hash of a diffusers folder's denoiser weights (U-Net or transformer: the files that decide the
    representations) and configs."""
    h = hashlib.sha256()
    denoiser = folder / "unet" if (folder / "unet").is_dir() else folder / "transformer"
    files = sorted(p for p in denoiser.iterdir() if p.suffix in (".safetensors", ".bin", ".json"))
    for p in files:
        h.update(p.name.encode())
        h.update(file_sha256(p).encode())
    return h.hexdigest()


class InBackground:
    """``fn(*args)`` on a daemon thread, so that hashing a weights file overlaps loading it (hashlib releases
    the GIL); :meth:`result` waits for it. A daemon thread, so that a failed load does not wait for the hash."""

    def __init__(self, fn, *args):
        self._value, self._error = None, None
        self._thread = threading.Thread(target=self._run, args=(fn, *args), name="sdaudit-hash", daemon=True)
        self._thread.start()

    def _run(self, fn, *args) -> None:
        try:
            self._value = fn(*args)
        except BaseException as error:  # noqa: BLE001 - re-raised by result()
            self._error = error

    def result(self):
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._value
