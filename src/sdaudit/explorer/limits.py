"""Request-body limits for the explorer: an ASGI middleware (:class:`BodyLimits`).

Every request body is bounded in size (checked from ``Content-Length`` before anything is read, and
again while a chunked body streams in, so an oversized body is never buffered) and in time (a body
that stalls, or drips in slower than an overall deadline allows, is answered 408). A client that
disconnects before its body is complete is logged as one line; nothing it sent is kept.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from typing import Callable

from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

log = logging.getLogger("sdaudit.explorer")

#: Largest accepted upload (image or label file), in bytes, unless the explorer is told otherwise.
MAX_UPLOAD_BYTES = 20 * 1024 * 1024
#: Small JSON bodies (a label toggle is ~80 bytes).
MAX_JSON_BYTES = 64 * 1024
#: A full label list (PUT labels): ~15 bytes per [image, x, y] row, so 4 MiB holds ~280,000 rows,
#: e.g. 500 images with 500 labels each.
MAX_LABELS_BYTES = 4 * 1024 * 1024
#: Seconds without a byte of the request body before it is abandoned.
BODY_STALL_S = 30.0
#: Seconds for a whole request body (20 MiB at ~70 kB/s).
BODY_DEADLINE_S = 300.0

_UPLOADS = re.compile(r"^/api/stores/[^/]+/(images|labels/upload)$")
_LABELS = re.compile(r"^/api/stores/[^/]+/labels$")


def body_limit_for(max_upload_bytes: int) -> Callable[[str, str], tuple[int, str]]:
    """The explorer's routes: (limit in bytes, what the body is) for a method and path."""
    def limit(method: str, path: str) -> tuple[int, str]:
        if method == "POST" and _UPLOADS.match(path):
            return max_upload_bytes, "an uploaded file"
        if method == "PUT" and _LABELS.match(path):
            return MAX_LABELS_BYTES, "a label list"
        return MAX_JSON_BYTES, "this request"
    return limit


class BodyError(HTTPException):
    """A body refused while it streams in (413 too large, 408 too slow); the connection is closed."""

    def __init__(self, status: int, detail: str):
        super().__init__(status_code=status, detail=detail, headers={"Connection": "close"})


class BodyLimits:
    """ASGI middleware bounding each request body in size and time (see the module docstring)."""

    def __init__(self, app, *, limit_for: Callable[[str, str], tuple[int, str]], stall_s: float = BODY_STALL_S,
                 deadline_s: float = BODY_DEADLINE_S):
        self.app = app
        self.limit_for = limit_for
        self.stall_s = float(stall_s)
        self.deadline_s = float(deadline_s)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit, what = self.limit_for(scope["method"], scope["path"])
        declared = _content_length(scope)
        if declared == -1:
            return await reply(send, 400, "bad Content-Length header (expected a number of bytes)")
        if declared is not None and declared > limit:
            return await reply(send, 413, _too_large(what, limit, f"{declared} bytes"))
        state = {"bytes": 0, "done": declared == 0, "started": time.monotonic()}

        async def limited_receive():
            if state["done"]:  # the body is complete: later receives only wait for a disconnect
                return await receive()
            message = await self._next(receive, state["started"])
            if message["type"] == "http.request":
                state["bytes"] += len(message.get("body", b""))
                state["done"] = not message.get("more_body", False)
                if state["bytes"] > limit:
                    raise BodyError(413, _too_large(what, limit, "more than that"))
            return message

        try:
            await self.app(scope, limited_receive, send)
        except ClientDisconnect:
            # Not an error of ours: one line, no traceback; the half-sent body was thrown away.
            log.warning("%s %s: the client disconnected after %d bytes of its request body; nothing was kept",
                        scope["method"], scope["path"], state["bytes"])

    async def _next(self, receive, started: float):
        left = self.deadline_s - (time.monotonic() - started)
        try:
            return await asyncio.wait_for(receive(), max(min(self.stall_s, left), 0.001))
        except asyncio.TimeoutError:
            if left <= self.stall_s:
                raise BodyError(408, f"request body took longer than {self.deadline_s:g} s; abandoned") from None
            raise BodyError(408, f"request body stalled: no data for {self.stall_s:g} s; abandoned") from None


def _content_length(scope) -> int | None:
    """The declared body size; None if not declared, -1 if malformed."""
    for key, value in scope.get("headers", ()):
        if key == b"content-length":
            return int(value) if value.isdigit() and len(value) <= 18 else -1
    return None


def _too_large(what: str, limit: int, size: str) -> str:
    return f"request body too large: {what} may have at most {limit} bytes, this one has {size}"


async def reply(send, status: int, detail: str) -> None:
    """Answer with JSON ``{"detail": detail}`` and close the connection."""
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})
