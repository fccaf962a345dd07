"""Run one contract script on one computer over WinRM, within a hard deadline.

pywinrm has no overall deadline: its read timeout bounds single socket reads, so a server
that drips a byte now and then, or answers "operation timeout" for ever, could hold a call
indefinitely. We therefore drive ``Protocol`` ourselves (open shell, run, receive in our own
loop) and arm a watchdog that shuts the call's sockets down when the deadline passes. The
sockets are found through an HTTP adapter mounted on the call's own ``requests`` session,
so nothing inside pywinrm is patched and no other call is touched.

One ``Protocol`` (one requests session, one NTLM context) per call: sessions are not
shareable between threads (see docs/architecture.md).
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import logging
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any, cast

import requests
import winrm.exceptions
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from winrm.protocol import Protocol

from vmm_cert_exporter import call_budget, failures, kerberos
from vmm_cert_exporter.clixml import decode_stderr
from vmm_cert_exporter.config import WinRMConfig
from vmm_cert_exporter.failures import CollectError
from vmm_cert_exporter.powershell import command_line
from vmm_cert_exporter.results import LANGUAGE_MODE_EXIT, parse_language_mode

_MAX_OUTPUT = 64 << 20  # refuse absurd output instead of holding it all in memory

_local = threading.local()
# requests' merge_environment_settings (called by pywinrm's build_session) sets and restores
# os.environ['no_proxy'] around its proxy lookup: two threads doing it at once can restore
# each other's value away and raise KeyError. Building sessions one at a time avoids it.
_session_lock = threading.Lock()
# pywinrm's vendored requests_kerberos logs the Authorization header (a ticket) at debug and
# a traceback at error for every failed step: the failure is ours to report, once, classified.
logging.getLogger("winrm.vendor.requests_kerberos").setLevel(logging.CRITICAL)


def _register(sock: socket.socket) -> None:
    watchdog: _Watchdog | None = getattr(_local, "watchdog", None)
    if watchdog is not None:
        watchdog.track(sock)


class _TrackedHTTPConnection(HTTPConnection):
    def _new_conn(self) -> socket.socket:
        sock = super()._new_conn()
        _register(sock)
        return sock


class _TrackedHTTPSConnection(HTTPSConnection):
    def _new_conn(self) -> socket.socket:
        sock = super()._new_conn()
        _register(sock)
        return sock


class _TrackedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _TrackedHTTPConnection


class _TrackedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _TrackedHTTPSConnection


class _TrackingAdapter(HTTPAdapter):
    """An ordinary adapter whose connections report their sockets to the calling thread."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {
            "http": _TrackedHTTPPool,
            "https": _TrackedHTTPSPool,
        }

    def send(self, request: Any, *args: Any, **kwargs: Any) -> requests.Response:
        response = super().send(request, *args, **kwargs)
        if response.status_code == 401:
            # the computer's clock against ours when it answered: a refused Kerberos ticket
            # is most often clock skew
            _local.skew = _clock_offset(response.headers.get("Date"))
        return response


class _Deadlines:
    """One thread that fires every watchdog whose deadline has passed.

    A ``threading.Timer`` per call meant two new threads per computer and refresh (the call
    and its Signal + Delete): ~15 % of a refresh's CPU, and hundreds of short-lived threads
    at high concurrency. Deadlines are kept in a heap instead; the thread sleeps until the
    earliest one (or until an earlier one is added) and is started on first use.
    """

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, _Watchdog]] = []
        self._counter = itertools.count()  # ties never compare watchdogs
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None

    def add(self, deadline: float, watchdog: _Watchdog) -> None:
        with self._wake:
            heapq.heappush(self._heap, (deadline, next(self._counter), watchdog))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="deadlines", daemon=True)
                self._thread.start()
            elif self._heap[0][2] is watchdog:
                self._wake.notify()  # it is the earliest: sleep less

    def _run(self) -> None:
        while True:
            due: list[_Watchdog] = []
            with self._wake:
                now = time.monotonic()
                while self._heap and (self._heap[0][0] <= now or self._heap[0][2].disarmed):
                    _, _, watchdog = heapq.heappop(self._heap)
                    if not watchdog.disarmed:
                        due.append(watchdog)
                if not due:
                    self._wake.wait(self._heap[0][0] - now if self._heap else None)
                    continue
            for watchdog in due:  # outside the heap's lock: firing shuts sockets down
                watchdog.expire()


