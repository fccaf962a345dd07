"""One TLS port that plays every lab computer's listener: it reads the SNI of the ClientHello
and presents that computer's current SCVMM certificate (what ``method: tls`` and
blackbox_exporter probe). The cases and faults it answers: docs/lab.md."""

from __future__ import annotations

import contextlib
import datetime
import os
import socket
import ssl
import struct
import tempfile
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from vmm_cert_lab.fleet.certs import KEY_POOL_SIZE, LabCertificate, pool_key
from vmm_cert_lab.fleet.model import Fleet

_HELLO_WAIT = 10.0  # seconds a client may take to send its ClientHello
_AFTER_WAIT = 5.0  # seconds we wait for the client to close after the handshake
_MAX_RECORD = 5 + 16384 + 2048  # a TLS record header plus the largest record body
_CONTEXT_CACHE = 8192  # SSL contexts kept (one per presented certificate)


def server_name(record: bytes) -> str | None:
    """The host_name of the SNI extension of a TLS ClientHello record, or None."""
    try:
        if len(record) < 9 or record[0] != 0x16 or record[5] != 0x01:
            return None
        body = record[9:]  # after the record header and the handshake header
        pos = 2 + 32  # client_version, random
        pos += 1 + body[pos]  # session_id
        pos += 2 + int.from_bytes(body[pos : pos + 2], "big")  # cipher_suites
        pos += 1 + body[pos]  # compression_methods
        end = min(len(body), pos + 2 + int.from_bytes(body[pos : pos + 2], "big"))
        pos += 2
        while pos + 4 <= end:
            kind, length = struct.unpack(">HH", body[pos : pos + 4])
            pos += 4
            if kind == 0:  # server_name
                item = pos + 2  # after the list length
                while item + 3 <= pos + length:
                    name_type = body[item]
                    name_length = int.from_bytes(body[item + 1 : item + 3], "big")
                    item += 3
                    if name_type == 0:
                        return body[item : item + name_length].decode("ascii")
                    item += name_length
                return None
            pos += length
    except (IndexError, UnicodeDecodeError, struct.error):
        return None
    return None


