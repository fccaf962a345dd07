"""WinRM refresh scaling: one refresh of N lab computers at several concurrencies.

    .venv/bin/python -m bench.exporter_refresh [--hosts 100,1000,5000] [--concurrency 4,16,32,64]

Every (computers, concurrency) pair is measured in a fresh exporter process (so peak RSS is
that run's own) against a lab of that size running in another process, warmed by one untimed
refresh first: real pywinrm, Basic
over HTTP, the whole refresh (discovery, TrustedPeople, every computer's store). Both
processes share this machine's two cores, as they would share a small VM.

Prints wall time, exporter CPU seconds, lab CPU seconds, peak RSS of the exporter and the
cost per computer; writes ``bench/results/exporter_refresh.{txt,png}``.
Targets (this 2-core machine, lab included; docs/scaling.md): 1,000 computers in <= 30 s,
5,000 computers in <= 150 s.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections import Counter
from pathlib import Path
from typing import Any

import yaml

from bench.common import (
    cpu_seconds,
    lab_child,
    new_figure,
    peak_rss_mb,
    process_cpu_seconds,
    run_child,
    save_chart,
    table,
    write_result,
)


def one(config_path: str, concurrency: int, lab_pid: int, warm: bool = False) -> dict[str, Any]:
    """One refresh in this process (the child side); with ``warm``, after an untimed one in
    the same process, as a running exporter's refresh process refreshes again."""
    from vmm_cert_exporter.collection import Refresher
    from vmm_cert_exporter.config import load_config

    source = Path(config_path)
    data = yaml.safe_load(source.read_text())
    data["collection"]["concurrency"] = concurrency
    tuned = source.with_name(f"c{concurrency}-{source.name}")
    tuned.write_text(yaml.safe_dump(data))
    config = load_config(tuned)
    refresher = Refresher(config)
    if warm:
        refresher.refresh_once()
    lab0 = process_cpu_seconds(lab_pid)
    cpu0, t0 = cpu_seconds(), time.monotonic()
    snapshot = refresher.refresh_once()
    wall, cpu = time.monotonic() - t0, cpu_seconds() - cpu0
    return {
        "computers": len(snapshot.hosts),
        "concurrency": concurrency,
        "wall": wall,
        "cpu": cpu,
        "lab_cpu": process_cpu_seconds(lab_pid) - lab0,
        "rss": peak_rss_mb(),
        "ok": sum(1 for h in snapshot.hosts if h.last_ok),
        "failed": dict(
            Counter(h.last_error_reason or "skipped" for h in snapshot.hosts if not h.last_ok)
        ),
        "failed_hosts": [
            f"{h.computer.fqdn} ({h.last_error_reason or 'skipped'})"
            for h in snapshot.hosts
            if not h.last_ok
        ][:5],
    }


def warm_up(config_path: Path) -> None:
    """One untimed refresh in this (parent) process, so that every measured run meets a warm
    lab: otherwise the first one alone pays the lab's certificate building."""
    from vmm_cert_exporter.collection import Refresher
    from vmm_cert_exporter.config import load_config

    Refresher(load_config(config_path)).refresh_once()


def measure(sizes: list[int], concurrencies: list[int]) -> list[dict[str, Any]]:
    runs: list[dict[str, Any]] = []
    for size in sizes:
        with lab_child(size) as lab:
            warm_up(lab.config)  # the lab builds each certificate's DER on first use
            for concurrency in concurrencies:
                run = run_child(
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
                print(
                    f"  {run['computers']} computers, concurrency {concurrency}: "
                    f"{float(run['wall']):.1f} s",
                    flush=True,
                )
                runs.append(run)
    return runs


def report(runs: list[dict[str, Any]]) -> str:
    rows = []
    for r in runs:
        n = int(r["computers"])
        wall, cpu, lab = (float(r[k]) for k in ("wall", "cpu", "lab_cpu"))
        rows.append(
            [
                f"{n:,}",
                str(r["concurrency"]),
                f"{wall:.1f}",
                f"{cpu:.1f}",
                f"{lab:.1f}",
                f"{float(r['rss']):.0f}",
                f"{1000 * wall / n:.2f}",
                f"{1000 * cpu / n:.2f}",
                f"{r['ok']}",
            ]
        )
    return table(
        "WinRM refresh against the lab (Basic over HTTP, one refresh, fresh exporter process)",
        [
            "computers",
            "concurrency",
            "wall s",
            "CPU s",
            "lab CPU s",
            "peak RSS MB",
            "wall ms/computer",
            "CPU ms/computer",
            "read ok",
        ],
        rows,
    )


def chart(runs: list[dict[str, Any]]) -> None:
    figure, (by_size, by_conc) = new_figure(2)
    concurrencies = sorted({int(r["concurrency"]) for r in runs})
    sizes = sorted({int(r["computers"]) for r in runs})
    for c in concurrencies:
        pts = sorted((int(r["computers"]), float(r["wall"])) for r in runs if r["concurrency"] == c)
        by_size.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=f"conc. {c}")
    by_size.axhline(150, color="red", linestyle="--", linewidth=1, label="target 5,000 <= 150 s")
    by_size.set_xscale("log")
    by_size.set_yscale("log")
    by_size.set_xlabel("lab computers")
    by_size.set_ylabel("refresh wall time (s)")
    by_size.set_title("WinRM refresh: wall time vs fleet size")
    by_size.legend()
    for n in sizes:
        pts = sorted(
            (int(r["concurrency"]), 1000 * float(r["wall"]) / n)
            for r in runs
            if r["computers"] == n
        )
        by_conc.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=f"{n:,} computers")
    by_conc.set_xscale("log", base=2)
    by_conc.set_ylim(bottom=0)
    by_conc.set_xlabel("concurrency")
    by_conc.set_ylabel("wall ms per computer")
    by_conc.set_title("cost per computer vs concurrency")
    by_conc.legend()
    save_chart("exporter_refresh", figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--hosts", default="100,1000,5000")
    parser.add_argument("--concurrency", default="4,16,32,64")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--lab-pid", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--warm", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    if args.one:
        print(json.dumps(one(args.one, int(args.concurrency), args.lab_pid, args.warm)))
        return
    sizes = [int(s) for s in args.hosts.split(",")]
    runs = measure(sizes, [int(c) for c in args.concurrency.split(",")])
    text = report(runs)
    verdicts = []
    for n, limit in ((1000, 30.0), (5000, 150.0)):
        walls = [float(r["wall"]) for r in runs if r["computers"] in (n, n + 1)]
        if walls:
            best = min(walls)
            verdict = "met" if best <= limit else "MISSED"
            verdicts.append(
                f"target: {n:,} computers in <= {limit:.0f} s -> {verdict} ({best:.1f} s)"
            )
    text += "\n" + "\n".join(verdicts)
    print(text)
    write_result("exporter_refresh", text)
    chart(runs)


if __name__ == "__main__":
    main()
