"""The one thing read from an MIT ``FILE:`` ticket cache ourselves: when its TGT ends.

The renewal plans from it, and the memory copies (ticket_mirror.py) know from it that the
file holds a new ticket.
"""

from __future__ import annotations

import struct
from pathlib import Path

# MIT's FILE cache, version 4 (the format every current kinit writes): a header, the default
# principal, then credentials.


def tgt_end(path: Path) -> float | None:
    """When the TGT in the ``FILE:`` cache at ``path`` ends (epoch seconds), or None if the
    file is missing, unreadable or holds none."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    try:
        return _parse_tgt_end(data)
    except (struct.error, IndexError, ValueError):
        return None


def _parse_tgt_end(data: bytes) -> float | None:
    if data[:2] != b"\x05\x04":
        return None
    pos = 2
    (header_len,) = struct.unpack_from(">H", data, pos)
    pos += 2 + header_len

    def principal(pos: int) -> tuple[list[bytes], int]:
        _name_type, count = struct.unpack_from(">II", data, pos)
        pos += 8
        (realm_len,) = struct.unpack_from(">I", data, pos)
        pos += 4 + realm_len
        parts = []
        for _ in range(count):
            (length,) = struct.unpack_from(">I", data, pos)
            parts.append(data[pos + 4 : pos + 4 + length])
            pos += 4 + length
        return parts, pos

    def counted(pos: int) -> int:
        (length,) = struct.unpack_from(">I", data, pos)
        return pos + 4 + int(length)

    _, pos = principal(pos)  # the default principal
    latest: float | None = None
    while pos < len(data):
        _, pos = principal(pos)  # client
        server, pos = principal(pos)
        pos += 2  # keyblock enctype
        pos = counted(pos)
        _auth, _start, end, _renew = struct.unpack_from(">IIII", data, pos)
        pos += 16 + 1 + 4  # times, is_skey, ticket flags
        for _ in range(2):  # addresses, then authorization data
            (count,) = struct.unpack_from(">I", data, pos)
            pos += 4
            for _ in range(count):
                pos += 2
                pos = counted(pos)
        pos = counted(pos)  # ticket
        pos = counted(pos)  # second ticket
        if server and server[0] == b"krbtgt":
            latest = float(end) if latest is None else max(latest, float(end))
    return latest
