"""The exporter as a user runs it: ``serve`` against the lab, scraped at Prometheus's rhythm.

    .venv/bin/python -m bench.serve_as_user [--sizes 1000,10000,50000] [--refreshes 5,5,3]
                                            [--transports basic,ntlm,kerberos] [--scrapers 10]

``make bench``'s headline. For each fleet size, a lab of that many computers runs in a child
process and ``vmm-cert-exporter serve`` in another, with a 10 s ``collection.interval``
(shorter than a refresh of 10,000 computers against the lab, so refreshes run back to back,
each ending in a new snapshot that the server receives from its refresh process and serves).
After every refresh this process renews ``--renew-share`` of the fleet through the lab's
control API, so every snapshot carries certificates that changed since the last one.

Scrapers are separate processes, as Prometheus is. ``--scrapers`` of them each scrape every
``--scrapers`` seconds over one keep-alive connection, staggered one second apart with up to
0.3 s of jitter: one scrape lands in each second, so every scrape misses the per-second
rendering of the expiry family and pays for it, as a Prometheus scraping every 15-60 s does.
Each scraper alternates gzip (what Prometheus asks for) and plain, and reads the whole body.
Scraping starts once the first refresh is served and stops after ``--refreshes`` more, so
every figure spans that many snapshot swaps.

Measured: scrape latency p50 / p90 / p99 / max per encoding; peak RSS (VmHWM) of the server
and of its refresh process, separately and summed; refresh CPU per computer (the refresh
process's CPU between two "refresh done" log lines over the computers read), per transport
(Basic, NTLM and Kerberos against a real KDC); the machine's load average. The machine
is shared: compare ratios within one run. Targets: docs/scaling.md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bench.common import (
    LabChild,
    kerberos_lab,
    lab_child,
    process_cpu_seconds,
    process_rss_mb,
    table,
    write_result,
)

# docs/scaling.md#the-exporter-as-a-user-runs-it
TARGET_SUM_RSS_MB = {10_000: 300.0, 50_000: 900.0}
TARGET_GZIP_P99_MS = {10_000: 100.0}
TARGET_GZIP_MAX_MS = {10_000: 250.0}
TARGET_PLAIN_P50_MS = {10_000: 50.0, 50_000: 250.0}
TARGET_CPU_RATIO = 1.10  # refresh CPU per computer at 10,000 against 1,000
TRANSPORTS = ("basic", "ntlm", "kerberos")
SWAP_WINDOW = 5.0  # seconds after a refresh ends that count as "at a swap"
_SERVE = [sys.executable, "-m", "vmm_cert_exporter", "serve"]

_SCRAPER = """
import json, os, random, select, socket, sys, time
port, period, first, stop = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
gz_first = sys.argv[5] == "1"
rng = random.Random(port + int(first * 1000))
def request(gz):
    return (
        b"GET /metrics HTTP/1.1\\r\\nHost: 127.0.0.1\\r\\nUser-Agent: bench-scraper\\r\\n"
        + (b"Accept-Encoding: gzip\\r\\n" if gz else b"")
        + b"Accept: text/plain;version=0.0.4\\r\\n\\r\\n"
    )
buf = bytearray(1 << 20)
sock = None
out = []
tick = first
gz = gz_first
while not os.path.exists(stop):
    # the scrape's slot: its whole second plus up to 0.3 s of jitter
    time.sleep(max(0.0, tick + rng.uniform(0.0, 0.3) - time.time()))
    if os.path.exists(stop):
        break
    if sock is not None and select.select([sock], [], [], 0)[0]:
        # the server closed the idle connection (its head deadline): a new one, as
        # Prometheus's client notices a closed idle connection before it uses it
        sock.close()
        sock = None
    began = time.time()
    t0 = time.perf_counter()
    for attempt in (1, 2):
        reused = sock is not None
        if sock is None:
            sock = socket.create_connection(("127.0.0.1", port))
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            sock.sendall(request(gz))
            head = b""
            while b"\\r\\n\\r\\n" not in head:
                chunk = sock.recv(65536)
                if not chunk:
                    raise ConnectionResetError("closed before the answer")
                head += chunk
            break
        except ConnectionError:
            # a kept-alive connection the server closed as the request left: retried once on
            # a new connection, as Go's HTTP client does (the time counts from the first try)
            sock.close()
            sock = None
            if not reused or attempt == 2:
                raise
    head, _, body = head.partition(b"\\r\\n\\r\\n")
    length = int(head.lower().split(b"content-length:")[1].split(b"\\r\\n")[0])
    got = len(body)
    view = memoryview(buf)
    while got < length:
        n = sock.recv_into(view, min(len(buf), length - got))
        if not n:
            raise SystemExit("connection closed mid-body")
        got += n
    out.append([began, time.perf_counter() - t0, gz, length])
    if b"connection: close" in head.lower():
        sock.close()
        sock = None
    gz = not gz
    tick += period
    while tick < time.time():  # a slot missed (a scrape longer than the period): skip it
        tick += period
