"""The refresh: schedule VMM servers and computers onto their sources, build a snapshot.

Calls per refresh: ``list-managed-computers`` (when ``discover``) and
``list-trusted-certificates`` once per VMM server, and one read per computer (its source:
``sources/winrm.py`` or ``sources/tls_probe.py``), all through one bounded pool; once discovery
succeeds, TrustedPeople is read beside the computers' stores rather than before them. A
computer that refuses our credentials is not called again in the same refresh (account
lockout policies count every attempt). Refreshes run in one background thread, so they can
never overlap.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar

from vmm_cert_exporter import failures
from vmm_cert_exporter.config import Config
from vmm_cert_exporter.failures import CollectError
from vmm_cert_exporter.inventory import Computer, Inventory, VmmView, build_inventory, fqdn_key
from vmm_cert_exporter.refresh_histogram import RefreshHistogram
from vmm_cert_exporter.sharding import Shard
from vmm_cert_exporter.snapshot import HostSnapshot, Snapshot, StoredCertificate
from vmm_cert_exporter.sources import TLS, WINRM, MethodTable, Source
from vmm_cert_exporter.sources.tls_probe import TlsProber
from vmm_cert_exporter.sources.winrm import LIST_MANAGED, LIST_TRUSTED, WinRMSource
from vmm_cert_exporter.trust import TrustedCopies, trust_of

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass
class _HostState:
    """What the refresher remembers about one computer between refreshes."""

    certificates: tuple[StoredCertificate, ...] | None = None
    last_success: float | None = None
    last_ok: bool = False
    last_duration: float | None = None
    last_error: str | None = None
    last_error_reason: str | None = None
    errors_total: dict[str, int] = field(default_factory=dict)


@dataclass
class _Call:
    """Outcome of one call, for the host's bookkeeping."""

    key: str
    operation: str
    error: CollectError | None
    duration: float


@dataclass
class _VmmServerReads:
    """What the first step learned from one VMM server."""

    host: str
    calls: list[_Call] = field(default_factory=list)
    view: VmmView | None = None
    copies: TrustedCopies | None = None


@dataclass
class _Gathered:
    """What one refresh's calls brought in, noted in the refresher's thread in call order."""

    calls: list[_Call] = field(default_factory=list)
    auth_failed: set[str] = field(default_factory=set)
    certificates: dict[str, tuple[StoredCertificate, ...]] = field(default_factory=dict)

    def note(self, host: str, call: _Call) -> None:
        self.calls.append(call)
        if call.error is None:
            return
        if call.error.reason == failures.AUTH:
            self.auth_failed.add(call.key)
        log.warning(
            "call failed",
            extra={
                "host": host,
                "operation": call.operation,
                "reason": call.error.reason,
                "detail": call.error.detail,
            },
        )


class RefreshAbandoned(Exception):
    """The refresher was stopped during a refresh: nothing more is started or published."""


