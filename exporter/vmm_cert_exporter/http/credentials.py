"""Who a request comes from: ``Authorization`` headers checked against what is configured.

- ``BcryptUsers``: the web config file's ``basic_auth_users`` (bcrypt hashes), checked as the
  exporter-toolkit does: every user name compared in constant time, an unknown user checked
  against a dummy hash of the same cost (no user enumeration by timing), bcrypt serialised,
  and outcomes cached under a per-process key so that a client sending the same header again
  costs an HMAC, not a bcrypt. The server asks ``cached`` on its event loop and runs ``verify``
  in a thread of its own, so a burst of logins never delays a request that is already known.
- ``SharedSecrets``: the receiver's bearer token and basic auth password, as Alertmanager's
  ``http_config`` sends them; compared as SHA-256 digests in constant time (the time does not
  depend on the length of what was presented either). Cheap: checked on the event loop.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets as pysecrets
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

import bcrypt

from vmm_cert_exporter.secrets import Secret

# A header longer than this is not a credential anyone issued; refused before any work.
MAX_AUTHORIZATION: Final = 8192
_CACHE_SIZE: Final = 1024


def parse_basic_auth(header: str | None) -> tuple[bytes, bytes] | None:
    """``(user, password)`` from an ``Authorization: Basic`` value, or None if it is not one."""
    if not header or len(header) > MAX_AUTHORIZATION:
        return None
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        raw = base64.b64decode(token.strip().encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        return None
    user, sep, password = raw.partition(b":")
    if not sep:
        return None
    return user, password


@dataclass(frozen=True)
class Attempt:
    """One presented user and password, with the hash it is to be checked against."""

    user: bytes
    password: bytes
    hashed: bytes | None  # None: an unknown user, checked against the dummy hash
    key: bytes  # the cache key: an HMAC of hash, user and password under a per-process key

    @property
    def known(self) -> bool:
        return self.hashed is not None


class BcryptUsers:
    """``basic_auth_users`` of a web config file: user name -> bcrypt hash."""

    def __init__(self, users: Mapping[str, Secret]) -> None:
        self._users = [(u.encode(), h.reveal().encode()) for u, h in users.items()]
        costs = sorted(int(h[4:6]) for _, h in self._users) or [10]
        # the dummy hash an unknown user is checked against costs what a real one costs;
        # made on first use, so that a high cost does not delay the start
        self._dummy_cost = costs[len(costs) // 2]
        self._dummy: bytes | None = None
        self._key = pysecrets.token_bytes(32)
        self._cache: OrderedDict[bytes, bool] = OrderedDict()
        self._cache_lock = threading.Lock()
        self._bcrypt_lock = threading.Lock()

    def attempt(self, header: str | None) -> Attempt | None:
        """What ``header`` presents, or None when it is not Basic credentials at all."""
        creds = parse_basic_auth(header)
        if creds is None:
            return None
        user, password = creds
        hashed: bytes | None = None
        for name, candidate in self._users:
            # every name is compared, in constant time, whatever matches
            if hmac.compare_digest(name, user):
                hashed = candidate
        material = b"\0".join((hashed or b"?", user, password))
        key = hmac.new(self._key, material, hashlib.sha256).digest()
        return Attempt(user, password, hashed, key)

    def cached(self, attempt: Attempt) -> bool | None:
        """The remembered outcome of ``attempt``, or None when bcrypt must decide."""
        with self._cache_lock:
            outcome = self._cache.get(attempt.key)
            if outcome is not None:
                self._cache.move_to_end(attempt.key)
            return outcome

    def verify(self, attempt: Attempt) -> bool:
        """Run bcrypt (one at a time, as the toolkit does) and remember the outcome."""
        with self._bcrypt_lock:
            # a twin of this attempt may have been verified while this one waited
            outcome = self.cached(attempt)
            if outcome is not None:
                return outcome
            hashed = attempt.hashed or self._dummy_hash()
            try:
                ok = bcrypt.checkpw(attempt.password, hashed)
            except ValueError:  # longer than 72 bytes, as Go's bcrypt refuses too
                ok = False
            ok = ok and attempt.known
            with self._cache_lock:
                self._cache[attempt.key] = ok
                while len(self._cache) > _CACHE_SIZE:
                    self._cache.popitem(last=False)
            return ok

    def check(self, header: str | None) -> bool:
        """Both steps at once, for callers that may block (tests, tools)."""
        attempt = self.attempt(header)
        if attempt is None:
            return False
        outcome = self.cached(attempt)
        return self.verify(attempt) if outcome is None else outcome

    def _dummy_hash(self) -> bytes:
        # called with _bcrypt_lock held
        if self._dummy is None:
            self._dummy = bcrypt.hashpw(pysecrets.token_bytes(16), bcrypt.gensalt(self._dummy_cost))
        return self._dummy


def _digest(value: bytes) -> bytes:
    return hashlib.sha256(value).digest()


class SharedSecrets:
    """A bearer token and/or one basic auth user with a password, as Alertmanager sends them.

    When both are configured, either is accepted. Both user name and password are always
    compared (no early exit that would tell which one was wrong).
    """

    def __init__(
        self,
        *,
        realm: str,
        bearer_token: Secret | None = None,
        basic_username: str | None = None,
        basic_password: Secret | None = None,
    ) -> None:
        self._realm = realm
        self._token = None if bearer_token is None else _digest(bearer_token.reveal().encode())
        basic = basic_username is not None and basic_password is not None
        self._user = _digest(basic_username.encode()) if basic and basic_username else None
        self._password = (
            _digest(basic_password.reveal().encode()) if basic and basic_password else None
        )
        self._username = basic_username

    @property
    def challenges(self) -> list[str]:
        """``WWW-Authenticate`` values for a 401, one per accepted scheme."""
        out = []
        if self._token is not None:
            out.append(f'Bearer realm="{self._realm}"')
        if self._user is not None:
            out.append(f'Basic realm="{self._realm}", charset="UTF-8"')
        return out

    def check(self, header: str | None) -> str | None:
        """The caller's identity (``"bearer"`` or ``"basic:<user>"``), or None if refused."""
        if not header or len(header) > MAX_AUTHORIZATION:
            return None
        scheme, _, credentials = header.partition(" ")
        scheme = scheme.lower()
        if scheme == "bearer" and self._token is not None:
            # headers arrive as latin-1 text: back to the bytes that were sent
            presented = _digest(credentials.encode("latin-1", "replace"))
            return "bearer" if hmac.compare_digest(presented, self._token) else None
        if scheme == "basic" and self._user is not None and self._password is not None:
            creds = parse_basic_auth(header)
            if creds is None:
                return None
            user_ok = hmac.compare_digest(_digest(creds[0]), self._user)
            password_ok = hmac.compare_digest(_digest(creds[1]), self._password)
            # `&`, not `and`: both comparisons always run
            if user_ok & password_ok:
                return f"basic:{self._username}"
        return None
