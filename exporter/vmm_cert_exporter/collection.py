"""The refresh: ask VMM what it manages, read every computer's store, build a snapshot.

Calls per refresh: ``list-managed-computers`` (when ``discover``) and
``list-trusted-certificates`` once per VMM server, and ``collect-certificates`` once per
computer, all through one bounded pool; once discovery succeeds, TrustedPeople is read beside
the computers' stores rather than before them. A computer that refuses our credentials is not
called again in the same refresh (account lockout policies count every attempt).
Refreshes run in one background thread, so they can never overlap.
"""

from __future__ import annotations

import bisect
import contextlib
import ipaddress
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import TypeVar

from vmm_cert_exporter import failures
from vmm_cert_exporter.certificate import CertificateError, CertificateInfo, parse_certificate
from vmm_cert_exporter.config import Config
from vmm_cert_exporter.failures import CollectError
from vmm_cert_exporter.inventory import (
    Computer,
    Inventory,
    VmmView,
    build_inventory,
    fqdn_key,
    view_from_result,
)
from vmm_cert_exporter.powershell import render_script
from vmm_cert_exporter.remoting import ScriptOutput, WinRMRunner
from vmm_cert_exporter.results import (
    CertificateRecord,
    CertificatesResult,
    ScriptOutputError,
    parse_collect_certificates,
    parse_managed_computers,
    parse_trusted_certificates,
)
from vmm_cert_exporter.sharding import Shard
from vmm_cert_exporter.snapshot import (
    HostSnapshot,
    Snapshot,
    StoredCertificate,
    scvmm_friendly_host,
)
from vmm_cert_exporter.sources import TLS, MethodTable
from vmm_cert_exporter.sources.tls import TlsProber

log = logging.getLogger(__name__)

T = TypeVar("T")

# Buckets of vmm_cert_exporter_refresh_duration_seconds: a refresh takes from a second
# (a handful of hosts) to minutes (thousands of hosts at low concurrency).
REFRESH_BUCKETS = (1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)

# TrustedPeople entries that are not copies of a managed computer's certificate
_NOT_A_COPY = "VMMWinPEAgentOSDBootstrap"


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
class RefreshHistogram:
    """Cumulative histogram of refresh durations (exported by the metrics collector)."""

    buckets: tuple[float, ...] = REFRESH_BUCKETS
    counts: list[int] = field(default_factory=lambda: [0] * (len(REFRESH_BUCKETS) + 1))
    total: float = 0.0
    count: int = 0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, seconds)] += 1
        self.total += seconds
        self.count += 1

    def cumulative(self) -> list[tuple[str, float]]:
        out: list[tuple[str, float]] = []
        running = 0
        for bound, n in zip(self.buckets, self.counts, strict=False):
            running += n
            out.append((repr(float(bound)), float(running)))
        out.append(("+Inf", float(self.count)))
        return out


@dataclass
class _Call:
    """Outcome of one call, for the host's bookkeeping."""

    key: str
    operation: str
    error: CollectError | None
    duration: float


def is_copy_candidate(record: CertificateRecord, info: CertificateInfo | None) -> bool:
    """TrustedPeople entries named by IP address or for WinPE bootstrap are not host copies."""
    names = list(record.dns_names)
    if info is not None and info.common_name:
        names.append(info.common_name)
    if any(_NOT_A_COPY.lower() in n.lower() for n in names) or _NOT_A_COPY.lower() in (
        record.friendly_name.lower()
    ):
        return False
    for name in names:
        try:
            ipaddress.ip_address(name)
        except ValueError:
            return True
    return False


def trusted_names(record: CertificateRecord, info: CertificateInfo | None) -> set[str]:
    """The computers a TrustedPeople entry stands for: its DnsNameList, the names in its DER
    and, as Microsoft support's checker reads it, the FQDN its SCVMM friendly name carries."""
    names = {fqdn_key(n) for n in record.dns_names}
    named = scvmm_friendly_host(record.friendly_name)
    if named:
        names.add(fqdn_key(named))
    if info is not None:
        names.update(fqdn_key(n) for n in info.dns_names)
        if info.common_name:
            names.add(fqdn_key(info.common_name))
    return names