class Refresher:
    """Owns the refresh loop and the current snapshot.

    ``snapshot`` is replaced atomically at the end of every refresh; readers never lock.
    """

    def __init__(
        self,
        config: Config,
        *,
        clock: Callable[[], float] = time.time,
        shard: Shard | None = None,
        winrm: WinRMSource | None = None,
        tls: Source | None = None,
    ) -> None:
        self._config = config
        self._winrm = winrm or WinRMSource(config.winrm)
        # which source reads which computer; --shard K/N keeps this exporter's share
        self._methods = MethodTable(config)
        self._sources: dict[str, Source] = {
            WINRM: self._winrm,
            TLS: tls or TlsProber(config.tls),
        }
        self.shard = shard
        self._clock = clock
        self._states: dict[str, _HostState] = {}
        self._views: dict[str, VmmView] = {}
        self._trusted: dict[str, TrustedCopies] = {}
        self.histogram = RefreshHistogram()
        self.refreshes = 0
        self.snapshot: Snapshot = Snapshot.empty(config.collection.interval)
        self.inventory: Inventory = build_inventory(config, ())
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._first_done = threading.Event()
        self.listeners: list[Callable[[Snapshot], None]] = []

    # ---- calls (in the pool's threads) -------------------------------------------------
    def _timed(self, host: str, operation: str, read: Callable[[str], T]) -> tuple[T | None, _Call]:
        """One read of ``host``, timed; a failure is returned with the call, not raised."""
        if self._stop.is_set():  # shutting down: start no new call
            raise RefreshAbandoned
        started = time.monotonic()
        value: T | None = None
        error: CollectError | None = None
        try:
            value = read(host)
        except CollectError as exc:
            error = exc
        return value, _Call(fqdn_key(host), operation, error, time.monotonic() - started)

    def _read_vmm_server(self, host: str, discover: bool) -> _VmmServerReads:
        """Discovery, then TrustedPeople, unless discovery just accepted our credentials
        (TrustedPeople is then read beside the computers) or refused them."""
        reads = _VmmServerReads(host)
        if discover:
            reads.view, call = self._timed(host, LIST_MANAGED, self._winrm.discover)
            reads.calls.append(call)
            if call.error is None or call.error.reason == failures.AUTH:
                return reads
        reads.copies, call = self._timed(host, LIST_TRUSTED, self._winrm.trusted_copies)
        reads.calls.append(call)
        return reads

    def _read_computer(
        self, computer: Computer
    ) -> tuple[tuple[StoredCertificate, ...] | None, _Call]:
        source = self._sources[self._methods.of(computer)]
        return self._timed(computer.fqdn, source.operation, source.read)

    # ---- the refresh -------------------------------------------------------------------
    def refresh_once(self) -> Snapshot:
        started = time.monotonic()
        cfg = self._config
        gathered = _Gathered()
        with (
            ThreadPoolExecutor(
                max_workers=cfg.collection.concurrency, thread_name_prefix="collect"
            ) as pool,
            self._abort_on_interrupt(),  # exits first: before the pool waits for its calls
        ):
            # 1. each VMM server: what it manages, then its TrustedPeople. Only the snapshot
            # needs TrustedPeople: once discovery has just accepted our credentials, it is
            # read beside the computers' stores (step 3) instead of before them.
            server_futures = [
                pool.submit(self._read_vmm_server, s.host, s.discover) for s in cfg.vmm_servers
            ]
            trusted_later: list[str] = []
            for server_future in server_futures:
                reads = server_future.result()
                for call in reads.calls:
                    gathered.note(reads.host, call)
                if reads.view is not None:
                    self._views[fqdn_key(reads.host)] = reads.view
                    trusted_later.append(reads.host)
                if reads.copies is not None:
                    self._trusted[fqdn_key(reads.host)] = reads.copies

            # 2. the inventory: configured + discovered (a failed discovery keeps the last list)
            discovering = {fqdn_key(s.host) for s in cfg.vmm_servers if s.discover}
            views = [v for k, v in self._views.items() if k in discovering]
            inventory = build_inventory(cfg, views)
            if self.shard is not None:  # after discovery: every shard asks every VMM server
                inventory = self.shard.select(inventory)

            # 3. every computer's store, skipping those that refused our credentials;
            # TrustedPeople submitted first: the longest call of the refresh starts before
            # the computers
            trusted_futures = [
                (host, pool.submit(self._timed, host, LIST_TRUSTED, self._winrm.trusted_copies))
                for host in trusted_later
            ]
            # a deque, emptied as the results are taken: a future keeps its result alive
            host_futures = deque(
                (c, pool.submit(self._read_computer, c))
                for c in inventory.computers
                if c.key not in gathered.auth_failed
            )
            for host, trusted_future in trusted_futures:
                copies, call = trusted_future.result()
                gathered.note(host, call)
                if copies is not None:
                    self._trusted[fqdn_key(host)] = copies
            while host_futures:
                computer, host_future = host_futures.popleft()
                certificates, call = host_future.result()
                gathered.note(computer.fqdn, call)
                if certificates is not None:
                    gathered.certificates[computer.key] = self._kept(computer.key, certificates)

        calls = gathered.calls
        now = self._clock()
        snapshot = self._build_snapshot(inventory, calls, gathered.certificates, now, started)
        # histogram first: readers key caches on (snapshot, histogram count)
        self.histogram.observe(snapshot.duration)
        self.inventory = inventory
        self.snapshot = snapshot
        self.refreshes += 1
        for listener in self.listeners:
            # e.g. pre-render /metrics here, in the refresher, not in the first scrape
            listener(snapshot)
        failed = sum(1 for h in snapshot.hosts if not h.last_ok)
        by_reason: dict[str, int] = {}
        for call in calls:
            if call.error is not None:
                by_reason[call.error.reason] = by_reason.get(call.error.reason, 0) + 1
        log.info(
            "refresh done",
            extra={
                "refresh": self.refreshes,
                "computers": len(snapshot.hosts),
                "ok": len(snapshot.hosts) - failed,
                "failed": failed,
                "calls": len(calls),
                # failed calls by reason, e.g. "auth:1,timeout:2" ("" when none failed)
                "reasons": ",".join(f"{k}:{v}" for k, v in sorted(by_reason.items())),
                "duration_seconds": round(snapshot.duration, 3),
            },
        )
        return snapshot

    def _kept(
        self, key: str, fresh: tuple[StoredCertificate, ...]
    ) -> tuple[StoredCertificate, ...]:
        """The certificates already held when the store still holds the same ones.

        Almost every store is unchanged from one refresh to the next: keeping the objects
        of the last snapshot and dropping the fresh parse at once means a refresh holds one
        copy of the fleet's certificates, not two, at its peak (~1.6 KB a computer).
        """
        state = self._states.get(key)
        held = None if state is None else state.certificates
        return held if held is not None and held == fresh else fresh

    def _build_snapshot(
        self,
        inventory: Inventory,
        calls: Iterable[_Call],
        host_certs: dict[str, tuple[StoredCertificate, ...]],
        now: float,
        started: float,
    ) -> Snapshot:
        by_host: dict[str, list[_Call]] = {}
        for call in calls:
            by_host.setdefault(call.key, []).append(call)
        states: dict[str, _HostState] = {}
        hosts: list[HostSnapshot] = []
        for computer in inventory.computers:
            # a computer that left the inventory leaves its state behind (no stale series)
            state = self._states.get(computer.key) or _HostState()
            states[computer.key] = state
            mine = by_host.get(computer.key, [])
            errors = [c.error for c in mine if c.error is not None]
            if computer.key in host_certs:
                state.certificates = host_certs[computer.key]
            if mine:
                state.last_duration = sum(c.duration for c in mine)
            if errors:
                state.last_ok = False
                state.last_error = str(errors[-1])
                state.last_error_reason = errors[-1].reason
                for err in errors:
                    state.errors_total[err.reason] = state.errors_total.get(err.reason, 0) + 1
            elif mine:
                state.last_ok = True
                state.last_success = now
                state.last_error = None
                state.last_error_reason = None
            else:
                # skipped after an auth failure earlier in this refresh
                state.last_ok = False
            current = (
                max(state.certificates, key=lambda c: c.info.not_after)
                if state.certificates
                else None
            )
            copies = (
                self._trusted.get(fqdn_key(computer.vmm_server)) if computer.vmm_server else None
            )
            method = self._methods.of(computer)
            hosts.append(
                HostSnapshot(
                    computer=computer,
                    certificates=state.certificates,
                    # over TLS only the presented certificate is seen: no trust verdict
                    trusted=None if method == TLS else trust_of(computer, current, copies),
                    last_success=state.last_success,
                    last_ok=state.last_ok,
                    last_duration=state.last_duration,
                    last_error=state.last_error,
                    last_error_reason=state.last_error_reason,
                    errors_total=dict(state.errors_total),
                    method=method,
                )
            )
        self._states = states
        return Snapshot(
            hosts=tuple(hosts),
            completed_at=now,
            duration=time.monotonic() - started,
            interval=self._config.collection.interval,
            complete=True,
        )

    # ---- the background loop -------------------------------------------------------------
    def start(self) -> None:
        """Start refreshing in the background: the first refresh begins at once."""
        if self._thread is not None:
            raise RuntimeError("refresher already started")
        self._thread = threading.Thread(target=self._loop, name="refresher", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        interval = self._config.collection.interval
        while not self._stop.is_set():
            began = time.monotonic()
            try:
                self.refresh_once()
            except RefreshAbandoned:
                log.info(
                    "refresh abandoned: shutting down; in-flight calls ended, nothing published",
                    extra={"seconds": round(time.monotonic() - began, 3)},
                )
                break
            except Exception:  # a bug must not end the loop: log it, keep the last snapshot
                log.exception("refresh crashed; keeping the previous snapshot")
            finally:
                self._first_done.set()
            # the interval runs start to start; a refresh longer than it is followed at once
            self._stop.wait(max(0.0, interval - (time.monotonic() - began)))

    def wait_first(self, timeout: float | None = None) -> bool:
        return self._first_done.wait(timeout)

    @property
    def ready(self) -> bool:
        return self.snapshot.complete

    @property
    def drain_seconds(self) -> float:
        """How long a stop may wait: the calls in flight run to their deadline, then clean up."""
        return self._winrm.max_call_seconds

    def stop(self, timeout: float | None = None) -> bool:
        """Start no new call; wait up to ``timeout`` for the calls in flight (Signal + Delete
        included). Returns whether the refresher has stopped."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            return not self._thread.is_alive()
        return True

    @contextlib.contextmanager
    def _abort_on_interrupt(self) -> Iterator[None]:
        """Ctrl-C during a refresh (``check``): start nothing more, end the calls in flight
        now (each still sends Signal + Delete) instead of finishing the whole refresh."""
        try:
            yield
        except KeyboardInterrupt:
            self.abort()
            raise

    def abort(self) -> None:
        """Stop, and end the calls in flight now (each still sends Signal + Delete)."""
        self._stop.set()
        self._winrm.abort()
