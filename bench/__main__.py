"""``make bench``: every benchmark in turn, each in its own process, each printing a table."""

from __future__ import annotations

import subprocess
import sys

BENCHES = [
    ["bench.lab_run_ps"],
    ["bench.exporter_refresh", "--hosts", "1000", "--concurrency", "32"],
    ["bench.metrics_latency", "--sizes", "1000,10000"],
]


def main() -> int:
    failed = 0
    for argv in BENCHES:
        print(f"\n=== {' '.join(argv)} ===", flush=True)
        failed += subprocess.run([sys.executable, "-m", *argv], check=False).returncode != 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
