"""Refresh CPU per computer by transport: Basic, NTLM and Kerberos on the same lab, one run.

    .venv/bin/python -m bench.refresh_auth [--hosts 300,3000] [--concurrency 16]

For each size, one lab of N computers in a child process, accepting all three (Kerberos with
the computers' keytab from a real MIT KDC started here, ``vmm_cert_lab.kdc``). Each transport's
timed refresh is the second one of a fresh exporter process (``bench.exporter_refresh --one
--warm``), over plain HTTP: Basic in clear (the lab allows it), NTLM and Kerberos with WinRM
message encryption. Kerberos is measured twice: "kerberos" as serve's refresh process refreshes
(the TGT from the ticket cache file its parent process keeps, the computers' service tickets in
its memory since its first refresh), and "kerberos, cold" (a first refresh: kinit, then one TGS
request per computer).

Target (docs/scaling.md): Kerberos costs <= 1.5x NTLM's exporter CPU per computer, at every
size (a cost per call that grew with the fleet would show as a ratio growing with N).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

import yaml

from bench.common import kerberos_lab, run_child, table, write_result

TARGET = 1.5


def _config(source: Path, name: str, **winrm: Any) -> Path:
    data = yaml.safe_load(source.read_text())
    for key, value in winrm.items():
        if value is None:
            data["winrm"].pop(key, None)
        else:
            data["winrm"][key] = value
    path = source.with_name(f"{name}-{source.name}")
    path.write_text(yaml.safe_dump(data))
    return path


def _run(config: Path, concurrency: int, lab_pid: int, warm: bool = True) -> dict[str, Any]:
    argv = ["bench.exporter_refresh", "--one", str(config)]
    argv += ["--concurrency", str(concurrency), "--lab-pid", str(lab_pid)]
    return run_child([*argv, "--warm"] if warm else argv)


def measure(hosts: int, concurrency: int) -> list[dict[str, Any]]:
    from vmm_cert_exporter import kerberos
    from vmm_cert_exporter.collection import Refresher
    from vmm_cert_exporter.config import load_config

    runs: list[dict[str, Any]] = []
    with kerberos_lab(hosts) as (lab, realm):
        # the VMM server's answers (every computer, every trusted copy) take their time on
        # two busy cores: a deadline that only a hung computer would miss
        configs = {
            "basic": _config(lab.config, "basic", timeout="120s"),
            "ntlm": _config(lab.config, "ntlm", transport="ntlm", timeout="120s"),
            "kerberos": _config(lab.config, "kerberos", timeout="120s", **realm.winrm("exporter")),
        }
        for name, config in configs.items():
            # the lab builds every certificate once; for kerberos this process logs on and
            # keeps the ticket cache file, as serve's main process does for its refresh process
            Refresher(load_config(config)).refresh_once()
            run = _run(config, concurrency, lab.pid)
            run["transport"], run["size"] = name, hosts
            runs.append(run)
            print(f"  {name}: {float(run['cpu']):.1f} s CPU", flush=True)
        kerberos.stop_all()  # a cold start: the child logs on by itself
        run = _run(configs["kerberos"], concurrency, lab.pid, warm=False)
        run["transport"], run["size"] = "kerberos, cold", hosts
        runs.append(run)
        print(f"  kerberos, cold: {float(run['cpu']):.1f} s CPU", flush=True)
    return runs


def _per_computer(runs: list[dict[str, Any]], transport: str, size: int) -> float:
    run = next(r for r in runs if r["transport"] == transport and r["size"] == size)
    return float(run["cpu"]) / int(run["computers"])


def report(runs: list[dict[str, Any]], concurrency: int) -> str:
    rows = []
    for r in runs:
        per_ntlm = _per_computer(runs, "ntlm", r["size"])
        n = int(r["computers"])
        cpu = float(r["cpu"])
        rows.append(
            [
                str(r["transport"]),
                f"{n:,}",
                f"{float(r['wall']):.1f}",
                f"{cpu:.1f}",
                f"{1000 * cpu / n:.2f}",
                f"{cpu / n / per_ntlm:.2f}",
                f"{float(r['lab_cpu']):.1f}",
                f"{r['ok']}",
            ]
        )
    text = table(
        f"Refresh by transport (one lab per size, HTTP, concurrency {concurrency}, the second "
        "refresh of a fresh exporter process each)",
        [
            "transport",
            "computers",
            "wall s",
            "CPU s",
            "CPU ms/computer",
            "x NTLM",
            "lab CPU s",
            "read ok",
        ],
        rows,
    )
    verdicts = []
    for size in sorted({int(r["size"]) for r in runs}):
        ratio = _per_computer(runs, "kerberos", size) / _per_computer(runs, "ntlm", size)
        verdict = "met" if ratio <= TARGET else "MISSED"
        verdicts.append(
            f"target: Kerberos <= {TARGET}x NTLM CPU per computer at {size:,} computers -> "
            f"{verdict} ({ratio:.2f}x)"
        )
    return text + "\n" + "\n".join(verdicts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--hosts", default="300,3000", help="lab sizes, comma-separated")
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    runs = [r for n in args.hosts.split(",") for r in measure(int(n), args.concurrency)]
    text = report(runs, args.concurrency)
    print(text)
    write_result("refresh_auth", text + "\n\n" + json.dumps(runs, indent=1) + "\n")


if __name__ == "__main__":
    main()