print(json.dumps(out))
"""


@dataclass
class Run:
    """One fleet size and transport: what ``serve`` did while it was scraped."""

    hosts: int
    transport: str
    refreshes: list[dict[str, float]] = field(default_factory=list)
    scrapes: list[tuple[float, float, bool, int]] = field(default_factory=list)
    server_hwm: float = 0.0
    refresh_hwm: float = 0.0
    server_cpu: float = 0.0
    renewed: int = 0
    renew_skipped: int = 0
    swaps: list[float] = field(default_factory=list)  # wall clock of each "refresh done"
    load: str = ""
    restarts: int = 0

    @property
    def computers(self) -> int:
        return self.hosts + 1  # and the VMM server

    def cpu_ms_per_computer(self) -> float:
        per = [r["cpu"] / r["computers"] * 1000 for r in self.refreshes[1:] if r["computers"]]
        return statistics.median(per) if per else float("nan")

    def latencies(self, gz: bool) -> list[float]:
        return sorted(s[1] * 1000 for s in self.scrapes if s[2] == gz)

    def near_swap(self, gz: bool, seconds: float = SWAP_WINDOW) -> tuple[list[float], list[float]]:
        """Latencies of scrapes that began within ``seconds`` after a refresh ended (the
        snapshot swap, seen in the log up to 0.25 s late), and of the others."""
        near: list[float] = []
        far: list[float] = []
        for began, latency, gzipped, _ in self.scrapes:
            if gzipped != gz:
                continue
            close = any(0.0 <= began - swap + 0.25 <= seconds for swap in self.swaps)
            (near if close else far).append(latency * 1000)
        return sorted(near), sorted(far)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _control(base: str, method: str, path: str) -> Any:
    request = urllib.request.Request(base + path, method=method)  # noqa: S310 - our lab
    # generous: a lab of 50,000 computers busy answering a refresh lists itself slowly
    with urllib.request.urlopen(request, timeout=600) as response:  # noqa: S310 - our lab
        return json.loads(response.read())


def _renew(lab_base: str, names: list[str], run: Run) -> None:
    for fqdn in names:
        _control(lab_base, "POST", f"/lab/computers/{fqdn}/renew")
        run.renewed += 1


def _children(pid: int) -> list[int]:
    out: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                out += [int(p) for p in (task / "children").read_text().split()]
    return out


def _refresh_child(pid: int) -> int | None:
    """The refresh process among serve's children (multiprocessing's resource tracker is
    another child; the refresh process is the one whose argv names multiprocessing's spawn)."""
    for child in _children(pid):
        with contextlib.suppress(OSError):
            argv = Path(f"/proc/{child}/cmdline").read_bytes()
            if b"spawn_main" in argv:
                return child
    return None


