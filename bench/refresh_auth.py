"""Refresh CPU per computer by transport: Basic, NTLM and Kerberos on the same lab, one run.

    .venv/bin/python -m bench.refresh_auth [--hosts 300] [--concurrency 16]

One lab of N computers in a child process, accepting all three (Kerberos with the computers'
keytab from a real MIT KDC started here, ``vmm_cert_lab.kdc``). Each transport's refresh runs
in a fresh exporter process (``bench.exporter_refresh --one``) after an untimed warm-up, over
plain HTTP: Basic in clear (the lab allows it), NTLM and Kerberos with WinRM message
encryption. Kerberos is measured twice: "kerberos" as a running exporter refreshes (the TGT
and the computers' service tickets already in the process's cache, which the parent process
keeps, as ``serve`` does), and "kerberos, cold" (a first refresh: kinit, then one TGS
request per computer).

Target (docs/scaling.md): Kerberos costs <= 1.5x NTLM's exporter CPU per computer.
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


def _run(config: Path, concurrency: int, lab_pid: int) -> dict[str, Any]:
    argv = ["bench.exporter_refresh", "--one", str(config)]
    return run_child([*argv, "--concurrency", str(concurrency), "--lab-pid", str(lab_pid)])


def measure(hosts: int, concurrency: int) -> list[dict[str, Any]]:
    from vmm_cert_exporter import kerberos
    from vmm_cert_exporter.collection import Refresher
    from vmm_cert_exporter.config import load_config

    runs: list[dict[str, Any]] = []
    with kerberos_lab(hosts) as (lab, realm):
        configs = {
            "basic": lab.config,
            "ntlm": _config(lab.config, "ntlm", transport="ntlm"),
            "kerberos": _config(lab.config, "kerberos", **realm.winrm("exporter")),
        }
        for name, config in configs.items():
            # warm: the lab builds every certificate once; for kerberos this process
            # logs on and keeps the cache, with every computer's service ticket
            Refresher(load_config(config)).refresh_once()
            run = _run(config, concurrency, lab.pid)
            run["transport"] = name
            runs.append(run)
            print(f"  {name}: {float(run['cpu']):.1f} s CPU", flush=True)
        kerberos.stop_all()  # a cold start: the child logs on by itself
        run = _run(configs["kerberos"], concurrency, lab.pid)
        run["transport"] = "kerberos, cold"
        runs.append(run)
        print(f"  kerberos, cold: {float(run['cpu']):.1f} s CPU", flush=True)
    return runs


def report(runs: list[dict[str, Any]], concurrency: int) -> str:
    ntlm = next(r for r in runs if r["transport"] == "ntlm")
    per_ntlm = float(ntlm["cpu"]) / int(ntlm["computers"])
    rows = []
    for r in runs:
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
        f"Refresh by transport (same lab, HTTP, concurrency {concurrency}, fresh exporter "
        "process each)",
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
    krb = next(r for r in runs if r["transport"] == "kerberos")
    ratio = float(krb["cpu"]) / int(krb["computers"]) / per_ntlm
    verdict = "met" if ratio <= TARGET else "MISSED"
    return (
        text + f"\ntarget: Kerberos <= {TARGET}x NTLM CPU per computer -> {verdict} ({ratio:.2f}x)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--hosts", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    runs = measure(args.hosts, args.concurrency)
    text = report(runs, args.concurrency)
    print(text)
    write_result("refresh_auth", text + "\n\n" + json.dumps(runs, indent=1) + "\n")


if __name__ == "__main__":
    main()
