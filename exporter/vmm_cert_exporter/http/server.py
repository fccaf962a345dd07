"""The HTTP server of the exporter and the receiver: one event loop, handlers in threads.

``HTTPServer(app, listen_address, ...)`` listens, accepts, and runs every connection
(``connection.py``) on one asyncio event loop in a thread of its own: an idle or slow
connection costs a socket and a small object, never a thread. Handlers (WSGI apps) run in a
bounded pool of threads, bcrypt in a thread of its own. Why this design: docs/architecture.md.

``prepare()`` binds (so a taken port fails before anything else starts), ``start()`` serves
in a background thread, ``serve()`` in the calling thread, ``stop()`` ends it gracefully.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import ssl
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from typing import Final

from vmm_cert_exporter.config import parse_listen_address
from vmm_cert_exporter.http.connection import Connection
from vmm_cert_exporter.http.credentials import SharedSecrets
from vmm_cert_exporter.http.gate import Gate
from vmm_cert_exporter.http.limits import Limits, connection_cap
from vmm_cert_exporter.http.wsgi import WSGIApp
from vmm_cert_exporter.webconfig import WebConfigFile

log = logging.getLogger(__name__)

# pending connections the kernel keeps while the loop is busy: a short queue drops SYNs, and
# a dropped SYN costs the client a 1 s retransmission
_BACKLOG: Final = 1024
_ACCEPTS_PER_WAKEUP: Final = 128
_OUT_OF_DESCRIPTORS: Final = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


class HTTPServer:
    def __init__(
        self,
        app: WSGIApp,
        listen_address: str,
        *,
        name: str,
        web_config: WebConfigFile | None = None,
        tls: ssl.SSLContext | None = None,
        credentials: SharedSecrets | None = None,
        limits: Limits | None = None,
    ) -> None:
        """``tls`` or the web config's ``tls_server_config`` (not both) makes it HTTPS;
        ``credentials`` are checked for every request and the identity handed to ``app`` as
        ``REMOTE_USER``; the web config's Basic users, rate limit and headers apply to every
        path (``gate.py``)."""
        host, port = parse_listen_address(listen_address)
        self.host = host or "0.0.0.0"  # noqa: S104 - ":port" means every interface, as in Go
        self.requested_port = port
        self.app = app
        self.name = name
        if tls is not None and web_config is not None and web_config.ssl_context is not None:
            raise ValueError("TLS is configured twice")
        self.tls = tls if tls is not None else (web_config.ssl_context if web_config else None)
        self.gate = Gate(web_config)
        self.credentials = credentials
        self.limits = limits or Limits()
        self.stopping = False
        self.cap = self.limits.max_connections
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handlers: ThreadPoolExecutor | None = None
        self._senders: ThreadPoolExecutor | None = None
        self.free_senders = self.limits.send_threads
        self.bcrypt: ThreadPoolExecutor | None = None
        self._connections: set[Connection] = set()
        self._idle: OrderedDict[Connection, None] = OrderedDict()  # oldest idle first
        self._serving = threading.Event()
        self._done = threading.Event()
        self._thread: threading.Thread | None = None

    # ---- addresses -------------------------------------------------------------------------

    @property
    def scheme(self) -> str:
        return "https" if self.tls is not None else "http"

    @property
    def bind_addr(self) -> tuple[str, int]:
        if self._sock is None:
            return self.host, self.requested_port
        address = self._sock.getsockname()
        return str(address[0]), int(address[1])

    @property
    def port(self) -> int:
        return self.bind_addr[1]

    @property
    def url(self) -> str:
        """``http(s)://host:port`` (loopback for a wildcard address)."""
        host, port = self.bind_addr
        if host in ("0.0.0.0", "::", ""):  # noqa: S104 - we connect, not bind, here
            host = "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        return f"{self.scheme}://{host}:{port}"

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        assert self._loop is not None, "not serving"
        return self._loop

    @property
    def handlers(self) -> ThreadPoolExecutor:
        assert self._handlers is not None, "not serving"
        return self._handlers

    @property
    def senders(self) -> ThreadPoolExecutor:
        assert self._senders is not None, "not serving"
        return self._senders

    # ---- life ------------------------------------------------------------------------------

    def prepare(self) -> None:
        """Bind now: a taken port fails here, before anything else is started."""
        if self._sock is not None:
            return
        self.cap = connection_cap(self.limits)
        ipv6 = ":" in self.host
        sock = socket.create_server(
            (self.host, self.requested_port),
            family=socket.AF_INET6 if ipv6 else socket.AF_INET,
            backlog=_BACKLOG,
            dualstack_ipv6=ipv6 and self.host == "::" and socket.has_dualstack_ipv6(),
        )
        sock.setblocking(False)
        self._sock = sock

    def start(self) -> HTTPServer:
        """Bind and serve in a background thread; returns once connections are accepted."""
        self.prepare()
        self._thread = threading.Thread(target=self.serve, name=f"{self.name}-http", daemon=True)
        self._thread.start()
        self._serving.wait()
        return self

    def serve(self) -> None:
        """Serve in this thread until ``stop()``."""
        self.prepare()
        assert self._sock is not None
        if self._sock.fileno() < 0:  # stopped before it started
            self._done.set()
            return
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._handlers = ThreadPoolExecutor(
            self.limits.handler_threads, thread_name_prefix=f"{self.name}-handler"
        )
        self._senders = ThreadPoolExecutor(
            max(1, self.limits.send_threads), thread_name_prefix=f"{self.name}-send"
        )
        if self.gate.users is not None:
            # one at a time, as the toolkit does: a flood of logins gets one core, not all
            self.bcrypt = ThreadPoolExecutor(1, thread_name_prefix=f"{self.name}-bcrypt")
        loop.add_reader(self._sock.fileno(), self._accept)
        self._serving.set()
        try:
            loop.run_forever()
        finally:
            for conn in list(self._connections):
                conn.close(abort=True)
            self._close_listener()
            self._handlers.shutdown(wait=False, cancel_futures=True)
            self._senders.shutdown(wait=False, cancel_futures=True)
            if self.bcrypt is not None:
                self.bcrypt.shutdown(wait=False, cancel_futures=True)
            loop.close()
            self._done.set()

    def stop(self, timeout: float | None = None) -> None:
        """No new connection; requests in flight get ``timeout`` (``stop_timeout``) to finish."""
        grace = self.limits.stop_timeout if timeout is None else timeout
        if not self._serving.is_set():
            self._close_listener()
            return
        if not self._done.is_set():
            try:
                self.loop.call_soon_threadsafe(self._begin_stop, grace)
            except RuntimeError:  # the loop closed meanwhile
                pass
        self._done.wait(grace + 5.0)
        if self._thread is not None:
            self._thread.join(timeout=5.0)

    def _begin_stop(self, grace: float) -> None:
        self.stopping = True
        self._close_listener()
        for conn in list(self._idle):
            conn.close(abort=True)
        self.loop.call_later(grace, self.loop.stop)
        self._maybe_stopped()

    def _maybe_stopped(self) -> None:
        if self.stopping and not self._connections:
            self.loop.stop()

    def _close_listener(self) -> None:
        if self._sock is None or self._sock.fileno() < 0:
            return
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(self._sock.fileno())
        self._sock.close()

    # ---- connections -----------------------------------------------------------------------

    def _accept(self) -> None:
        assert self._sock is not None
        for _ in range(_ACCEPTS_PER_WAKEUP):
            try:
                sock, address = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in _OUT_OF_DESCRIPTORS and self._evict_oldest_idle():
                    continue
                if exc.errno in _OUT_OF_DESCRIPTORS:
                    self._pause_accepting(exc)
                    return
                continue  # the client gave up (ECONNABORTED) or alike
            if len(self._connections) >= self.cap and not self._evict_oldest_idle():
                log.debug("connection refused: every connection is busy", extra={"cap": self.cap})
                sock.close()
                continue
            sock.setblocking(False)
            if sock.family in (socket.AF_INET, socket.AF_INET6):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = Connection(self, sock, address)
            self._connections.add(conn)
            conn.start()

    def _pause_accepting(self, exc: OSError) -> None:
        assert self._sock is not None
        log.warning("cannot accept: out of file descriptors", extra={"detail": str(exc)})
        fd = self._sock.fileno()
        self.loop.remove_reader(fd)

        def resume() -> None:
            if not self.stopping:
                self.loop.add_reader(fd, self._accept)

        self.loop.call_later(0.1, resume)

    def _evict_oldest_idle(self) -> bool:
        if not self._idle:
            return False
        oldest = next(iter(self._idle))
        oldest.evict()
        return True

    def idle(self, conn: Connection) -> None:
        """``conn`` waits for its client (it keeps its place if it already did)."""
        if conn not in self._idle:
            self._idle[conn] = None

    def busy(self, conn: Connection) -> None:
        """The server works for ``conn``: it is not evicted for new connections."""
        self._idle.pop(conn, None)

    def closed(self, conn: Connection) -> None:
        self._connections.discard(conn)
        self._idle.pop(conn, None)
        self._maybe_stopped()

    @property
    def open_connections(self) -> int:
        return len(self._connections)