@dataclass(frozen=True)
class TrustedCopies:
    """VMM's TrustedPeople, indexed by computer name: thumbprints of each one's copies."""

    by_name: dict[str, frozenset[str]]

    @staticmethod
    def from_result(result: CertificatesResult) -> TrustedCopies:
        by_name: dict[str, set[str]] = {}
        for record in result.certificates:
            try:
                info: CertificateInfo | None = parse_certificate(record.der)
            except CertificateError:
                info = None
            if not is_copy_candidate(record, info):
                continue
            for name in trusted_names(record, info):
                by_name.setdefault(name, set()).add(record.thumbprint.upper())
        return TrustedCopies({k: frozenset(v) for k, v in by_name.items()})


def trust_of(
    computer: Computer,
    current: StoredCertificate | None,
    copies: TrustedCopies | None,
) -> bool | None:
    """Whether VMM's copy matches; None when there is nothing to compare or no verdict due.

    The VMM server's own entry is judged only when TrustedPeople has one: whether VMM keeps
    a copy of its own certificate is unverified, and a missing self-copy must not alert.
    """
    if current is None or copies is None or computer.vmm_server is None:
        return None
    thumbprints = copies.by_name.get(computer.key)
    if computer.is_vmm_server and not thumbprints:
        return None
    return bool(thumbprints) and current.info.thumbprint.upper() in (thumbprints or ())


def stored_certificates(result: CertificatesResult) -> tuple[StoredCertificate, ...]:
    """Parse each SCVMM certificate; an unparsable one is a contract break of the reader."""
    out: list[StoredCertificate] = []
    for record in result.certificates:
        if scvmm_friendly_host(record.friendly_name) is None:
            continue
        try:
            info = parse_certificate(record.der)
        except CertificateError as exc:
            raise CollectError(failures.PARSE, f"certificate {record.thumbprint}: {exc}") from exc
        out.append(
            StoredCertificate(
                info=info,
                friendly_name=record.friendly_name,
                has_private_key=record.has_private_key,
            )
        )
    return tuple(out)


class RefreshAbandoned(Exception):
    """The refresher was stopped during a refresh: nothing more is started or published."""


