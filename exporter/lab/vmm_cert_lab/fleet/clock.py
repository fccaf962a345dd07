"""The lab's clock: real UTC time plus an offset that tests move without sleeping.

Every date the model derives (a computer's VMM state, the year a new certificate starts in)
is read from this clock, so a test can jump a fleet past an expiry in microseconds.
"""

from __future__ import annotations

import math
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

# How far the clock may be moved either way: far beyond any certificate's life, and far
# inside what ``datetime`` can hold (year 9999), so that reading the clock never overflows.
MAX_OFFSET_SECONDS = 1000 * 366 * 86400.0


class LabClock:
    """``now() = datetime.now(UTC) + offset``; thread-safe."""

    def __init__(self, offset_seconds: float = 0.0) -> None:
        self._lock = threading.Lock()
        self._offset = self._checked(offset_seconds, "offset_seconds")

    @staticmethod
    def _checked(value: float, name: str) -> float:
        # bool is an int in Python: refuse it, a JSON `true` is not a number of seconds
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{name} must be a number of seconds, got {value!r}")
        if not math.isfinite(value):
            raise ValueError(f"{name} must be finite, got {value!r}")
        return _within(float(value), name)

    @property
    def offset_seconds(self) -> float:
        with self._lock:
            return self._offset

    def now(self) -> datetime:
        with self._lock:
            offset = self._offset
        return datetime.now(UTC) + timedelta(seconds=offset)

    def set(
        self, *, offset_seconds: float | None = None, advance_seconds: float | None = None
    ) -> None:
        """Replace the offset, then add ``advance_seconds`` to it (either may be None)."""
        offset = None if offset_seconds is None else self._checked(offset_seconds, "offset_seconds")
        advance = (
            None if advance_seconds is None else self._checked(advance_seconds, "advance_seconds")
        )
        with self._lock:
            if offset is not None:
                self._offset = offset
            if advance is not None:
                self._offset = _within(self._offset + advance, "the offset after advance_seconds")

    def info(self) -> dict[str, Any]:
        with self._lock:
            offset = self._offset
        now = datetime.now(UTC) + timedelta(seconds=offset)
        return {"now": now.isoformat().replace("+00:00", "Z"), "offset_seconds": offset}


def _within(seconds: float, name: str) -> float:
    if abs(seconds) > MAX_OFFSET_SECONDS:
        raise ValueError(
            f"{name} must be within {MAX_OFFSET_SECONDS:.0f} seconds (1,000 years) of now, "
            f"got {seconds!r}"
        )
    return seconds
