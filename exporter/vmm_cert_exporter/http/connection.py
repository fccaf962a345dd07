"""One client connection, driven by the server's event loop, each phase under its own deadline.

A connection goes through these phases (docs/architecture.md, "One HTTP layer"):

``HANDSHAKE``  TLS only. Nothing is allocated for TLS until the client's whole ClientHello
               has arrived (a silent or stalling client costs a socket, not an OpenSSL
               session); the handshake runs non-blocking, within ``handshake_timeout`` of
               the accept.
``HEAD``       waiting for a request and reading its head (h11 parses it), within
               ``head_timeout``: a new connection, a kept-alive one, a slowloris client alike.
``BODY``       reading the body into memory, at most ``max_body_bytes`` plus one byte.
``AUTH``       a Basic password that was not verified before is with bcrypt, in its thread.
``HANDLER``    the handler runs in a handler thread.
``SEND``       the answer leaves from the handler's own buffers (``sendmsg``: no copy on plain
               sockets), the rest of a large one from a send thread; a client that takes
               nothing for ``send_timeout`` is dropped.
``LINGER``     after an answer that left part of the request unread (a 413, a refusal): the
               write side is shut and what the client still sends is read and discarded for a
               bounded time and size, so the client can read the answer instead of a reset.

The server counts ``HANDLER`` and ``SEND`` as busy and every other phase as idle: when the
connection cap is reached, the connection idle the longest is closed for the new one.
"""

from __future__ import annotations

import email.utils
import enum
import http
import itertools
import logging
import socket
import ssl
import struct
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

import h11

from vmm_cert_exporter.http import wsgi
from vmm_cert_exporter.http.credentials import Attempt
from vmm_cert_exporter.http.gate import BASIC_CHALLENGE

if TYPE_CHECKING:
    import asyncio

    from vmm_cert_exporter.http.server import HTTPServer

log = logging.getLogger(__name__)
access_log = logging.getLogger("vmm_cert_exporter.http.access")

_READ_SIZE: Final = 65536
_READS_PER_WAKEUP: Final = 8
# buffers handed to one sendmsg (plain) and bytes to one TLS send (encrypted in one go)
_SEND_BUFFERS: Final = 64
_TLS_SEND_SLICE: Final = 1 << 20
# what is left of an answer once the kernel took its fill, from which a send thread sends it
_THREAD_SEND_MIN: Final = 1 << 20
# a TLS record of type handshake (22) opens every ClientHello; one is at most 16 KiB + 5
_HANDSHAKE_RECORD: Final = 22
_HELLO_MAX: Final = 16384 + 5
_WOULD_BLOCK: Final = (
    BlockingIOError,
    InterruptedError,
    ssl.SSLWantReadError,
    ssl.SSLWantWriteError,
)


class Phase(enum.Enum):
    HANDSHAKE = "handshake"
    HEAD = "head"
    BODY = "body"
    AUTH = "auth"
    HANDLER = "handler"
    SEND = "send"
    LINGER = "linger"
    CLOSED = "closed"


BUSY: Final = frozenset({Phase.HANDLER, Phase.SEND})

_date_cache: list[Any] = [0, ""]


def http_date() -> str:
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache[:] = [now, email.utils.formatdate(now, usegmt=True)]
    return str(_date_cache[1])


def _guarded(method: Callable[[Connection], None]) -> Callable[[Connection], None]:
    """An event callback: a bug in it closes its connection and is logged, nothing more."""

    def run(self: Connection) -> None:
        try:
            method(self)
        except Exception:
            log.exception("connection failed", extra={"remote": self.peer.address})
            self.close(abort=True)

    return run


