"""Per-call cost of ``Session.run_ps`` against the lab: 200 sequential calls per transport.

    .venv/bin/python bench/lab_run_ps.py [--calls 200] [--transports basic,ntlm] [--tls]

Each call is a full run_ps (Create, Command, Receive, Signal, Delete) of a contract script
(``collect-certificates``) against one demo-scenario host. A new Session per call, as the
exporter makes one per collection; its TCP connection (and NTLM handshake) is therefore paid
every call too, which is the realistic cost.
"""

from __future__ import annotations

import argparse
import base64
import json
import statistics
import sys
import time
import warnings
from typing import Literal

import winrm
from winrm.protocol import Protocol

from vmm_cert_lab.fleet.runner import RunningLab, start_lab


def _script() -> str:
    blob = base64.b64encode(json.dumps({}).encode()).decode()
    return f"# vmm-cert-exporter:collect-certificates/1\n$Params = '{blob}'\n"


def _session(lab: RunningLab, host: str, transport: Literal["basic", "ntlm"]) -> winrm.Session:
    # winrm.Session drops any path but /wsman: swap in a Protocol for the per-host endpoint.
    sess = winrm.Session("127.0.0.1", auth=(lab.username, lab.account.password))
    sess.protocol = Protocol(
        lab.endpoint(host),
        transport=transport,
        username=lab.username,
        password=lab.account.password,
        read_timeout_sec=10,
        operation_timeout_sec=5,
        server_cert_validation="validate",
        ca_trust_path=str(lab.ca_path) if lab.ca_path else "legacy_requests",
    )
    return sess


def bench(
    lab: RunningLab, host: str, transport: Literal["basic", "ntlm"], calls: int
) -> list[float]:
    script = _script()
    _session(lab, host, transport).run_ps(script)  # warm-up: lazy certificate signing, imports
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        r = _session(lab, host, transport).run_ps(script)
        times.append((time.perf_counter() - start) * 1000)
        if r.status_code != 0:
            raise SystemExit(f"run_ps failed: {r.status_code} {r.std_err!r}")
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--transports", default="basic,ntlm")
    parser.add_argument("--tls", action="store_true", help="HTTPS with the lab CA")
    args = parser.parse_args()
    warnings.simplefilter("ignore", DeprecationWarning)  # pywinrm's env CA-bundle notice
    with start_lab(tls=args.tls) as lab:
        host = next(
            c["fqdn"]
            for c in lab.model.list_computers()
            if c.get("role") == "hyperv_host" and not lab.model.faults(c["fqdn"]).latency
        )
        scheme = "https" if args.tls else "http"
        print(f"lab {lab.url}, host {host}, {args.calls} sequential run_ps calls per transport")
        print(f"{'transport':<12}{'mean ms':>10}{'p50 ms':>10}{'p99 ms':>10}{'max ms':>10}")
        for name in args.transports.split(","):
            transport: Literal["basic", "ntlm"] = "ntlm" if name == "ntlm" else "basic"
            t = sorted(bench(lab, host, transport, args.calls))
            p99 = t[min(len(t) - 1, int(len(t) * 0.99))]
            print(
                f"{transport + '/' + scheme:<12}{statistics.fmean(t):>10.1f}"
                f"{statistics.median(t):>10.1f}{p99:>10.1f}{t[-1]:>10.1f}"
            )
        stats = lab.server.stats()
        print(
            f"requests served: {stats['requests_total']}, open shells: {stats['open_shells_total']}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
