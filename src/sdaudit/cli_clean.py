"""``sdaudit clean``: apply a saved mitigation to a store and write a cleaned store (see :mod:`sdaudit.clean`).

Registered on the command line's app by :mod:`sdaudit.cli`; bad input (a missing store or file, a
mitigation of another layer, grid or channel count, a non-empty --out) is one line and exit status 2,
as for every command (:mod:`sdaudit.cli_contract`).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape

from .cli_options import StoreArg

TransformFile = Annotated[Path, typer.Option("--transform", "-t", help="A mitigation file (saved by a mitigation's "
                                             "save(); it names the layer it transforms).")]
CleanOut = Annotated[Path, typer.Option("--out", "-o", help="The new store folder (must not exist, or be empty).")]
CleanLayers = Annotated[Optional[str], typer.Option("--layers", "-l", help="Comma-separated layers to write "
                                                    "(default: all of the store's); the transform's layer must be "
                                                    "among them, the others are copied unchanged.")]
CleanBatch = Annotated[int, typer.Option("--batch-size", "-b", min=1, help="Images per batch.")]

console = Console()


def clean_cmd(store: StoreArg, *, transform: TransformFile, out: CleanOut, layers: CleanLayers = None,
              batch_size: CleanBatch = 16) -> None:
    """Apply a saved mitigation to its layer of a store and write a new, cleaned store (the input is only read)."""
    from .clean import clean_store, store_transforms
    from .validation import check_output_dir, output_errors

    start = time.perf_counter()
    check_output_dir(out, name="--out")
    with output_errors(out):
        new = clean_store(store, transform, out, layers=layers, batch_size=batch_size)
    applied = store_transforms(new)[-1]
    console.print(f"[green]cleaned store[/] {escape(str(new.path))}: {new.num_images} images x {len(new.layers)} "
                  f"layers in {time.perf_counter() - start:.1f} s; {escape(applied['layer'])} transformed by "
                  f"'{applied['kind']}' ({escape(str(transform))}, sha256 {applied['sha256'][:12]})", highlight=False)
