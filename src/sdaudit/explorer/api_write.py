"""The explorer's write API: label edits (toggle, replace, upload a label file) and adding images.

Every POST/PUT needs ``X-Requested-By: sdaudit`` (:mod:`sdaudit.explorer.guard`); JSON bodies are
strict (an image index is a JSON integer, not ``"0"`` or ``true``); uploads stream into a temporary
file whose size and time :mod:`sdaudit.explorer.limits` bounds.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict

from ..analyses import LabelFileError, load_labels
from . import deps
from .errors import ExplorerError
from .stores import StoreHandle

router = APIRouter(prefix="/api/stores/{s}")


class ToggleBody(BaseModel):
    # strict: a JSON string "0" or a boolean is not an image index (pydantic would coerce them)
    model_config = ConfigDict(strict=True)
    layer: str
    image: int
    x: int
    y: int
    snap: bool = True


class LabelsBody(BaseModel):
    model_config = ConfigDict(strict=True)
    layer: str
    rows: list[list[int]] = []


@router.post("/labels/toggle")
def toggle(state: deps.State, h: deps.Store, body: ToggleBody):
    """Add or remove the label at token (x, y) of an image; a new one snaps to the strongest 2x2 patch."""
    layer = h.layer(body.layer)
    h.image(body.image)
    gh, gw = h.grid(layer)
    if not (0 <= body.x < gw and 0 <= body.y < gh):
        raise ExplorerError(404, f"token (x {body.x}, y {body.y}) outside the {gh}x{gw} grid of '{layer}'")
    norms = state.norms(h, layer, body.image) if body.snap else None
    return h.labels.toggle(h.store, layer, (body.image, body.x, body.y), norms)


@router.put("/labels")
def put_labels(h: deps.Store, body: LabelsBody):
    """Replace all labels (e.g. clear them)."""
    layer = h.layer(body.layer)
    try:
        rows = np.array(body.rows, dtype=np.int64) if body.rows else np.zeros((0, 3), np.int64)
    except (ValueError, OverflowError) as e:
        raise ExplorerError(400, f"rows must be [image, x, y] integer triples ({e})") from e
    return h.labels.replace(h.store, layer, rows)


async def _receive(request: Request) -> Path:
    """Stream the request body into a temporary file (BodyLimits bounds its size and time)."""
    folder = Path(tempfile.mkdtemp(prefix="sdaudit-upload-"))
    path = folder / "upload"
    total = 0
    try:
        with open(path, "wb") as f:
            async for chunk in request.stream():
                total += len(chunk)
                f.write(chunk)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    if total == 0:
        shutil.rmtree(folder, ignore_errors=True)
        raise ExplorerError(400, "empty upload: send the file as the request body")
    return path


def _load_label_file(h: StoreHandle, layer: str, path: Path) -> dict:
    """Replace the labels by those of an uploaded ``.npy`` (its temporary path is not shown to the client)."""
    try:
        rows = load_labels(path, grid=h.grid(layer), n_images=h.store.num_images)
    except LabelFileError as e:
        raise ExplorerError(400, str(e).replace(str(path), "uploaded label file")) from e
    return h.labels.replace(h.store, layer, rows)


@router.post("/labels/upload")
async def upload_labels(h: deps.Store, request: Request, layer: str | None = None):
    """Load a label file (body) on ``layer``: default the labels' own layer, else the paper's anomaly layer."""
    name = h.layer(layer or (h.labels.layer if h.labels.rows else None) or h.reference_layer)
    path = await _receive(request)
    try:
        return await run_in_threadpool(_load_label_file, h, name, path)
    finally:
        shutil.rmtree(path.parent, ignore_errors=True)


@router.post("/images")
async def upload_image(state: deps.State, h: deps.Store, request: Request, name: str = "upload"):
    """Extract an image file (body) into the store with its own settings (needs ``--model``)."""
    if not state.adder.enabled:
        raise ExplorerError(400, h.upload_error or "adding images is off: start the explorer with --model")
    name = os.path.basename(name.replace("\\", "/"))[:120] or "upload"
    path = await _receive(request)
    try:
        return await run_in_threadpool(state.adder.add, h, path, name)
    finally:
        shutil.rmtree(path.parent, ignore_errors=True)