class _Log:
    """The exporter's JSON log, read as it grows."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._pos = 0

    def new_lines(self) -> list[dict[str, Any]]:
        with self._path.open("rb") as handle:
            handle.seek(self._pos)
            chunk = handle.read()
        complete = chunk.rfind(b"\n") + 1
        self._pos += complete
        lines = []
        for raw in chunk[:complete].splitlines():
            with contextlib.suppress(ValueError):
                lines.append(json.loads(raw))
        return lines


def measure(
    hosts: int,
    transport: str,
    refreshes: int,
    scrapers: int,
    renew_share: float,
    seed: int,
    timeout: str = "60s",
) -> Run:
    run = Run(hosts=hosts, transport=transport)
    rng = random.Random(seed)
    with (
        _lab_speaking(transport, hosts, seed) as (lab, winrm),
        tempfile.TemporaryDirectory(prefix="vmm-ux-") as tmp,
    ):
        data = yaml.safe_load(lab.config.read_text())
        lab_base = data["winrm"]["endpoint"].split("/wsman/")[0]
        for key, value in winrm.items():
            if value is None:
                data["winrm"].pop(key, None)
            else:
                data["winrm"][key] = value
        # discovery lists the whole fleet in one call: ~0.1 s per 1,000 computers on a quiet
        # machine, far more on a busy one; the lab's 5 s does not hold at 50,000
        data["winrm"]["timeout"] = timeout
        data["collection"]["interval"] = "10s"
        data.pop("receiver", None)
        port = _free_port()
        data["web"] = {"listen_address": f"127.0.0.1:{port}"}
        config = Path(tmp) / "serve.yml"
        config.write_text(yaml.safe_dump(data))
        names = [c["fqdn"] for c in _control(lab_base, "GET", "/lab/computers")]
        per_refresh = max(1, round(renew_share * len(names)))
        log_path = Path(tmp) / "serve.log"
        stop = Path(tmp) / "stop-scraping"
        with log_path.open("wb") as out:
            serve = subprocess.Popen(
                [*_SERVE, "--config", str(config), "--log.format=json"],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        scraper_procs: list[subprocess.Popen[bytes]] = []
        cpu_server0 = 0.0
        renewer: threading.Thread | None = None
        try:
            log = _Log(log_path)
            child: int | None = None
            last_cpu = 0.0
            done = 0
            deadline = time.monotonic() + 3600
            while done < refreshes + 1:
                if serve.poll() is not None:
                    raise RuntimeError(f"serve exited:\n{log_path.read_text()[-3000:]}")
                if time.monotonic() > deadline:
                    raise RuntimeError("no progress within an hour")
                if child is None:
                    child = _refresh_child(serve.pid)
                if child is not None:
                    with contextlib.suppress(OSError):
                        run.refresh_hwm = max(run.refresh_hwm, process_rss_mb(child, "VmHWM"))
                with contextlib.suppress(OSError):
                    run.server_hwm = process_rss_mb(serve.pid, "VmHWM")
                for line in log.new_lines():
                    if line.get("msg") == "refresh process ended unexpectedly; starting another":
                        run.restarts += 1
                        child = None
                    if line.get("msg") != "refresh done":
                        continue
                    cpu = process_cpu_seconds(child) if child is not None else 0.0
                    run.refreshes.append(
                        {
                            "seconds": float(line["duration_seconds"]),
                            "computers": float(line["computers"]),
                            "failed": float(line["failed"]),
                            "cpu": cpu - last_cpu,
                        }
                    )
                    last_cpu = cpu
                    run.swaps.append(time.time())
                    done += 1
                    # the next snapshot's certificates differ: renew a slice of the fleet
                    renewing = rng.sample(names, per_refresh)
                    if renewer is not None and renewer.is_alive():
                        run.renew_skipped += 1  # the lab is still renewing the last slice
                    else:
                        # beside this loop, which keeps sampling memory meanwhile
                        renewer = threading.Thread(
                            target=_renew, args=(lab_base, renewing, run), daemon=True
                        )
                        renewer.start()
                    if done == 1:  # the first snapshot is being served: start scraping
                        time.sleep(2.0)
                        scraper_procs = _start_scrapers(port, scrapers, stop)
                        cpu_server0 = process_cpu_seconds(serve.pid)
                time.sleep(0.25)
            run.server_cpu = process_cpu_seconds(serve.pid) - cpu_server0
            run.load = _load()
        finally:
            stop.touch()
            if renewer is not None:
                renewer.join(timeout=120)
            for proc in scraper_procs:
                with contextlib.suppress(subprocess.TimeoutExpired, ValueError):
                    output, _ = proc.communicate(timeout=120)
                    run.scrapes += [tuple(s) for s in json.loads(output or b"[]")]
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
            if child is not None:
                with contextlib.suppress(OSError):
                    run.refresh_hwm = max(run.refresh_hwm, process_rss_mb(child, "VmHWM"))
            with contextlib.suppress(OSError):
                run.server_hwm = process_rss_mb(serve.pid, "VmHWM")
            serve.send_signal(signal.SIGTERM)
            try:
                serve.wait(timeout=60)
            except subprocess.TimeoutExpired:
                serve.kill()
                serve.wait()
    return run


@contextlib.contextmanager
def _lab_speaking(
    transport: str, hosts: int, seed: int
) -> Iterator[tuple[LabChild, dict[str, str | None]]]:
    """The lab, and the ``winrm`` keys that make ``serve`` log on with ``transport``. For
    Kerberos: a real KDC (``vmm_cert_lab.kdc``) with every computer's service principal, the
    lab accepting with their keytab, ``serve`` logging on with the exporter's keytab; the
    realm's ``KRB5_CONFIG`` reaches ``serve`` through this process's environment."""
    if transport != "kerberos":
        with lab_child(hosts, seed=seed) as lab:
            yield lab, {"transport": transport}
        return
    with kerberos_lab(hosts, seed=seed) as (lab, realm):
        yield lab, realm.winrm("exporter")


def _start_scrapers(port: int, count: int, stop: Path) -> list[subprocess.Popen[bytes]]:
    first = float(int(time.time()) + 2)  # every scraper started and waiting
    scraper = [sys.executable, "-c", _SCRAPER, str(port)]
    return [
        subprocess.Popen(
            [*scraper, str(float(count)), repr(first + i), str(stop), "1" if i % 2 == 0 else "0"],
            stdout=subprocess.PIPE,
        )
        for i in range(count)
    ]


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    return values[min(len(values) - 1, int(q * len(values)))]


def _load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def report(runs: list[Run], scrapers: int, renew_share: float) -> str:
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    head = (
        f"{now}, {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}"
    )
    rows = []
    for r in runs:
        if r.transport != "basic":
            continue
        for gz in (True, False):
            lat = r.latencies(gz)
            rows.append(
                [
                    f"{r.computers:,}",
                    str(len(r.refreshes) - 1),
                    f"{statistics.median([x['seconds'] for x in r.refreshes]):.1f}",
                    "gzip" if gz else "plain",
                    str(len(lat)),
                    f"{_pct(lat, 0.5):.1f}",
                    f"{_pct(lat, 0.9):.1f}",
                    f"{_pct(lat, 0.99):.1f}",
                    f"{(lat[-1] if lat else float('nan')):.1f}",
                    f"{r.server_hwm:.0f}",
                    f"{r.refresh_hwm:.0f}",
                    f"{r.server_hwm + r.refresh_hwm:.0f}",
                    r.load,
                ]
            )
    lines = [
        head,
        table(
            "serve against the lab, scraped as Prometheus does (one scrape per second, "
            f"{scrapers} scrapers staggered, alternating gzip and plain), a new snapshot "
            f"every refresh with {renew_share:.0%} of the certificates renewed",
            [
                "computers",
                "swaps",
                "refresh s",
                "encoding",
                "scrapes",
                "p50 ms",
                "p90 ms",
                "p99 ms",
                "max ms",
                "server MB",
                "refresh proc MB",
                "sum MB",
                "load 1/5/15",
            ],
            rows,
        ),
        "swaps: snapshots received and served while scraped; MB: peak RSS (VmHWM) over the run",
    ]
    for r in runs:
        if r.transport != "basic":
            continue
        for gz in (True, False):
            near, far = r.near_swap(gz)
            lines.append(
                f"{r.computers:,} {'gzip' if gz else 'plain'}: within {SWAP_WINDOW:g} s after a "
                f"swap {len(near)} scrapes, p99 {_pct(near, 0.99):.1f} / max "
                f"{(near[-1] if near else float('nan')):.1f} ms; elsewhere {len(far)}, p99 "
                f"{_pct(far, 0.99):.1f} / max {(far[-1] if far else float('nan')):.1f} ms"
            )
    lines.append("")
    sizes = sorted({r.hosts for r in runs})
    cpu_rows = []
    for hosts in sizes:
        cells = [f"{hosts + 1:,}"]
        for transport in TRANSPORTS:
            match = [r for r in runs if r.hosts == hosts and r.transport == transport]
            if match:
                cells.append(f"{match[0].cpu_ms_per_computer():.2f}")
            else:
                cells.append("-")
        basic = [r for r in runs if r.hosts == hosts and r.transport == "basic"]
        cells.append(
            f"{basic[0].server_cpu / max(1, len(basic[0].refreshes) - 1):.1f}" if basic else "-"
        )
        cpu_rows.append(cells)
    lines.append(
        table(
            "refresh CPU per computer (ms; the refresh process, median over the refreshes after "
            "the first), WinRM over HTTP",
            ["computers", "Basic", "NTLM", "Kerberos", "server CPU s per refresh"],
            cpu_rows,
        )
    )
    lines.append(
        "Kerberos: a real MIT KDC (vmm_cert_lab.kdc), keytab logon, HTTP with WinRM message "
        "encryption, tickets reused from the cache between refreshes as serve does"
    )
    lines += verdicts(runs)
    return "\n".join(lines)


def verdicts(runs: list[Run]) -> list[str]:
    out = []
    basic = {r.hosts + 1: r for r in runs if r.transport == "basic"}

    def at(size: int) -> Run | None:
        return next((r for c, r in basic.items() if abs(c - size) <= 1), None)

    def line(name: str, value: float, target: float, unit: str) -> str:
        verdict = "met" if value <= target else "MISSED"
        return f"target: {name} <= {target:g} {unit} -> {verdict} ({value:.1f} {unit})"

    for size, target in TARGET_SUM_RSS_MB.items():
        r = at(size)
        if r:
            out.append(
                line(
                    f"summed peak RSS at {size:,} (server {r.server_hwm:.0f} + refresh process "
                    f"{r.refresh_hwm:.0f})",
                    r.server_hwm + r.refresh_hwm,
                    target,
                    "MB",
                )
            )
    for size, target in TARGET_GZIP_P99_MS.items():
        r = at(size)
        if r:
            out.append(line(f"gzip p99 at {size:,}", _pct(r.latencies(True), 0.99), target, "ms"))
    for size, target in TARGET_GZIP_MAX_MS.items():
        r = at(size)
        if r:
            lat = r.latencies(True)
            out.append(
                line(f"gzip max at {size:,}", lat[-1] if lat else float("nan"), target, "ms")
            )
    for size, target in TARGET_PLAIN_P50_MS.items():
        r = at(size)
        if r:
            out.append(line(f"plain p50 at {size:,}", _pct(r.latencies(False), 0.5), target, "ms"))
    small, large = at(1_000), at(10_000)
    if small and large:
        ratio = large.cpu_ms_per_computer() / small.cpu_ms_per_computer()
        verdict = "met" if ratio <= TARGET_CPU_RATIO else "MISSED"
        out.append(
            f"target: refresh CPU per computer at 10,000 within 10 % of 1,000's -> {verdict} "
            f"({large.cpu_ms_per_computer():.2f} against {small.cpu_ms_per_computer():.2f} ms, "
            f"x{ratio:.2f})"
        )
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000,10000,50000")
    parser.add_argument("--refreshes", default="5,5,3", help="swaps measured, per size")
    parser.add_argument("--transports", default="basic,ntlm,kerberos")
    parser.add_argument(
        "--ntlm-sizes", default="1000,10000", help="sizes the other transports run at"
    )
    parser.add_argument(
        "--other-refreshes", type=int, default=2, help="swaps measured for NTLM and Kerberos"
    )
    parser.add_argument("--scrapers", type=int, default=10)
    parser.add_argument("--renew-share", type=float, default=0.01)
    parser.add_argument("--timeout", default="60s", help="winrm.timeout")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--name", default="serve_as_user", help="bench/results/<name>.txt")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    counts = [int(c) for c in args.refreshes.split(",")]
    counts += [counts[-1]] * (len(sizes) - len(counts))
    other_sizes = {int(s) for s in args.ntlm_sizes.split(",") if s}
    runs: list[Run] = []
    for hosts, refreshes in zip(sizes, counts, strict=False):
        for transport in args.transports.split(","):
            if transport != "basic" and hosts not in other_sizes:
                continue
            began = time.monotonic()
            count = refreshes if transport == "basic" else args.other_refreshes
            run = measure(
                hosts, transport, count, args.scrapers, args.renew_share, args.seed, args.timeout
            )
            runs.append(run)
            print(
                f"{hosts:,} computers, {transport}: {len(run.refreshes)} refreshes, "
                f"{len(run.scrapes)} scrapes, server {run.server_hwm:.0f} MB + refresh process "
                f"{run.refresh_hwm:.0f} MB, {run.cpu_ms_per_computer():.2f} ms CPU per "
                f"computer, {run.renewed} certificates renewed ({run.renew_skipped} slices "
                f"skipped: the lab busy), {time.monotonic() - began:.0f} s, load {_load()}",
                flush=True,
            )
    text = report(runs, args.scrapers, args.renew_share)
    print(text, flush=True)
    write_result(args.name, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
