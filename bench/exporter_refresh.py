"""Refresh cost of the exporter against N lab computers over real pywinrm.

    .venv/bin/python bench/exporter_refresh.py [--hosts 1000] [--concurrency 32]

Prints wall time, CPU seconds and peak RSS of the exporter process (the lab runs in its own
process). Target (issue 3, this 2-core machine, lab included): 1,000 computers in <= 30 s.
"""

from __future__ import annotations

import argparse
import logging
import time

import yaml

from bench.common import cpu_seconds, lab_process, peak_rss_mb, table, write_result
from vmm_cert_exporter.collection import Refresher
from vmm_cert_exporter.config import load_config


def run(hosts: int, concurrency: int) -> list[str]:
    with lab_process(hosts) as config_path:
        data = yaml.safe_load(config_path.read_text())
        data["collection"]["concurrency"] = concurrency
        config_path.write_text(yaml.safe_dump(data))
        config = load_config(config_path)
        refresher = Refresher(config)
        cpu0, t0 = cpu_seconds(), time.monotonic()
        snapshot = refresher.refresh_once()
        wall, cpu = time.monotonic() - t0, cpu_seconds() - cpu0
        ok = sum(1 for h in snapshot.hosts if h.last_ok)
    return [
        str(len(snapshot.hosts)),
        str(concurrency),
        f"{wall:.1f}",
        f"{cpu:.1f}",
        f"{peak_rss_mb():.0f}",
        f"{1000 * wall / max(1, len(snapshot.hosts)):.1f}",
        str(ok),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--hosts", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    row = run(args.hosts, args.concurrency)
    text = table(
        "exporter refresh against the lab (Basic over HTTP, one refresh)",
        ["computers", "concurrency", "wall s", "CPU s", "peak RSS MB", "ms/computer", "read ok"],
        [row],
    )
    print(text)
    print(f"target: 1,000 computers in <= 30 s -> {'met' if float(row[2]) <= 30 else 'MISSED'}")
    write_result("exporter_refresh", text)


if __name__ == "__main__":
    main()
