"""Server-side NTLM and Kerberos for the lab: pyspnego acceptor contexts (Kerberos through
GSSAPI, with the lab's keytab) and WinRM message encryption, the same framing for both.

pyspnego's pure-Python NTLM acceptor looks users up in the file named by the process-wide
``NTLM_USER_FILE`` environment variable (it has no per-context credential argument). The lab
therefore keeps one credential file per process holding the union of every running lab's
accounts; it is written before any context is created and only ever grows while the process
lives, so two labs in one test process never lock each other out.
"""

from __future__ import annotations

import atexit
import base64
import os
import struct
import tempfile
import threading
from pathlib import Path
from typing import Any

import spnego

from vmm_cert_lab.fleet.interfaces import Account

# [MS-WSMV] 2.2.9.1.1: the MIME framing of encrypted WinRM messages, byte for byte as pywinrm's
# winrm/encryption.py writes and parses it. The protocol names the HTTP scheme the client
# authenticated with (Negotiate or Kerberos); the answer carries the request's.
PROTOCOL = "application/HTTP-SPNEGO-session-encrypted"
KERBEROS_PROTOCOL = "application/HTTP-Kerberos-session-encrypted"
BOUNDARY = b"--Encrypted Boundary"
CONTENT_TYPE = f'multipart/encrypted;protocol="{PROTOCOL}";boundary="Encrypted Boundary"'


def content_type(protocol: str) -> str:
    return f'multipart/encrypted;protocol="{protocol}";boundary="Encrypted Boundary"'


def request_protocol(content_type_header: str) -> str:
    """The encryption protocol a request's Content-Type names (SPNEGO when it names none)."""
    return (
        KERBEROS_PROTOCOL if KERBEROS_PROTOCOL.lower() in content_type_header.lower() else PROTOCOL
    )


_OCTET = b"\tContent-Type: application/octet-stream\r\n"

# An NTLM message starts with this signature followed by a little-endian message type.
_NTLM_SIGNATURE = b"NTLMSSP\x00"
NEGOTIATE = 1
AUTHENTICATE = 3
# A GSS-API initial token (RFC 2743 3.1) starts 0x60 and names its mechanism: Kerberos 5
# (what pywinrm's pykerberos sends under "Negotiate") or SPNEGO (what Windows sends).
_KRB5_OID = bytes.fromhex("06092a864886f712010202")
_SPNEGO_OID = bytes.fromhex("06062b0601050502")

_lock = threading.Lock()
# (DOMAIN, USER) upper-cased -> the line for it; pyspnego takes the first matching line.
_lines: dict[tuple[str, str], str] = {}
_file: Path | None = None


def _cleanup() -> None:
    if _file is not None:
        _file.unlink(missing_ok=True)


def register_accounts(accounts: list[Account]) -> None:
    """Make ``accounts`` acceptable to every NTLM context created from now on.

    pyspnego matches users by (domain, name) only, so one process can know one password per
    account: a later registration of the same account with another password replaces the
    earlier one (two labs in one process must not reuse a name with different passwords).
    """
    global _file
    with _lock:
        new: dict[tuple[str, str], str] = {}
        for acc in accounts:
            # The Heimdal line format DOMAIN:USER:PASSWORD cannot hold these characters.
            if any(c in f"{acc.domain}{acc.username}{acc.password}" for c in ":\r\n"):
                raise ValueError(
                    f"account {acc.domain}\\{acc.username}: ':' or a line break cannot be used "
                    "in a lab account's domain, name or password (NTLM user file format)"
                )
            # DOMAIN\user and a bare "user" (no domain in the NTLM message) both log on, as a
            # local account on a Windows host would.
            new[(acc.domain.upper(), acc.username.upper())] = (
                f"{acc.domain}:{acc.username}:{acc.password}"
            )
            new[("", acc.username.upper())] = f":{acc.username}:{acc.password}"
        if _file is not None and all(_lines.get(k) == v for k, v in new.items()):
            return
        _lines.update(new)
        if _file is None:
            fd, name = tempfile.mkstemp(prefix="vmm-lab-ntlm-", suffix=".users")
            os.close(fd)
            _file = Path(name)
            atexit.register(_cleanup)
        # mkstemp already made it 0600; rewrite atomically so a context being created never
        # reads a half-written file.
        tmp = _file.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write("\n".join(_lines[k] for k in sorted(_lines)) + "\n")
        tmp.replace(_file)
        os.environ["NTLM_USER_FILE"] = str(_file)


