"""Rewrite what a script printed without changing what it means: JSON values, CLIXML text.

A redaction or a scrub must not touch JSON keys, CLIXML tags or base64 certificates as if
they were prose. Output that is one JSON document is rewritten value by value (numbers keep
their exact text, duplicate keys and key order are kept) and re-serialised compactly; any
other output is rewritten as text, outside CLIXML tags, with bytes that are not UTF-8 kept
as they were. Output that does not change is returned byte for byte.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

_CLIXML = "#< CLIXML"
_TAG = re.compile(r"(<[^>]*>)")
# a base64 run long enough to be a certificate (the smallest real ones are ~400 bytes)
_BASE64_RUN = re.compile(r"(?<![A-Za-z0-9+/=])[A-Za-z0-9+/]{200,}={0,2}(?![A-Za-z0-9+/=])")
_EDGE_SPACE = " \t\r\n"


class _Raw(str):
    """A JSON number or constant, kept as the text it was written with."""

    __slots__ = ()


class _Obj(list[tuple[str, Any]]):
    """A JSON object as its (key, value) pairs: order and duplicate keys are kept."""


@dataclass(frozen=True)
class Rewrite:
    """How to rewrite output: ``text`` for every string, ``der`` for certificate DER (None:
    leave certificates), ``thumbprint`` for a ``thumbprint`` field."""

    text: Callable[[str], str]
    der: Callable[[bytes], bytes] | None = None
    thumbprint: Callable[[str], str] | None = None
    # for output that is not one JSON document, a same-length rewrite of its raw bytes first
    # (names written as UTF-16, which the text rules cannot see)
    binary: Callable[[bytes], bytes] | None = None


def parse_json(data: bytes) -> Any | None:
    """The document, or None when ``data`` is not exactly one JSON document in UTF-8."""
    try:
        text = data.decode("utf-8").lstrip("\ufeff")
        return json.loads(
            text, object_pairs_hook=_Obj, parse_float=_Raw, parse_int=_Raw, parse_constant=_Raw
        )
    except ValueError:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        return None


def strings(value: Any) -> list[tuple[str | None, str]]:
    """Every (key, string value) of a parsed document; list items carry their list's key."""
    out: list[tuple[str | None, str]] = []

    def walk(item: Any, key: str | None) -> None:
        if isinstance(item, _Obj):
            for k, v in item:
                walk(v, k)
        elif isinstance(item, list):
            for v in item:
                walk(v, key)
        elif type(item) is str:
            out.append((key, item))

    walk(value, None)
    return out


def rewrite_output(data: bytes, rewrite: Rewrite) -> bytes:
    document = parse_json(data)
    if document is not None:
        text = data.decode("utf-8")
        body = text.lstrip("\ufeff" + _EDGE_SPACE)
        prefix = text[: len(text) - len(body)]
        body = body.rstrip(_EDGE_SPACE)
        suffix = text[len(prefix) + len(body) :]
        new = _rewrite_value(document, rewrite)
        if new == document:
            return data
        return (prefix + _dump(new) + suffix).encode("utf-8")
    if rewrite.binary is not None:
        data = rewrite.binary(data)
    text = data.decode("utf-8", "surrogateescape")
    return rewrite_text(text, rewrite).encode("utf-8", "surrogateescape")


def rewrite_text(text: str, rewrite: Rewrite) -> str:
    """Free text: outside CLIXML tags, and base64 certificates re-issued when asked."""
    if text.lstrip("\ufeff").startswith(_CLIXML):
        parts = _TAG.split(text)
        return "".join(p if i % 2 else _prose(p, rewrite) for i, p in enumerate(parts))
    return _prose(text, rewrite)


def _prose(text: str, rewrite: Rewrite) -> str:
    """Text with its long base64 runs set apart: a run is never rewritten as text (a word
    could match by chance and break it); a certificate in one is re-issued when asked."""
    out: list[str] = []
    last = 0
    for match in _BASE64_RUN.finditer(text):
        run = match.group()
        replaced = _certificate_base64(run, rewrite) if rewrite.der is not None else None
        out.append(rewrite.text(text[last : match.start()]))
        out.append(run if replaced is None else replaced)
        last = match.end()
    out.append(rewrite.text(text[last:]))
    return "".join(out)


def decode_base64(value: str) -> bytes | None:
    """Strict standard base64, or None."""
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return None


def _encode(der: bytes) -> str:
    return base64.b64encode(der).decode("ascii")


def _certificate_base64(value: str, rewrite: Rewrite) -> str | None:
    """The base64 of the re-issued certificate, or None when ``value`` is not a DER SEQUENCE."""
    assert rewrite.der is not None
    der = decode_base64(value)
    if der is None or not der.startswith(b"\x30"):
        return None
    return _encode(rewrite.der(der))


def _rewrite_value(value: Any, rewrite: Rewrite, key: str | None = None) -> Any:
    if isinstance(value, _Obj):
        return _Obj((k, _rewrite_value(v, rewrite, k)) for k, v in value)
    if isinstance(value, list):
        return [_rewrite_value(v, rewrite, key) for v in value]
    if type(value) is not str:
        return value  # numbers, constants, booleans, null
    if key == "der_base64":
        if rewrite.der is None:
            return value
        der = decode_base64(value)
        return rewrite.text(value) if der is None else _encode(rewrite.der(der))
    if key == "thumbprint" and rewrite.thumbprint is not None:
        return rewrite.thumbprint(value)
    return rewrite.text(value)


def _dump(value: Any) -> str:
    if isinstance(value, _Raw):
        return str(value)
    if isinstance(value, _Obj):
        return "{" + ",".join(f"{_dump(k)}:{_dump(v)}" for k, v in value) + "}"
    if isinstance(value, list):
        return "[" + ",".join(_dump(v) for v in value) + "]"
    return json.dumps(value, ensure_ascii=False)