class Refresher:
    """Owns the refresh loop and the current snapshot.

    ``snapshot`` is replaced atomically at the end of every refresh; readers never lock.
    """

    def __init__(
        self,
        config: Config,
        runner: WinRMRunner | None = None,
        *,
        clock: Callable[[], float] = time.time,
        shard: Shard | None = None,
        tls_prober: TlsProber | None = None,
    ) -> None:
        self._config = config
        self._runner = runner or WinRMRunner(config.winrm)
        # method: tls computers (sources/tls.py); --shard K/N keeps this exporter's share
        self._methods = MethodTable(config)
        self._tls = tls_prober or TlsProber(config.tls)
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

    # ---- calls -------------------------------------------------------------------------
    def _call(self, host: str, operation: str, parse: Callable[[str], T]) -> tuple[T | None, _Call]:
        if self._stop.is_set():  # shutting down: start no new call
            raise RefreshAbandoned
        started = time.monotonic()
        try:
            output = self._runner.run(host, render_script(operation))
            value = self._parse(output, parse)
            return value, _Call(fqdn_key(host), operation, None, time.monotonic() - started)
        except CollectError as exc:
            return None, _Call(fqdn_key(host), operation, exc, time.monotonic() - started)

    def _probe(self, computer: Computer) -> tuple[tuple[StoredCertificate, ...] | None, _Call]:
        """method: tls: the certificate the computer presents (no credentials, no script)."""
        started = time.monotonic()
        try:
            certs: tuple[StoredCertificate, ...] | None = self._tls.read(computer.fqdn)
            error = None
        except CollectError as exc:
            certs, error = None, exc
        return certs, _Call(computer.key, "tls-handshake", error, time.monotonic() - started)

    @staticmethod
    def _parse(output: ScriptOutput, parse: Callable[[str], T]) -> T:
        failure = output.failure()
        if failure is not None:
            raise failure
        try:
            return parse(output.stdout)
        except ScriptOutputError as exc:
            raise CollectError(failures.PARSE, str(exc)) from exc

    # ---- the refresh -------------------------------------------------------------------
    def refresh_once(self) -> Snapshot:
        started = time.monotonic()
        cfg = self._config
        calls: list[_Call] = []
        auth_failed: set[str] = set()
        host_certs: dict[str, tuple[StoredCertificate, ...]] = {}

        def note(call: _Call) -> None:
            calls.append(call)
            if call.error is not None and call.error.reason == failures.AUTH:
                auth_failed.add(call.key)

        with (
            ThreadPoolExecutor(
                max_workers=cfg.collection.concurrency, thread_name_prefix="collect"
            ) as pool,
            self._abort_on_interrupt(),  # exits first: before the pool waits for its calls
        ):
            # 1. each VMM server: what it manages, then its TrustedPeople. Only the snapshot
            # needs TrustedPeople: once discovery has just accepted our credentials, it is
            # read beside the computers' stores (step 3) instead of before them.
            def vmm_server_calls(host: str, discover: bool) -> list[tuple[object, _Call]]:
                done: list[tuple[object, _Call]] = []
                if discover:
                    done.append(self._call(host, "list-managed-computers", parse_managed_computers))
                    error = done[-1][1].error
                    if error is None or error.reason == failures.AUTH:
                        return done
                done.append(
                    self._call(host, "list-trusted-certificates", parse_trusted_certificates)
                )
                return done

            def vmm_server_result(host: str, value: object, call: _Call) -> None:
                note(call)
                if call.error is not None:
                    log.warning(
                        "call failed",
                        extra={
                            "host": host,
                            "operation": call.operation,
                            "reason": call.error.reason,
                            "detail": call.error.detail,
                        },
                    )
                elif call.operation == "list-managed-computers":
                    assert value is not None
                    self._views[fqdn_key(host)] = view_from_result(host, value)  # type: ignore[arg-type]
                else:
                    self._trusted[fqdn_key(host)] = TrustedCopies.from_result(value)  # type: ignore[arg-type]

            server_futures = [
                (s.host, pool.submit(vmm_server_calls, s.host, s.discover)) for s in cfg.vmm_servers
            ]
            trusted_later: list[str] = []
            for host, server_future in server_futures:
                done = server_future.result()
                for value, call in done:
                    vmm_server_result(host, value, call)
                if done[-1][1].operation == "list-managed-computers" and done[-1][1].error is None:
                    trusted_later.append(host)

            # 2. the inventory: configured + discovered (a failed discovery keeps the last list)
            discovering = {fqdn_key(s.host) for s in cfg.vmm_servers if s.discover}
            views = [v for k, v in self._views.items() if k in discovering]
            inventory = build_inventory(cfg, views)
            if self.shard is not None:  # after discovery: every shard asks every VMM server
                inventory = self.shard.select(inventory)

            # 3. every computer's store, skipping those that refused our credentials
            def collect(computer: Computer) -> tuple[tuple[StoredCertificate, ...] | None, _Call]:
                if self._stop.is_set():
                    raise RefreshAbandoned
                if self._methods.of(computer) == TLS:
                    return self._probe(computer)
                result, call = self._call(
                    computer.fqdn, "collect-certificates", parse_collect_certificates
                )
                if result is None:
                    return None, call
                try:
                    return stored_certificates(result), call
                except CollectError as exc:
                    return None, replace(call, error=exc)

            # submitted first: the longest call of the refresh starts before the computers
            trusted_futures = [
                (
                    host,
                    pool.submit(
                        self._call, host, "list-trusted-certificates", parse_trusted_certificates
                    ),
                )
                for host in trusted_later
            ]
            host_futures = [
                (c, pool.submit(collect, c))
                for c in inventory.computers
                if c.key not in auth_failed
            ]
            for host, trusted_future in trusted_futures:
                vmm_server_result(host, *trusted_future.result())
            for computer, host_future in host_futures:
                certs, host_call = host_future.result()
                note(host_call)
                if host_call.error is not None:
                    log.warning(
                        "call failed",
                        extra={
                            "host": computer.fqdn,
                            "operation": host_call.operation,
                            "reason": host_call.error.reason,
                            "detail": host_call.error.detail,
                        },
                    )
                elif certs is not None:
                    host_certs[computer.key] = certs

        now = self._clock()
        snapshot = self._build_snapshot(inventory, calls, host_certs, now, started)
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
        bound = getattr(self._runner, "max_call_seconds", None)
        return float(bound) if bound is not None else self._config.winrm.timeout + 5.0

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
        abort = getattr(self._runner, "abort", None)
        if callable(abort):
            abort()
