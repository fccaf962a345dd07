"""Prometheus-style durations: ``90s``, ``15m``, ``1h30m``, ``365d``, ``500ms``.

The syntax is Prometheus' own (``model.ParseDuration``): one or more ``<integer><unit>``
terms with units in decreasing order, each unit at most once, units ``y w d h m s ms``
(``y`` = 365 days, ``w`` = 7 days). Like Prometheus, and on purpose, a bare number is NOT a
duration: ``60`` could mean seconds or minutes depending on who wrote it, so the unit is
mandatory. Prometheus also accepts a lone ``0``; we do not, for the same reason.
"""

from __future__ import annotations

import math
import re

__all__ = ["format_duration", "parse_duration"]

# (unit, seconds), largest first: the order the units must appear in.
_UNITS: tuple[tuple[str, int], ...] = (
    ("y", 365 * 86400),
    ("w", 7 * 86400),
    ("d", 86400),
    ("h", 3600),
    ("m", 60),
    ("s", 1),
)

# ASCII digits only (``\d`` would accept other scripts' digits). ``ms`` must be tried before
# ``m`` and ``s``; the order of the groups enforces the unit order and at-most-once, so
# "1m1h" and "1h1h" fail to match instead of being summed.
_DURATION_RE = re.compile(
    r"(?:(?P<y>[0-9]+)y)?(?:(?P<w>[0-9]+)w)?(?:(?P<d>[0-9]+)d)?(?:(?P<h>[0-9]+)h)?"
    r"(?:(?P<m>[0-9]+)m(?!s))?(?:(?P<s>[0-9]+)s)?(?:(?P<ms>[0-9]+)ms)?"
)

# Longer numbers are never a sensible duration and would only make float conversion lossy.
_MAX_DIGITS = 12

EXAMPLES = "90s, 15m, 1h30m, 365d, 500ms"


def parse_duration(text: str) -> float:
    """Return ``text`` as seconds; raise ``ValueError`` saying what was expected.

    Zero (``0s``) parses: whether zero is allowed is the caller's range check.
    """
    if not isinstance(text, str):
        raise ValueError(
            f"expected a duration string such as {EXAMPLES}, got {type(text).__name__}"
        )
    # No strip(): a duration has no spaces, and YAML already trims plain scalars.
    stripped = text
    if stripped == "":
        raise ValueError(f"expected a duration such as {EXAMPLES}, got an empty string")
    if re.fullmatch(r"[+-]?[0-9]+(?:\.[0-9]+)?", stripped):
        raise ValueError(
            f"{_quote(text)} has no unit: bare numbers are not durations (as in Prometheus); "
            f"write for example {stripped.lstrip('+')}s"
        )
    if stripped.startswith("-"):
        raise ValueError(f"{_quote(text)} is negative: durations are never negative")
    match = _DURATION_RE.fullmatch(stripped)
    if match is None or not any(match.groupdict().values()):
        raise ValueError(
            f"{_quote(text)} is not a duration: expected <number><unit> terms with units "
            f"y, w, d, h, m, s, ms in that order, e.g. {EXAMPLES}"
        )
    groups = match.groupdict()
    if any(v is not None and len(v) > _MAX_DIGITS for v in groups.values()):
        raise ValueError(f"{_quote(text)} is too large to be a duration")
    milliseconds = int(groups["ms"] or 0)
    for unit, seconds in _UNITS:
        milliseconds += int(groups[unit] or 0) * seconds * 1000
    return milliseconds / 1000.0


def format_duration(seconds: float) -> str:
    """Format seconds the way ``parse_duration`` reads them (``5400`` -> ``"1h30m"``).

    Rounded to whole milliseconds, the resolution of the syntax; ``y`` and ``w`` are not used
    on output because ``365d`` and ``14d`` read more plainly. ``0`` is ``"0s"``.
    """
    if isinstance(seconds, bool) or not isinstance(seconds, int | float):
        raise ValueError(f"expected a number of seconds, got {type(seconds).__name__}")
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"cannot format {seconds!r} as a duration: must be finite and >= 0")
    milliseconds = round(seconds * 1000)
    if milliseconds == 0:
        return "0s"
    parts: list[str] = []
    for unit, unit_seconds in _UNITS[2:]:  # d h m s
        count, milliseconds = divmod(milliseconds, unit_seconds * 1000)
        if count:
            parts.append(f"{count}{unit}")
    if milliseconds:
        parts.append(f"{milliseconds}ms")
    return "".join(parts)


def _quote(text: str) -> str:
    # Durations are short; a long value is garbage and is cut so errors stay one line.
    return repr(text if len(text) <= 40 else text[:40] + "...")