class Connection:
    def __init__(self, server: HTTPServer, sock: socket.socket, address: Any) -> None:
        self.server = server
        self.loop: asyncio.AbstractEventLoop = server.loop
        self.limits = server.limits
        self.sock: socket.socket = sock
        self.fd = sock.fileno()
        self.tls = server.tls is not None
        self.peer = wsgi.Peer(
            str(address[0]), int(address[1]), server.scheme, server.host, server.port
        )
        self.phase = Phase.HANDSHAKE if self.tls else Phase.HEAD
        self.parser: h11.Connection | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.reading = False
        self.writing = False
        self.eof = False
        self.out: deque[memoryview] = deque()
        self.progress = 0.0  # loop time of the last byte sent
        self.in_thread = False  # a send thread owns the socket until it returns
        self._reset()

    def _reset(self) -> None:
        self.request: h11.Request | None = None
        self.body = bytearray()
        self.unread = False  # part of the request is left unread: linger, then close
        self.identity: str | None = None
        self.began = 0.0
        self.status = 0
        self.sent = 0
        self.refused = ""
        self.linger_left = 0

    # ---- life ------------------------------------------------------------------------------

    def start(self) -> None:
        if self.phase is Phase.HANDSHAKE:
            self.server.idle(self)
            self._arm(self.limits.handshake_timeout, "handshake")
        else:
            self._wait_for_request()
        self._read_on()

    def evict(self) -> None:
        log.debug(
            "connection closed",
            extra={"remote": self.peer.address, "reason": "connection cap", "phase": self.phase},
        )
        self.close(abort=True)

    def close(self, *, abort: bool = False) -> None:
        """Close now; ``abort`` skips TLS's close_notify (deadlines, errors, eviction)."""
        if self.phase is Phase.CLOSED:
            return
        self.phase = Phase.CLOSED
        self._disarm()
        self._read_off()
        self._write_off()
        if self.in_thread:
            # the send thread still uses the socket: wake it; it is closed when that returns
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        self._release(abort)

    def _release(self, abort: bool) -> None:
        self.phase = Phase.CLOSED
        if isinstance(self.sock, ssl.SSLSocket) and not abort:
            try:
                self.sock.unwrap()  # sends close_notify; the peer's is not waited for
            except (OSError, ValueError):
                pass
        try:
            self.sock.close()
        except OSError:
            pass
        self.out.clear()
        self.body = bytearray()
        self.server.closed(self)

    # ---- deadlines -------------------------------------------------------------------------

    def _arm(self, seconds: float, what: str) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.timer = self.loop.call_later(seconds, self._expired, what)

    def _disarm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _expired(self, what: str) -> None:
        self.timer = None
        if what == "send":
            # the deadline counts from the last byte the client took, not from the start
            left = self.progress + self.limits.send_timeout - self.loop.time()
            if left > 0:
                self.timer = self.loop.call_later(left, self._expired, what)
                return
        if what != "linger":
            log.debug(
                "connection closed",
                extra={"remote": self.peer.address, "reason": f"{what} deadline"},
            )
        self.close(abort=True)

    # ---- readiness -------------------------------------------------------------------------

    def _read_on(self) -> None:
        if not self.reading and self.phase is not Phase.CLOSED:
            self.loop.add_reader(self.fd, self._on_readable)
            self.reading = True

    def _read_off(self) -> None:
        if self.reading:
            self.loop.remove_reader(self.fd)
            self.reading = False

    def _write_on(self) -> None:
        if not self.writing and self.phase is not Phase.CLOSED:
            self.loop.add_writer(self.fd, self._on_writable)
            self.writing = True

    def _write_off(self) -> None:
        if self.writing:
            self.loop.remove_writer(self.fd)
            self.writing = False

    @_guarded
    def _on_readable(self) -> None:
        for _ in range(_READS_PER_WAKEUP):
            if self.phase is Phase.HANDSHAKE:
                self._handshake()
                return
            if not self.reading:
                return
            try:
                data = self.sock.recv(_READ_SIZE)
            except _WOULD_BLOCK:
                return
            except OSError:  # ssl.SSLError included: a broken TLS stream
                self.close(abort=True)
                return
            if self.phase is Phase.LINGER:
                self.linger_left -= len(data)
                if not data or self.linger_left <= 0:
                    self.close(abort=True)
                    return
                continue
            assert self.parser is not None
            self.eof = not data
            self.parser.receive_data(data)
            self._advance()
            if self.eof or (not self.tls and len(data) < _READ_SIZE):
                return
        if self.reading and isinstance(self.sock, ssl.SSLSocket) and self.sock.pending():
            # decrypted bytes wait in OpenSSL, where the selector cannot see them
            self.loop.call_soon(self._on_readable)

    @_guarded
    def _on_writable(self) -> None:
        if self.phase is Phase.HANDSHAKE:
            self._handshake()
            return
        while self.out:
            try:
                if self.tls:
                    sent = self.sock.send(self.out[0][:_TLS_SEND_SLICE])
                else:
                    sent = self.sock.sendmsg(list(itertools.islice(self.out, _SEND_BUFFERS)))
            except _WOULD_BLOCK:
                if self.phase is Phase.SEND and self.server.free_senders > 0:
                    if sum(len(view) for view in self.out) >= _THREAD_SEND_MIN:
                        self._send_in_thread()
                        return
                self._write_on()
                return
            except OSError:
                self.close(abort=True)
                return
            self.sent += sent
            self.progress = self.loop.time()
            while sent:
                head = self.out[0]
                if sent >= len(head):
                    sent -= len(head)
                    self.out.popleft()
                else:
                    self.out[0] = head[sent:]
                    sent = 0
        self._write_off()
        if self.phase is Phase.SEND:
            self._sent()

    def _send_in_thread(self) -> None:
        """The rest of a large answer, sent by a blocking send in a send thread: it waits for
        the client outside the interpreter lock, where the loop would take the lock back for
        every piece the kernel accepts (and wait for it behind a rendering thread)."""
        self._write_off()
        self._disarm()  # the socket's own timeout is the send deadline now
        self.server.free_senders -= 1
        self.in_thread = True
        views = list(self.out)
        self.out.clear()
        # blocking, so one send takes the whole rest (the lock is taken back once, not once
        # per piece); the kernel's send timeout bounds each wait for the client
        seconds = self.limits.send_timeout
        timeout = struct.pack("ll", int(seconds), int((seconds % 1) * 1e6))
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeout)
        self.sock.setblocking(True)
        future = self.loop.run_in_executor(self.server.senders, _send_all, self.sock, views)
        future.add_done_callback(self._sent_in_thread)

    def _sent_in_thread(self, future: asyncio.Future[tuple[int, bool]]) -> None:
        self.server.free_senders += 1
        self.in_thread = False
        if self.phase is Phase.CLOSED or future.cancelled():
            self._release(abort=True)  # closed meanwhile: the socket is ours to close now
            return
        sent, ok = future.result()
        self.sent += sent
        try:
            self.sock.setblocking(False)
        except OSError:
            ok = False
        if not ok:
            self.close(abort=True)
            return
        self._sent()

    # ---- TLS -------------------------------------------------------------------------------

    def _handshake(self) -> None:
        context = self.server.tls
        assert context is not None
        if not isinstance(self.sock, ssl.SSLSocket):
            if not self._hello_arrived():
                return
            # only now: an OpenSSL session costs ~40 KB, a client still sending costs nothing
            self.sock = context.wrap_socket(
                self.sock, server_side=True, do_handshake_on_connect=False
            )
        try:
            self.sock.do_handshake()
        except ssl.SSLWantReadError:
            self._write_off()
            return
        except ssl.SSLWantWriteError:
            self._write_on()
            return
        except OSError as exc:
            # a wrong or missing client certificate, plain HTTP, a scanner
            log.debug(
                "TLS handshake refused",
                extra={
                    "remote": self.peer.address,
                    "reason": "tls",
                    "detail": getattr(exc, "reason", None) or type(exc).__name__,
                },
            )
            self.close(abort=True)
            return
        self._write_off()
        self._wait_for_request()
        # a TLS 1.3 client may have sent its request together with its Finished
        self.loop.call_soon(self._on_readable)

    def _hello_arrived(self) -> bool:
        """Whether the client's first TLS record (its ClientHello) is here, whole.

        Until it is, the kernel holds the bytes: the record header says how many to wait
        for, and SO_RCVLOWAT makes the socket readable only once they are all there.
        """
        try:
            data = self.sock.recv(_HELLO_MAX, socket.MSG_PEEK)
        except _WOULD_BLOCK:
            return False
        except OSError:
            self.close(abort=True)
            return False
        if not data:
            self.close(abort=True)
            return False
        need = 0
        if data[0] == _HANDSHAKE_RECORD:  # anything else is not TLS: OpenSSL will say so
            need = 5 if len(data) < 5 else min(5 + int.from_bytes(data[3:5], "big"), _HELLO_MAX)
        if len(data) < need:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, need)
            return False
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, 1)
        return True

    # ---- the request -----------------------------------------------------------------------

    def _wait_for_request(self) -> None:
        self.phase = Phase.HEAD
        if self.parser is None:
            self.parser = h11.Connection(
                h11.SERVER, max_incomplete_event_size=self.limits.max_header_bytes
            )
        self.server.idle(self)
        self._arm(self.limits.head_timeout, "head")

    def _advance(self) -> None:
        parser = self.parser
        assert parser is not None
        while self.phase in (Phase.HEAD, Phase.BODY):
            try:
                event = parser.next_event()
            except h11.RemoteProtocolError as exc:
                self._malformed(exc)
                return
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return
            if isinstance(event, h11.Request):
                self._on_head(event)
            elif isinstance(event, h11.Data):
                self._on_body(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                self._dispatch()
            elif isinstance(event, h11.ConnectionClosed):
                self.close()

    def _on_head(self, request: h11.Request) -> None:
        parser = self.parser
        assert parser is not None
        self.request = request
        self.began = time.monotonic()
        # h11 bounds a head that arrives in pieces; one that arrives whole is measured here
        size = len(request.method) + len(request.target) + 12
        size += sum(len(name) + len(value) + 4 for name, value in request.headers)
        if size > self.limits.max_header_bytes:
            self._refuse_head(431)
            return
        self.phase = Phase.BODY
        self._arm(self.limits.body_timeout, "body")
        length = self._header(b"content-length")
        if length is not None and int(length) > self.limits.max_body_bytes:
            # the handler answers from the head alone (413); the body is never read
            self.unread = True
            self._dispatch()
            return
        if parser.they_are_waiting_for_100_continue:
            self._queue(
                parser.send_with_data_passthrough(
                    h11.InformationalResponse(status_code=100, headers=[])
                )
            )
            self._on_writable()

    def _on_body(self, data: bytes) -> None:
        room = self.limits.max_body_bytes + 1 - len(self.body)
        self.body += data[:room]
        if len(data) >= room:
            # one byte more than the limit: the handler knows the body is too large
            self.unread = True
            self._dispatch()

    def _malformed(self, exc: h11.RemoteProtocolError) -> None:
        parser = self.parser
        assert parser is not None
        if self.eof or parser.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            self.close(abort=True)
            return
        self._refuse_head(exc.error_status_hint)

    def _refuse_head(self, status: int) -> None:
        self._read_off()
        self._disarm()
        self.unread = True
        self.refused = "malformed"
        reason = http.HTTPStatus(status).phrase
        self._respond(wsgi.plain(status, reason, f"{reason}\n"))

    def _header(self, name: bytes) -> str | None:
        assert self.request is not None
        for key, value in self.request.headers:
            if key == name:
                return bytes(value).decode("latin-1")
        return None

    # ---- between the request and the handler ------------------------------------------------

    def _dispatch(self) -> None:
        self._read_off()
        self._disarm()
        gate = self.server.gate
        if not gate.admit():
            self.refused = "rate_limit"
            self._respond(wsgi.plain(429, "Too Many Requests", "Too Many Requests\n"))
            return
        users = gate.users
        if users is None:
            self._run_handler()
            return
        attempt = users.attempt(self._header(b"authorization"))
        if attempt is None:
            self._authenticated(None, False)
            return
        outcome = users.cached(attempt)
        if outcome is not None:
            self._authenticated(attempt, outcome)
            return
        # bcrypt takes tens of milliseconds: in its own thread, never on the event loop
        self.phase = Phase.AUTH
        bcrypt = self.server.bcrypt
        assert bcrypt is not None

        def verify() -> bool:
            # a connection closed while it waited is not worth a bcrypt
            return self.phase is Phase.AUTH and users.verify(attempt)

        future = self.loop.run_in_executor(bcrypt, verify)
        future.add_done_callback(lambda done: self._verified(done, attempt))

    def _verified(self, future: asyncio.Future[bool], attempt: Attempt) -> None:
        if self.phase is not Phase.AUTH:
            return
        try:
            ok = future.result()
        except Exception:
            log.exception("bcrypt failed")
            ok = False
        self._authenticated(attempt, ok)

    def _authenticated(self, attempt: Attempt | None, ok: bool) -> None:
        if attempt is None or not ok:
            self.refused = "auth"
            self._respond(
                wsgi.plain(
                    401, "Unauthorized", "Unauthorized\n", [("WWW-Authenticate", BASIC_CHALLENGE)]
                )
            )
            return
        self.identity = attempt.user.decode("utf-8", "replace")
        self._run_handler()

    def _run_handler(self) -> None:
        assert self.request is not None
        self.phase = Phase.HANDLER
        self.server.busy(self)
        env = wsgi.environ(self.request, bytes(self.body), self.peer)
        if self.identity is not None:
            env["REMOTE_USER"] = self.identity
        credentials = self.server.credentials
        if credentials is not None:
            # who it is; which paths need whom is the handler's decision
            who = credentials.check(env.get("HTTP_AUTHORIZATION"))
            if who is not None:
                env["REMOTE_USER"] = who
        future = self.loop.run_in_executor(self.server.handlers, wsgi.call, self.server.app, env)
        future.add_done_callback(self._handled)

    def _handled(self, future: asyncio.Future[wsgi.Answer]) -> None:
        if self.phase is not Phase.HANDLER:
            return
        try:
            answer = future.result()
        except Exception:
            log.exception("handler failed")
            answer = wsgi.plain(500, "Internal Server Error", "internal error\n")
        self._respond(answer)

    # ---- the answer ------------------------------------------------------------------------

    def _respond(self, answer: wsgi.Answer) -> None:
        parser = self.parser
        assert parser is not None
        headers = self.server.gate.finish(answer.headers)
        names = {name.lower() for name, _ in headers}
        if "date" not in names:
            headers.append(("Date", http_date()))
        if "server" not in names:
            headers.append(("Server", self.server.name))
        if (self.unread or self.server.stopping) and "connection" not in names:
            headers.append(("Connection", "close"))
        head_only = self.request is not None and self.request.method == b"HEAD"
        try:
            response = h11.Response(
                status_code=answer.status,
                reason=answer.reason.encode("latin-1"),
                headers=[(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers],
            )
            self._queue(parser.send_with_data_passthrough(response))
            for part in () if head_only else answer.body:
                self._queue(parser.send_with_data_passthrough(h11.Data(data=part)))
            self._queue(parser.send_with_data_passthrough(h11.EndOfMessage()))
        except (h11.LocalProtocolError, UnicodeEncodeError):
            log.exception("invalid response", extra={"status": answer.status})
            self.close(abort=True)
            return
        self.status = answer.status
        self.phase = Phase.SEND
        self.server.busy(self)
        self.progress = self.loop.time()
        self._arm(self.limits.send_timeout, "send")
        self._on_writable()

    def _queue(self, data: list[bytes] | None) -> None:
        self.out.extend(memoryview(part) for part in data or () if part)

    def _sent(self) -> None:
        self._log()
        parser = self.parser
        assert parser is not None
        if self.unread or parser.their_state is not h11.DONE:
            self._linger()
        elif parser.our_state is h11.DONE and not self.server.stopping:
            parser.start_next_cycle()
            self._reset()
            self._wait_for_request()
            self._read_on()
            self._advance()  # a pipelined request may already be here
            if isinstance(self.sock, ssl.SSLSocket) and self.sock.pending():
                self.loop.call_soon(self._on_readable)
        else:
            self.close()

    def _linger(self) -> None:
        self.phase = Phase.LINGER
        self.server.idle(self)
        if not self.tls:
            try:
                self.sock.shutdown(socket.SHUT_WR)  # the client reads our answer, then EOF
            except OSError:
                pass
        self.linger_left = self.limits.linger_bytes
        self._arm(self.limits.linger_timeout, "linger")
        self._read_on()

    def _log(self) -> None:
        if not access_log.isEnabledFor(logging.DEBUG):
            return
        request = self.request
        path = "-" if request is None else wsgi.split_target(request.target)[0]
        extra = {
            "remote": self.peer.address,
            "method": "-" if request is None else request.method.decode("ascii", "replace"),
            "path": path[:200],
            "status": self.status,
            "bytes": self.sent,
            "seconds": round(time.monotonic() - self.began, 6) if self.began else 0.0,
        }
        if self.refused:
            extra["refused"] = self.refused
        access_log.debug("request", extra=extra)


def _send_all(sock: socket.socket, views: list[memoryview]) -> tuple[int, bool]:
    """In a send thread: every view, whole; how much went and whether all of it did."""
    sent = 0
    try:
        if isinstance(sock, ssl.SSLSocket):
            for view in views:
                sock.sendall(view)
                sent += len(view)
            return sent, True
        pending = deque(views)
        while pending:
            count = sock.sendmsg(list(itertools.islice(pending, _SEND_BUFFERS)))
            if count == 0:
                return sent, False
            sent += count
            while count:
                if count >= len(pending[0]):
                    count -= len(pending.popleft())
                else:
                    pending[0] = pending[0][count:]
                    count = 0
    except OSError:  # the client is gone, or took nothing for send_timeout
        return sent, False
    return sent, True
