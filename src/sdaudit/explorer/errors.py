"""The explorer's refusal of a request: :class:`ExplorerError`, answered as JSON ``{"detail": message}``."""

from __future__ import annotations

from ..errors import SdauditError


class ExplorerError(SdauditError):
    """A request the explorer refuses; ``status`` is the HTTP status (4xx), ``detail`` the message, which
    names the parameter, store, layer or file at fault."""

    def __init__(self, status: int, detail: str):
        super().__init__(detail)
        self.status = status
        self.detail = detail
