"""``sdaudit explore``: an offline web explorer for representation stores.

:func:`create_app` builds the FastAPI application (open stores addressed by index, layers checked
against each store's own list, static files only from this package), :func:`serve` runs it with
uvicorn on 127.0.0.1 unless told otherwise. See ``docs/explorer.md``.
"""

from .app import create_app
from .server import serve

__all__ = ["create_app", "serve"]
