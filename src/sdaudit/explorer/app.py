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
``GET  /api/stores/{s}/channels``           ``?layer=&images=``: the layer's massive channels over the images
``GET  /api/stores/{s}/presets``            automatic positional / corner / anomaly examples
``GET  /api/stores/{s}/labels``             the anomaly labels (layer, grid, rows, file)
``GET  /api/stores/{s}/labels.npy``         the labels in the published ``.npy`` format
``POST /api/stores/{s}/labels/toggle``      JSON {layer, image, x, y[, snap]}: add or remove a label; saved
``PUT  /api/stores/{s}/labels``             JSON {layer, rows}: replace all labels (e.g. clear); saved
``POST /api/stores/{s}/labels/upload``      ``?layer=``, body = a ``.npy`` label file: load it; saved
``POST /api/stores/{s}/images``             ``?name=``, body = an image file: extract it into the store
                                            (needs ``--model``)
==========================================  ================================================================

The endpoints live in :mod:`~sdaudit.explorer.page`, :mod:`~sdaudit.explorer.api_read` and
:mod:`~sdaudit.explorer.api_write`; the parameters they share (store, layer, image, images, token,
measure, size) are checked by the FastAPI dependencies of :mod:`sdaudit.explorer.deps`.

Safety: requests whose Host header is malformed, or names neither a loopback name nor one of
``allowed_hosts``, are refused (DNS rebinding); every POST/PUT needs the header
``X-Requested-By: sdaudit`` (a cross-site form cannot send it); JSON bodies must have the
declared JSON types (an image index is a JSON integer, not ``"0"`` or ``true``); every body is
limited in size and time by :class:`~sdaudit.explorer.limits.BodyLimits`.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Sequence

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from ..analyses import LabelFileError, NonFiniteInputError
from ..store import StoreError
from . import api_read, api_write, page
from .errors import ExplorerError
from .guard import RequestGuard
from .limits import BODY_DEADLINE_S, BODY_STALL_S, BodyLimits, body_limit_for
from .state import ExplorerState

log = logging.getLogger("sdaudit.explorer")

#: HTTP status of the errors a request can cause, besides :class:`ExplorerError` (which carries its own).
ERROR_STATUS = ((LabelFileError, 400), (NonFiniteInputError, 409), (StoreError, 404))


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
    app = FastAPI(title="sdaudit explore", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.explorer = state
    _answer_errors_as_json(app)
    # guards: the last added is the outermost
    app.add_middleware(BodyLimits, limit_for=body_limit_for(state.max_upload_bytes), stall_s=body_stall_s,
                       deadline_s=body_deadline_s)
    app.add_middleware(RequestGuard, hosts=allowed_hosts or ())
    for module in (page, api_read, api_write):
        app.include_router(module.router)
    return app


def _answer_errors_as_json(app: FastAPI) -> None:
    """Every error is JSON ``{"detail": message}``: a refusal with its status, a bug as a logged 500."""

    @app.exception_handler(ExplorerError)
    async def _explorer_error(request: Request, exc: ExplorerError):
        return JSONResponse({"detail": exc.detail}, status_code=exc.status)

    for error_type, status in ERROR_STATUS:
        app.add_exception_handler(error_type, _with_status(status))

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


def _with_status(status: int):
    """An exception handler answering ``{"detail": str(error)}`` with ``status``."""
    async def handler(request: Request, exc: Exception):
        return JSONResponse({"detail": str(exc)}, status_code=status)
    return handler
