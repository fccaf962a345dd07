"""Side by side with the real prometheus-blackbox-exporter on the same lab TLS endpoints.

    .venv/bin/python -m bench.tls_race [--endpoints 500] [--concurrency 32] [--rounds 6]

The lab (a child process) presents every computer's certificate on one port, chosen by SNI.
On the same endpoints, in one run, alternating round by round (blackbox first in odd rounds,
the exporter first in even ones):

- **blackbox_exporter** (the Debian package, started once and kept warm) probes each through
  ``/probe`` with a tcp module (``tls: true``, ``insecure_skip_verify: true``). Go's TLS
  client sends the module's ``server_name`` as SNI and blackbox has no per-target SNI
  parameter, so every endpoint gets its own module (as one would for hosts behind one
  address). The client is ``curl --parallel --parallel-max 32`` (C, keep-alive), so that the
  client's cost is not blackbox's; without curl, 32 Python threads.
- **the exporter's TLS refresh**: ``Refresher.refresh_once()`` over a configuration of the
  same endpoints as ``method: tls`` hosts at ``collection.concurrency`` 32, in a fresh
  process per round (only the refresh is timed).

A warm-up pass (not counted) first lets the lab build each certificate and TLS context once.
Reported per round and as medians: wall seconds, CPU seconds of blackbox (and of its client)
and of the exporter process, the lab's CPU seconds, and the ratios. Finally a cross-check:
both must report the same NotAfter for every endpoint that presents its SCVMM certificate
(blackbox's ``probe_ssl_earliest_cert_expiry``); endpoints that present another certificate
are listed (the exporter says ``vmm_cert_present 0``; blackbox cannot tell).
Target (docs/scaling.md): the exporter's wall time <= blackbox's. Writes
``bench/results/tls_race.{txt,png}``.
"""

from __future__ import annotations

import argparse
import http.client
import json
import logging
import re
import shutil
import socket
import statistics
import subprocess
import tempfile
import threading
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml

from bench.common import (
    cpu_seconds,
    lab_child,
    new_figure,
    process_cpu_seconds,
    run_child,
    save_chart,
    table,
    write_result,
)

BLACKBOX = "prometheus-blackbox-exporter"
_EXPIRY = re.compile(rb"^probe_ssl_earliest_cert_expiry ([0-9.e+]+)$", re.MULTILINE)
_SUCCESS = re.compile(rb"^probe_success ([01])$", re.MULTILINE)


def lab_endpoints(config: Path, count: int) -> list[str]:
    """The first ``count`` managed computers of the lab (the VMM server left out)."""
    import urllib.request

    data = yaml.safe_load(config.read_text())
    endpoint = str(data["winrm"]["endpoint"])
    base = endpoint.split("/wsman/")[0]
    with urllib.request.urlopen(f"{base}/lab/computers", timeout=30) as answer:  # noqa: S310
        computers = json.load(answer)
    names = sorted(c["fqdn"] for c in computers if c["role"] != "vmm_server")
    if len(names) < count:
        raise RuntimeError(f"the lab has {len(names)} computers, {count} wanted")
    return names[:count]


def module_name(fqdn: str) -> str:
    return "tls_" + re.sub(r"[^a-z0-9]", "_", fqdn.lower())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Blackbox:
    """prometheus-blackbox-exporter on 127.0.0.1 with one tcp+TLS module per endpoint."""

    def __init__(self, directory: Path, names: list[str], target: str) -> None:
        binary = shutil.which(BLACKBOX)
        if binary is None:
            raise RuntimeError(f"{BLACKBOX} is not installed (make bench installs it)")
        modules = {
            module_name(n): {
                "prober": "tcp",
                "timeout": "10s",
                "tcp": {
                    "tls": True,
                    "preferred_ip_protocol": "ip4",
                    "tls_config": {"insecure_skip_verify": True, "server_name": n},
                },
            }
            for n in names
        }
        config = directory / "blackbox.yml"
        config.write_text(yaml.safe_dump({"modules": modules}))
        self.port = free_port()
        self.target = target
        self.names = names
        self.log = (directory / "blackbox.log").open("wb")
        self.proc = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=error",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("blackbox_exporter did not start") from None
                time.sleep(0.1)

    def url(self, name: str) -> str:
        query = urllib.parse.urlencode({"module": module_name(name), "target": self.target})
        return f"http://127.0.0.1:{self.port}/probe?{query}"

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def blackbox_round(box: Blackbox, concurrency: int, directory: Path) -> dict[str, Any]:
    """Every endpoint probed once through /probe; returns timings and each NotAfter."""
    cpu0 = process_cpu_seconds(box.proc.pid)
    out = directory / "probes"
    out.mkdir(exist_ok=True)
    curl = shutil.which("curl")
    spec = directory / "curl.cfg"
    spec.write_text(
        "".join(f'url = "{box.url(n)}"\noutput = "{out / module_name(n)}"\n' for n in box.names)
    )
    t0 = time.monotonic()
    if curl is not None:
        _children_cpu()  # only curl's own CPU below (not an earlier exporter round's)
        parallel = ["--parallel", "--parallel-max", str(concurrency)]
        subprocess.run(
            [curl, "-s", "--no-progress-meter", *parallel, "--config", str(spec)],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        wall = time.monotonic() - t0
        bodies = {n: (out / module_name(n)).read_bytes() for n in box.names}
        client = "curl --parallel"
        client_cpu = _children_cpu()
    else:
        local = threading.local()
        bodies = {}

        def fetch(name: str) -> None:
            conn = getattr(local, "conn", None)
            if conn is None:
                conn = local.conn = http.client.HTTPConnection("127.0.0.1", box.port, timeout=60)
            conn.request("GET", box.url(name).split(str(box.port), 1)[1])
            bodies[name] = conn.getresponse().read()

        c0 = cpu_seconds()
        with ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(fetch, box.names))
        wall = time.monotonic() - t0
        client = "python threads"
        client_cpu = cpu_seconds() - c0
    cpu = process_cpu_seconds(box.proc.pid) - cpu0
    not_after: dict[str, float] = {}
    failed = 0
    for name, body in bodies.items():
        success = _SUCCESS.search(body)
        expiry = _EXPIRY.search(body)
        if success is None or success.group(1) != b"1" or expiry is None:
            failed += 1
            continue
        not_after[name] = float(expiry.group(1))
    return {
        "wall": wall,
        "cpu": cpu,
        "client_cpu": client_cpu,
        "client": client,
        "failed": failed,
        "not_after": not_after,
    }


