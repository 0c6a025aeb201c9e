"""The explorer's page and its assets: ``GET /`` and ``GET /static/{name}``.

Only the plain files directly in the package's ``static`` folder are served (a fixed list read once),
so no request path can reach another file.
"""

from __future__ import annotations

import functools
from importlib import resources
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import HTMLResponse, Response

from .errors import ExplorerError

_CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                  ".css": "text/css; charset=utf-8", ".png": "image/png", ".svg": "image/svg+xml",
                  ".ico": "image/x-icon"}
#: The page runs only its own scripts and styles, talks only to this server, and is not framed.
CONTENT_SECURITY_POLICY = ("default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
                           "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'")

router = APIRouter()


@functools.cache
def static_files() -> dict[str, Path]:
    """The page's assets: the plain files directly in the package's static folder (a fixed list)."""
    root = Path(str(resources.files("sdaudit.explorer") / "static"))
    return {p.name: p for p in sorted(root.iterdir()) if p.is_file() and not p.name.startswith(".")}


def _asset(name: str) -> Response:
    path = static_files().get(name)
    if path is None:
        raise ExplorerError(404, "no such file")
    media = _CONTENT_TYPES.get(path.suffix.lower(), "application/octet-stream")
    return Response(path.read_bytes(), media_type=media, headers={"Cache-Control": "no-cache"})


@router.get("/", response_class=HTMLResponse)
def index():
    resp = _asset("index.html")
    resp.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    return resp


@router.get("/static/{name}")
def static(name: str):
    return _asset(name)
