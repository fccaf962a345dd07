"""What one client may cost the server: deadlines, sizes and the number of connections.

The defaults are what ``serve`` and ``receiver`` run with (docs/security.md, "slow and hostile
clients"); tests shorten the deadlines to see them act.
"""

from __future__ import annotations

import logging
import resource
from dataclasses import dataclass
from typing import Final

log = logging.getLogger(__name__)

# File descriptors kept for everything else the process opens (journal, WinRM calls, pipes).
_RESERVED_FDS: Final = 256


@dataclass(frozen=True)
class Limits:
    # from accepting a TLS connection to the end of its handshake
    handshake_timeout: float = 10.0
    # from waiting for a request (a new connection, or the previous response sent) to the end
    # of its head: idle keep-alive connections and slowloris clients alike
    head_timeout: float = 10.0
    # from the end of the head to the end of the body
    body_timeout: float = 30.0
    # a response the client takes no byte of for this long is abandoned
    send_timeout: float = 30.0
    # after a response that leaves part of a request unread (413, 405 to a POST...): read and
    # discard for at most this long and this much, so the client can read the answer
    linger_timeout: float = 5.0
    linger_bytes: int = 64 * 1024 * 1024
    # request line and headers together
    max_header_bytes: int = 64 * 1024
    # bodies are read into memory up to this size (one byte more marks one that is larger)
    max_body_bytes: int = 64 * 1024
    # open connections; past it the one idle the longest is closed for the new one
    max_connections: int = 2048
    # threads that run the handlers (the requests' own work: rendering, the journal)
    handler_threads: int = 8
    # threads that send the rest of a large answer once the kernel has taken what it could at
    # once: a blocking send waits outside the interpreter lock, where the event loop would
    # take the lock back for every piece; when all are busy, the event loop sends
    send_threads: int = 16
    # how long stop() lets requests in flight finish
    stop_timeout: float = 5.0


def connection_cap(limits: Limits) -> int:
    """``limits.max_connections``, lowered to fit the process's file descriptor limit.

    The soft limit is raised to the hard one first, as Go's runtime does for every exporter
    (systemd's default soft limit is 1,024): accept() failing for want of descriptors would
    stall every new client, so the cap stays below what the process may open.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    unlimited = resource.RLIM_INFINITY
    if soft != unlimited and (hard == unlimited or hard > soft):
        target = hard if hard != unlimited else max(soft, 65536)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    if soft == unlimited:
        return limits.max_connections
    cap = min(limits.max_connections, max(16, soft - _RESERVED_FDS))
    if cap < limits.max_connections:
        log.warning(
            "fewer open connections than configured: the file descriptor limit is low",
            extra={"max_connections": cap, "nofile": soft},
        )
    return cap
