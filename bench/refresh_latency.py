"""The WinRM refresh against Windows-like timing: how close it comes to latency-bound.

    .venv/bin/python -m bench.refresh_latency [--hosts 500,2000] [--concurrency 16,64,128,256]

The lab runs in a child process with ``--latency windows`` (0.8 s to create a shell, 0.1 s
for every other WS-Management request, slept per connection). For each fleet size a fresh
exporter process first measures the single-computer call time, then every concurrency is one
refresh in a fresh exporter process (``bench.exporter_refresh --one``), after one untimed
warm-up refresh. Definitions (also in docs/scaling.md):

- N: the computers whose store the refresh reads (the generated hosts and the VMM server);
- t_computer: median wall time of one ``collect-certificates`` call (``WinRMRunner.run``:
  new connection, Create, Command, Receive, Signal, Delete; Basic over HTTP) to one lab
  computer with nothing else running, over 5 computers, in a fresh exporter process;
- ideal = N x t_computer / concurrency; ratio = refresh wall time / ideal;
- floor: the ratio latency alone allows (infinitely fast CPUs): the refresh first waits for
  ``list-managed-computers`` (t_list, measured alone), then reads the computers in
  ceil(N / concurrency) rounds of t_computer, while ``list-trusted-certificates`` (t_trusted)
  runs beside them in one slot: floor = (t_list + max(rounds x t_computer, t_trusted)) / ideal;
- exporter CPU s: CPU seconds of the refresh process during the refresh, and its share of
  one core (CPU s / wall): one Python process, so about one core is all its threads can use;
- the knee: the highest concurrency whose ratio stays within 15 % of its floor. Past it the
  wall no longer follows latency: the exporter's CPU seconds and its share of a core rise
  instead (its threads queue for the interpreter and the machine's cores).

Target: ratio <= 1.35 at 500 computers, concurrency 64. Writes
``bench/results/refresh_latency.txt``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import resource
import statistics
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.common import LabChild, lab_child, run_child, table, write_result

PROFILE = "windows"  # lab.latency.WINDOWS
SAMPLES = 5
KNEE_SLACK = 1.15  # a ratio within 15 % of the floor still follows latency
TARGET = (501, 64, 1.35)  # --hosts 500 plus the VMM server


def probe(config_path: str) -> dict[str, Any]:
    """Single-call times against the lab (the child side): t_computer, t_list, t_trusted."""
    from vmm_cert_exporter.config import load_config
    from vmm_cert_exporter.powershell import render_script
    from vmm_cert_exporter.remoting import WinRMRunner

    config = load_config(Path(config_path))
    runner = WinRMRunner(config.winrm)
    vmm = config.vmm_servers[0].host

    def timed(host: str, operation: str) -> float:
        started = time.monotonic()
        output = runner.run(host, render_script(operation))
        if output.exit_code != 0:
            raise RuntimeError(f"{operation} on {host}: exit {output.exit_code}")
        return time.monotonic() - started

    t_list = timed(vmm, "list-managed-computers")
    t_trusted = timed(vmm, "list-trusted-certificates")
    hosts = [f"hv{i:04d}.lab.example" for i in range(1, SAMPLES + 1)]
    samples = [timed(h, "collect-certificates") for h in hosts]
    return {
        "t_computer": statistics.median(samples),
        "t_computer_samples": samples,
        "t_list": t_list,
        "t_trusted": t_trusted,
    }


def refresh(lab: LabChild, concurrency: int) -> dict[str, Any]:
    """One refresh in a fresh exporter process (``bench.exporter_refresh --one``)."""
    return run_child(
        [
            "bench.exporter_refresh",
            "--one",
            str(lab.config),
            "--concurrency",
            str(concurrency),
            "--lab-pid",
            str(lab.pid),
        ]
    )


def ensure_descriptors(concurrency: int) -> None:
    """Each call holds one socket in the exporter (and one in the lab): raise the soft limit
    if it would not cover the highest concurrency with room to spare."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = 4 * concurrency + 256
    if soft < need:
        if hard != resource.RLIM_INFINITY and hard < need:
            raise SystemExit(f"open-file limit {hard} < {need} needed for {concurrency} calls")
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))  # inherited by children


def measure(sizes: list[int], concurrencies: list[int]) -> list[dict[str, Any]]:
    runs: list[dict[str, Any]] = []
    for size in sizes:
        with lab_child(size, latency=PROFILE) as lab:
            refresh(lab, max(concurrencies))  # warm-up: the lab builds each DER on first use
            times = run_child(["bench.refresh_latency", "--probe", str(lab.config)])
            print(
                f"  {size:,} hosts: t_computer {times['t_computer']:.3f} s, "
                f"t_list {times['t_list']:.2f} s, t_trusted {times['t_trusted']:.2f} s",
                flush=True,
            )
            for concurrency in concurrencies:
                run = refresh(lab, concurrency)
                run.update(times)
                run["load"] = os.getloadavg()[0]  # other work on the machine skews a run
                print(
                    f"  {run['computers']:,} computers, concurrency {concurrency}: "
                    f"{float(run['wall']):.1f} s",
                    flush=True,
                )
                runs.append(run)
    return runs