class TlsListener:
    """One TCP port on loopback presenting every computer's certificate, chosen by SNI."""

    def __init__(self, model: Fleet, host: str = "127.0.0.1", port: int = 0) -> None:
        self._model = model
        self._sock = socket.create_server((host, port), backlog=1024)
        self._sock.settimeout(0.5)
        self.host, self.port = self._sock.getsockname()[:2]
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._contexts: OrderedDict[str, ssl.SSLContext] = OrderedDict()
        self._key_pems: dict[int, bytes] = {}
        self._open: set[socket.socket] = set()
        self._stats: dict[str, int] = {}
        self._dir = Path(tempfile.mkdtemp(prefix="vmm-lab-tls-"))
        self._ca_key = ec.generate_private_key(ec.SECP256R1())
        self._ca_name = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "vmm-cert-exporter lab"),
                x509.NameAttribute(NameOID.COMMON_NAME, "lab corporate CA (not SCVMM)"),
            ]
        )

    @property
    def address(self) -> tuple[str, int]:
        return str(self.host), int(self.port)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._accept, name="lab-tls", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._sock.close()
        with self._lock:
            for conn in list(self._open):
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
        for path in self._dir.iterdir():
            path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            self._dir.rmdir()

    def stats(self) -> dict[str, int]:
        """Connections by outcome: ok, fallback, unknown_name, reset, black_hole, ..."""
        with self._lock:
            return dict(self._stats)

    # ---- connections -----------------------------------------------------------------------
    def _count(self, outcome: str) -> None:
        with self._lock:
            self._stats[outcome] = self._stats.get(outcome, 0) + 1

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._open.add(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            self._handle(conn)
        except (OSError, ValueError):
            self._count("failed")
        finally:
            with self._lock:
                self._open.discard(conn)
            with contextlib.suppress(OSError):
                conn.close()

    def _handle(self, conn: socket.socket) -> None:
        conn.settimeout(_HELLO_WAIT)
        hello = _peek_record(conn)
        name = server_name(hello) if hello else None
        found = self._lookup(name) if name else None
        if found is None:
            self._count("unknown_name")
            _reset(conn)
            return
        cert, faults = found
        if faults.get("connection_refused"):
            self._count("reset")
            _reset(conn)
            return
        if faults.get("black_hole"):
            self._count("black_hole")
            self._hold(conn)
            return
        if faults.get("tls_error"):
            self._count("tls_error")
            conn.recv(len(hello or b""))  # consume the ClientHello: close sends FIN, not RST
            conn.sendall(b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n")
            return
        if faults.get("latency") and self._stop.wait(float(faults["latency"])):
            return
        context = self._context_for(cert) if isinstance(cert, LabCertificate) else cert
        self._count("ok" if isinstance(cert, LabCertificate) else "fallback")
        if faults.get("drip"):
            self._drip_handshake(conn, context, float(faults["drip"]))
            return
        with context.wrap_socket(conn, server_side=True) as tls:
            # let the client close first (it has what it came for)
            tls.settimeout(_AFTER_WAIT)
            with contextlib.suppress(OSError, ssl.SSLError):
                while tls.recv(4096):
                    pass

    def _hold(self, conn: socket.socket) -> None:
        """Read and discard until the client gives up or the lab stops; never answer."""
        conn.settimeout(0.5)
        while not self._stop.is_set():
            try:
                if not conn.recv(4096):
                    return
            except TimeoutError:
                continue

    def _drip_handshake(self, conn: socket.socket, context: ssl.SSLContext, drip: float) -> None:
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = context.wrap_bio(incoming, outgoing, server_side=True)
        conn.settimeout(_HELLO_WAIT)
        while not self._stop.is_set():
            done = False
            try:
                tls.do_handshake()
                done = True
            except ssl.SSLWantReadError:
                pass
            for byte in outgoing.read():
                conn.sendall(bytes((byte,)))
                if self._stop.wait(drip):
                    return
            if done:
                return
            data = conn.recv(_MAX_RECORD)
            if not data:
                return
            incoming.write(data)

    # ---- the model and certificates --------------------------------------------------------
    def _lookup(self, name: str) -> tuple[LabCertificate | ssl.SSLContext, dict[str, Any]] | None:
        found = self._model.presented(name)
        if found is None:
            return None
        fqdn, current, faults = found
        if current is not None:
            return current.cert, faults
        return self._fallback_context(fqdn), faults

    def _key_pem(self, index: int) -> bytes:
        slot = index % KEY_POOL_SIZE
        pem = self._key_pems.get(slot)
        if pem is None:
            pem = pool_key(index).private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            self._key_pems[slot] = pem
        return pem

    def _context_for(self, cert: LabCertificate) -> ssl.SSLContext:
        key = cert.thumbprint
        with self._lock:
            context = self._contexts.get(key)
            if context is not None:
                self._contexts.move_to_end(key)
                return context
        pem = ssl.DER_cert_to_PEM_cert(cert.der).encode() + self._key_pem(cert.key_index)
        return self._remember(key, self._load(pem))

    def _fallback_context(self, fqdn: str) -> ssl.SSLContext:
        key = "fallback:" + fqdn.lower()
        with self._lock:
            context = self._contexts.get(key)
            if context is not None:
                return context
        leaf_key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        leaf = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, fqdn)]))
            .issuer_name(self._ca_name)
            .public_key(leaf_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=365))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(fqdn)]), critical=False)
            .sign(self._ca_key, hashes.SHA256())
        )
        pem = leaf.public_bytes(serialization.Encoding.PEM) + leaf_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        return self._remember(key, self._load(pem))

    def _remember(self, key: str, context: ssl.SSLContext) -> ssl.SSLContext:
        with self._lock:
            self._contexts[key] = context
            while len(self._contexts) > _CONTEXT_CACHE:
                self._contexts.popitem(last=False)
        return context

    def _load(self, pem: bytes) -> ssl.SSLContext:
        """A server context for one certificate + key (ssl loads chains only from files)."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.num_tickets = 0
        fd, path = tempfile.mkstemp(dir=self._dir, suffix=".pem")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(pem)
            context.load_cert_chain(path)
        finally:
            os.unlink(path)
        return context


def _peek_record(conn: socket.socket) -> bytes | None:
    """The first TLS record the client sent, without consuming it (None if closed)."""
    deadline = time.monotonic() + _HELLO_WAIT
    while True:
        data = conn.recv(_MAX_RECORD, socket.MSG_PEEK)
        if not data:
            return None
        if len(data) >= 5:
            if data[0] != 0x16:
                return data  # not a handshake: no SNI to find
            need = 5 + int.from_bytes(data[3:5], "big")
            if len(data) >= need:
                return data[:need]
        if time.monotonic() > deadline:
            return data
        time.sleep(0.002)  # a partial ClientHello: the rest is on its way


def _reset(conn: socket.socket) -> None:
    """Close with RST (SO_LINGER 0), as a host with nothing listening for this name would."""
    with contextlib.suppress(OSError):
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
