"""Cost of the exporter's landing page at fleet scale: rendering ``/`` in-process and over the
real HTTP layer.

    .venv/bin/python -m bench.pages_render [--sizes 1000,10000,50000] [--runs 20]

The fleet is shaped like a real one: four fifths of the computers on the 1 January of one of
five years, the rest on some day of the past year, with one in fifty having a problem
(expired, missing, not trusted, duplicates, unreadable) and 35-character names. Three
figures per size:

- warm: ``landing.render`` of a fleet already prepared, which is what a request gets (the
  serve command prepares each snapshot right after its refresh, as it renders /metrics);
- cold: ``prepared.prepare`` plus the render: the first request after a new snapshot when
  nothing prepared it;
- HTTP: ``GET /`` from a client on a kept-alive connection through make_app and the HTTP
  layer, warm.

The target is at most 100 ms for the page at 10,000 computers (warm, median wall time). The
CPU times are printed beside the wall times: on a machine shared with other work, the wall
time also counts the waits for a core.
"""

from __future__ import annotations

import argparse
import http.client
import os
import random
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from bench.common import table, write_result
from vmm_cert_exporter.inventory import Computer
from vmm_cert_exporter.metrics import Exposition, SnapshotCollector
from vmm_cert_exporter.pages import landing
from vmm_cert_exporter.pages.prepared import FleetCache, prepare
from vmm_cert_exporter.snapshot import HostSnapshot, Snapshot, StoredCertificate
from vmm_cert_exporter.web import make_app, make_server
from vmm_cert_lab.stored import stored_certificate

TARGET_MS = 100.0
TARGET_SIZE = 10_000
_ROLES = ("hyperv_host",) * 18 + ("library_server", "vmm_server")


def _certificate(fqdn: str, not_after: datetime, serial: int) -> StoredCertificate:
    return stored_certificate(fqdn, not_after, serial=f"{serial:08X}", thumbprint=f"{serial:040X}")


def fleet(size: int, now: float, seed: int = 1) -> Snapshot:
    rng = random.Random(seed)
    today = datetime.fromtimestamp(now, UTC)
    new_years = [datetime(today.year + k, 1, 1, tzinfo=UTC) for k in range(1, 6)]
    hosts = []
    for i in range(size):
        fqdn = f"hv-{i:06d}.dc-east.corp.example.com"
        if rng.random() < 0.8:
            after = rng.choice(new_years)
        else:
            after = today + timedelta(days=5 * 365 - rng.randrange(365))
        certificates: tuple[StoredCertificate, ...] | None = (_certificate(fqdn, after, i),)
        trusted, ok, reason = True, True, None
        problem = rng.randrange(250)
        if problem == 0:
            certificates = (_certificate(fqdn, today - timedelta(days=3), i),)
        elif problem == 1:
            certificates = ()
        elif problem == 2:
            trusted = False
        elif problem == 3:
            certificates = (*(certificates or ()), _certificate(fqdn, after - timedelta(1), -i))
        elif problem == 4:
            certificates, ok, reason = None, False, "connect"
        hosts.append(
            HostSnapshot(
                computer=Computer(fqdn, rng.choice(_ROLES), "vmm01.example.com", "Responding"),
                certificates=certificates,
                trusted=trusted,
                last_success=now - 60 if ok else None,
                last_ok=ok,
                last_duration=0.05,
                last_error=f"{reason}: refused" if reason else None,
                last_error_reason=reason,
            )
        )
    return Snapshot(tuple(hosts), now - 60, 30.0, 900.0, True)


def _times(call: Callable[[], object], runs: int, cpu: list[float] | None = None) -> list[float]:
    """Wall milliseconds per call; ``cpu`` collects this process's CPU milliseconds per call
    (which a machine busy with other work inflates far less than the wall time)."""
    call()  # warm-up
    out = []
    for _ in range(runs):
        start, start_cpu = time.perf_counter(), time.process_time()
        call()
        out.append((time.perf_counter() - start) * 1000)
        if cpu is not None:
            cpu.append((time.process_time() - start_cpu) * 1000)
    return out


def _http(snapshot: Snapshot, runs: int) -> tuple[list[float], int]:
    collector = SnapshotCollector(lambda: snapshot)
    exposition = Exposition(collector, lambda: snapshot)
    fleets = FleetCache()
    fleets.warm(snapshot)
    server = make_server(make_app(exposition, lambda: snapshot, fleets=fleets), "127.0.0.1:0")
    server.start()
    try:
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
        size = 0

        def get() -> None:
            nonlocal size
            connection.request("GET", "/")
            response = connection.getresponse()
            size = len(response.read())
            assert response.status == 200

        return _times(get, runs), size
    finally:
        server.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000,50000")
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    now = time.time()
    rows = []
    verdict = "not measured"
    for size in (int(s) for s in args.sizes.split(",")):
        snapshot = fleet(size, now)
        prepared = prepare(snapshot)
        warm_cpu: list[float] = []
        warm = _times(lambda: landing.render(prepared, now), args.runs, warm_cpu)  # noqa: B023
        cold_cpu: list[float] = []
        cold = _times(
            lambda: landing.render(prepare(snapshot), now),  # noqa: B023
            args.runs,
            cold_cpu,
        )
        over_http, body = _http(snapshot, args.runs)
        if size == TARGET_SIZE:
            met = statistics.median(warm) <= TARGET_MS
            verdict = "met" if met else "MISSED"
        rows.append(
            [
                f"{size:,}",
                f"{statistics.median(warm):.1f}",
                f"{max(warm):.1f}",
                f"{statistics.median(warm_cpu):.1f}",
                f"{statistics.median(cold):.1f}",
                f"{statistics.median(cold_cpu):.1f}",
                f"{statistics.median(over_http):.1f}",
                f"{body / 1000:.0f}",
            ]
        )
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    text = "\n".join(
        [
            table(
                f"Landing page (/): milliseconds per page, {args.runs} runs per size",
                [
                    "computers",
                    "warm median",
                    "warm max",
                    "warm CPU median",
                    "cold median",
                    "cold CPU median",
                    "HTTP median",
                    "KB",
                ],
                rows,
            ),
            "",
            f"target <= {TARGET_MS:g} ms at {TARGET_SIZE:,} computers (warm median): {verdict}",
            f"measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, load average {load}",
        ]
    )
    print(text)
    write_result("pages_render", text)
    return 0 if verdict in ("met", "not measured") else 1


if __name__ == "__main__":
    raise SystemExit(main())
