"""``sdaudit clean``: fit a mitigation on a store and save it, and/or apply a saved one to a store and write a
cleaned store (see :mod:`sdaudit.clean`).

Two uses::

    sdaudit clean STORE --fit position --layers LAYER --save position.safetensors [--out NEW_STORE]
    sdaudit clean STORE --transform position.safetensors --out NEW_STORE [--layers L1,L2]

Registered on the command line's app by :mod:`sdaudit.cli`; bad input (a missing store or file, a
mitigation of another layer, grid or channel count, a non-empty --out, a missing option) is one line and
exit status 2, as for every command (:mod:`sdaudit.cli_contract`).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape

from .cli_options import StoreArg
from .errors import UsageError

TransformFile = Annotated[Optional[Path], typer.Option(
    "--transform", "-t", help="Apply this mitigation file (saved by a mitigation's save() or by --fit --save; it "
    "names the layer it transforms).")]
FitName = Annotated[Optional[str], typer.Option(
    "--fit", help="Fit this mitigation (position, position-subspace, anomalies, channels, border) on the store's "
    "images of the one layer in --layers, and save it with --save.")]
SaveFile = Annotated[Optional[Path], typer.Option("--save", "-s", help="With --fit: the mitigation file to write.")]
CleanOut = Annotated[Optional[Path], typer.Option(
    "--out", "-o", help="The new, cleaned store folder (must not exist, or be empty); with --fit optional.")]
CleanLayers = Annotated[Optional[str], typer.Option(
    "--layers", "-l", help="With --transform: comma-separated layers to write (default: all of the store's; the "
    "transform's layer must be among them, the others are copied unchanged). With --fit: the one layer to fit.")]
CleanBatch = Annotated[int, typer.Option("--batch-size", "-b", min=1, help="Images per batch.")]

console = Console()


def _check_options(transform: Path | None, fit: str | None, save: Path | None, out: Path | None) -> None:
    if (transform is None) == (fit is None):
        raise UsageError("give either --fit NAME (fit and save a mitigation) or --transform FILE (apply one)")
    if fit is not None and save is None:
        raise UsageError("--fit needs --save FILE: the fitted mitigation is written there (and applied from it)")
    if transform is not None and save is not None:
        raise UsageError("--save goes with --fit; --transform applies a file that is already saved")
    if transform is not None and out is None:
        raise UsageError("--transform needs --out: the folder of the new, cleaned store")


def clean_cmd(store: StoreArg, *, transform: TransformFile = None, fit: FitName = None, save: SaveFile = None,
              out: CleanOut = None, layers: CleanLayers = None, batch_size: CleanBatch = 16) -> None:
    """Fit a mitigation on a store's layer and save it (--fit, --save), and/or apply a saved one to its layer
    and write a new, cleaned store (--transform or --fit, with --out). The input store is only read."""
    from .clean import clean_store, fit_and_save, store_transforms
    from .validation import check_output_dir, output_errors

    _check_options(transform, fit, save, out)
    start = time.perf_counter()
    if out is not None:
        check_output_dir(out, name="--out")
    if fit is not None:
        with output_errors(save.parent):
            mitigation = fit_and_save(fit, store, save, layers=layers, batch_size=batch_size)
        console.print(f"[green]fitted[/] '{mitigation.kind}' on {escape(str(mitigation.layer_))} "
                      f"({mitigation.n_images_} images) -> {escape(str(save))}", highlight=False)
        transform, layers = save, None  # applied to its layer; every layer of the store is written
    if out is None:
        return
    with output_errors(out):
        new = clean_store(store, transform, out, layers=layers, batch_size=batch_size)
    applied = store_transforms(new)[-1]
    console.print(f"[green]cleaned store[/] {escape(str(new.path))}: {new.num_images} images x {len(new.layers)} "
                  f"layers in {time.perf_counter() - start:.1f} s; {escape(applied['layer'])} transformed by "
                  f"'{applied['kind']}' ({escape(str(transform))}, sha256 {applied['sha256'][:12]})", highlight=False)
