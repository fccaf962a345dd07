"""Turn PowerShell's CLIXML error stream into the text an administrator would have seen.

Windows PowerShell run through WinRS writes its error and progress streams to stderr as a
``#< CLIXML`` document. The text of error records lives in ``<S S="Error">`` elements with
control characters escaped as ``_xHHHH_``; progress records carry nothing worth showing.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

_HEADER = "#< CLIXML"
_ESCAPE = re.compile(r"_x([0-9A-Fa-f]{4})_")
_MAX_INPUT = 1 << 20  # a longer stderr is cut: we only need enough to say what went wrong


def _unescape(text: str) -> str:
    decoded = _ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), text)
    # Each escape is one UTF-16 unit: rejoin surrogate pairs and replace lone surrogates, which
    # no UTF-8 stream (a log line, a terminal) can carry (found by tests/test_fuzz.py).
    return decoded.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")


def decode_stderr(stderr: str) -> str:
    """Return the error text carried by ``stderr``; plain text comes back unchanged.

    Never raises: a malformed document (or one with a DTD, refused to avoid entity
    expansion) is returned as it came, since it is still the best evidence we have.
    """
    text = stderr[:_MAX_INPUT].lstrip("\ufeff")
    if not text.startswith(_HEADER):
        return text.strip()
    body = text[len(_HEADER) :].strip()
    if "<!DOCTYPE" in body or "<!ENTITY" in body:
        return text.strip()
    try:
        root = ET.fromstring(body)  # noqa: S314 - DTDs refused above, so no entity expansion
    except ET.ParseError:
        return text.strip()
    lines: list[str] = []
    for element in root.iter():
        if element.tag.rsplit("}", 1)[-1] == "S" and element.get("S") == "Error":
            lines.append(_unescape(element.text or ""))
    return "".join(lines).strip()
