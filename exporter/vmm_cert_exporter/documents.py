"""What every strict reader of a document shares: how an error names a value, and JSON.

The readers are the configuration (``config.py``), the web config file (``webconfig.py``),
the scripts' output (``results.py``) and Alertmanager's webhooks (``receiver/webhook.py``).
Their errors name what was found by its kind, never by a long or secret value, and their JSON
is decoded by one decoder that refuses what Python's would silently accept.
"""

from __future__ import annotations

import json
from datetime import date, datetime
from typing import Final, NoReturn

__all__ = ["STRICT_JSON", "describe", "json_kind", "json_type", "short"]


def short(value: object, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters (a string keeps its closing quote)."""
    text = repr(value)
    if len(text) <= limit:
        return text
    return text[: limit - 4] + "..." + (text[-1] if isinstance(value, str) else "")


def describe(value: object, *, redact: bool = False) -> str:
    """What was found, in YAML words (never the contents of a mapping or list).

    ``redact`` names only the type, for keys where a pasted secret is a likely mistake.
    """
    if redact and value is not None:
        if isinstance(value, bool):
            return "a boolean"
        if isinstance(value, int | float):
            return "a number"
        if isinstance(value, str):
            return "an empty string" if value.strip() == "" else "a string"
    if value is None:
        return "null (nothing)"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, int):
        return f"the integer {value}"
    if isinstance(value, float):
        return f"the number {value}"
    if isinstance(value, str):
        return f"the string {short(value)}"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, datetime | date):
        return f"a date/time ({value.isoformat()}); quote it to make it a string"
    if isinstance(value, bytes):
        return "binary data"
    return f"a {type(value).__name__}"


def json_type(value: object) -> str:
    """JSON's name for the type of ``value``: what the author of a JSON document thinks in."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def json_kind(value: object) -> str:
    """``json_type`` with its article, for prose: ``an array``, ``a string``, ``null``."""
    name = json_type(value)
    if value is None:
        return name
    return f"an {name}" if name[0] in "aeiou" else f"a {name}"


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    # Python keeps the last of two equal keys; a document saying two things is refused.
    result: dict[str, object] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {short(key)}")
        result[key] = value
    return result


def _no_constant(name: str) -> NoReturn:
    # NaN and Infinity are not JSON; Python's decoder would accept them.
    raise ValueError(f"{name} is not valid JSON")


# Its errors are ValueError (JSONDecodeError for syntax), or RecursionError for absurd nesting.
STRICT_JSON: Final = json.JSONDecoder(object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
