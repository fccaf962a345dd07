"""The agentless TLS source (``method: tls``): the certificate a computer presents in a TLS
handshake, read by SNI without credentials and within each probe's own deadline.

What counts as the SCVMM certificate and which failure is which: docs/configuration.md
("tls: the agentless source")."""

from __future__ import annotations

import contextlib
import logging
import select
import socket
import ssl
import time
from dataclasses import dataclass
from typing import Final

from vmm_cert_exporter import failures
from vmm_cert_exporter.certificate import CertificateError, CertificateInfo, parse_certificate
from vmm_cert_exporter.config import TlsConfig
from vmm_cert_exporter.failures import CollectError
from vmm_cert_exporter.inventory import fqdn_key
from vmm_cert_exporter.snapshot import StoredCertificate

log = logging.getLogger(__name__)

# Errors that mean the peer went away during the handshake: a connection problem (as in
# remoting.classify), not a certificate one.
_CLOSED = (
    ssl.SSLEOFError,
    ssl.SSLZeroReturnError,
    ConnectionResetError,
    ConnectionAbortedError,
    BrokenPipeError,
)


def client_context() -> ssl.SSLContext:
    """A client context that accepts any certificate and old protocol versions.

    No validation: the certificate is what we want to read, and SCVMM's is self-signed.
    TLS 1.0 and weak ciphers are allowed so that old hosts can be read too; nothing secret
    crosses this connection (the probe sends no data after the handshake).
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with contextlib.suppress(ValueError, ssl.SSLError):
        ctx.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
    with contextlib.suppress(ssl.SSLError):
        ctx.set_ciphers("ALL:@SECLEVEL=0")
    return ctx


def is_scvmm_certificate(info: CertificateInfo, fqdn: str) -> bool:
    """Self-signed with the computer's FQDN as subject CN: what SCVMM creates."""
    return (
        info.self_signed
        and info.common_name is not None
        and fqdn_key(info.common_name) == fqdn_key(fqdn)
    )


@dataclass(frozen=True)
class Presented:
    """What one handshake showed: the leaf certificate's DER and the protocol version."""

    der: bytes
    tls_version: str | None
    seconds: float


class TlsProber:
    """Reads the certificate each computer presents; thread-safe (one shared client context)."""

    operation: Final = "tls-handshake"

    def __init__(self, config: TlsConfig, *, context: ssl.SSLContext | None = None) -> None:
        self._config = config
        self._context = context or client_context()

    @property
    def timeout(self) -> float:
        return self._config.timeout

    def fetch(self, host: str, timeout: float | None = None) -> Presented:
        """Handshake with ``host`` (SNI = ``host``); raise ``CollectError`` on any failure."""
        seconds = self._config.timeout if timeout is None else timeout
        started = time.monotonic()
        deadline = started + seconds
        address = self._config.address_for(host)
        sock = _connect(address, self._config.port, deadline)
        try:
            sock.setblocking(False)
            tls = self._context.wrap_socket(
                sock, server_hostname=host, do_handshake_on_connect=False
            )
        except (OSError, ValueError) as exc:
            sock.close()
            raise CollectError(failures.TLS, f"cannot start TLS: {exc}") from exc
        try:
            _handshake(tls, deadline, seconds)
            der = tls.getpeercert(binary_form=True)
            version = tls.version()
        finally:
            tls.close()
        if not der:
            raise CollectError(failures.TLS, "the server presented no certificate")
        return Presented(der=der, tls_version=version, seconds=time.monotonic() - started)

    def read(self, host: str) -> tuple[StoredCertificate, ...]:
        """The SCVMM certificate ``host`` presents, or ``()`` when it presents another one."""
        presented = self.fetch(host)
        try:
            info = parse_certificate(presented.der)
        except CertificateError as exc:
            raise CollectError(failures.PARSE, f"the presented certificate: {exc}") from exc
        if is_scvmm_certificate(info, host):
            # friendly name and private key are store properties: not visible over TLS
            return (StoredCertificate(info=info, friendly_name="", has_private_key=False),)
        log.info(
            "presented certificate is not the SCVMM one",
            extra={
                "host": host,
                "subject": info.subject,
                "issuer": info.issuer,
                "self_signed": info.self_signed,
                "thumbprint": info.thumbprint,
            },
        )
        return ()


def _connect(address: str, port: int, deadline: float) -> socket.socket:
    try:
        infos = socket.getaddrinfo(address, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise CollectError(failures.CONNECT, f"cannot resolve {address}: {exc}") from exc
    last: OSError | None = None
    for family, kind, proto, _, sockaddr in infos:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        sock = socket.socket(family, kind, proto)
        sock.settimeout(remaining)
        try:
            sock.connect(sockaddr)
        except TimeoutError:
            sock.close()
            raise CollectError(failures.CONNECT, f"connect to {address}:{port} timed out") from None
        except OSError as exc:
            sock.close()
            last = exc
            continue
        return sock
    if last is None:
        raise CollectError(failures.CONNECT, f"connect to {address}:{port} timed out")
    raise CollectError(
        failures.CONNECT, f"connect to {address}:{port}: {last.strerror or last}"
    ) from last


def _handshake(tls: ssl.SSLSocket, deadline: float, seconds: float) -> None:
    poller = select.poll()  # not select(): descriptors above 1024 are normal in a busy process
    poller.register(tls.fileno(), select.POLLIN)
    while True:
        try:
            tls.do_handshake()
            return
        except ssl.SSLWantReadError:
            events = select.POLLIN
        except ssl.SSLWantWriteError:
            events = select.POLLOUT
        except _CLOSED as exc:
            raise CollectError(
                failures.CONNECT, f"connection closed during the TLS handshake: {exc}"
            ) from exc
        except ssl.SSLError as exc:
            raise CollectError(failures.TLS, f"TLS handshake failed: {exc.reason or exc}") from exc
        except OSError as exc:
            raise CollectError(failures.CONNECT, f"during the TLS handshake: {exc}") from exc
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        poller.modify(tls.fileno(), events)
        if not poller.poll(max(1, int(remaining * 1000))):
            break
    raise CollectError(failures.TIMEOUT, f"no complete TLS handshake within {seconds:g}s")
