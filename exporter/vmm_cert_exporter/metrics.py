"""Turn the current snapshot into metric families: no I/O, no locks, nothing but arithmetic.

The names and labels are a contract (docs/metrics.md). ``vmm_cert_expiry_seconds`` is
computed at scrape time, in whole seconds, so that it keeps counting down between refreshes.
"""

from __future__ import annotations

import gzip
import math
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from prometheus_client import generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from vmm_cert_exporter import __version__
from vmm_cert_exporter.cohorts import group
from vmm_cert_exporter.refresh_histogram import RefreshHistogram
from vmm_cert_exporter.snapshot import HostSnapshot, Snapshot

HOST_LABELS = ["host", "role"]
EXPIRY_NAME = "vmm_cert_expiry_seconds"
EXPIRY_HELP = (
    "Seconds from the scrape until NotAfter of the computer's SCVMM certificate "
    "(the latest if several); negative once expired; absent when the store holds none."
)
RESTARTS_NAME = "vmm_cert_exporter_refresh_process_restarts"
RESTARTS_HELP = (
    "Times the refresh process died and was started again since the exporter started "
    "(always 0 when the refresh runs in-process)."
)


def scrape_second(now: float) -> float:
    """The instant ``vmm_cert_expiry_seconds`` is computed at: the scrape's whole second.

    A second is far below the precision anyone needs of "time until NotAfter", and it lets
    every scrape within one second share one rendering (see ``Exposition``).
    """
    return float(math.floor(now))


def expiry_points(snapshot: Snapshot) -> Iterator[tuple[HostSnapshot, float]]:
    """(host, NotAfter as Unix time) for every computer with a current certificate."""
    for host in snapshot.hosts:
        current = host.current
        if current is not None:
            yield host, current.info.not_after.timestamp()


def cohort_families(snapshot: Snapshot) -> tuple[GaugeMetricFamily, GaugeMetricFamily]:
    """Computers per NotAfter day: one series per distinct (UTC) day and role, so a fleet
    has a handful (docs/renewal.md#cohorts)."""
    computers = GaugeMetricFamily(
        "vmm_cert_cohort_computers",
        "Computers whose current SCVMM certificate expires on the cohort's day (UTC "
        "YYYY-MM-DD), by role.",
        labels=["cohort", "role"],
    )
    expiry = GaugeMetricFamily(
        "vmm_cert_cohort_expiry_timestamp_seconds",
        "The earliest NotAfter of the cohort's computers, as a Unix timestamp.",
        labels=["cohort"],
    )
    for cohort in group((host.computer.role, after) for host, after in expiry_points(snapshot)):
        day = cohort.day.isoformat()
        expiry.add_metric([day], cohort.expires_at)
        for role, n in cohort.by_role.items():
            computers.add_metric([day, role], float(n))
    return computers, expiry


