"""The mitigation file: one safetensors file holding a fitted mitigation.

Layout. The tensors are the mitigation's sufficient statistics (``Mitigation._state``: float64 sums,
float32 per-image magnitudes; a file may hold none, e.g. ``border``), from which every fitted attribute
is derived again on loading, so a loaded mitigation transforms exactly as the saved one did and can go
on with ``partial_fit``. The safetensors header's ``__metadata__`` holds one entry, ``"sdaudit"``: a
small JSON object::

    {"format": "sdaudit-mitigation", "format_version": 1, "kind": "position",
     "params": {...constructor keywords...}, "layer": "up_blocks[1].upsamplers[0]" | null,
     "grid": [rows, cols], "n_channels": C, "n_images": N}

Files are written atomically (temporary file + rename). A file that is missing, no safetensors file,
lacks the header entry, or has another format version raises :class:`MitigationFileError` naming it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from ..errors import SdauditError

FORMAT = "sdaudit-mitigation"
FORMAT_VERSION = 1
HEADER_KEY = "sdaudit"


class MitigationFileError(SdauditError, ValueError):
    """A mitigation file that cannot be read, or is of another kind or format version than asked for."""


def write_file(path: str | os.PathLike, arrays: dict[str, np.ndarray], header: dict) -> None:
    """Write ``arrays`` and the JSON ``header`` (format and version added) to ``path``, atomically."""
    from safetensors.numpy import save_file

    path = Path(path)
    meta = {HEADER_KEY: json.dumps({"format": FORMAT, "format_version": FORMAT_VERSION, **header})}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(tmp), metadata=meta)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def read_file(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict]:
    """The arrays and header of a mitigation file; a MitigationFileError naming it when it is not one."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise MitigationFileError(f"mitigation file '{path}' does not exist" if not path.exists()
                                  else f"mitigation file '{path}' is not a file")
    try:
        with safe_open(str(path), framework="np") as f:
            meta = f.metadata() or {}
            arrays = {key: f.get_tensor(key) for key in f.keys()}
        header = json.loads(meta[HEADER_KEY])
    except (SafetensorError, KeyError, ValueError, OSError) as error:  # not safetensors, no header, bad JSON
        raise MitigationFileError(f"'{path}' is not an sdaudit mitigation file "
                                  f"({type(error).__name__}: {error})") from error
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise MitigationFileError(f"'{path}' is not an sdaudit mitigation file (no '{FORMAT}' header)")
    if header.get("format_version") != FORMAT_VERSION:
        raise MitigationFileError(f"mitigation file '{path}' has format version {header.get('format_version')!r}; "
                                  f"this sdaudit reads version {FORMAT_VERSION}: fit and save it again")
    return arrays, header
