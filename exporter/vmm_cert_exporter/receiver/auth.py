"""Authentication of the webhook and the API, as Alertmanager's ``http_config`` sends it.

- ``authorization: {type: Bearer, credentials_file: ...}`` sends
  ``Authorization: Bearer <token>``;
- ``basic_auth: {username: ..., password_file: ...}`` sends
  ``Authorization: Basic base64(username:password)``.

Alertmanager sends one or the other; when both are configured here, either is accepted.
Secrets are compared as SHA-256 digests with ``hmac.compare_digest``: constant time, and
the time does not depend on the length of what was presented either. Both user name and
password are always compared (no early exit that would tell which one was wrong).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from typing import Final

from vmm_cert_exporter.config import ReceiverConfig

# A header longer than this is not a credential we issued; refuse it before any work.
MAX_AUTHORIZATION: Final = 8192


def _digest(value: bytes) -> bytes:
    return hashlib.sha256(value).digest()


class Authenticator:
    def __init__(self, config: ReceiverConfig) -> None:
        self._token = (
            None if config.bearer_token is None else _digest(config.bearer_token.reveal().encode())
        )
        self._user = (
            None
            if config.basic_auth_username is None
            else _digest(config.basic_auth_username.encode())
        )
        self._password = (
            None
            if config.basic_auth_password is None
            else _digest(config.basic_auth_password.reveal().encode())
        )
        self._username = config.basic_auth_username

    @property
    def challenges(self) -> list[str]:
        """``WWW-Authenticate`` values for a 401, one per accepted scheme."""
        out = []
        if self._token is not None:
            out.append('Bearer realm="vmm-cert-exporter receiver"')
        if self._user is not None:
            out.append('Basic realm="vmm-cert-exporter receiver", charset="UTF-8"')
        return out

    def check(self, header: str | None) -> str | None:
        """The caller's identity (``"bearer"`` or ``"basic:<user>"``), or None if refused."""
        if not header or len(header) > MAX_AUTHORIZATION:
            return None
        scheme, _, credentials = header.partition(" ")
        scheme = scheme.lower()
        if scheme == "bearer" and self._token is not None:
            # WSGI hands headers over as latin-1 text: back to the bytes that were sent
            presented = _digest(credentials.encode("latin-1", "replace"))
            return "bearer" if hmac.compare_digest(presented, self._token) else None
        if scheme == "basic" and self._user is not None and self._password is not None:
            try:
                decoded = base64.b64decode(credentials.strip(), validate=True)
            except (binascii.Error, ValueError):
                return None
            user, sep, password = decoded.partition(b":")
            if not sep:
                return None
            user_ok = hmac.compare_digest(_digest(user), self._user)
            password_ok = hmac.compare_digest(_digest(password), self._password)
            # `&`, not `and`: both comparisons always run
            if user_ok & password_ok:
                return f"basic:{self._username}"
        return None