class SnapshotCollector(Collector):
    """A prometheus_client custom collector over whatever snapshot ``source`` returns.

    ``restarts`` reads how often the refresh process was started again (no I/O: an
    attribute of ``refresh_process.RefreshProcess``); without it the counter is 0.
    """

    def __init__(
        self,
        source: Callable[[], Snapshot],
        histogram: Callable[[], RefreshHistogram] | None = None,
        *,
        clock: Callable[[], float] = time.time,
        restarts: Callable[[], int] | None = None,
    ) -> None:
        self._source = source
        self._histogram = histogram
        self._clock = clock
        self._restarts = restarts

    def describe(self) -> Iterator[Metric]:
        # no describe(): registering must not call collect() (it would read a snapshot early)
        return iter(())

    def collect(self) -> Iterator[Metric]:
        snapshot = self._source()
        yield self.expiry_family(snapshot, self._clock())
        yield from self.static_families(snapshot)
        yield self.restarts_family(self.restarts())

    @staticmethod
    def expiry_family(snapshot: Snapshot, now: float) -> GaugeMetricFamily:
        """The one family that depends on the scrape time."""
        expiry = GaugeMetricFamily(EXPIRY_NAME, EXPIRY_HELP, labels=HOST_LABELS)
        second = scrape_second(now)
        for host, after in expiry_points(snapshot):
            expiry.add_metric([host.computer.fqdn, host.computer.role], after - second)
        return expiry

    def restarts(self) -> int:
        """How often the refresh process was started again (0 when it runs in-process)."""
        return 0 if self._restarts is None else self._restarts()

    @staticmethod
    def restarts_family(restarts: int) -> CounterMetricFamily:
        """The one family that changes with neither the snapshot nor the scrape time."""
        family = CounterMetricFamily(RESTARTS_NAME, RESTARTS_HELP)
        family.add_metric([], float(restarts))
        return family

    def static_families(self, snapshot: Snapshot) -> Iterator[Metric]:
        """Every family that changes only when the snapshot does."""
        not_after = GaugeMetricFamily(
            "vmm_cert_not_after_timestamp_seconds",
            "NotAfter of the computer's current SCVMM certificate, as a Unix timestamp.",
            labels=HOST_LABELS,
        )
        not_before = GaugeMetricFamily(
            "vmm_cert_not_before_timestamp_seconds",
            "NotBefore of the computer's current SCVMM certificate, as a Unix timestamp.",
            labels=HOST_LABELS,
        )
        present = GaugeMetricFamily(
            "vmm_cert_present",
            "1 if the computer's LocalMachine\\My store holds an SCVMM certificate (method tls: "
            "if the certificate it presents is self-signed with its FQDN as CN), 0 if it was "
            "read and holds none; absent until the store has been read once.",
            labels=HOST_LABELS,
        )
        count = GaugeMetricFamily(
            "vmm_cert_certificates",
            "Number of SCVMM certificates in the computer's store (more than 1 is a smell); "
            "not published for method tls.",
            labels=HOST_LABELS,
        )
        trusted = GaugeMetricFamily(
            "vmm_cert_trusted",
            "1 if the VMM server's TrustedPeople copy has the thumbprint of the computer's "
            "current certificate, else 0.",
            labels=HOST_LABELS,
        )
        info = GaugeMetricFamily(
            "vmm_cert_info",
            "One series per SCVMM certificate in the computer's store (method tls: the one it "
            "presents), with its identity and how it was read (method winrm or tls).",
            labels=[
                *HOST_LABELS,
                "thumbprint",
                "serial",
                "subject",
                "issuer",
                "self_signed",
                "key_algorithm",
                "method",
            ],
        )
        state = GaugeMetricFamily(
            "vmm_managed_computer_state",
            "VMM's own invariant State of a managed computer (Responding, NotResponding, ...), "
            "never its translated display text (value always 1).",
            labels=[*HOST_LABELS, "state", "vmm_server"],
        )
        success = GaugeMetricFamily(
            "vmm_cert_collect_success",
            "1 if every call to the computer in the last refresh succeeded, else 0.",
            labels=HOST_LABELS,
        )
        last_success = GaugeMetricFamily(
            "vmm_cert_collect_timestamp_seconds",
            "Unix time of the last refresh in which the computer was read successfully.",
            labels=HOST_LABELS,
        )
        duration = GaugeMetricFamily(
            "vmm_cert_collect_duration_seconds",
            "Seconds the calls to the computer took in the last refresh.",
            labels=HOST_LABELS,
        )
        errors = CounterMetricFamily(
            "vmm_cert_collect_errors",
            "Failed calls to the computer, by reason "
            "(connect, timeout, auth, tls, wsman_fault, script, parse).",
            labels=[*HOST_LABELS, "reason"],
        )

        for host in snapshot.hosts:
            labels = [host.computer.fqdn, host.computer.role]
            if host.certificates is not None:
                present.add_metric(labels, 1.0 if host.certificates else 0.0)
                if host.method != "tls":  # one presented certificate says nothing of the store
                    count.add_metric(labels, float(len(host.certificates)))
                for cert in host.certificates:
                    ci = cert.info
                    info.add_metric(
                        [
                            *labels,
                            ci.thumbprint,
                            ci.serial,
                            ci.subject,
                            ci.issuer,
                            "true" if ci.self_signed else "false",
                            ci.key_algorithm,
                            host.method,
                        ],
                        1.0,
                    )
            current = host.current
            if current is not None:
                not_after.add_metric(labels, current.info.not_after.timestamp())
                not_before.add_metric(labels, current.info.not_before.timestamp())
            if host.trusted is not None:
                trusted.add_metric(labels, 1.0 if host.trusted else 0.0)
            if host.computer.vmm_state is not None:
                state.add_metric(
                    [*labels, host.computer.vmm_state, host.computer.vmm_server or ""], 1.0
                )
            success.add_metric(labels, 1.0 if host.last_ok else 0.0)
            if host.last_success is not None:
                last_success.add_metric(labels, host.last_success)
            if host.last_duration is not None:
                duration.add_metric(labels, host.last_duration)
            for reason, n in sorted(host.errors_total.items()):
                errors.add_metric([*labels, reason], float(n))

        yield from (
            not_after,
            not_before,
            present,
            count,
            trusted,
            info,
            state,
            success,
            last_success,
            duration,
            errors,
        )
        yield from cohort_families(snapshot)
        yield from self._exporter_metrics(snapshot)

    def _exporter_metrics(self, snapshot: Snapshot) -> Iterator[Metric]:
        if self._histogram is not None:
            h = self._histogram()
            hist = HistogramMetricFamily(
                "vmm_cert_exporter_refresh_duration_seconds",
                "Duration of complete refreshes (discovery and every computer).",
            )
            hist.add_metric([], h.cumulative(), sum_value=h.total)
            yield hist
        hosts = GaugeMetricFamily(
            "vmm_cert_exporter_hosts", "Computers in the inventory of the last refresh."
        )
        hosts.add_metric([], float(len(snapshot.hosts)))
        yield hosts
        interval = GaugeMetricFamily(
            "vmm_cert_exporter_refresh_interval_seconds",
            "The configured refresh interval (alert rules are relative to it).",
        )
        interval.add_metric([], snapshot.interval)
        yield interval
        last = GaugeMetricFamily(
            "vmm_cert_exporter_last_refresh_timestamp_seconds",
            "Unix time the last complete refresh finished (0 before the first).",
        )
        last.add_metric([], snapshot.completed_at)
        yield last
        build = GaugeMetricFamily(
            "vmm_cert_exporter_build_info",
            "Always 1; the version label says which vmm-cert-exporter is running.",
            labels=["version"],
        )
        build.add_metric([__version__], 1.0)
        yield build


