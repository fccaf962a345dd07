"""/metrics latency and size at fleet scale, while a refresh is running.

    .venv/bin/python -m bench.metrics_latency [--sizes 1000,10000,50000] [--scrapers 10]

Each fleet size is measured in a fresh exporter process, wired as ``serve`` wires it
(``SnapshotCollector`` -> ``Exposition`` -> the WSGI app -> the HTTP layer with its
production settings). The served snapshot holds N computers with real certificates (made with
cryptography, EC P-256 keys so that 50,000 are made in seconds; parsed by the exporter's own
parser). Meanwhile the exporter's refresh process (``refresh_process.py``, as ``serve`` runs
it) refreshes a 2,000-computer lab (another process) over WinRM at the default concurrency
with the shortest interval (10 s), so refreshes run back to back: against the lab a refresh
is CPU-bound, the worst case for the scrapes, which share the machine's two cores with it.
The lab runs at nice 19: it stands for remote computers, whose CPU is not the exporter
host's; the refresh process runs at the priority ``serve`` gives it (refresh_process.py).
The refresh process's CPU use during the measurement is printed to show it was running.

Scrapers are separate processes (as Prometheus is), each asking ``--per-scraper`` times over
one HTTP/1.1 keep-alive connection, as Prometheus does, and reading the whole body;
first one scraper, then ``--scrapers`` at once; with ``Accept-Encoding: gzip`` (what
Prometheus sends) and without. Writes ``bench/results/metrics_latency.{txt,png}``.
Targets (docs/scaling.md): p50 <= 50 ms at 10,000 computers and <= 250 ms at 50,000 with 10
concurrent scrapers; peak RSS <= 300 MB at 10,000.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import logging
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from bench.common import (
    lab_child,
    new_figure,
    peak_rss_mb,
    process_cpu_seconds,
    process_rss_mb,
    run_child,
    save_chart,
    table,
    write_result,
)

TARGETS_P50_MS = {10_000: 50.0, 50_000: 250.0}
TARGET_RSS_MB = {10_000: 300.0}


def synthetic_snapshot(n: int) -> Any:
    """N computers as a refresh would leave them: one real SCVMM-like certificate each."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    from vmm_cert_exporter.certificate import parse_certificate
    from vmm_cert_exporter.inventory import Computer
    from vmm_cert_exporter.snapshot import HostSnapshot, Snapshot, StoredCertificate

    keys = [ec.generate_private_key(ec.SECP256R1()) for _ in range(4)]
    now = time.time()
    hosts = []
    for i in range(n):
        fqdn = f"hv{i:05d}.bench.example"
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, fqdn)])
        year = 2022 + i % 5
        start = dt.datetime(year, 1, 1, tzinfo=dt.UTC)
        key = keys[i % len(keys)]
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(start.replace(year=year + 5))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(fqdn)]), critical=False)
            .sign(key, hashes.SHA256())
        )
        info = parse_certificate(cert.public_bytes(serialization.Encoding.DER))
        hosts.append(
            HostSnapshot(
                computer=Computer(fqdn, "hyperv_host", "vmm01.bench.example", "Responding"),
                certificates=(
                    StoredCertificate(info, f"SCVMM_CERTIFICATE_KEY_CONTAINER{fqdn}", True),
                ),
                trusted=True,
                last_success=now,
                last_ok=True,
                last_duration=0.05,
                last_error=None,
                last_error_reason=None,
                errors_total={"timeout": 1} if i % 50 == 0 else {},
            )
        )
    return Snapshot(tuple(hosts), now, 60.0, 900.0, True)


