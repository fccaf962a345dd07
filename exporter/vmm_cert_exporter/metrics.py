"""Turn the current snapshot into metric families: no I/O, no locks, nothing but arithmetic.

The names and labels are a contract (docs/metrics.md). ``vmm_cert_expiry_seconds`` is
computed at scrape time so that it keeps counting down between refreshes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from vmm_cert_exporter import __version__
from vmm_cert_exporter.collection import RefreshHistogram
from vmm_cert_exporter.snapshot import Snapshot

HOST_LABELS = ["host", "role"]


class SnapshotCollector(Collector):
    """A prometheus_client custom collector over whatever snapshot ``source`` returns."""

    def __init__(
        self,
        source: Callable[[], Snapshot],
        histogram: Callable[[], RefreshHistogram] | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._source = source
        self._histogram = histogram
        self._clock = clock

    def describe(self) -> Iterator[Metric]:
        # no describe(): registering must not call collect() (it would read a snapshot early)
        return iter(())

    def collect(self) -> Iterator[Metric]:
        snapshot = self._source()
        now = self._clock()

        expiry = GaugeMetricFamily(
            "vmm_cert_expiry_seconds",
            "Seconds from the scrape until NotAfter of the computer's SCVMM certificate "
            "(the latest if several); negative once expired; absent when the store holds none.",
            labels=HOST_LABELS,
        )
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
            "1 if the computer's LocalMachine\\My store holds an SCVMM certificate, 0 if it "
            "was read and holds none; absent until the store has been read once.",
            labels=HOST_LABELS,
        )
        count = GaugeMetricFamily(
            "vmm_cert_certificates",
            "Number of SCVMM certificates in the computer's store (more than 1 is a smell).",
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
            "One series per SCVMM certificate in the computer's store, with its identity.",
            labels=[
                *HOST_LABELS,
                "thumbprint",
                "serial",
                "subject",
                "issuer",
                "self_signed",
                "key_algorithm",
            ],
        )
        state = GaugeMetricFamily(
            "vmm_managed_computer_state",
            "The state VMM itself reports for a managed computer (value always 1).",
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
                        ],
                        1.0,
                    )
            current = host.current
            if current is not None:
                after = current.info.not_after.timestamp()
                expiry.add_metric(labels, after - now)
                not_after.add_metric(labels, after)
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
            expiry,
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
