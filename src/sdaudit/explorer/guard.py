"""The explorer's request guard (ASGI middleware :class:`RequestGuard`): Host allow-list, CSRF header,
security headers on every response.

A plain ASGI middleware rather than Starlette's ``BaseHTTPMiddleware``: that one runs the app in a
task group, which wraps errors raised while a body streams in (and trips over a client that
disconnects mid-body).
"""

from __future__ import annotations

import re
from typing import Iterable

from starlette.datastructures import Headers, MutableHeaders

from .limits import reply

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]")
CSRF_HEADER = "x-requested-by"
CSRF_VALUE = "sdaudit"
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")

# RFC 9110 Host: a name or IPv4 address (no ':'), or a bracketed IPv6 address, then optionally ':' and
# a port of plain ASCII digits.
_HOST_RE = re.compile(r"(\[[0-9a-f:.]+\]|[a-z0-9._-]+)(?::([0-9]{1,5}))?", re.ASCII)


def host_of(header: str) -> str | None:
    """The host name of a Host header (lower case, IPv6 in brackets); None if malformed or if its port is
    not 1..65535."""
    m = _HOST_RE.fullmatch(header.strip().lower())
    if m is None or (m.group(2) is not None and not 1 <= int(m.group(2)) <= 65535):
        return None
    return m.group(1)


class RequestGuard:
    """Refuse (400) a request whose Host header is malformed or not an allowed name (DNS rebinding);
    refuse (403) a POST/PUT/... without ``X-Requested-By: sdaudit`` (a cross-site form cannot send it)."""

    def __init__(self, app, *, hosts: Iterable[str]):
        self.app = app
        self.hosts = {h.lower() for h in LOOPBACK_HOSTS} | {h.lower() for h in hosts}
        self.any_host = "*" in self.hosts

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = Headers(scope=scope)
        header = headers.get("host", "")
        host = host_of(header)
        if host is None or not (self.any_host or host in self.hosts):
            return await reply(send, 400, f"refused: unexpected Host header '{header[:100]}' (the explorer only "
                                          "answers requests addressed to its own host names)")
        method = scope["method"]
        if method not in SAFE_METHODS and headers.get(CSRF_HEADER, "").lower() != CSRF_VALUE:
            return await reply(send, 403, f"refused: a {method} needs the header 'X-Requested-By: {CSRF_VALUE}'")

        async def send_secured(message):
            if message["type"] == "http.response.start":
                out = MutableHeaders(scope=message)
                out.setdefault("X-Content-Type-Options", "nosniff")
                out.setdefault("Referrer-Policy", "no-referrer")
            await send(message)

        await self.app(scope, receive, send_secured)
