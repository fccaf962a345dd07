"""/metrics latency and size at fleet scale, through the real HTTP server (cheroot).

    .venv/bin/python bench/metrics_latency.py [--sizes 1000,10000] [--scrapers 10]

Snapshots are built from real certificates (made with cryptography, parsed by the
exporter's own parser), as a refresh of that many computers would leave them. Scrapers ask
concurrently, with and without gzip. Target (issue 3): p50 <= 50 ms at 10,000 computers.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import subprocess
import sys
import threading
import time

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from bench.common import peak_rss_mb, table, write_result
from vmm_cert_exporter.certificate import parse_certificate
from vmm_cert_exporter.collection import RefreshHistogram
from vmm_cert_exporter.inventory import Computer
from vmm_cert_exporter.metrics import Exposition, SnapshotCollector
from vmm_cert_exporter.snapshot import HostSnapshot, Snapshot, StoredCertificate
from vmm_cert_exporter.web import make_app, make_server


def synthetic_snapshot(n: int) -> Snapshot:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = time.time()
    hosts = []
    for i in range(n):
        fqdn = f"hv{i:05d}.bench.example"
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, fqdn)])
        year = 2022 + i % 5
        start = dt.datetime(year, 1, 1, tzinfo=dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(start.replace(year=year + 5))
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
import json, sys, time, urllib.request
url, n, gz = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
headers = {"Accept-Encoding": "gzip"} if gz else {}
out = []
for _ in range(n):
    t0 = time.perf_counter()
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=60) as r:
        size = len(r.read())
    out.append(time.perf_counter() - t0)
print(json.dumps({"latencies": out, "size": size}))
"""


def scrape_latencies(
    url: str, scrapers: int, per_scraper: int, gzip: bool
) -> tuple[list[float], int]:
    """Scrapers are separate processes, as Prometheus is: they must not share our GIL."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _SCRAPER, url, str(per_scraper), "1" if gzip else "0"],
            stdout=subprocess.PIPE,
        )
        for _ in range(scrapers)
    ]
    latencies: list[float] = []
    size = 0
    for proc in procs:
        out, _ = proc.communicate(timeout=600)
        result = json.loads(out)
        latencies += result["latencies"]
        size = result["size"]
    return latencies, size


def measure(n: int, scrapers: int, per_scraper: int) -> list[list[str]]:
    snapshot = synthetic_snapshot(n)
    histogram = RefreshHistogram()
    histogram.observe(12.0)
    collector = SnapshotCollector(lambda: snapshot, lambda: histogram)
    exposition = Exposition(collector, lambda: snapshot, lambda: histogram.count)
    exposition.warm()  # as the refresher does right after a refresh
    server = make_server(make_app(exposition, lambda: snapshot), "127.0.0.1:0", threads=scrapers)
    server.prepare()
    thread = threading.Thread(target=server.serve, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.bind_addr[1]}/metrics"
    rows = []
    try:
        for gzip, count in ((False, 1), (True, 1), (False, scrapers), (True, scrapers)):
            lat, size = scrape_latencies(url, count, per_scraper, gzip)
            lat.sort()
            rows.append(
                [
                    f"{n:,}",
                    str(count),
                    "gzip" if gzip else "plain",
                    f"{1000 * statistics.median(lat):.1f}",
                    f"{1000 * lat[int(0.99 * (len(lat) - 1))]:.1f}",
                    f"{size / 1e6:.2f}",
                    f"{peak_rss_mb():.0f}",
                ]
            )
    finally:
        server.stop()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="1000,10000")
    parser.add_argument("--scrapers", type=int, default=10)
    parser.add_argument("--per-scraper", type=int, default=10)
    args = parser.parse_args()
    rows: list[list[str]] = []
    for n in (int(s) for s in args.sizes.split(",")):
        rows += measure(n, args.scrapers, args.per_scraper)
    text = table(
        "/metrics through cheroot; scrapers are separate processes",
        ["computers", "scrapers", "encoding", "p50 ms", "p99 ms", "MB", "peak RSS MB"],
        rows,
    )
    print(text)
    ten_k = [float(r[3]) for r in rows if r[0] == "10,000" and r[1] == "1"]
    if ten_k:
        verdict = "met" if max(ten_k) <= 50 else "MISSED"
        print(f"target: p50 <= 50 ms at 10,000 (one scraper) -> {verdict}")
    write_result("metrics_latency", text)


if __name__ == "__main__":
    main()
