"""How long one WinRM call may take, from its timeout alone.

Apart from ``remoting``: ``serve``'s server process bounds a stop with it and never loads
the WinRM stack, which only its refresh process uses.
"""

from __future__ import annotations

# Signal + Delete after a failure get their own short allowance: they free the shell on the
# computer (WinRM's MaxShellsPerUser is finite) but must not hold the refresh for long.
CLEANUP_SECONDS = 5.0


def cleanup_seconds(timeout: float) -> float:
    """The allowance of Signal + Delete after a call (its own, beyond the deadline)."""
    return min(CLEANUP_SECONDS, max(1.0, timeout / 2))


def max_call_seconds(timeout: float) -> float:
    """The longest one call can take: its deadline, then Signal + Delete."""
    return timeout + cleanup_seconds(timeout) + 0.5