_SCRAPER = """
import json, socket, sys, time
port, n, gz, start = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1", float(sys.argv[4])
# what Prometheus does: HTTP/1.1 keep-alive on one connection, gzip asked for, body read whole
request = (
    b"GET /metrics HTTP/1.1\\r\\nHost: 127.0.0.1\\r\\nUser-Agent: bench-scraper\\r\\n"
    + (b"Accept-Encoding: gzip\\r\\n" if gz else b"")
    + b"Accept: text/plain;version=0.0.4\\r\\n\\r\\n"
)
buf = bytearray(1 << 20)
sock = None
time.sleep(max(0.0, start - time.time()))
out = []
size = 0
for _ in range(n):
    t0 = time.perf_counter()
    if sock is None:
        sock = socket.create_connection(("127.0.0.1", port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(request)
    head = b""
    while b"\\r\\n\\r\\n" not in head:
        chunk = sock.recv(65536)
        if not chunk:
            raise SystemExit("connection closed")
        head += chunk
    head, _, body = head.partition(b"\\r\\n\\r\\n")
    length = int(head.lower().split(b"content-length:")[1].split(b"\\r\\n")[0])
    got = len(body)
    view = memoryview(buf)
    while got < length:
        got += sock.recv_into(view, min(len(buf), length - got))
    out.append(time.perf_counter() - t0)
    size = length
    if b"connection: close" in head.lower():
        sock.close()
        sock = None
print(json.dumps({"latencies": out, "size": size}))
"""


def scrape(port: int, scrapers: int, per_scraper: int, gzip: bool) -> tuple[list[float], int]:
    """Scrapers are separate processes, as Prometheus is: they must not share our GIL."""
    start = time.time() + 1.0  # every scraper imported and waiting: they begin together
    argv = [sys.executable, "-c", _SCRAPER, str(port), str(per_scraper), str(int(gzip))]
    procs = [
        subprocess.Popen(
            [*argv, repr(start)],
            stdout=subprocess.PIPE,
        )
        for _ in range(scrapers)
    ]
    latencies: list[float] = []
    size = 0
    for proc in procs:
        out, _ = proc.communicate(timeout=1200)
        result = json.loads(out)
        latencies += result["latencies"]
        size = result["size"]
    return latencies, size