class _Families:
    """Adapts a list of families to what ``generate_latest`` iterates."""

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> list[Metric]:
        return self._families


def _escape_label_value(value: str) -> str:
    # the text format's escaping, as prometheus_client writes it
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


@dataclass(frozen=True)
class RenderedSnapshot:
    """Everything of one snapshot that a scrape needs, swapped in whole.

    Made where the snapshot is (``render_static``, ``expiry_lines``): in ``serve``, by the
    refresh process, which sends it to the server part by part beside the snapshot, so that
    the server never spends its interpreter on a rendering while it answers scrapes.
    """

    key: tuple[int, int] | None
    # every family but the expiry one, rendered by generate_latest one family per part (the
    # parts are sent one after the other: never joined, so never held twice)
    static: tuple[bytes, ...]
    static_gz: tuple[bytes, ...]  # one gzip member, compressed family by family
    points: tuple[tuple[bytes, float], ...]  # (expiry line up to the value, NotAfter)


def render_static(
    collector: SnapshotCollector, snapshot: Snapshot, gzip_level: int = 6
) -> Iterator[tuple[bytes, bytes]]:
    """Every family of ``snapshot`` that does not change with the scrape's second, one at a
    time: (its exposition, its share of one gzip member, often b""); the last pair is
    (b"", the member's end). Only one family's samples exist at once."""
    compressor = zlib.compressobj(gzip_level, zlib.DEFLATED, 31)  # 31: a gzip member
    for family in collector.static_families(snapshot):
        part = generate_latest(_Families([family]))
        yield part, compressor.compress(part)
    yield b"", compressor.flush()


def expiry_lines(snapshot: Snapshot) -> tuple[tuple[bytes, float], ...]:
    """The expiry family's lines up to their value, each with its NotAfter."""
    return tuple(
        (
            f'{EXPIRY_NAME}{{host="{_escape_label_value(h.computer.fqdn)}",'
            f'role="{_escape_label_value(h.computer.role)}"}} '.encode(),
            after,
        )
        for h, after in expiry_points(snapshot)
    )


def render_snapshot(
    collector: SnapshotCollector,
    snapshot: Snapshot,
    key: tuple[int, int] | None,
    gzip_level: int = 6,
) -> RenderedSnapshot:
    """Render every family of ``snapshot`` that does not change with the scrape's second."""
    static: list[bytes] = []
    compressed: list[bytes] = []
    for part, member in render_static(collector, snapshot, gzip_level):
        if part:
            static.append(part)
        if member:
            compressed.append(member)
    return RenderedSnapshot(key, tuple(static), tuple(compressed), expiry_lines(snapshot))


@dataclass(frozen=True)
class _RestartsBlock:
    """The restarts counter rendered for one value (a few dozen bytes)."""

    restarts: int
    plain: bytes
    gz: bytes


@dataclass(frozen=True)
class _ExpiryBlock:
    """The expiry family rendered for one second of one snapshot (gzip made on demand)."""

    key: tuple[int, int] | None
    second: float
    plain: bytes
    gz: list[bytes]  # [] until a gzip scrape asks, then [member]


