"""CPU of one renewal's reading of a computer (preflight, and again at verification): VMM's
view, its TrustedPeople and the computer's store, over WinRM against a lab of N computers.

    .venv/bin/python -m bench.renewal_reads [--sizes 300,3000] [--reads 10]

"filtered" is what the receiver sends (``{"computer": FQDN}`` on list-managed-computers and
list-trusted-certificates); "whole lists" is the same reading without the filter, as before
it existed. CPU is this process's, receiver and in-process lab together (Basic over HTTP).
The target: a renewal's reading does not grow with the fleet.
"""

from __future__ import annotations

import argparse
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from bench.common import cpu_seconds, table, write_result
from vmm_cert_exporter.receiver import runbook
from vmm_cert_lab.fleet.runner import start_lab
from vmm_cert_lab.fleet.scenario import lab_host, load_fleet
from vmm_cert_lab.receiver_testing import CountingFleet, make_harness


def _per_read(harness_runner: runbook.ScriptRunner, hosts: list[str], vmm: str) -> float:
    runbook.read_state(harness_runner, hosts[0], vmm)  # warm: the lab signs lazily
    start = cpu_seconds()
    for host in hosts[1:]:
        runbook.read_state(harness_runner, host, vmm)
    return (cpu_seconds() - start) / (len(hosts) - 1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="300,3000")
    parser.add_argument("--reads", type=int, default=10)
    args = parser.parse_args()
    rows = []
    filtered_costs = []
    for size in (int(s) for s in args.sizes.split(",")):
        with tempfile.TemporaryDirectory() as directory:
            fleet = CountingFleet(load_fleet("big-cohort", hosts=size))
            with start_lab(fleet=fleet, state_dir=Path(directory) / "lab") as lab:
                harness = make_harness(lab, Path(directory) / "receiver", winrm_timeout="120s")
                try:
                    vmm = lab_host("vmm01")
                    names = [c["fqdn"] for c in lab.model.list_computers()]
                    hosts = [n for n in names if n != vmm][: args.reads + 1]
                    filtered = _per_read(harness.runner, hosts, vmm)
                    only = runbook._only
                    runbook._only = lambda name: {}  # the reading before the filter
                    try:
                        whole = _per_read(harness.runner, hosts, vmm)
                    finally:
                        runbook._only = only
                finally:
                    harness.close()
        filtered_costs.append(filtered)
        rows.append([f"{size:,}", f"{whole * 1000:.0f}", f"{filtered * 1000:.1f}"])
    grows = max(filtered_costs) / min(filtered_costs)
    text = "\n".join(
        [
            table(
                f"One renewal's reading of a computer: CPU ms per read ({args.reads} reads)",
                ["computers", "whole lists ms", "filtered ms"],
                rows,
            ),
            "",
            f"filtered: largest / smallest fleet = {grows:.2f}x (a renewal reads twice)",
            f"measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        ]
    )
    print(text)
    write_result("renewal_reads", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