def message_type(token: bytes) -> int:
    """The NTLM message type (1 negotiate, 3 authenticate), 0 for anything else."""
    if len(token) < 12 or not token.startswith(_NTLM_SIGNATURE):
        return 0
    return int(struct.unpack("<I", token[8:12])[0])


def is_kerberos(token: bytes) -> bool:
    """A Kerberos initial token, bare or inside SPNEGO."""
    return token[:1] == b"\x60" and (_KRB5_OID in token[:24] or _SPNEGO_OID in token[:24])


def is_spnego(token: bytes) -> bool:
    return token[:1] == b"\x60" and _SPNEGO_OID in token[:24]


def tls_server_end_point(certificate_der: bytes) -> bytes:
    """RFC 5929's channel binding data for a TLS server: what Windows checks when
    CbtHardeningLevel asks (SHA-256 of the certificate, or its own hash when stronger)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    cert = x509.load_der_x509_certificate(certificate_der)
    algorithm = cert.signature_hash_algorithm
    if algorithm is None or algorithm.name in ("md5", "sha1"):
        algorithm = hashes.SHA256()
    digest = hashes.Hash(algorithm)
    digest.update(certificate_der)
    return b"tls-server-end-point:" + digest.finalize()


class KerberosRefused(Exception):
    """The acceptor refused a Kerberos token; the message says why (GSSAPI's words)."""


class NTLMConnection:
    """The NTLM or Kerberos state of one TCP connection: WinRM authenticates connections,
    not requests."""

    def __init__(self) -> None:
        self._ctx: Any = None
        self.complete = False
        self.username: str | None = None
        self.mechanism: str | None = None  # "ntlm" or "kerberos" once complete

    def negotiate(self, token: bytes) -> bytes:
        """Start a fresh context from a Negotiate message; returns the Challenge."""
        self._ctx = spnego.server(protocol="ntlm")
        self.complete = False
        self.username = None
        self.mechanism = "ntlm"
        out = self._ctx.step(token)
        return bytes(out or b"")

    def authenticate(self, token: bytes) -> bool:
        """Finish the handshake; False when the credentials are wrong (or no handshake began)."""
        if self._ctx is None:
            return False
        try:
            self._ctx.step(token)
        except Exception:  # noqa: BLE001 - every pyspnego failure here means "logon failure"
            self._ctx = None
            return False
        self.complete = bool(self._ctx.complete)
        self.username = str(self._ctx.client_principal or "")
        return self.complete

    def kerberos(
        self, token: bytes, credential: Any, binding: bytes | None, require_binding: bool
    ) -> bytes:
        """Accept a Kerberos AP-REQ with the lab's keytab; returns the AP-REP (mutual
        authentication). ``binding``: the TLS channel's, checked when the client sent one,
        and required when ``require_binding`` (CbtHardeningLevel strict).
        Raises ``KerberosRefused``."""
        from spnego.channel_bindings import GssChannelBindings

        self.reset()
        bindings = GssChannelBindings(application_data=binding) if binding is not None else None
        mech = None
        if is_spnego(token):
            # pyspnego's Negotiate acceptor would look for the machine's default keytab:
            # unwrap the Kerberos token here and wrap the answer back, as SPNEGO does
            mech, token = _spnego_kerberos(token)
        try:
            ctx = spnego.server(
                protocol="kerberos", channel_bindings=bindings, _gssapi_credential=credential
            )
            out = ctx.step(token)
        except Exception as exc:  # every GSSAPI failure is a refused logon
            raise KerberosRefused(str(exc)) from exc
        if mech is not None:
            from spnego._spnego import NegState, NegTokenResp

            out = NegTokenResp(
                neg_state=NegState.accept_complete, supported_mech=mech, response_token=out
            ).pack()
        if not ctx.complete:
            raise KerberosRefused("the Kerberos exchange needs more than one step")
        if require_binding and not _channel_bound(ctx):
            raise KerberosRefused("no channel binding token (CbtHardeningLevel strict)")
        self._ctx = ctx
        self.complete = True
        self.mechanism = "kerberos"
        self.username = str(ctx.client_principal or "")
        return bytes(out or b"")

    def reset(self) -> None:
        self._ctx = None
        self.complete = False
        self.username = None
        self.mechanism = None

    def decrypt(self, body: bytes) -> bytes:
        """Decrypt a ``multipart/encrypted`` request body; ValueError when it is malformed."""
        if not self.complete:
            raise ValueError("encrypted message before the NTLM context was established")
        parts = [p for p in body.split(BOUNDARY + b"\r\n") if p]
        if len(parts) < 2:
            raise ValueError("encrypted body lacks its two MIME parts")
        out = b""
        for i in range(0, len(parts) - 1, 2):
            header, payload = parts[i].strip(), parts[i + 1]
            try:
                expected = int(header.split(b"Length=")[1].split(b"\r")[0])
            except (IndexError, ValueError) as exc:
                raise ValueError("encrypted part has no OriginalContent length") from exc
            end = BOUNDARY + b"--\r\n"
            if payload.endswith(end):
                payload = payload[: -len(end)]
            if not payload.startswith(_OCTET):
                raise ValueError("encrypted part is not application/octet-stream")
            payload = payload[len(_OCTET) :]
            (sig_len,) = struct.unpack("<I", payload[:4])
            header_bytes, sealed = payload[4 : 4 + sig_len], payload[4 + sig_len :]
            try:
                plain = bytes(self._ctx.unwrap_winrm(header_bytes, sealed))
            except Exception as exc:
                raise ValueError(f"cannot decrypt the message: {exc}") from exc
            if len(plain) != expected:
                raise ValueError("decrypted length does not match OriginalContent")
            out += plain
        return out

    def encrypt(self, plain: bytes, protocol: str = PROTOCOL) -> bytes:
        """Encrypt a response body the way Windows does (one part, the closing boundary)."""
        res = self._ctx.wrap_winrm(plain)
        sealed = struct.pack("<I", len(res.header)) + res.header + res.data
        framed: bytes = (
            BOUNDARY + b"\r\n"
            b"\tContent-Type: " + protocol.encode() + b"\r\n"
            b"\tOriginalContent: type=application/soap+xml;charset=UTF-8;Length="
            + str(len(plain)).encode()
            + b"\r\n"
            + BOUNDARY
            + b"\r\n"
            + _OCTET
            + sealed
            + BOUNDARY
            + b"--\r\n"
        )
        return framed


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


# GSS_C_CHANNEL_BOUND_FLAG (MIT krb5 1.19+): the initiator's bindings matched the acceptor's.
_CHANNEL_BOUND = 0x800


def _channel_bound(ctx: Any) -> bool:
    inner = getattr(ctx, "_context", None)
    flags = getattr(inner, "actual_flags", 0)
    return bool(int(flags) & _CHANNEL_BOUND)


_KERBEROS_MECHS = ("1.2.840.113554.1.2.2", "1.2.840.48018.1.2.2")  # and Microsoft's OID


def _spnego_kerberos(token: bytes) -> tuple[str, bytes]:
    """The mechanism and Kerberos token of a SPNEGO NegTokenInit whose preferred mechanism
    is Kerberos (what Windows sends); ``KerberosRefused`` for anything else."""
    from spnego._spnego import NegTokenInit, unpack_token

    try:
        init = unpack_token(token)
    except Exception as exc:  # a malformed token is a refused logon
        raise KerberosRefused(f"not a SPNEGO token: {exc}") from exc
    if not isinstance(init, NegTokenInit) or not init.mech_types or not init.mech_token:
        raise KerberosRefused("SPNEGO without an initial Kerberos token")
    if init.mech_types[0] not in _KERBEROS_MECHS:
        raise KerberosRefused(f"SPNEGO prefers {init.mech_types[0]}, not Kerberos")
    return str(init.mech_types[0]), bytes(init.mech_token)