_deadlines = _Deadlines()


class _Watchdog:
    """Shuts down every socket of the current call once the deadline passes."""

    def __init__(self, deadline: float) -> None:
        self.sockets: list[socket.socket] = []
        self.fired = False
        self.disarmed = False  # the call ended first: the deadline thread forgets it
        # a Create in flight: only its answer names the shell that Delete must free
        self.opening = False
        self._abort_after_open = False
        self._deadline = deadline
        self._lock = threading.Lock()

    def _fire_locked(self) -> None:
        self.fired = True
        for sock in self.sockets:
            # shutdown (not close) wakes a recv blocked in another thread
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def expire(self) -> None:
        """The deadline passed (called by the deadline thread): fire unless the call ended.

        Under the lock, so a call that ends at the same moment is either fired (and reports
        the timeout) or disarmed, never has its sockets shut after it was done with them.
        """
        with self._lock:
            if not self.disarmed:
                self._fire_locked()

    def fire(self) -> None:
        """End the call now, as if the deadline had passed."""
        with self._lock:
            self._fire_locked()

    def abort(self, allowance: float) -> None:
        """End the call now, except a Create in flight: it gets ``allowance`` to answer, so
        that the shell it opens can be deleted rather than left to WinRM's idle timeout."""
        with self._lock:
            if self.opening and not self.fired:
                self._abort_after_open = True
                _deadlines.add(time.monotonic() + allowance, self)
            else:
                self._fire_locked()

    def opened(self) -> bool:
        """The Create answered; whether an abort was waiting for it (the call then ends)."""
        with self._lock:
            self.opening = False
            if self._abort_after_open:
                self.fired = True  # no socket to wake: the call ends here, then Delete
            return self._abort_after_open

    def track(self, sock: socket.socket) -> None:
        with self._lock:
            self.sockets.append(sock)
            if self.fired:  # a connection opened after the deadline never gets to wait
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    @contextlib.contextmanager
    def armed(self) -> Iterator[None]:
        _local.watchdog = self
        _deadlines.add(self._deadline, self)
        try:
            yield
        finally:
            with self._lock:
                self.disarmed = True
            _local.watchdog = None


@dataclass(frozen=True)
class ScriptOutput:
    """What a script left behind: decoded stdout, the error text of stderr, the exit code."""

    stdout: str
    stderr: str
    exit_code: int
    # the bytes as received, before decoding: what `capture` records for a replay
    raw_stdout: bytes = field(default=b"", repr=False, compare=False)
    raw_stderr: bytes = field(default=b"", repr=False, compare=False)

    def failure(self) -> CollectError | None:
        """Why the script failed, or None when it exited 0.

        A script outside FullLanguage says so in its own exit-3 result: that is a reason of
        its own, since the fix (a JEA endpoint, an AppLocker rule) is not the script's.
        """
        if self.exit_code == 0:
            return None
        if self.exit_code == LANGUAGE_MODE_EXIT:
            mode = parse_language_mode(self.stdout)
            if mode is not None:
                return CollectError(
                    failures.LANGUAGE_MODE,
                    f"PowerShell runs in {mode} mode, not FullLanguage: allow the service "
                    "account's scripts (a JEA endpoint or an AppLocker/WDAC rule)",
                )
        first = (self.stderr or self.stdout).strip().splitlines()
        detail = first[0][:300] if first else "(no error text)"
        return CollectError(failures.SCRIPT, f"exit code {self.exit_code}: {detail}")