class Exposition:
    """Serves the collector's output at fleet scale.

    Rendering 10,000 computers through ``generate_latest`` takes about a second, far too
    long for a scrape. Everything but ``vmm_cert_expiry_seconds`` changes only with the
    snapshot, so it is rendered (and gzipped) once per snapshot; the expiry family changes
    with the scrape's second (``scrape_second``), so it is rendered once per second, from
    cached line prefixes and one formatted value per distinct NotAfter (whole cohorts share
    one), and shared by every scrape in that second. The refresh process's restart counter
    changes with neither, so it is a third, tiny part, rendered once per value (a restart
    does not re-render the snapshot). A scrape then only hands the cached parts to the
    server: no copy of the body, no formatting, no compression. While a new snapshot is
    being rendered, scrapes keep getting the previous complete one. A test proves the bytes
    equal ``generate_latest`` over ``SnapshotCollector`` at the same instant.
    """

    def __init__(
        self,
        collector: SnapshotCollector,
        source: Callable[[], Snapshot],
        histogram_count: Callable[[], int] = lambda: 0,
        *,
        clock: Callable[[], float] = time.time,
        gzip_level: int = 6,
        prerendered: Callable[[], RenderedSnapshot | None] | None = None,
    ) -> None:
        self._collector = collector
        # the refresh process's rendering of its last snapshot (None before the first one):
        # served as it is, so no snapshot is ever rendered in this process
        self._prerendered = prerendered
        self._source = source
        self._histogram_count = histogram_count
        self._clock = clock
        self._gzip_level = gzip_level
        self._render_lock = threading.Lock()  # one rendering of a snapshot at a time
        self._expiry_lock = threading.Lock()  # one rendering of a second at a time
        self._rendered = RenderedSnapshot(None, (), (), ())
        self._expiry = _ExpiryBlock(None, math.nan, b"", [])
        self._restarts = self._render_restarts(0)

    def _current(self) -> RenderedSnapshot:
        if self._prerendered is not None:
            ready = self._prerendered()
            if ready is not None:  # rendered elsewhere: nothing to do here but serve it
                return ready
        snapshot = self._source()
        key = (id(snapshot), self._histogram_count())
        rendered = self._rendered
        if rendered.key == key:
            return rendered
        if rendered.key is not None and not self._render_lock.acquire(blocking=False):
            return rendered  # being rendered by another thread: serve the previous one
        if rendered.key is None:
            self._render_lock.acquire()
        try:
            if self._rendered.key != key:
                self._rendered = self._render(snapshot, key)
            return self._rendered
        finally:
            self._render_lock.release()

    def _render(self, snapshot: Snapshot, key: tuple[int, int]) -> RenderedSnapshot:
        return render_snapshot(self._collector, snapshot, key, self._gzip_level)

    def _expiry_block(self, rendered: RenderedSnapshot, now: float) -> _ExpiryBlock:
        second = scrape_second(now)
        block = self._expiry
        if block.key == rendered.key and block.second == second:
            return block
        with self._expiry_lock:
            block = self._expiry
            if block.key != rendered.key or block.second != second:
                block = _ExpiryBlock(
                    rendered.key, second, self._expiry_bytes(rendered.points, second), []
                )
                self._expiry = block
            return block

    @staticmethod
    def _expiry_bytes(points: tuple[tuple[bytes, float], ...], second: float) -> bytes:
        head = f"# HELP {EXPIRY_NAME} {EXPIRY_HELP}\n# TYPE {EXPIRY_NAME} gauge\n".encode()
        go_float: Callable[[float], str] = floatToGoString  # untyped in prometheus_client
        values: dict[float, bytes] = {}
        parts = [head]
        for prefix, after in points:
            value = values.get(after)
            if value is None:
                value = values[after] = go_float(after - second).encode() + b"\n"
            parts.append(prefix)
            parts.append(value)
        return b"".join(parts)

    def _restarts_block(self) -> _RestartsBlock:
        restarts = self._collector.restarts()
        block = self._restarts
        if block.restarts != restarts:
            # tiny, and rare: two threads rendering the same value at once is harmless
            block = self._restarts = self._render_restarts(restarts)
        return block

    def _render_restarts(self, restarts: int) -> _RestartsBlock:
        plain = generate_latest(_Families([SnapshotCollector.restarts_family(restarts)]))
        return _RestartsBlock(restarts, plain, gzip.compress(plain, self._gzip_level))

    def warm(self, snapshot: Snapshot | None = None) -> None:
        """Render the cache now (called by the refresher right after a refresh)."""
        self._current()

    def render_parts(self, now: float | None = None) -> list[bytes]:
        """The body as parts to write one after the other (no copy of the whole)."""
        rendered = self._current()
        moment = self._clock() if now is None else now
        restarts = self._restarts_block()
        return [self._expiry_block(rendered, moment).plain, *rendered.static, restarts.plain]

    def render_gzip_parts(self, now: float | None = None) -> list[bytes]:
        """Gzip members back to back: valid gzip (RFC 1952), read whole by every client."""
        rendered = self._current()
        moment = self._clock() if now is None else now
        block = self._expiry_block(rendered, moment)
        if not block.gz:
            with self._expiry_lock:
                if not block.gz:
                    block.gz.append(gzip.compress(block.plain, 1))
        return [block.gz[0], *rendered.static_gz, self._restarts_block().gz]

    def render(self, now: float | None = None) -> bytes:
        return b"".join(self.render_parts(now))

    def render_gzip(self, now: float | None = None) -> bytes:
        return b"".join(self.render_gzip_parts(now))