def figures(run: dict[str, Any]) -> dict[str, float]:
    """ideal, ratio, floor and the exporter's share of one core for one run."""
    n, c = int(run["computers"]), int(run["concurrency"])
    t_c, wall = float(run["t_computer"]), float(run["wall"])
    ideal = n * t_c / c
    floor = float(run["t_list"]) + max(math.ceil(n / c) * t_c, float(run["t_trusted"]))
    return {
        "ideal": ideal,
        "ratio": wall / ideal,
        "floor": floor / ideal,
        "cpu_share": float(run["cpu"]) / wall,
    }


def knee(runs: list[dict[str, Any]], size: int) -> int | None:
    """The highest concurrency up to which every run's ratio stayed within 15 % of its
    floor (None if the lowest one already did not)."""
    mine = sorted((r for r in runs if int(r["computers"]) == size), key=lambda r: r["concurrency"])
    last = None
    for run in mine:
        f = figures(run)
        if f["ratio"] > KNEE_SLACK * f["floor"]:
            break
        last = int(run["concurrency"])
    return last


def report(runs: list[dict[str, Any]]) -> str:
    rows = []
    for r in runs:
        f = figures(r)
        rows.append(
            [
                f"{int(r['computers']):,}",
                str(r["concurrency"]),
                f"{float(r['t_computer']):.3f}",
                f"{f['ideal']:.1f}",
                f"{float(r['wall']):.1f}",
                f"{f['ratio']:.2f}",
                f"{f['floor']:.2f}",
                f"{float(r['cpu']):.1f}",
                f"{100 * f['cpu_share']:.0f}",
                f"{float(r['lab_cpu']):.1f}",
                f"{float(r['rss']):.0f}",
                f"{r['ok']}",
                f"{float(r['load']):.1f}",
            ]
        )
    text = table(
        f"WinRM refresh against the lab with --latency {PROFILE} (0.8 s per shell, 0.1 s per "
        "other request), Basic over HTTP, one refresh per fresh exporter process",
        [
            "computers",
            "concurrency",
            "t_computer s",
            "ideal s",
            "wall s",
            "ratio",
            "floor",
            "exporter CPU s",
            "% of a core",
            "lab CPU s",
            "peak RSS MB",
            "read ok",
            "load",
        ],
        rows,
    )
    notes = [
        "ideal = computers x t_computer / concurrency; ratio = wall / ideal; t_computer = median "
        f"of {SAMPLES} single collect-certificates calls (WinRMRunner.run), nothing else running",
        "floor = the ratio latency alone allows: (t_list + max(ceil(computers / concurrency) x "
        "t_computer, t_trusted)) / ideal",
        "load = the machine's 1-minute load average right after the run (2 cores: above ~2, "
        "other work competed for them)",
    ]
    for size in sorted({int(r["computers"]) for r in runs}):
        k = knee(runs, size)
        mine = [r for r in runs if int(r["computers"]) == size]
        where = f"concurrency {k}" if k is not None else "below the concurrencies measured"
        if k is not None and k == max(int(r["concurrency"]) for r in mine):
            where = f"at or beyond concurrency {k}, the highest measured"
        notes.append(
            f"knee at {size:,} computers: {where} (ratio within {KNEE_SLACK - 1:.0%} of the "
            "floor up to there; past it exporter CPU, not latency, bounds the refresh)"
        )
    for r in runs:
        if r.get("failed"):
            reasons = ", ".join(f"{k} {v}" for k, v in sorted(r["failed"].items()))
            hosts = ", ".join(r.get("failed_hosts", []))
            notes.append(
                f"failed at {int(r['computers']):,} computers, concurrency {r['concurrency']}: "
                f"{reasons}: {hosts}"
            )
    for size in sorted({int(r["computers"]) for r in runs}):
        r = next(r for r in runs if int(r["computers"]) == size)
        notes.append(
            f"single calls at {size:,} computers: t_computer {float(r['t_computer']):.3f} s "
            f"(samples {', '.join(f'{t:.3f}' for t in r['t_computer_samples'])}), "
            f"t_list {float(r['t_list']):.2f} s, t_trusted {float(r['t_trusted']):.2f} s"
        )
    n, c, limit = TARGET
    for r in runs:
        if int(r["computers"]) == n and int(r["concurrency"]) == c:
            ratio = figures(r)["ratio"]
            verdict = "met" if ratio <= limit else "MISSED"
            notes.append(
                f"target: ratio <= {limit} at {n - 1:,} hosts, concurrency {c} -> {verdict} "
                f"({ratio:.2f})"
            )
    return text + "\n" + "\n".join(notes)


def machine() -> str:
    """The CPU model and core count, for the record."""
    model = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    return f"{model}, {os.cpu_count()} cores, Python {platform.python_version()}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--hosts", default="500,2000")
    parser.add_argument("--concurrency", default="16,64,128,256")
    parser.add_argument("--probe", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    if args.probe:
        print(json.dumps(probe(args.probe)))
        return
    sizes = [int(s) for s in args.hosts.split(",")]
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    ensure_descriptors(max(concurrencies))
    started, load_before = time.monotonic(), os.getloadavg()[0]
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    runs = measure(sizes, concurrencies)
    text = f"{when}, {machine()}\n" + report(runs)
    text += (
        f"\nthis section took {time.monotonic() - started:.0f} s on {os.cpu_count()} cores; "
        f"load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after"
    )
    print(text)
    write_result("refresh_latency", text)


if __name__ == "__main__":
    main()
