"""Each lab computer's own Kerberos keys, as a Windows computer holds only its own.

The realm hands the lab one keytab with every computer's ``HTTP/<fqdn>`` and
``WSMAN/<fqdn>`` keys. Accepting with that keytab makes MIT read it entry by entry for every
ticket: at 3,000 computers ~40 ms of the lab's CPU per call, the simulator's cost dwarfing
the exporter's. So each computer gets a keytab file of its own entries (split once, in a
0700 temporary directory) and an acceptor credential made from it; a computer that has no
entries there (added to the lab later) accepts with the whole keytab, as before.

MIT keytab file format, version 0x502: a 2-byte version, then entries, each preceded by its
signed 32-bit size (negative: a hole left by a removed entry). An entry starts with its
principal: a 16-bit component count, the realm and each component as 16-bit-length strings.
"""

from __future__ import annotations

import atexit
import shutil
import struct
import tempfile
import threading
from pathlib import Path
from typing import Any

_VERSION = b"\x05\x02"


def split_by_host(data: bytes) -> dict[str, list[bytes]]:
    """A keytab's entries (raw) by the host component of their principal (lower case);
    principals with no host component are left out."""
    if data[:2] != _VERSION:
        raise ValueError("not an MIT keytab (version 0x502)")
    found: dict[str, list[bytes]] = {}
    pos = 2
    while pos + 4 <= len(data):
        (size,) = struct.unpack_from(">i", data, pos)
        pos += 4
        if size < 0:  # a hole
            pos -= size
            continue
        entry = data[pos : pos + size]
        pos += size
        (count,) = struct.unpack_from(">H", entry, 0)
        (realm_length,) = struct.unpack_from(">H", entry, 2)
        at = 4 + realm_length
        components = []
        for _ in range(count):
            (length,) = struct.unpack_from(">H", entry, at)
            components.append(entry[at + 2 : at + 2 + length])
            at += 2 + length
        if len(components) == 2:
            host = components[1].decode("utf-8", errors="replace").lower()
            found.setdefault(host, []).append(entry)
    return found


class ServiceKeys:
    """Acceptor credentials: a computer's own keys, or the whole keytab's."""

    def __init__(self, keytab: Path) -> None:
        self.keytab = keytab
        self.whole = _credential(keytab)  # no KRB5_KTNAME: labs can differ in one process
        self._lock = threading.Lock()
        self._by_host: dict[str, list[bytes]] | None = None
        self._credentials: dict[str, Any] = {}
        self._directory: Path | None = None

    def credential(self, fqdn: str) -> Any:
        """The acceptor credential of computer ``fqdn`` (lower case)."""
        with self._lock:
            cached = self._credentials.get(fqdn)
            if cached is not None:
                return cached
            if self._by_host is None:
                self._by_host = split_by_host(self.keytab.read_bytes())
            entries = self._by_host.get(fqdn)
            if not entries:
                return self.whole
            if self._directory is None:
                self._directory = Path(tempfile.mkdtemp(prefix="vmm-lab-keys-"))
                atexit.register(shutil.rmtree, self._directory, True)
            path = self._directory / f"{len(self._credentials)}.keytab"
            path.touch(mode=0o600)
            path.write_bytes(_VERSION + b"".join(struct.pack(">i", len(e)) + e for e in entries))
            made = self._credentials[fqdn] = _credential(path)
            return made

    def close(self) -> None:
        with self._lock:
            if self._directory is not None:
                shutil.rmtree(self._directory, ignore_errors=True)
                self._directory = None
            self._credentials.clear()


def _credential(keytab: Path) -> Any:
    import gssapi

    return gssapi.Credentials(usage="accept", store={"keytab": str(keytab)})
