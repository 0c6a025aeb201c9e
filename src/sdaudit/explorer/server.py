"""Run the explorer with uvicorn: :func:`serve`."""

from __future__ import annotations

import ipaddress
import os
import socket
import threading
from typing import Any, Callable, Sequence

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _check_port_free(host: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host.strip("[]"), port))
        except OSError as e:
            raise OSError(f"cannot listen on {host}:{port}: {e.strerror or e} (choose another --port)") from e


def build(stores: Sequence[str | os.PathLike], *, model: Any = None, host: str = DEFAULT_HOST,
          labels_path: Any = None, preload_model: bool = True):
    """The app for ``serve``: Host names accepted follow ``host``; a model spec is loaded in the background."""
    from .app import create_app

    if host in ("0.0.0.0", "::", ""):
        allowed = ["*"]  # listening everywhere: the user asked for access by any name
    else:
        allowed = [host, f"[{host}]"] if ":" in host else [host]
    app = create_app(stores, model=model, labels_path=labels_path, allowed_hosts=allowed)
    if model is not None and isinstance(model, str) and preload_model:
        state = app.state.explorer

        def load():
            try:
                state.model()
            except Exception as e:  # noqa: BLE001 - reported on the page and on upload
                for h in state.handles:
                    h.upload_error = f"model '{model}' could not be loaded: {e}"

        threading.Thread(target=load, name="sdaudit-explore-model", daemon=True).start()
    return app


def serve(stores: Sequence[str | os.PathLike], *, model: Any = None, host: str = DEFAULT_HOST,
          port: int = DEFAULT_PORT, labels_path: Any = None, log_level: str = "warning",
          echo: Callable[[str], None] = print) -> None:
    """Serve the explorer for ``stores`` at http://host:port/ until interrupted (Ctrl+C).

    Listens on 127.0.0.1 unless told otherwise. Store and label problems are raised before
    anything listens (StoreError, LabelFileError, ValueError); a busy port raises OSError.
    """
    import uvicorn

    app = build(stores, model=model, host=host, labels_path=labels_path)
    _check_port_free(host, port)
    shown = f"[{host}]" if ":" in host and not host.startswith("[") else host
    url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '') else shown}:{port}/"
    state = app.state.explorer
    echo(f"sdaudit explore: {len(state.handles)} store(s) at {url}  (Ctrl+C to stop)")
    for h in state.handles:
        echo(f"  [{h.index}] {h.path}: {h.store.num_images} images, {len(h.store.layers)} layers; "
             f"labels -> {h.labels.path}")
    if not _is_loopback(host):
        echo(f"warning: listening on {host}: anyone who can reach this machine can read the stores"
             + (" and add images" if model is not None else "") + ".")
    uvicorn.run(app, host=host.strip("[]"), port=port, log_level=log_level)
