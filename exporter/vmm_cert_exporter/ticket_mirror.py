"""In-memory copies of a ``FILE:`` ticket cache, so that a call's Kerberos look-up does not
grow with the fleet.

Every call opens a new security context, and MIT Kerberos looks the service ticket up in the
cache entry by entry. In a ``FILE:`` cache that means reading and parsing the whole file, and
the file holds one service ticket per computer called: at 1,000 computers each call parsed
670 KB, and the refresh's CPU per computer went from 17 ms at 300 computers to 30 ms. So the
calls use ``MEMORY:`` caches of this process instead, seeded from the file with the TGT and
split into shards by computer, so a look-up scans a few dozen tickets whatever the fleet size.
Service tickets then live in memory only, as long as the TGT they were obtained with.

The file stays the one place the ticket is renewed (``kinit`` renames a new file over it,
and a refresh process reads its parent's): when it holds a TGT with another end time, the
next call seeds a new generation of shards from it. The file's inode, size and time only say
when to read it again: acquiring credentials from it writes a configuration entry into it.
Generations alternate between two sets of names, so memory stays bounded and a call that
started on the previous generation finishes on it (renewals are two thirds of a ticket's life
apart).

The shard is chosen for the calling thread only (``gss_krb5_ccache_name``), so one process
can call with several principals. The copy and the per-thread name come from python-gssapi,
which links the same ``libgssapi_krb5`` as pywinrm's pykerberos. Without it (or when seeding
fails) calls read the file itself, which is correct, only slower at thousands of computers.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import threading
from pathlib import Path
from typing import Any

from vmm_cert_exporter.ccache_file import tgt_end

log = logging.getLogger(__name__)

_KRB5_MECH = "1.2.840.113554.1.2.2"  # only the Kerberos mechanism's credentials are copied
SHARDS = 64  # at 10,000 computers about 160 service tickets per shard
_Stat = tuple[int, int, int]  # inode, size, mtime in ns


@functools.cache
def _gssapi() -> Any | None:
    try:
        import gssapi.raw
    except ImportError:
        return None
    if not hasattr(gssapi.raw, "krb5_ccache_name") or not hasattr(gssapi.raw, "store_cred_into"):
        return None  # built against a Kerberos without the MIT extensions
    return gssapi.raw


def shard_of(host: str) -> int:
    """The shard a computer's service ticket lives in (stable across processes)."""
    digest = hashlib.blake2b(host.lower().encode(), digest_size=4).digest()
    return int.from_bytes(digest, "big") % SHARDS


def use(mirror: TicketMirror | None, host: str) -> None:
    """Point this thread's next security context to ``host`` at ``mirror``'s copy, or at the
    process's default cache when there is no mirror (a cache someone else keeps)."""
    if mirror is not None:
        mirror.use_for(host)
        return
    raw = _gssapi()
    if raw is not None:
        raw.krb5_ccache_name(None)  # an earlier call on this thread may have set one


class TicketMirror:
    """Memory copies of one ``FILE:`` cache, for the calls of this process."""

    def __init__(self, source: Path, label: str) -> None:
        self._source = source
        self._label = label  # names this mirror's caches; never a secret
        self._lock = threading.Lock()
        self._stat: _Stat | None = None
        self._tgt_end: float | None = None  # as of self._stat
        self._key: tuple[int, float | None] | None = None  # process, TGT end: a generation
        self._generation = 0
        self._seeded: dict[int, bytes] = {}  # shard -> its cache name, this generation
        self._unavailable_logged = False

    def use_for(self, host: str) -> None:
        """Point this thread's next security context at ``host``'s shard (or, if there is
        none, at the process's default cache)."""
        raw = _gssapi()
        if raw is None:
            self._log_unavailable("python-gssapi is not installed")
            return
        name = self._shard_name(raw, shard_of(host))
        raw.krb5_ccache_name(name)

    def _shard_name(self, raw: Any, shard: int) -> bytes | None:
        try:
            st = self._source.stat()
        except OSError:
            return None  # no ticket yet: the default cache reports it as before
        with self._lock:
            stat = (st.st_ino, st.st_size, st.st_mtime_ns)
            if stat != self._stat:
                self._stat, self._tgt_end = stat, tgt_end(self._source)
            key = (os.getpid(), self._tgt_end)
            if key != self._key:
                self._key = key
                self._generation += 1
                self._seeded = {}
            name = self._seeded.get(shard)
            if name is None:
                name = self._seed(raw, shard)
            return name

    def _seed(self, raw: Any, shard: int) -> bytes | None:
        name = (
            f"MEMORY:vmm-cert-exporter-{self._label}-{os.getpid()}-{self._generation % 2}-{shard}"
        ).encode()
        krb5 = raw.OID.from_int_seq(_KRB5_MECH)
        try:
            acquired = raw.acquire_cred_from(
                {b"ccache": f"FILE:{self._source}".encode()}, mechs=[krb5], usage="initiate"
            )
            # overwrite: the name's cache from two generations ago is emptied first
            raw.store_cred_into(
                {b"ccache": name}, acquired.creds, usage="initiate", mech=krb5, overwrite=True
            )
        except raw.GSSError as exc:
            # a half-written or expired file: the default cache gives the usual error
            log.debug("Kerberos: no memory copy of the ticket cache: %s", exc)
            return None
        self._seeded[shard] = name
        return name

    def _log_unavailable(self, why: str) -> None:
        if not self._unavailable_logged:
            self._unavailable_logged = True
            log.warning(
                "Kerberos: %s, so calls read the ticket cache file, which grows by one "
                "service ticket per computer (slower at thousands of computers)",
                why,
            )
