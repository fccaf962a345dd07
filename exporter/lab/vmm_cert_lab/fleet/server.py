"""One threaded HTTP/1.1 server playing every simulated computer's WinRM listener.

Each computer answers at ``POST /wsman/<fqdn>`` on one port, so a single process serves a whole
fleet; ``/lab/`` is the control API. A thread per connection means a black-holed or dripping
computer never slows the others. Transport faults are read from the model on every request,
so tests can switch them while the lab runs.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import logging
import os
import select
import socket
import ssl
import struct
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from vmm_cert_lab.fleet import ntlm
from vmm_cert_lab.fleet.control import ControlError, handle_control
from vmm_cert_lab.fleet.interfaces import Account, Faults, FleetModel
from vmm_cert_lab.fleet.lab_ca import LabTLS
from vmm_cert_lab.fleet.latency import NONE, Latency
from vmm_cert_lab.fleet.service_keys import ServiceKeys
from vmm_cert_lab.fleet.wsman import (
    DEFAULT_IDLE_TIMEOUT,
    LabStopping,
    ShellTable,
    WSManFault,
    WSManService,
    access_denied,
    fault_envelope,
    relates_to_of,
)

log = logging.getLogger("vmm_cert_lab.fleet")

# Bytes that are neither HTTP nor a TLS record: a TLS client fails its record layer on them,
# a plain HTTP client fails to parse the status line.
TLS_GARBAGE = b"\x00\x01\x02 this is not TLS \xff\xfe\r\n\r\n"
SOAP_CONTENT_TYPE = "application/soap+xml;charset=UTF-8"
# HTTP.sys drops idle keep-alive connections after 120 s (IdleConnectionTimeout).
IDLE_CONNECTION_TIMEOUT = 120.0
TLS_HANDSHAKE_TIMEOUT = 10.0
MAX_BODY = 16 * 1024 * 1024


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True  # a stuck connection thread never keeps the process alive
    request_queue_size = 1024  # a 1,000-computer refresh opens many connections at once
    allow_reuse_address = True
    lab: LabServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients that vanish mid-request are normal here (timeouts, faults): no stderr noise.
        log.debug("connection from %s failed", client_address, exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: NTLM authenticates the TCP connection
    server_version = "Microsoft-HTTPAPI/2.0"
    sys_version = ""
    timeout = IDLE_CONNECTION_TIMEOUT
    server: _HTTPServer

    def setup(self) -> None:
        lab = self.server.lab
        raw: socket.socket = self.request
        # Without TCP_NODELAY every request stalls tens of ms (Nagle + delayed ACK).
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if lab.ssl_context is not None:
            # The handshake runs here, in the connection's own thread, so a client that never
            # finishes it cannot block the accept loop.
            raw.settimeout(TLS_HANDSHAKE_TIMEOUT)
            self.request = lab.ssl_context.wrap_socket(raw, server_side=True)
        self.ntlm = ntlm.NTLMConnection()
        self.encrypted = False
        self.protocol = ntlm.PROTOCOL  # the encryption protocol of the last request
        self.auth_reply: str | None = None  # Kerberos' AP-REP, sent with the next answer
        super().setup()
        lab._track(self.connection, True)

    def finish(self) -> None:
        try:
            super().finish()
        except OSError:
            pass
        self.server.lab._track(self.connection, False)
        try:
            self.connection.close()
        except OSError:
            pass

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)

    # --- plumbing --------------------------------------------------------------------------

    def _read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        if length < 0 or length > MAX_BODY:
            raise ValueError(f"bad Content-Length {length}")
        return self.rfile.read(length) if length else b""

    def _send(
        self,
        status: int,
        body: bytes = b"",
        headers: list[tuple[str, str]] | None = None,
        drip: float = 0.0,
    ) -> None:
        lab = self.server.lab
        lab._count(status)
        self.send_response(status)
        for name, value in headers or []:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        if self.auth_reply is not None:
            self.send_header("WWW-Authenticate", self.auth_reply)
            self.auth_reply = None
        self.end_headers()
        if not drip:
            self.wfile.write(body)
            return
        # One byte at a time: the client's per-read timeout never fires, only a deadline helps.
        for i in range(len(body)):
            self.wfile.write(body[i : i + 1])
            if lab._wait(drip):
                self.close_connection = True
                return

    def _send_json(self, status: int, data: Any) -> None:
        body = json.dumps(data, indent=None, sort_keys=True, default=str).encode()
        self._send(status, body, [("Content-Type", "application/json")])

    def _reset(self) -> None:
        """Abort the connection with a TCP RST, as a refused or firewalled port looks."""
        self.server.lab._count("reset")
        self.close_connection = True
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.rfile.close()  # drop makefile's reference so close() really closes the fd
            self.connection.close()
        except OSError:
            pass

    def _break_tls(self) -> None:
        """Write non-TLS bytes under the TLS layer, then close."""
        self.server.lab._count("tls_error")
        self.close_connection = True
        try:
            os.write(self.connection.fileno(), TLS_GARBAGE)
            # A clean FIN (not a RST) so the client really reads the garbage and its TLS
            # record layer (or HTTP status-line parser) is what fails.
            self.connection.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def _black_hole(self) -> None:
        """Never answer; wait until the client gives up (closes) or the server stops."""
        lab = self.server.lab
        lab._count("black_hole")
        self.close_connection = True
        while not lab._stop.is_set():
            try:
                readable, _, _ = select.select([self.connection], [], [], 0.2)
            except (OSError, ValueError):
                return
            if readable:
                # A client waiting for an answer sends nothing more: readable means it left.
                return

    # --- methods ---------------------------------------------------------------------------

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def _dispatch(self, method: str) -> None:
        lab = self.server.lab
        lab._count_request()
        path = urlsplit(self.path).path
        if path == "/lab" or path.startswith("/lab/"):
            self._control(method, path)
            return
        if method == "POST" and path.lower().startswith("/wsman/"):
            fqdn = path[len("/wsman/") :].strip("/").lower()
            if fqdn and "/" not in fqdn and lab.model.has_computer(fqdn):
                self._wsman(fqdn)
                return
        # As HTTP.sys answers a URL no listener is registered for: before any auth.
        self._read_body_or_close()
        self._send(404, b"", [("Content-Type", "text/html")])

    def _read_body_or_close(self) -> bytes:
        try:
            return self._read_body()
        except ValueError:
            self.close_connection = True
            return b""

    def _control(self, method: str, path: str) -> None:
        body = self._read_body_or_close()
        lab = self.server.lab
        try:
            status, data = handle_control(lab.model, lab.stats, method, path, body)
        except ControlError as exc:
            self._send_json(exc.status, {"error": exc.message})
            return
        except Exception as exc:
            log.exception("control request %s %s failed", method, path)
            self._send_json(500, {"error": f"{type(exc).__name__}: {exc}"})
            return
        self._send_json(status, data)

    # --- WS-Management ---------------------------------------------------------------------

    def _wsman(self, fqdn: str) -> None:
        lab = self.server.lab
        faults = lab.model.faults(fqdn)
        if faults.connection_refused:
            self._reset()
            return
        if faults.tls_error:
            self._break_tls()
            return
        try:
            body = self._read_body()
        except ValueError:
            self.close_connection = True
            self._send(400)
            return
        if faults.black_hole:
            self._black_hole()
            return
        if faults.latency and lab._wait(faults.latency):
            self.close_connection = True
            return
        if not self._authenticate(fqdn, faults):
            return
        ctype_header = self.headers.get("Content-Type", "")
        if ctype_header.lower().startswith("multipart/encrypted"):
            try:
                body = self.ntlm.decrypt(body)
                self.encrypted = True
                self.protocol = ntlm.request_protocol(ctype_header)
                lab._count(f"encrypted_{self.ntlm.mechanism}")
            except ValueError as exc:
                log.debug("cannot decrypt request: %s", exc)
                self._send(400)
                return
        else:
            self.encrypted = False
        if not body:
            # The empty POST pywinrm sends to set up NTLM encryption.
            self._send(200)
            return
        # Re-read: a fault switched on during the handshake or latency applies at once.
        faults = lab.model.faults(fqdn)
        try:
            status, answer = self._answer(fqdn, body, faults)
        except LabStopping:
            self.close_connection = True
            return
        if self.encrypted:
            answer = self.ntlm.encrypt(answer, self.protocol)
            ctype = ntlm.content_type(self.protocol)
        else:
            ctype = SOAP_CONTENT_TYPE
        self._send(status, answer, [("Content-Type", ctype)], drip=faults.drip)

    def _answer(self, fqdn: str, body: bytes, faults: Faults) -> tuple[int, bytes]:
        lab = self.server.lab
        try:
            if faults.access_denied:
                raise access_denied()
            return 200, lab.service.handle(fqdn, body, receive_timeout=faults.receive_timeout)
        except LabStopping:
            raise
        except WSManFault as fault:
            return 500, fault_envelope(fault, relates_to_of(body), fqdn)
        except KeyError:
            # The computer left the model mid-request: the host is gone.
            return 404, b""
        except Exception as exc:
            log.exception("request for %s failed", fqdn)
            internal = WSManFault(
                "w:InternalError", f"Internal error: {type(exc).__name__}: {exc}", sender=False
            )
            return 500, fault_envelope(internal, relates_to_of(body), fqdn)

    def _unauthorized(self, faults: Faults, token: str | None = None) -> None:
        if token is None:
            # the schemes this listener offers, as Windows lists them
            offered = [("negotiate", "Negotiate"), ("kerberos", "Kerberos")]
            headers = [("WWW-Authenticate", name) for key, name in offered if faults.accepts(key)]
            if faults.accepts("basic"):
                headers.append(("WWW-Authenticate", 'Basic realm="WSMAN"'))
        else:
            headers = [("WWW-Authenticate", f"Negotiate {token}")]
        self.auth_reply = None
        self._send(401, b"", headers)

    def _kerberos(self, fqdn: str, scheme: str, token: bytes, faults: Faults) -> bool:
        lab = self.server.lab
        if not faults.accepts("kerberos") or lab.kerberos_keys is None:
            self._unauthorized(faults)
            return False
        binding = lab.channel_binding if faults.cbt_hardening != "none" else None
        try:
            reply = self.ntlm.kerberos(
                token,
                lab.kerberos_keys.credential(fqdn),
                binding,
                require_binding=faults.cbt_hardening == "strict",
            )
        except ntlm.KerberosRefused as exc:
            # Windows answers a refused ticket (skew, a key it does not have, no CBT) with
            # a bare 401; the reason stays in its event log, here the lab's debug log
            lab._count("kerberos_refused")
            log.debug("Kerberos logon refused: %s", exc)
            self._unauthorized(faults)
            return False
        if faults.http_401:
            self.ntlm.reset()
            self._unauthorized(faults)
            return False
        lab._count("kerberos_logon")
        name = "Kerberos" if scheme == "kerberos" else "Negotiate"
        self.auth_reply = f"{name} {ntlm.b64(reply)}" if reply else None
        return True

    def _authenticate(self, fqdn: str, faults: Faults) -> bool:
        """True when the request may proceed; otherwise the 401 has been sent."""
        lab = self.server.lab
        header = self.headers.get("Authorization", "")
        scheme, _, value = header.partition(" ")
        scheme = scheme.lower()
        if scheme == "basic":
            self.ntlm.reset()
            if not faults.accepts("basic") or faults.http_401 or not lab.check_basic(value.strip()):
                self._unauthorized(faults)
                return False
            return True
        if scheme in ("negotiate", "ntlm", "kerberos"):
            try:
                token = base64.b64decode(value.strip(), validate=True)
            except binascii.Error:
                self._unauthorized(faults)
                return False
            if scheme == "negotiate" and not faults.accepts("negotiate"):
                self._unauthorized(faults)
                return False
            if scheme == "kerberos" or ntlm.is_kerberos(token):
                return self._kerberos(fqdn, scheme, token, faults)
            kind = ntlm.message_type(token)
            if not faults.accepts("ntlm"):
                # "Restrict NTLM": the NTLM message is refused before any challenge
                self.ntlm.reset()
                lab._count("ntlm_refused")
                self._unauthorized(faults)
                return False
            if kind == ntlm.NEGOTIATE:
                challenge = self.ntlm.negotiate(token)
                self._unauthorized(faults, ntlm.b64(challenge))
                return False
            if kind == ntlm.AUTHENTICATE and not faults.http_401 and self.ntlm.authenticate(token):
                return True
            self.ntlm.reset()
            self._unauthorized(faults)
            return False
        if self.ntlm.complete and not faults.http_401:
            return True  # an NTLM- or Kerberos-authenticated connection needs no header
        self.ntlm.reset()
        self._unauthorized(faults)
        return False


class LabServer:
    """The lab's HTTP(S) listener: WS-Management for every computer plus the control API."""

    def __init__(
        self,
        model: FleetModel,
        host: str = "127.0.0.1",
        port: int = 0,
        tls: LabTLS | None = None,
        *,
        receive_chunk: int = 8192,
        shell_idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        max_operation_wait: float = 60.0,
        latency: Latency = NONE,
        kerberos_keytab: Path | None = None,
    ) -> None:
        """``kerberos_keytab``: the computers' service keys (``HTTP/<fqdn>``), which makes
        the listeners accept Kerberos; ``receive_chunk``: most bytes of output served per
        Receive (Windows splits output the same way); ``max_operation_wait``: cap on how
        long a Receive with the ``receive_timeout`` fault holds before answering w:TimedOut;
        ``latency``: how long each WS-Management request takes (``lab.latency``), slept in
        its connection's thread."""
        self.model = model
        self.host = host
        self.tls = tls
        self.ssl_context: ssl.SSLContext | None = tls.server_context() if tls else None
        # what a client binds its Kerberos logon to over HTTPS (the listener's certificate)
        self.channel_binding: bytes | None = (
            ntlm.tls_server_end_point(
                ssl.PEM_cert_to_DER_cert(tls.cert_path.read_text(encoding="ascii"))
            )
            if tls
            else None
        )
        # each computer accepts with its own keys, as Windows does (service_keys.py)
        self.kerberos_keys: ServiceKeys | None = (
            ServiceKeys(kerberos_keytab) if kerberos_keytab is not None else None
        )
        self._stop = threading.Event()
        self.shells = ShellTable(shell_idle_timeout)
        self.service = WSManService(
            model,
            self.shells,
            self._wait,
            chunk_size=receive_chunk,
            max_operation_wait=max_operation_wait,
            latency=latency,
        )
        self._lock = threading.Lock()
        self._requests = 0
        self._responses: Counter[str] = Counter()
        self._connections: set[socket.socket] = set()
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        server_cls = type("_LabHTTPServer", (_HTTPServer,), {"address_family": family})
        self._httpd: _HTTPServer = server_cls((host, port), _Handler, bind_and_activate=True)
        self._httpd.lab = self
        self._thread: threading.Thread | None = None

    @property
    def latency(self) -> Latency:
        return self.service.latency

    # --- lifecycle -------------------------------------------------------------------------

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:5985``."""
        scheme = "https" if self.tls else "http"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}"

    def endpoint(self, fqdn: str) -> str:
        return f"{self.url}/wsman/{fqdn}"

    def start(self) -> LabServer:
        # NTLM users must be on file before the first acceptor context is created.
        ntlm.register_accounts(self.model.accounts())
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.1},
            name=f"lab-server-{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop at once: pending black holes, drips and latencies are cut short."""
        self._stop.set()
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(timeout=5)
        self._httpd.server_close()
        if self.kerberos_keys is not None:
            self.kerberos_keys.close()
        with self._lock:
            conns = list(self._connections)
        for conn in conns:
            # Unblocks handler threads waiting for the next keep-alive request.
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def __enter__(self) -> LabServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- used by handlers ------------------------------------------------------------------

    def _wait(self, seconds: float) -> bool:
        """Sleep; True if the server is stopping (the caller then gives up)."""
        return self._stop.wait(seconds)

    def _track(self, conn: socket.socket, opened: bool) -> None:
        with self._lock:
            if opened:
                self._connections.add(conn)
            else:
                self._connections.discard(conn)

    def _count_request(self) -> None:
        with self._lock:
            self._requests += 1

    def _count(self, outcome: int | str) -> None:
        with self._lock:
            self._responses[str(outcome)] += 1

    def check_basic(self, value: str) -> bool:
        """Basic credentials: ``DOMAIN\\user``, ``user@domain`` or ``user``; names compared
        case-insensitively, the password exactly."""
        try:
            decoded = base64.b64decode(value, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return False
        user, sep, password = decoded.partition(":")
        if not sep:
            return False
        return find_account(self.model.accounts(), user, password) is not None

    def stats(self) -> dict[str, Any]:
        shells = self.shells.counts()
        with self._lock:
            return {
                "requests_total": self._requests,
                "responses": dict(self._responses),
                "open_connections": len(self._connections),
                "open_shells_total": sum(shells.values()),
                "open_shells": shells,
            }


def find_account(accounts: list[Account], user: str, password: str) -> Account | None:
    domain: str | None = None
    if "\\" in user:
        domain, user = user.split("\\", 1)
    elif "@" in user:
        user, domain = user.split("@", 1)
    for acc in accounts:
        if acc.username.lower() != user.lower():
            continue
        # A UPN suffix names the DNS domain (lab.example) whose first label is the NetBIOS
        # domain (LAB) in this lab.
        if domain is not None and acc.domain.lower() not in (
            domain.lower(),
            domain.split(".", 1)[0].lower(),
        ):
            continue
        if hmac.compare_digest(acc.password.encode(), password.encode()):
            return acc
    return None
