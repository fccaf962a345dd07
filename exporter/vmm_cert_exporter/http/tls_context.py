"""The server side's ``ssl.SSLContext``, built the same way for every listener.

Used for the web config file's ``tls_server_config`` (the exporter and the receiver) and the
receiver's own ``receiver.tls``. TLS 1.2 at least, no compression, no renegotiation; client
certificates verified against ``client_ca_file`` when asked for. The handshake itself is the
server's business (``connection.py``: deferred until the client speaks, under a deadline).
"""

from __future__ import annotations

import ssl
from typing import Final, Literal

TLS_VERSIONS: Final = {"TLS12": ssl.TLSVersion.TLSv1_2, "TLS13": ssl.TLSVersion.TLSv1_3}


class TLSSetupError(Exception):
    """OpenSSL refused a file: ``part`` says which (the key pair or the client CA file)."""

    def __init__(self, part: Literal["key", "client_ca"], message: str) -> None:
        super().__init__(message)
        self.part = part
        self.message = message


class _EncryptedKey(Exception):
    pass


def server_context(
    cert_file: str,
    key_file: str,
    *,
    client_ca_file: str | None = None,
    verify_mode: ssl.VerifyMode = ssl.CERT_NONE,
    min_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_2,
    max_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_3,
    prefer_server_ciphers: bool = True,
) -> ssl.SSLContext:
    """A server context for ``cert_file``/``key_file``; ``verify_mode`` needs ``client_ca_file``.

    Raises ``TLSSetupError`` when OpenSSL refuses the files; an encrypted key is refused too,
    since a service cannot type its passphrase (OpenSSL would prompt on the terminal).
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = min_version
    context.maximum_version = max_version
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    if prefer_server_ciphers:
        context.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    else:
        context.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE

    def no_passphrase() -> str:
        raise _EncryptedKey

    try:
        context.load_cert_chain(cert_file, key_file, password=no_passphrase)
    except _EncryptedKey:
        raise TLSSetupError("key", "the private key is encrypted") from None
    except (ssl.SSLError, OSError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise TLSSetupError("key", f"OpenSSL refused the certificate and key: {reason}") from None
    if verify_mode != ssl.CERT_NONE:
        if client_ca_file is None:
            raise ValueError("verifying client certificates needs client_ca_file")
        try:
            context.load_verify_locations(cafile=client_ca_file)
        except (ssl.SSLError, OSError) as exc:
            raise TLSSetupError("client_ca", f"OpenSSL refused the CA file: {exc}") from None
    context.verify_mode = verify_mode
    return context
