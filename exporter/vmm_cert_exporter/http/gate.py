"""What the web config file puts in front of every handler: rate limit, Basic users, headers.

The exporter-toolkit applies these to every path (``/-/healthy`` included), and so do we.
Order: the rate limit (429), then the credentials (401), then the handler; the configured
response headers replace the handler's own of the same name, refusals included.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Final

from vmm_cert_exporter.http.credentials import BcryptUsers
from vmm_cert_exporter.webconfig import RateLimit, WebConfigFile

BASIC_CHALLENGE: Final = 'Basic realm="vmm-cert-exporter", charset="UTF-8"'

Header = tuple[str, str]


class TokenBucket:
    """One token every ``interval``, ``burst`` at most, shared by all requests."""

    def __init__(self, limit: RateLimit, clock: Callable[[], float] = time.monotonic) -> None:
        self._rate = 1.0 / limit.interval
        self._burst = float(limit.burst)
        self._tokens = float(limit.burst)
        self._clock = clock
        self._last = clock()
        self._lock = threading.Lock()

    def take(self) -> bool:
        with self._lock:
            now = self._clock()
            self._tokens = min(self._burst, self._tokens + (now - self._last) * self._rate)
            self._last = now
            if self._tokens >= 1.0:
                self._tokens -= 1.0
                return True
            return False


class Gate:
    """The web config file's per-request part (TLS is the listener's)."""

    def __init__(self, web_config: WebConfigFile | None) -> None:
        users = web_config.basic_auth_users if web_config is not None else {}
        limit = web_config.rate_limit if web_config is not None else None
        self.users = BcryptUsers(users) if users else None
        self.bucket = TokenBucket(limit) if limit is not None else None
        self.headers: tuple[Header, ...] = web_config.headers if web_config is not None else ()
        self._names = {name.lower() for name, _ in self.headers}

    def admit(self) -> bool:
        """False when the rate limit refuses this request."""
        return self.bucket is None or self.bucket.take()

    def finish(self, headers: list[Header]) -> list[Header]:
        """``headers`` with the configured ones replacing any of the same name."""
        if not self.headers:
            return headers
        kept = [(k, v) for k, v in headers if k.lower() not in self._names]
        return [*kept, *self.headers]
