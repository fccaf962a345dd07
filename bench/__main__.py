"""``make bench``: every benchmark in turn, each in its own process, each printing a table."""

from __future__ import annotations

import subprocess
import sys

# One at a time (they share two cores); each writes bench/results/<name>.txt (and .png).
BENCHES = [
    # the headline: serve against the lab as a user runs it (docs/scaling.md): 1,000, 10,000
    # and 50,000 computers, new snapshots every refresh, scraped once a second; then the
    # micro-benchmarks below, as diagnostics
    # (NTLM and Kerberos, a real KDC, at 1,000 only: their per-computer cost beside Basic's)
    [
        "bench.serve_as_user",
        *("--sizes", "1000,10000,50000", "--refreshes", "5,5,3"),
        *("--transports", "basic,ntlm,kerberos", "--ntlm-sizes", "1000"),
    ],
    ["bench.lab_run_ps"],
    # WinRM refresh scaling: 100, 1,000 and 5,000 computers at four concurrencies
    ["bench.exporter_refresh", "--hosts", "100,1000,5000", "--concurrency", "4,16,32,64"],
    # refresh CPU per computer with Basic, NTLM and Kerberos (a real KDC) on one lab, at two
    # sizes: Kerberos's cost per call must not grow with the fleet
    ["bench.refresh_auth", "--hosts", "300,3000", "--concurrency", "16"],
    # the same refresh against Windows-like timing (lab --latency windows): wall / ideal
    ["bench.refresh_latency", "--hosts", "500,2000", "--concurrency", "16,64,128,256"],
    # micro: /metrics of a fixed snapshot at 1,000, 10,000 and 50,000 computers, 10
    # scrapers at once, a refresh of another lab running
    ["bench.metrics_latency", "--sizes", "1000,10000,50000", "--scrapers", "10"],
    # 1,000 idle, half-sent, slowloris and stalled-TLS clients against serve and receiver
    ["bench.slow_clients", "--clients", "1000"],
    # the exporter's TLS refresh vs prometheus-blackbox-exporter on 500 lab endpoints
    ["bench.tls_race", "--endpoints", "500", "--concurrency", "32", "--rounds", "6"],
    # the cohort planner (cohorts command, receiver capacity) at 1,000 to 50,000 computers
    ["bench.cohort_planner", "--sizes", "1000,10000,50000"],
    # one renewal's reading of a computer at 300 and 3,000 computers, filtered or not
    ["bench.renewal_reads", "--sizes", "300,3000"],
    # the exporter's landing page at 1,000 to 50,000 computers (target <= 100 ms at 10,000)
    ["bench.pages_render", "--sizes", "1000,10000,50000"],
    # the receiver's scheduling pass with a whole cohort waiting behind max_concurrent
    ["bench.engine_pass", "--sizes", "300,3000,30000"],
]


def main() -> int:
    failed = 0
    for argv in BENCHES:
        print(f"\n=== {' '.join(argv)} ===", flush=True)
        failed += subprocess.run([sys.executable, "-m", *argv], check=False).returncode != 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
