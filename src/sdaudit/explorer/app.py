"""The explorer's HTTP API and page (FastAPI). Build it with :func:`create_app`.

Endpoints (``s`` = store index, ``i`` = image index; every error is JSON ``{"detail": message}``):

==========================================  ================================================================
``GET  /``                                  the page (``static/index.html``)
``GET  /static/{name}``                     the page's own assets (only files of the package's static dir)
``GET  /api/info``                          stores (model, timestep, protocol, size, layers with grids), measures
``GET  /api/stores/{s}/images``             committed images: index, name, source, size, mode, sha256
``GET  /api/stores/{s}/images/{i}/input.png``  the prepared model input (``?size=`` for a thumbnail)
``GET  /api/stores/{s}/features``           ``?layer=&image=``: raw little-endian float16 (or float32) bytes,
                                            token-major (h*w, C); headers X-Shape "C,h,w", X-Dtype, X-Layout
``GET  /api/stores/{s}/norms``              ``?layer=&images=0,1``: token norm maps (JSON)
``GET  /api/stores/{s}/similarity``         ``?layer=&images=&ref_image=&row=&col=&measure=``: maps (JSON),
                                            computed with :func:`sdaudit.analyses.similarity_map`
``GET  /api/stores/{s}/anomalies``          ``?layer=&images=``: the detector's findings per image
``GET  /api/stores/{s}/presets``            automatic positional / corner / anomaly examples
``GET  /api/stores/{s}/labels``             the anomaly labels (layer, grid, rows, file)
``GET  /api/stores/{s}/labels.npy``         the labels in the published ``.npy`` format
``POST /api/stores/{s}/labels/toggle``      JSON {layer, image, x, y[, snap]}: add or remove a label; saved
``PUT  /api/stores/{s}/labels``             JSON {layer, rows}: replace all labels (e.g. clear); saved
``POST /api/stores/{s}/labels/upload``      ``?layer=``, body = a ``.npy`` label file: load it; saved
``POST /api/stores/{s}/images``             ``?name=``, body = an image file: extract it into the store
                                            (needs ``--model``)
==========================================  ================================================================

Safety: requests whose Host header is malformed, or names neither a loopback name nor one of
``allowed_hosts``, are refused (DNS rebinding); every POST/PUT needs the header
``X-Requested-By: sdaudit`` (a cross-site form cannot send it); JSON bodies must have the
declared JSON types (an image index is a JSON integer, not ``"0"`` or ``true``); every body is
limited in size and time by :class:`~sdaudit.explorer.limits.BodyLimits`.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from importlib import resources
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, ConfigDict

from ..analyses import MEASURES, LabelFileError, NonFiniteInputError, similarity_map
from ..analyses.similarity import reference_token
from ..store import StoreError
from .guard import RequestGuard
from .limits import BODY_DEADLINE_S, BODY_STALL_S, BodyLimits, body_limit_for
from .state import ExplorerError, ExplorerState, image_summary

log = logging.getLogger("sdaudit.explorer")

_CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                  ".css": "text/css; charset=utf-8", ".png": "image/png", ".svg": "image/svg+xml",
                  ".ico": "image/x-icon"}


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


def _static_files() -> dict[str, Path]:
    """The page's assets: the plain files directly in the package's static folder (a fixed list)."""
    root = Path(str(resources.files("sdaudit.explorer") / "static"))
    return {p.name: p for p in sorted(root.iterdir()) if p.is_file() and not p.name.startswith(".")}


def create_app(stores: Sequence[str | os.PathLike], model: Any = None,
               labels_path: str | os.PathLike | Sequence[str | os.PathLike] | None = None, *,
               allowed_hosts: Sequence[str] | None = None, max_upload_bytes: int | None = None,
               body_stall_s: float = BODY_STALL_S, body_deadline_s: float = BODY_DEADLINE_S) -> FastAPI:
    """The explorer app for some stores.

    Args:
        stores: store folders; the page and API address them by their index in this list.
        model: a model spec string (loaded on first upload) or a loaded model; enables adding
            images (extracted with each store's own settings). None: adding images is off.
        labels_path: anomaly label file(s) (``.npy``, published format), one per store in order;
            default ``STORE/anomaly_labels.npy``. An existing file is loaded (its sidecar JSON, or
            else the published convention, says which layer the rows refer to).
        allowed_hosts: Host header names accepted besides the loopback ones; ``["*"]`` accepts any.
        max_upload_bytes: largest accepted upload (default 20 MiB); other bodies have fixed limits
            (see :mod:`sdaudit.explorer.limits`).
        body_stall_s, body_deadline_s: a request body that sends nothing for ``body_stall_s`` seconds,
            or is not complete after ``body_deadline_s``, is abandoned (408).
    """
    kwargs = {} if max_upload_bytes is None else {"max_upload_bytes": max_upload_bytes}
    state = ExplorerState(stores, model=model, labels_path=labels_path, **kwargs)
    statics = _static_files()

    app = FastAPI(title="sdaudit explore", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.explorer = state

    # ----- errors: always JSON {"detail": message} ---------------------------------------------------
    @app.exception_handler(ExplorerError)
    async def _explorer_error(request: Request, exc: ExplorerError):
        return JSONResponse({"detail": exc.detail}, status_code=exc.status)

    @app.exception_handler(LabelFileError)
    async def _label_error(request: Request, exc: LabelFileError):
        return JSONResponse({"detail": str(exc)}, status_code=400)

    @app.exception_handler(NonFiniteInputError)
    async def _nonfinite(request: Request, exc: NonFiniteInputError):
        return JSONResponse({"detail": str(exc)}, status_code=409)

    @app.exception_handler(StoreError)
    async def _store_error(request: Request, exc: StoreError):
        return JSONResponse({"detail": str(exc)}, status_code=404)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        parts = []
        for err in exc.errors():
            where = ".".join(str(v) for v in err.get("loc", ()) if v not in ("body",)) or "request"
            parts.append(f"{where}: {err.get('msg', 'invalid')}")
        return JSONResponse({"detail": "bad request: " + "; ".join(parts)}, status_code=422)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):  # pragma: no cover - a bug, logged
        log.exception("unexpected error on %s", request.url.path)
        return JSONResponse({"detail": f"internal error: {type(exc).__name__}: {exc}"}, status_code=500)

    # ----- guards (the last added is the outermost) -------------------------------------------------
    app.add_middleware(BodyLimits, limit_for=body_limit_for(state.max_upload_bytes), stall_s=body_stall_s,
                       deadline_s=body_deadline_s)
    app.add_middleware(RequestGuard, hosts=allowed_hosts or ())

    def _asset(name: str) -> Response:
        path = statics.get(name)
        if path is None:
            raise ExplorerError(404, "no such file")
        media = _CONTENT_TYPES.get(path.suffix.lower(), "application/octet-stream")
        return Response(path.read_bytes(), media_type=media, headers={"Cache-Control": "no-cache"})

    # ----- page ---------------------------------------------------------------------------------------
    @app.get("/", response_class=HTMLResponse)
    def index():
        resp = _asset("index.html")
        resp.headers["Content-Security-Policy"] = (
            "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
            "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'")
        return resp

    @app.get("/static/{name}")
    def static(name: str):
        return _asset(name)

    # ----- read API -----------------------------------------------------------------------------------
    @app.get("/api/info")
    def info():
        return state.info()

    @app.get("/api/stores/{s}/images")
    def images(s: int):
        h = state.handle(s)
        return {"store": s, "num_images": h.store.num_images, "images": [image_summary(e) for e in h.store.images]}

    @app.get("/api/stores/{s}/images/{i}/input.png")
    def image_png(s: int, i: int, size: int | None = None):
        h = state.handle(s)
        state.image(h, i)
        if size is not None and not 8 <= size <= 4096:
            raise ExplorerError(400, f"size must be between 8 and 4096 pixels, got {size}")
        return Response(state.thumbnail(h, i, size), media_type="image/png")

    @app.get("/api/stores/{s}/features")
    def features(s: int, layer: str | None = None, image: int | None = None):
        h = state.handle(s)
        name = state.layer(h, layer)
        if image is None:
            raise ExplorerError(400, "missing 'image'")
        state.image(h, image)
        tm, (c, gh, gw) = state.features(h, name, image)
        return Response(tm.tobytes(), media_type="application/octet-stream",
                        headers={"X-Shape": f"{c},{gh},{gw}", "X-Dtype": "float16" if tm.itemsize == 2 else "float32",
                                 "X-Layout": "token-major", "X-Layer": name, "Cache-Control": "no-store"})

    @app.get("/api/stores/{s}/norms")
    def norms(s: int, layer: str | None = None, images: str | None = None):
        h = state.handle(s)
        name = state.layer(h, layer)
        idx = state.images(h, images)
        maps = [state.norms(h, name, i) for i in idx]
        return {"layer": name, "images": idx, "shape": list(maps[0].shape), "maps": [m.tolist() for m in maps]}

    @app.get("/api/stores/{s}/similarity")
    def similarity(s: int, layer: str | None = None, images: str | None = None, ref_image: int | None = None,
                   row: int | None = None, col: int | None = None, measure: str = "cosine"):
        h = state.handle(s)
        name = state.layer(h, layer)
        idx = state.images(h, images)
        if measure not in MEASURES:
            raise ExplorerError(400, f"unknown measure '{measure[:40]}'; choose one of {', '.join(MEASURES)}")
        if ref_image is None or row is None or col is None:
            raise ExplorerError(400, "missing reference: give ref_image, row and col")
        state.image(h, ref_image)
        state.token(h, name, row, col)
        x = state.feature_stack(h, name, idx)
        try:
            if ref_image in idx:
                maps = similarity_map(x, (idx.index(ref_image), row, col), measure, layer=name)
            else:
                t = reference_token(state.feature_stack(h, name, [ref_image]), 0, row, col, layer=name)
                maps = similarity_map(x, t, measure, layer=name)
        except NonFiniteInputError:
            raise
        except ValueError as e:
            raise ExplorerError(400, str(e)) from e
        return {"layer": name, "measure": measure, "images": idx, "ref": {"image": ref_image, "row": row, "col": col},
                "shape": list(maps.shape[1:]), "maps": maps.tolist()}

    @app.get("/api/stores/{s}/anomalies")
    def anomalies(s: int, layer: str | None = None, images: str | None = None):
        h = state.handle(s)
        name = state.layer(h, layer)
        idx = state.images(h, images)
        _, gh, gw = h.store.layer_shape(name)
        return {"layer": name, "grid": [gh, gw], "images": idx,
                "detections": {str(i): state.detections(h, name, i) for i in idx}}

    @app.get("/api/stores/{s}/presets")
    def presets(s: int):
        return state.presets(state.handle(s))

    @app.get("/api/stores/{s}/labels")
    def labels(s: int):
        h = state.handle(s)
        with h.labels.lock:
            return h.labels.to_json()

    @app.get("/api/stores/{s}/labels.npy")
    def labels_npy(s: int):
        h = state.handle(s)
        name = h.labels.path.name if h.labels.path.suffix == ".npy" else "anomaly_labels.npy"
        return Response(h.labels.npy_bytes(), media_type="application/octet-stream",
                        headers={"Content-Disposition": f'attachment; filename="{name}"'})

    # ----- write API ----------------------------------------------------------------------------------
    @app.post("/api/stores/{s}/labels/toggle")
    def toggle(s: int, body: ToggleBody):
        h = state.handle(s)
        name = state.layer(h, body.layer)
        state.image(h, body.image)
        _, gh, gw = h.store.layer_shape(name)
        if not (0 <= body.x < gw and 0 <= body.y < gh):
            raise ExplorerError(404, f"token (x {body.x}, y {body.y}) outside the {gh}x{gw} grid of '{name}'")
        norms_map = state.norms(h, name, body.image) if body.snap else None
        return h.labels.toggle(h.store, name, body.image, body.x, body.y, norms_map, snap=body.snap)

    @app.put("/api/stores/{s}/labels")
    def put_labels(s: int, body: LabelsBody):
        h = state.handle(s)
        name = state.layer(h, body.layer)
        try:
            rows = np.array(body.rows, dtype=np.int64) if body.rows else np.zeros((0, 3), np.int64)
        except (ValueError, OverflowError) as e:
            raise ExplorerError(400, f"rows must be [image, x, y] integer triples ({e})") from e
        return h.labels.replace(h.store, name, rows)

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

    @app.post("/api/stores/{s}/labels/upload")
    async def upload_labels(s: int, request: Request, layer: str | None = None):
        h = state.handle(s)
        name = state.layer(h, layer or (h.labels.layer if h.labels.rows else None)
                           or h.summary()["reference_layer"])
        path = await _receive(request)
        try:
            def load():
                from ..analyses import load_labels

                grid = h.store.layer_shape(name)[1:]
                try:
                    rows = load_labels(path, grid=grid, n_images=h.store.num_images)
                except LabelFileError as e:
                    raise ExplorerError(400, str(e).replace(str(path), "uploaded label file")) from e
                return h.labels.replace(h.store, name, rows)

            return await run_in_threadpool(load)
        finally:
            shutil.rmtree(path.parent, ignore_errors=True)

    @app.post("/api/stores/{s}/images")
    async def upload_image(s: int, request: Request, name: str = "upload"):
        h = state.handle(s)
        if model is None:
            raise ExplorerError(400, h.upload_error or "adding images is off: start the explorer with --model")
        name = os.path.basename(name.replace("\\", "/"))[:120] or "upload"
        path = await _receive(request)
        try:
            return await run_in_threadpool(state.add_image, h, path, name)
        finally:
            shutil.rmtree(path.parent, ignore_errors=True)

    return app
