"""What the pages need of a snapshot that does not change with the clock, prepared once per
snapshot: each computer's facts in expiry order, and the cohorts with their computers.

A page then only does the arithmetic that depends on the time of the request, so the
landing page of 10,000 computers renders well within its budget (bench/pages_render.py).
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from typing import NamedTuple

from vmm_cert_exporter.cohorts import Cohort, cohort_day, group
from vmm_cert_exporter.inventory import fqdn_key
from vmm_cert_exporter.metrics import expiry_points
from vmm_cert_exporter.snapshot import HostSnapshot, Snapshot

log = logging.getLogger(__name__)


class Entry(NamedTuple):
    """One computer's facts that hold for the whole snapshot (a tuple: 10,000 of them are
    made per snapshot)."""

    host: HostSnapshot
    key: str  # ``fqdn_key`` of its name
    not_after: float | None  # of the current certificate, as Unix time
    certificates: int | None  # how many SCVMM certificates its store holds; None: not read
    unreadable: bool  # the last refresh failed, or it was never read
    # only time can make it a problem: one certificate, read in the last refresh, and not
    # found untrusted (``status.problems`` then finds only expiry problems)
    steady: bool


def expiry_order(e: Entry) -> tuple[float, str]:
    """Soonest NotAfter first, then by name; computers without a certificate last."""
    return (math.inf if e.not_after is None else e.not_after, e.key)


@dataclass(frozen=True)
class Fleet:
    """``entries`` in ``expiry_order``, split into the ``steady`` ones (most of a fleet; their
    NotAfters in ``steady_after``, so that a page finds the expiry thresholds by bisection)
    and the ``flagged`` rest, which a page assesses one by one."""

    snapshot: Snapshot
    entries: tuple[Entry, ...]
    steady: tuple[Entry, ...]
    steady_after: tuple[float, ...]
    flagged: tuple[Entry, ...]
    cohorts: tuple[Cohort, ...]  # ``cohorts.group`` of the snapshot, oldest first
    members: Mapping[date, tuple[str, ...]]  # each cohort's computers, by name
    by_key: Mapping[str, HostSnapshot]  # every computer by ``fqdn_key`` of its name

    def find(self, fqdn: str) -> HostSnapshot | None:
        """The computer of that name (compared as Windows does, ignoring case), or None."""
        return self.by_key.get(fqdn_key(fqdn))


def entry(host: HostSnapshot, not_after: float | None) -> Entry:
    """``host``'s entry; ``not_after``: its current certificate's, as ``expiry_points``
    gives it."""
    count = None if host.certificates is None else len(host.certificates)
    unreadable = not host.last_ok or count is None
    steady = count == 1 and not unreadable and host.trusted is not False
    return Entry(host, host.computer.key, not_after, count, unreadable, steady)


def entry_of(host: HostSnapshot) -> Entry:
    current = host.current
    return entry(host, None if current is None else current.info.not_after.timestamp())


def prepare(snapshot: Snapshot) -> Fleet:
    not_after = {id(host): after for host, after in expiry_points(snapshot)}
    entries = [entry(host, not_after.get(id(host))) for host in snapshot.hosts]
    entries.sort(key=expiry_order)
    steady = tuple(e for e in entries if e.steady)
    flagged = tuple(e for e in entries if not e.steady)
    points = [(e.host.computer.role, e.not_after) for e in entries if e.not_after is not None]
    cohorts = tuple(group(points))
    members: dict[date, list[str]] = {}
    days: dict[float, date] = {}  # a cohort shares one NotAfter: one conversion each
    for e in entries:
        if e.not_after is not None:
            day = days.get(e.not_after)
            if day is None:
                day = days[e.not_after] = cohort_day(e.not_after)
            members.setdefault(day, []).append(e.host.computer.fqdn)
    return Fleet(
        snapshot,
        tuple(entries),
        steady,
        tuple(e.not_after or 0.0 for e in steady),  # a steady entry has a NotAfter
        flagged,
        cohorts,
        {day: tuple(sorted(names, key=str.lower)) for day, names in members.items()},
        {e.key: e.host for e in entries},
    )


class FleetCache:
    """The prepared fleet of the latest snapshot asked for (one at a time)."""

    def __init__(self) -> None:
        self._last: Fleet | None = None
        self._lock = threading.Lock()

    def get(self, snapshot: Snapshot) -> Fleet:
        last = self._last
        if last is not None and last.snapshot is snapshot:
            return last
        with self._lock:  # one preparation at a time: concurrent requests wait for it
            last = self._last
            if last is None or last.snapshot is not snapshot:
                last = self._last = prepare(snapshot)
            return last

    def warm(self, snapshot: Snapshot) -> None:
        """Prepare ``snapshot`` now (a refresher's listener), before a page asks for it."""
        try:
            self.get(snapshot)
        except Exception:
            # the refresh and /metrics must not fail for the pages; a page asks again
            log.exception("preparing the pages' view of the snapshot failed")