_CHILD_CPU = [0.0]


def _children_cpu() -> float:
    """CPU of finished children since the last call (curl's own cost)."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    total = usage.ru_utime + usage.ru_stime
    delta, _CHILD_CPU[0] = total - _CHILD_CPU[0], total
    return delta


def exporter_config(directory: Path, names: list[str], address: tuple[str, int], conc: int) -> Path:
    path = directory / "tls-exporter.yml"
    path.write_text(
        yaml.safe_dump(
            {
                # the winrm section is required; kerberos needs no password and is never used
                "winrm": {"transport": "kerberos"},
                "hosts": [{"host": n, "method": "tls"} for n in names],
                "collection": {"concurrency": conc},
                "tls": {"address": address[0], "port": address[1], "timeout": "10s"},
            },
            sort_keys=False,
        )
    )
    return path


def exporter_round(config: str) -> dict[str, Any]:
    """The child side: one TLS refresh of the configured endpoints."""
    from vmm_cert_exporter.collection import Refresher
    from vmm_cert_exporter.config import load_config

    refresher = Refresher(load_config(config))
    cpu0, t0 = cpu_seconds(), time.monotonic()
    snapshot = refresher.refresh_once()
    wall, cpu = time.monotonic() - t0, cpu_seconds() - cpu0
    not_after = {
        h.computer.fqdn: h.current.info.not_after.timestamp()
        for h in snapshot.hosts
        if h.current is not None
    }
    return {
        "wall": wall,
        "cpu": cpu,
        "failed": sum(1 for h in snapshot.hosts if not h.last_ok),
        "not_present": sorted(h.computer.fqdn for h in snapshot.hosts if h.present is False),
        "not_after": not_after,
    }


def race(endpoints: int, concurrency: int, rounds: int) -> dict[str, Any]:
    with lab_child(endpoints) as lab, tempfile.TemporaryDirectory(prefix="tls-race-") as tmp:
        directory = Path(tmp)
        names = lab_endpoints(lab.config, endpoints)
        host, port = lab.tls_address
        config = exporter_config(directory, names, (host, port), concurrency)
        box = Blackbox(directory, names, f"{host}:{port}")
        try:
            _children_cpu()
            blackbox_round(box, concurrency, directory)  # warm-up: not counted
            _children_cpu()
            results: dict[str, list[dict[str, Any]]] = {"blackbox": [], "exporter": []}
            for r in range(rounds):
                # ABBA: who goes first alternates too, so that order effects cancel out
                order = ("blackbox", "exporter") if r % 2 == 0 else ("exporter", "blackbox")
                for side in order:
                    lab0 = process_cpu_seconds(lab.pid)
                    if side == "blackbox":
                        result = blackbox_round(box, concurrency, directory)
                    else:
                        result = run_child(["bench.tls_race", "--exporter-round", str(config)])
                    result["lab_cpu"] = process_cpu_seconds(lab.pid) - lab0
                    results[side].append(result)
                    print(
                        f"  round {r + 1} {side}: {result['wall']:.2f} s wall, "
                        f"{result['cpu']:.2f} s CPU",
                        flush=True,
                    )
        finally:
            box.stop()
    return {"endpoints": endpoints, "concurrency": concurrency, "results": results}


def cross_check(data: dict[str, Any]) -> list[str]:
    box = data["results"]["blackbox"][-1]
    exp = data["results"]["exporter"][-1]
    same = differ = 0
    lines = []
    for name, after in sorted(exp["not_after"].items()):
        theirs = box["not_after"].get(name)
        if theirs is not None and abs(theirs - after) < 1.0:
            same += 1
        else:
            differ += 1
            lines.append(f"  DIFFERENT {name}: exporter {after:.0f}, blackbox {theirs}")
    others = exp["not_present"]
    lines.insert(
        0,
        f"cross-check: same NotAfter for {same} of {len(exp['not_after'])} endpoints presenting "
        f"their SCVMM certificate; {differ} different; "
        f"blackbox failures {box['failed']}, exporter failures {exp['failed']}",
    )
    if others:
        shown = ", ".join(
            f"{n} (blackbox NotAfter {box['not_after'].get(n, float('nan')):.0f})" for n in others
        )
        lines.append(
            f"  {len(others)} endpoints present another certificate (exporter: "
            f"vmm_cert_present 0, no NotAfter; blackbox reports that certificate): {shown}"
        )
    return lines


def report(data: dict[str, Any]) -> str:
    rows = []
    res = data["results"]
    for r, (b, e) in enumerate(zip(res["blackbox"], res["exporter"], strict=True)):
        rows.append(
            [
                str(r + 1),
                f"{b['wall']:.2f}",
                f"{b['cpu']:.2f}",
                f"{b['client_cpu']:.2f}",
                f"{b['lab_cpu']:.2f}",
                f"{e['wall']:.2f}",
                f"{e['cpu']:.2f}",
                f"{e['lab_cpu']:.2f}",
                f"{e['wall'] / b['wall']:.2f}",
            ]
        )
    med = {
        side: {k: statistics.median(x[k] for x in res[side]) for k in ("wall", "cpu", "lab_cpu")}
        for side in ("blackbox", "exporter")
    }
    rows.append(
        [
            "median",
            f"{med['blackbox']['wall']:.2f}",
            f"{med['blackbox']['cpu']:.2f}",
            f"{statistics.median(x['client_cpu'] for x in res['blackbox']):.2f}",
            f"{med['blackbox']['lab_cpu']:.2f}",
            f"{med['exporter']['wall']:.2f}",
            f"{med['exporter']['cpu']:.2f}",
            f"{med['exporter']['lab_cpu']:.2f}",
            f"{med['exporter']['wall'] / med['blackbox']['wall']:.2f}",
        ]
    )
    client = res["blackbox"][0]["client"]
    text = table(
        f"{data['endpoints']} lab TLS endpoints, concurrency {data['concurrency']}, alternating "
        f"rounds (blackbox client: {client})",
        [
            "round",
            "blackbox wall s",
            "blackbox CPU s",
            "client CPU s",
            "lab CPU s",
            "exporter wall s",
            "exporter CPU s",
            "lab CPU s",
            "wall ratio exp/bb",
        ],
        rows,
    )
    ratio = med["exporter"]["wall"] / med["blackbox"]["wall"]
    cpu_ratio = med["exporter"]["cpu"] / max(1e-9, med["blackbox"]["cpu"])
    verdict = "met" if ratio <= 1.0 else "MISSED"
    text += (
        f"\nCPU ratio exporter/blackbox (medians): {cpu_ratio:.2f}"
        f"\ntarget: exporter TLS refresh wall <= blackbox's -> {verdict} (ratio {ratio:.2f})\n"
    )
    return text + "\n".join(cross_check(data))


def chart(data: dict[str, Any]) -> None:
    figure, (wall, cpu) = new_figure(2, width=5.0)
    res = data["results"]
    rounds = range(1, len(res["blackbox"]) + 1)
    width = 0.38
    for offset, side, colour in (
        (-width / 2, "blackbox", "tab:gray"),
        (width / 2, "exporter", "tab:green"),
    ):
        xs = [r + offset for r in rounds]
        wall.bar(xs, [x["wall"] for x in res[side]], width, color=colour, label=side)
        cpu.bar(xs, [x["cpu"] for x in res[side]], width, color=colour, label=side)
    for axes, what in ((wall, "wall seconds"), (cpu, "CPU seconds (prober process)")):
        axes.set_xticks(list(rounds))
        axes.set_xlabel("round (alternating)")
        axes.set_ylabel(what)
        axes.legend()
    wall.set_title(f"{data['endpoints']} TLS endpoints, concurrency {data['concurrency']}")
    cpu.set_title("prober CPU per round")
    save_chart("tls_race", figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--endpoints", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--exporter-round", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    if args.exporter_round:
        print(json.dumps(exporter_round(args.exporter_round)))
        return
    data = race(args.endpoints, args.concurrency, args.rounds)
    text = report(data)
    print(text)
    write_result("tls_race", text)
    chart(data)


if __name__ == "__main__":
    main()