def bare_reference(body: bytes, scrapers: int, per_scraper: int) -> float:
    """p50 of the same scrapers reading ``body`` from a bare socket server (no HTTP stack).

    What moving these bytes costs on this machine with nothing else running: one thread per
    connection, ``sendall`` of the whole body, no request parsing beyond the blank line. A
    reference to compare the exporter's server with, not a bound it cannot beat.
    """
    head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body)
    listener = socket.create_server(("127.0.0.1", 0), backlog=128)

    def handle(conn: socket.socket) -> None:
        with conn, conn.makefile("rb") as requests:
            for line in requests:
                if line == b"\r\n":  # the end of one request's headers
                    conn.sendall(head)
                    conn.sendall(body)

    def accept() -> None:
        with contextlib.suppress(OSError):  # closed: the measurement is over
            while True:
                conn, _ = listener.accept()
                threading.Thread(target=handle, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        latencies, _ = scrape(listener.getsockname()[1], scrapers, per_scraper, gzip=False)
    finally:
        listener.close()
    return statistics.median(latencies)


def measure(port: int, count: int, per_scraper: int, gzip: bool, refresh: bool) -> dict[str, Any]:
    lat, size = scrape(port, count, per_scraper, gzip)
    lat.sort()
    return {
        "scrapers": count,
        "gzip": gzip,
        "refresh": refresh,
        "p50": statistics.median(lat),
        "p99": lat[int(0.99 * (len(lat) - 1))],
        "bytes": size,
    }


def one(n: int, lab_config: str, scrapers: int, per_scraper: int) -> dict[str, Any]:
    """The child side: one fleet size, served while a refresh runs."""
    from vmm_cert_exporter.config import load_config
    from vmm_cert_exporter.metrics import Exposition, SnapshotCollector
    from vmm_cert_exporter.refresh_histogram import RefreshHistogram
    from vmm_cert_exporter.refresh_process import RefreshProcess
    from vmm_cert_exporter.web import make_app, make_server

    snapshot = synthetic_snapshot(n)
    histogram = RefreshHistogram()
    histogram.observe(12.0)
    collector = SnapshotCollector(lambda: snapshot, lambda: histogram)
    exposition = Exposition(collector, lambda: snapshot, lambda: histogram.count)
    t0 = time.perf_counter()
    exposition.warm()  # what the refresher does right after a refresh
    render_seconds = time.perf_counter() - t0
    # the reference first, with nothing else running: the same plain bytes from a bare socket
    reference = bare_reference(b"".join(exposition.render_parts()), scrapers, per_scraper)
    server = make_server(make_app(exposition, lambda: snapshot), "127.0.0.1:0")
    server.prepare()
    threading.Thread(target=server.serve, daemon=True).start()
    port = int(server.bind_addr[1])
    # then the exporter with no refresh running (what it does between refreshes, and most
    # of the time against real hosts, where a refresh waits on the network)
    phases = [measure(port, scrapers, per_scraper, gzip, False) for gzip in (True, False)]

    # the refresh as serve runs it, in its own process (refresh_process.py), back to back:
    # the lab is sized so that one refresh outlasts the shortest interval (10 s)
    refresher = RefreshProcess(load_config(back_to_back(Path(lab_config))))
    refresher.start()
    _wait(lambda: refresher.pid is not None, 30)
    pid = int(refresher.pid or 0)
    time.sleep(3.0)  # the refresh process has started and its refresh is well under way
    cpu0, t0 = process_cpu_seconds(pid), time.monotonic()
    try:
        for count in (1, scrapers):
            for gzip in (True, False):
                phases.append(measure(port, count, per_scraper, gzip, True))
        busy = (process_cpu_seconds(pid) - cpu0) / (time.monotonic() - t0)
        refresh_rss = process_rss_mb(pid, "VmHWM")
    finally:
        refresher.stop(timeout=60)
        server.stop()
    return {
        "computers": n,
        "render": render_seconds,
        "rss": peak_rss_mb(),
        "refresh_rss": refresh_rss,
        "refresh_busy": busy,
        "reference": reference,
        "phases": phases,
    }


def back_to_back(lab_config: Path) -> Path:
    """The lab's exporter config with the shortest interval, so refreshes follow each other."""
    data = yaml.safe_load(lab_config.read_text())
    data["collection"]["interval"] = "10s"
    path = lab_config.with_name("bench-back-to-back.yml")
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _wait(condition: Callable[[], bool], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit("the refresh process did not start")
        time.sleep(0.05)


def warm_up(lab_config: Path) -> None:
    from vmm_cert_exporter.collection import Refresher
    from vmm_cert_exporter.config import load_config

    Refresher(load_config(lab_config)).refresh_once()


def report(results: list[dict[str, Any]], lab_hosts: int) -> str:
    rows = []
    for r in results:
        for p in r["phases"]:
            rows.append(
                [
                    f"{r['computers']:,}",
                    str(p["scrapers"]),
                    "gzip" if p["gzip"] else "plain",
                    "yes" if p["refresh"] else "no",
                    f"{1000 * p['p50']:.1f}",
                    f"{1000 * p['p99']:.1f}",
                    f"{p['bytes'] / 1e6:.2f}",
                    f"{r['render']:.2f}",
                    f"{r['rss']:.0f}",
                    f"{r['refresh_rss']:.0f}",
                    f"{100 * r['refresh_busy']:.0f}" if p["refresh"] else "-",
                ]
            )
    references = [
        f"reference at {r['computers']:,}: {r['phases'][0]['scrapers']} scrapers reading the "
        f"same {r['phases'][1]['bytes'] / 1e6:.2f} MB (plain) from a bare socket server, nothing "
        f"else running: p50 {1000 * r['reference']:.1f} ms"
        for r in results
    ]
    return "\n".join(
        [
            table(
                f"/metrics through the HTTP layer while the refresh process refreshes a "
                f"{lab_hosts:,}-computer lab back to back; scrapers are "
                "separate processes",
                [
                    "computers",
                    "scrapers",
                    "encoding",
                    "refresh running",
                    "p50 ms",
                    "p99 ms",
                    "MB",
                    "render s",
                    "server RSS MB",
                    "refresh proc RSS MB",
                    "refresh proc CPU %",
                ],
                rows,
            ),
            *references,
        ]
    )


def verdicts(results: list[dict[str, Any]], scrapers: int) -> list[str]:
    out = []
    for r in results:
        n = r["computers"]
        for p in r["phases"]:
            if n in TARGETS_P50_MS and p["scrapers"] == scrapers and p["refresh"]:
                limit = TARGETS_P50_MS[n]
                ms = 1000 * p["p50"]
                enc = "gzip, as Prometheus asks" if p["gzip"] else "plain"
                verdict = "met" if ms <= limit else "MISSED"
                line = (
                    f"target: p50 <= {limit:.0f} ms at {n:,} with {scrapers} scrapers, refresh "
                    f"running ({enc}) -> {verdict} ({ms:.1f} ms)"
                )
                if not p["gzip"]:
                    idle = next(q for q in r["phases"] if not q["refresh"] and not q["gzip"])
                    line += (
                        f"; no refresh: {1000 * idle['p50']:.1f} ms; bare-socket reference: "
                        f"{1000 * r['reference']:.1f} ms"
                    )
                out.append(line)
        if n in TARGET_RSS_MB:
            limit = TARGET_RSS_MB[n]
            both = r["rss"] + r["refresh_rss"]
            verdict = "met" if both <= limit else "MISSED"
            out.append(
                f"target: peak RSS <= {limit:.0f} MB at {n:,} -> {verdict} ({both:.0f} MB: "
                f"server {r['rss']:.0f} + refresh process {r['refresh_rss']:.0f})"
            )
    return out


def chart(results: list[dict[str, Any]], scrapers: int) -> None:
    figure, (latency, size) = new_figure(2)
    sizes = [r["computers"] for r in results]
    for gzip, colour in ((True, "tab:blue"), (False, "tab:orange")):
        enc = "gzip" if gzip else "plain"
        picked = [
            next(
                p
                for p in r["phases"]
                if p["scrapers"] == scrapers and p["gzip"] == gzip and p["refresh"]
            )
            for r in results
        ]
        p50 = [1000 * p["p50"] for p in picked]
        latency.plot(sizes, p50, "o-", color=colour, label=f"{enc} p50")
        latency.plot(
            sizes, [1000 * p["p99"] for p in picked], "o--", color=colour, label=f"{enc} p99"
        )
        size.plot(sizes, [p["bytes"] / 1e6 for p in picked], "o-", color=colour, label=enc)
    latency.plot(
        sizes,
        [1000 * r["reference"] for r in results],
        "s:",
        color="grey",
        label="plain, bare socket (reference)",
    )
    for n, limit in TARGETS_P50_MS.items():
        latency.plot([n], [limit], "rx", markersize=10)
    latency.plot([], [], "rx", label="p50 target")
    latency.set_xscale("log")
    latency.set_yscale("log")
    latency.set_xlabel("computers in the snapshot")
    latency.set_ylabel("ms")
    latency.set_title(f"/metrics latency, {scrapers} concurrent scrapers, refresh running")
    latency.legend(fontsize="small")
    size.set_xscale("log")
    size.set_yscale("log")
    size.set_xlabel("computers in the snapshot")
    size.set_ylabel("MB per scrape")
    size.set_title("/metrics body size")
    size.legend()
    save_chart("metrics_latency", figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="1000,10000,50000")
    parser.add_argument("--scrapers", type=int, default=10)
    parser.add_argument("--per-scraper", type=int, default=20)
    parser.add_argument("--lab-hosts", type=int, default=2000)
    parser.add_argument("--one", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--lab-config", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    if args.one:
        print(json.dumps(one(args.one, args.lab_config, args.scrapers, args.per_scraper)))
        return
    results = []
    with lab_child(args.lab_hosts) as lab:
        # the lab stands for remote computers: at the lowest priority it takes only the CPU
        # the exporter's processes and the scrapers leave, as if it ran elsewhere
        os.setpriority(os.PRIO_PROCESS, lab.pid, 19)
        # one refresh first, so that every size meets a warm lab (it builds each
        # certificate's DER on first use: the first refresh costs the lab far more CPU)
        warm_up(lab.config)
        for n in (int(s) for s in args.sizes.split(",")):
            results.append(
                run_child(
                    [
                        "bench.metrics_latency",
                        "--one",
                        str(n),
                        "--lab-config",
                        str(lab.config),
                        "--scrapers",
                        str(args.scrapers),
                        "--per-scraper",
                        str(args.per_scraper),
                    ]
                )
            )
            print(f"  {n:,} computers measured", flush=True)
    text = report(results, args.lab_hosts) + "\n" + "\n".join(verdicts(results, args.scrapers))
    print(text)
    write_result("metrics_latency", text)
    chart(results, args.scrapers)


if __name__ == "__main__":
    main()