def _timeouts(seconds: float) -> tuple[int, int]:
    """pywinrm wants whole seconds with read > operation: derive both from the deadline."""
    operation = min(20, max(1, int(seconds // 3)))
    read = operation + min(10, max(1, int(seconds // 6)))
    return operation, read


def classify(exc: BaseException) -> CollectError:
    """Map an exception from requests or pywinrm to a failure reason."""
    if isinstance(exc, CollectError):
        return exc
    detail = f"{type(exc).__name__}: {exc}".strip()
    if isinstance(
        exc, winrm.exceptions.InvalidCredentialsError | winrm.exceptions.AuthenticationError
    ):
        return CollectError(failures.AUTH, "credentials rejected (HTTP 401)")
    if isinstance(exc, winrm.exceptions.WSManFaultError):
        if exc.wsman_fault_code == 5 or (exc.fault_subcode or "").endswith("AccessDenied"):
            return CollectError(failures.AUTH, f"access denied: {exc.reason}")
        return CollectError(failures.WSMAN_FAULT, f"{exc.fault_subcode or exc.code}: {exc.reason}")
    if isinstance(exc, winrm.exceptions.WinRMTransportError):
        if exc.code == 401:
            return CollectError(failures.AUTH, "credentials rejected (HTTP 401)")
        return CollectError(failures.WSMAN_FAULT, f"HTTP {exc.code} from the WinRM service")
    if isinstance(exc, winrm.exceptions.WinRMOperationTimeoutError):
        return CollectError(failures.TIMEOUT, "the command did not finish before the deadline")
    if isinstance(exc, PermissionError) and "NTLM challenge" in detail:
        # requests_ntlm's words for a 401 to the NTLM negotiate message: refused before any
        # password was sent, as a "Restrict NTLM" policy does
        return CollectError(
            failures.AUTH,
            'the computer refused NTLM before any password was sent (a "Restrict NTLM" '
            "policy, or Negotiate limited to Kerberos): use transport kerberos",
        )
    if isinstance(exc, requests.exceptions.SSLError):
        # a peer that resets or closes the connection during or right after the handshake
        # surfaces as SSLError(EOF): that is a connection problem, not a certificate one
        if any(m in detail for m in ("UNEXPECTED_EOF", "EOF occurred", "Connection reset")):
            return CollectError(failures.CONNECT, detail)
        return CollectError(failures.TLS, detail)
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return CollectError(failures.CONNECT, detail)
    if isinstance(exc, requests.exceptions.Timeout):
        return CollectError(failures.TIMEOUT, detail)
    if isinstance(exc, requests.exceptions.ConnectionError):
        return CollectError(failures.CONNECT, detail)
    if isinstance(exc, winrm.exceptions.WinRMError):
        return CollectError(failures.WSMAN_FAULT, detail)
    if isinstance(exc, requests.exceptions.RequestException | OSError):
        return CollectError(failures.CONNECT, detail)
    # pywinrm parses replies with ElementTree and bare next()/asserts: a reply that is not
    # WS-Management at all ends up here
    return CollectError(failures.WSMAN_FAULT, f"unexpected reply: {detail}")


class WinRMRunner:
    """Runs contract scripts on computers named by FQDN, with the configured transport."""

    keep_raw = False  # whether ScriptOutput keeps the bytes beside the decoded text

    def __init__(self, config: WinRMConfig) -> None:
        self._config = config
        # watchdogs of the calls in flight, so that abort() can end them all at once
        self._active: set[_Watchdog] = set()
        self._active_lock = threading.Lock()
        self._aborted = False
        # kinit (keytab or password) on start, renewed in the background
        self.kerberos = kerberos.login(config)

    @property
    def timeout(self) -> float:
        return self._config.timeout

    @property
    def cleanup_seconds(self) -> float:
        """The allowance of Signal + Delete after a call (its own, beyond the deadline)."""
        return call_budget.cleanup_seconds(self._config.timeout)

    @property
    def max_call_seconds(self) -> float:
        """The longest one call can take: its deadline, then Signal + Delete."""
        return call_budget.max_call_seconds(self._config.timeout)

    def abort(self) -> None:
        """End every call in flight now, as if its deadline had passed (graceful shutdown's
        second signal). Each still sends Signal + Delete; calls started later fail at once."""
        with self._active_lock:
            self._aborted = True
            active = list(self._active)
        for watchdog in active:
            watchdog.abort(self.cleanup_seconds)

    def endpoint_for(self, host: str) -> str:
        return self._config.endpoint.replace("{host}", host)

    def _protocol(self, host: str, timeout: float) -> Protocol:
        cfg = self._config
        operation, read = _timeouts(timeout)
        # kerberos: the password (if any) only ever goes to kinit (kerberos.py)
        password = (
            cfg.password.reveal()
            if cfg.password is not None and cfg.transport != "kerberos"
            else None
        )
        # the config module validated these strings against pywinrm's literals
        protocol = Protocol(
            endpoint=self.endpoint_for(host),
            transport=cast(Any, cfg.transport),
            username=cfg.username,
            password=password,
            server_cert_validation=cast(Any, cfg.server_cert_validation),
            # None (not pywinrm's "legacy_requests") keeps REQUESTS_CA_BUNDLE out of it
            ca_trust_path=cast(Any, cfg.ca_trust_path or None),
            cert_pem=cfg.cert_pem,
            cert_key_pem=cfg.cert_key_pem,
            read_timeout_sec=read,
            operation_timeout_sec=operation,
            # encryption is set up below, after our adapter is mounted, so that even the
            # NTLM handshake runs on tracked sockets
            message_encryption="never",
            proxy=None,
            # kerberos: the SPN is <service>/<the computer's FQDN>, not the URL's host
            kerberos_hostname_override=cfg.kerberos_host(host),
            service=cfg.kerberos_service,
        )
        transport = protocol.transport
        with _session_lock:
            session = transport.build_session()
        # proxy=None made the session's proxies {"no_proxy": "*"} and ca_trust_path is
        # explicit, so nothing from the environment can apply; with trust_env requests would
        # still scan os.environ for proxies on every request, only to bypass them (~10 % of a
        # call's CPU)
        session.trust_env = False
        adapter = _TrackingAdapter()
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        # pywinrm's own rule: encrypt when the auth supports it and the endpoint is plain HTTP
        if cfg.transport in ("ntlm", "kerberos", "credssp") and not self.endpoint_for(
            host
        ).lower().startswith("https"):
            transport.message_encryption = "auto"
            transport.setup_encryption(session)
        return protocol

    def run(self, host: str, script: str, timeout: float | None = None) -> ScriptOutput:
        """Run ``script`` on ``host``; raise ``CollectError`` on any failure."""
        seconds = self._config.timeout if timeout is None else timeout
        deadline = time.monotonic() + seconds
        watchdog = _Watchdog(deadline)
        with self._active_lock:
            if self._aborted:
                raise CollectError(failures.TIMEOUT, "not started: the exporter is shutting down")
            self._active.add(watchdog)
        shell_id: str | None = None
        command_id: str | None = None
        protocol: Protocol | None = None
        _local.skew = None
        try:
            with watchdog.armed():
                if self.kerberos is not None:
                    self.kerberos.use_for(host)
                protocol = self._protocol(host, seconds)
                watchdog.opening = True
                shell_id = protocol.open_shell(codepage=65001)
                if watchdog.opened():
                    raise ConnectionAbortedError("aborted once the shell was open")
                command, arguments = command_line(script)
                command_id = protocol.run_command(shell_id, command, arguments)
                stdout, stderr, exit_code = self._receive(protocol, shell_id, command_id, deadline)
        except BaseException as exc:
            if watchdog.fired:
                if self._aborted:
                    raise CollectError(
                        failures.TIMEOUT, "abandoned: the exporter is shutting down"
                    ) from exc
                raise CollectError(
                    failures.TIMEOUT, f"no complete answer within the {seconds:g}s deadline"
                ) from exc
            if isinstance(exc, KeyboardInterrupt | SystemExit):
                raise
            if self._config.transport == "kerberos":
                raise self._kerberos_failure(host, exc) from exc
            raise classify(exc) from exc
        finally:
            with self._active_lock:
                self._active.discard(watchdog)
            if protocol is not None:
                self._cleanup(protocol, shell_id, command_id)
        out = stdout.decode("utf-8", errors="replace")
        if out.startswith("\ufeff"):
            out = out.lstrip("\ufeff")
        err = decode_stderr(stderr.decode("utf-8", errors="replace"))
        if not self.keep_raw:  # a VMM server's TrustedPeople is megabytes: one copy is enough
            stdout, stderr = b"", b""
        return ScriptOutput(
            stdout=out, stderr=err, exit_code=exit_code, raw_stdout=stdout, raw_stderr=stderr
        )

    def _kerberos_failure(self, host: str, exc: BaseException) -> CollectError:
        """What failed, in Kerberos' terms, for a call that used it."""
        error = classify(exc)
        spn = f"{self._config.kerberos_service}/{self._config.kerberos_host(host)}"
        skew = getattr(_local, "skew", None)
        message = kerberos.describe_failure(
            f"{type(exc).__name__}: {exc}",
            spn=spn,
            principal=self._config.username,
            refused=_http_401(exc),
            skew=skew,
        )
        if message is None:
            return error
        return CollectError(failures.AUTH, message)

    @staticmethod
    def _receive(
        protocol: Protocol, shell_id: str, command_id: str, deadline: float
    ) -> tuple[bytes, bytes, int]:
        out: list[bytes] = []
        err: list[bytes] = []
        size = 0
        while True:
            if time.monotonic() >= deadline:
                raise CollectError(
                    failures.TIMEOUT, "the command did not finish before the deadline"
                )
            try:
                stdout, stderr, exit_code, done = protocol.get_command_output_raw(
                    shell_id, command_id
                )
            except winrm.exceptions.WinRMOperationTimeoutError:
                continue  # the server's "still running": ask again while time is left
            out.append(stdout)
            err.append(stderr)
            size += len(stdout) + len(stderr)
            if size > _MAX_OUTPUT:
                raise CollectError(failures.PARSE, f"output larger than {_MAX_OUTPUT} bytes")
            if done:
                return b"".join(out), b"".join(err), exit_code

    def _cleanup(self, protocol: Protocol, shell_id: str | None, command_id: str | None) -> None:
        """Signal + Delete, always, within their own short deadline; never raises."""
        allowance = self.cleanup_seconds
        cleanup = _Watchdog(time.monotonic() + allowance)
        with contextlib.suppress(Exception), cleanup.armed():
            if shell_id is not None:
                if command_id is not None:
                    with contextlib.suppress(Exception):
                        protocol.cleanup_command(shell_id, command_id)
                protocol.close_shell(shell_id, close_session=False)
        with contextlib.suppress(Exception):
            protocol.transport.close_session()


def _clock_offset(date_header: str | None) -> float | None:
    """Seconds the computer's clock (its HTTP Date) is ahead of ours; None if unknown."""
    if not date_header:
        return None
    try:
        return parsedate_to_datetime(date_header).timestamp() - time.time()
    except (TypeError, ValueError):
        return None


def _http_401(exc: BaseException) -> bool:
    """The computer answered 401 (a refused logon; not WS-Management's AccessDenied, which
    comes after a successful one)."""
    if isinstance(exc, winrm.exceptions.InvalidCredentialsError):
        return True
    return isinstance(exc, winrm.exceptions.WinRMTransportError) and exc.code == 401
