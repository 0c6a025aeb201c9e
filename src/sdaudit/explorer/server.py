"""Run the explorer with uvicorn: :func:`serve`.

Connections are time-bounded: an idle keep-alive connection is closed after
``KEEP_ALIVE_S``, a request head (request line and headers) must arrive within
``HEAD_TIMEOUT_S`` (:class:`TimedH11Protocol`), and a request body that stalls is
abandoned (:mod:`sdaudit.explorer.limits`).
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import socket
import threading
from typing import Any, Callable, Sequence

from uvicorn.protocols.http.h11_impl import H11Protocol

from ..errors import UsageError
from .guard import LOOPBACK_HOSTS, host_of

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765
#: Seconds an idle keep-alive connection is kept open.
KEEP_ALIVE_S = 5
#: Seconds for a request's line and headers, from its first byte (or from the connection's start).
HEAD_TIMEOUT_S = 10.0
#: Largest request head in bytes (uvicorn answers 400 beyond it).
MAX_HEAD_BYTES = 16 * 1024
_EVERYWHERE = ("0.0.0.0", "::", "[::]", "")


class TimedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline for each request head: a connection that does not complete
    its request line and headers within ``HEAD_TIMEOUT_S`` is closed (uvicorn itself only closes idle
    keep-alive connections, so a client sending a header a byte a minute would hold one forever)."""

    head_timeout_s = HEAD_TIMEOUT_S
    _head_timer: asyncio.TimerHandle | None = None

    def _between_requests(self) -> bool:
        return self.cycle is None or self.cycle.response_complete

    def _arm(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.head_timeout_s, self._head_timeout)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timeout(self) -> None:
        self._head_timer = None
        if self._between_requests() and not self.transport.is_closing():
            self.transport.close()

    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self._between_requests():
            self._arm()
        super().data_received(data)
        if not self._between_requests():  # the head is complete: the body has its own limits
            self._disarm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)


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
            raise UsageError(f"cannot listen on {host}:{port}: {e.strerror or e} (choose another --port)") from e


def _as_host(name: str) -> str:
    """A name or address as it appears in a Host header: lower case, IPv6 in brackets, no zone."""
    name = name.strip().lower().split("%", 1)[0]
    return f"[{name.strip('[]')}]" if ":" in name else name


def _machine_names() -> set[str]:
    """This machine's names and the addresses of its network interfaces."""
    names = {socket.gethostname(), socket.getfqdn()}
    addresses: set[str] = set()
    for name in list(names):
        try:
            addresses |= {info[4][0] for info in socket.getaddrinfo(name, None)}
        except OSError:  # a host name that does not resolve: its addresses come from the interfaces
            pass
    try:
        import psutil  # optional: every interface's addresses
    except ImportError:
        pass
    else:
        addresses |= {a.address for addrs in psutil.net_if_addrs().values() for a in addrs
                      if a.family in (socket.AF_INET, socket.AF_INET6)}
    return {n for n in names | addresses if n}


def allowed_host_names(host: str, extra: Sequence[str] = ()) -> list[str]:
    """The Host names the explorer answers besides the loopback ones: the listening address, or this
    machine's names and addresses when listening everywhere, plus ``extra`` (``--allowed-host``).
    A request addressed to any other name is refused (DNS rebinding)."""
    for name in extra:
        if host_of(_as_host(name)) != _as_host(name):
            raise UsageError(f"--allowed-host '{name[:100]}': not a host name or address (give it without a port)")
    names = _machine_names() if host in _EVERYWHERE else {host}
    return sorted({_as_host(n) for n in (*names, *extra)} - {""})


def _hosts_line(allowed: Sequence[str]) -> str:
    """The start-up line saying which Host names are answered (the DNS-rebinding guard)."""
    others = [n for n in allowed if n not in LOOPBACK_HOSTS]
    shown = ", ".join(others[:12]) + (f" and {len(others) - 12} more" if len(others) > 12 else "")
    return (f"  answering requests whose Host is {', '.join(LOOPBACK_HOSTS)}" + (f" or {shown}" if others else "")
            + "; others are refused (add a name with --allowed-host)")


def build(stores: Sequence[str | os.PathLike], *, model: Any = None, host: str = DEFAULT_HOST,
          labels_path: Any = None, preload_model: bool = True, allowed_hosts: Sequence[str] = ()):
    """The app for ``serve``: Host names accepted: see :func:`allowed_host_names`; a model spec is
    loaded in the background."""
    from .app import create_app

    allowed = allowed_host_names(host, allowed_hosts)
    app = create_app(stores, model=model, labels_path=labels_path, allowed_hosts=allowed)
    app.state.allowed_hosts = allowed
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
          allowed_hosts: Sequence[str] = (), echo: Callable[[str], None] = print) -> None:
    """Serve the explorer for ``stores`` at http://host:port/ until interrupted (Ctrl+C).

    Listens on 127.0.0.1 unless told otherwise; answers only requests addressed to loopback names,
    the listening address (this machine's names and addresses for 0.0.0.0) and ``allowed_hosts``. Store and label problems are raised before
    anything listens (StoreError, LabelFileError, ValueError); a busy port raises OSError.
    """
    import uvicorn

    app = build(stores, model=model, host=host, labels_path=labels_path, allowed_hosts=allowed_hosts)
    _check_port_free(host, port)
    shown = f"[{host}]" if ":" in host and not host.startswith("[") else host
    url = f"http://{'127.0.0.1' if host in _EVERYWHERE else shown}:{port}/"
    state = app.state.explorer
    echo(f"sdaudit explore: {len(state.handles)} store(s) at {url}  (Ctrl+C to stop)")
    for h in state.handles:
        echo(f"  [{h.index}] {h.path}: {h.store.num_images} images, {len(h.store.layers)} layers; "
             f"labels -> {h.labels.path}")
    if not _is_loopback(host):
        echo(f"warning: listening on {host}: anyone who can reach this machine can read the stores"
             + (" and add images" if model is not None else "") + ".")
    echo(_hosts_line(app.state.allowed_hosts))
    uvicorn.run(app, host=host.strip("[]"), port=port, log_level=log_level, http=TimedH11Protocol,
                timeout_keep_alive=KEEP_ALIVE_S, h11_max_incomplete_event_size=MAX_HEAD_BYTES)
