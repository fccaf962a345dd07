"""Soak: the exporter against a large lab fleet with faults that change every refresh.

    .venv/bin/python -m bench.soak [--minutes 30] [--hosts 2000] [--interval 10s]
                                   [--renew-share 0.01] [--name soak]

The committed 10,000-computer soak (bench/results/soak_10k.txt) is
``.venv/bin/python -m bench.soak --hosts 10000 --minutes 30 --name soak_10k``.

Not part of ``make test``. A lab of ``--hosts`` computers runs in one child process, the
exporter (``vmm-cert-exporter serve``) in another; this process changes faults through the
lab's control API after every refresh, scrapes ``/metrics`` every ``--scrape`` seconds and
samples the exporter's memory and threads from /proc (the server and its refresh process,
summed). At the end it stops the exporter with
SIGTERM and prints:

- peak RSS growth after the first five minutes (target < 10 %), and RSS over time;
- thread count over time (target: flat);
- refreshes: count, durations, overlaps (target 0), stalls (target 0), crashes;
- scrapes: count, latency, and every healthy computer present in every scrape (target: all);
- shells left open in the lab after the exporter exited, on computers never given a fault
  (target 0; on a faulted computer the fault may also have swallowed the Delete);
- the exit: status and seconds after SIGTERM.

Healthy computers: half of the fleet is never given a fault (the control half) and has a
certificate; each of them must be in every scrape after the first refresh, with
``vmm_cert_collect_success`` 1. The other half draws faults: each refresh ``--fault-share``
of the fleet gets one of the lab's faults, and last refresh's are cleared; ``--renew-share`` of
the fleet (either half) has its certificate renewed through the lab's control API, so that
every snapshot carries certificates that changed since the last one. A fault is only
switched on for a computer that holds no open shell at that moment, so a host never turns
unreachable in the middle of a call (no client can close a shell on a host that stopped
answering; Windows reclaims those after its idle timeout).
"""

from __future__ import annotations

import argparse
import calendar
import contextlib
import gzip
import json
import os
import random
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bench.common import lab_process, table, write_result
from vmm_cert_exporter.durations import parse_duration

# The lab's faults, with the settings the soak uses. drip is left out: a Create answered
# one byte at a time past the deadline leaves a shell whose id never reached the client.
FAULTS: list[dict[str, Any]] = [
    {"connection_refused": True},
    {"http_401": True},
    {"access_denied": True},
    {"tls_error": True},
    {"black_hole": True},
    {"receive_timeout": True},
    {"latency": 0.3},
    {"garbage_stdout": True},
    {"script_error": True},
    {"progress_only_stderr": True},
]
WARMUP = 300.0  # seconds: peak RSS is compared with its value at this point


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _proc_status(pid: int) -> dict[str, int]:
    """Memory and threads of the exporter: the server and its refresh process, summed
    (``server_hwm``: the server's own)."""
    out = {"VmRSS": 0, "VmHWM": 0, "Threads": 0}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                out["server_hwm"] = int(line.split()[1])
    pids = [pid]
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            pids += [int(p) for p in (task / "children").read_text().split()]
    for one in pids:
        with contextlib.suppress(OSError):  # a child that just exited
            for line in Path(f"/proc/{one}/status").read_text().splitlines():
                key, _, value = line.partition(":")
                if key in out:
                    out[key] += int(value.split()[0])
    return out


def _control(base: str, method: str, path: str, body: Any = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(base + path, data=data, method=method)  # noqa: S310
    with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 - our lab
        return json.loads(response.read())


@dataclass
class Refresh:
    number: int
    end: float  # wall clock (epoch seconds) of the summary line
    duration: float
    computers: int
    failed: int

    @property
    def start(self) -> float:
        return self.end - self.duration


@dataclass
class Soak:
    hosts: int
    seconds: float
    interval: float
    scrape_every: float
    fault_share: float
    seed: int
    started: float = field(default_factory=time.monotonic)
    samples: list[tuple[float, int, int, int]] = field(default_factory=list)  # t, rss, hwm, thr
    server_hwm: list[int] = field(default_factory=list)  # the server's own, per sample
    refreshes_at: list[int] = field(default_factory=list)  # refreshes done, per sample
    scrape_ms: list[float] = field(default_factory=list)
    scrapes: int = 0
    scrapes_complete: int = 0  # scrapes in which every healthy computer was there and ok
    missing_events: int = 0  # (scrape, healthy computer) pairs absent or failed
    missing_examples: list[str] = field(default_factory=list)
    fault_changes: int = 0
    renewals: int = 0
    loads: list[float] = field(default_factory=list)  # the 1-minute load average, per minute
    fault_skipped_busy: int = 0
    refreshes: list[Refresh] = field(default_factory=list)
    crashes: int = 0
    exit_code: int | None = None
    exit_seconds: float | None = None
    shells_left: int | None = None
    shells_left_hosts: dict[str, int] = field(default_factory=dict)
    faulted_ever: set[str] = field(default_factory=set)  # computers given a fault at least once


def _unfaulted_shells(soak: Soak) -> list[str]:
    """Computers with a shell left open that were never given a fault."""
    return sorted(h for h in soak.shells_left_hosts if h.lower() not in soak.faulted_ever)


def run(args: argparse.Namespace) -> Soak:
    interval = parse_duration(args.interval)
    soak = Soak(
        hosts=args.hosts,
        seconds=args.minutes * 60.0,
        interval=interval,
        scrape_every=args.scrape,
        fault_share=args.fault_share,
        seed=args.seed,
    )
    rng = random.Random(args.seed)  # a reproducible soak, not cryptography
    with (
        lab_process(args.hosts, seed=args.seed) as config_path,
        tempfile.TemporaryDirectory(prefix="vmm-soak-") as tmp,
    ):
        data = yaml.safe_load(config_path.read_text())
        lab_base = data["winrm"]["endpoint"].split("/wsman/")[0]
        data["winrm"]["timeout"] = args.timeout
        data["collection"] = {"interval": args.interval, "concurrency": args.concurrency}
        data.pop("receiver", None)
        port = _free_port()
        data["web"] = {"listen_address": f"127.0.0.1:{port}"}
        config = Path(tmp) / "soak.yml"
        config.write_text(yaml.safe_dump(data))

        computers = _control(lab_base, "GET", "/lab/computers")
        names = sorted(c["fqdn"] for c in computers)
        rng.shuffle(names)
        half = len(names) // 2
        control, faultable = names[:half], names[half:]
        with_cert = {c["fqdn"] for c in computers if c.get("scvmm_certificates", 0) > 0}
        healthy = sorted(h for h in control if h in with_cert)
        print(
            f"lab: {len(names)} computers at {lab_base}; {len(healthy)} healthy controls, "
            f"{len(faultable)} may get faults; exporter on 127.0.0.1:{port}",
            flush=True,
        )

        log_path = Path(tmp) / "exporter.log"
        with log_path.open("wb") as log_file:
            exporter = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "vmm_cert_exporter",
                    "serve",
                    "--config",
                    str(config),
                    "--log.format=json",
                ],
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        try:
            _drive(soak, rng, exporter, port, lab_base, log_path, faultable, set(healthy), args)
        finally:
            if exporter.poll() is None:
                began = time.monotonic()
                exporter.send_signal(signal.SIGTERM)
                try:
                    soak.exit_code = exporter.wait(timeout=parse_duration(args.timeout) + 30)
                except subprocess.TimeoutExpired:
                    exporter.kill()
                    soak.exit_code = exporter.wait()
                soak.exit_seconds = time.monotonic() - began
            _read_log(soak, log_path)
            # every fault off, then count the shells nobody closed
            for fqdn in faultable:
                _control(lab_base, "PUT", f"/lab/computers/{fqdn}/faults", {})
            time.sleep(1.0)
            stats = _control(lab_base, "GET", "/lab/stats")
            soak.shells_left = int(stats["open_shells_total"])
            soak.shells_left_hosts = dict(stats["open_shells"])
            tail = log_path.read_text(errors="replace").splitlines()[-5:]
            print("exporter log tail:\n  " + "\n  ".join(tail), flush=True)
    return soak


_SUCCESS = re.compile(r'^vmm_cert_collect_success\{host="([^"]+)"[^}]*\} (\S+)$', re.M)
_EXPIRY = re.compile(r'^vmm_cert_expiry_seconds\{host="([^"]+)"', re.M)


def _drive(
    soak: Soak,
    rng: random.Random,
    exporter: subprocess.Popen[bytes],
    port: int,
    lab_base: str,
    log_path: Path,
    faultable: list[str],
    healthy: set[str],
    args: argparse.Namespace,
) -> None:
    metrics = f"http://127.0.0.1:{port}/metrics"
    faulted: list[str] = []
    seen_refreshes = 0
    next_scrape = time.monotonic()
    next_report = time.monotonic() + 60
    ready = False
    per_refresh = max(1, round(soak.fault_share * soak.hosts))
    per_renewal = round(args.renew_share * soak.hosts)
    names = [*faultable, *healthy]
    while time.monotonic() - soak.started < soak.seconds:
        if exporter.poll() is not None:
            raise RuntimeError(f"the exporter exited ({exporter.returncode}); see its log")
        now = time.monotonic()
        status = _proc_status(exporter.pid)
        if ready:  # from the first refresh on: start-up is not part of the figures
            soak.samples.append(
                (now - soak.started, status["VmRSS"], status["VmHWM"], status["Threads"])
            )
            soak.server_hwm.append(status.get("server_hwm", 0))
            soak.refreshes_at.append(len(soak.refreshes))
        # a refresh ended: new faults for the next one
        _read_log(soak, log_path)
        if len(soak.refreshes) > seen_refreshes:
            seen_refreshes = len(soak.refreshes)
            ready = True
            busy = set(_control(lab_base, "GET", "/lab/stats")["open_shells"])
            for fqdn in faulted:
                _control(lab_base, "PUT", f"/lab/computers/{fqdn}/faults", {})
            faulted = []
            for fqdn in rng.sample(names, min(per_renewal, len(names))):
                _control(lab_base, "POST", f"/lab/computers/{fqdn}/renew")
                soak.renewals += 1
            for fqdn in rng.sample(faultable, min(per_refresh, len(faultable))):
                if fqdn.lower() in busy:
                    soak.fault_skipped_busy += 1
                    continue
                _control(lab_base, "PUT", f"/lab/computers/{fqdn}/faults", rng.choice(FAULTS))
                faulted.append(fqdn)
                soak.faulted_ever.add(fqdn.lower())
                soak.fault_changes += 1
        if now >= next_scrape:
            next_scrape = now + soak.scrape_every
            if ready:
                _scrape(soak, metrics, healthy)
        if now >= next_report:
            next_report = now + 60
            soak.loads.append(os.getloadavg()[0])
            last = soak.refreshes[-1] if soak.refreshes else None
            print(
                f"{(now - soak.started) / 60:5.1f} min: rss {status['VmRSS'] / 1024:.0f} MB "
                f"(peak {status['VmHWM'] / 1024:.0f}), threads {status['Threads']}, "
                f"refreshes {len(soak.refreshes)}"
                + (f" (last {last.duration:.1f} s, {last.failed} failed)" if last else "")
                + f", scrapes {soak.scrapes} ({soak.scrapes_complete} complete)",
                flush=True,
            )
        time.sleep(0.5)


def _scrape(soak: Soak, url: str, healthy: set[str]) -> None:
    began = time.monotonic()
    # gzip, as Prometheus asks: the latency is the exporter's, not this process's decoding
    request = urllib.request.Request(url, headers={"Accept-Encoding": "gzip"})  # noqa: S310
    with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 - our exporter
        body = response.read()
    soak.scrape_ms.append((time.monotonic() - began) * 1000)
    text = gzip.decompress(body).decode()
    soak.scrapes += 1
    ok = {host for host, value in _SUCCESS.findall(text) if float(value) == 1.0}
    present = set(_EXPIRY.findall(text))
    missing = [h for h in healthy if h not in ok or h not in present]
    if missing:
        soak.missing_events += len(missing)
        if len(soak.missing_examples) < 10:
            soak.missing_examples.append(f"scrape {soak.scrapes}: {sorted(missing)[:5]}")
    else:
        soak.scrapes_complete += 1


_LOG_POS: dict[str, int] = {}


def _read_log(soak: Soak, path: Path) -> None:
    """New JSON lines of the exporter's log: refresh summaries and crashes."""
    key = str(path)
    with path.open("rb") as handle:
        handle.seek(_LOG_POS.get(key, 0))
        chunk = handle.read()
    complete = chunk.rfind(b"\n") + 1
    _LOG_POS[key] = _LOG_POS.get(key, 0) + complete
    for raw in chunk[:complete].splitlines():
        try:
            line = json.loads(raw)
        except ValueError:
            continue
        if line.get("msg") == "refresh done":
            # "2026-11-28T16:17:12.357Z": UTC with milliseconds
            end = calendar.timegm(time.strptime(line["ts"][:19], "%Y-%m-%dT%H:%M:%S")) + (
                int(line["ts"][20:23]) / 1000.0
            )
            soak.refreshes.append(
                Refresh(
                    number=int(line.get("refresh", len(soak.refreshes))),
                    end=end,
                    duration=float(line["duration_seconds"]),
                    computers=int(line["computers"]),
                    failed=int(line["failed"]),
                )
            )
        elif line.get("level") == "error":
            soak.crashes += 1


def _at_warmup(soak: Soak, values: list[int]) -> int:
    before = [v for (t, *_), v in zip(soak.samples, values, strict=False) if t < WARMUP]
    return before[-1] if before else (values[0] if values else 0)


def _after_second(soak: Soak) -> str:
    """Where a refresh takes minutes (a busy machine), 5 minutes may hold one refresh only."""
    marks = [i for i, n in enumerate(soak.refreshes_at) if n >= 2]
    if not marks:
        return "fewer than 2 refreshes"
    at = soak.samples[marks[0]]
    end = soak.samples[-1]
    growth = 100.0 * (end[2] - at[2]) / at[2] if at[2] else 0.0
    return (
        f"{at[2] / 1024:.0f} MB at {at[0] / 60:.1f} min -> {end[2] / 1024:.0f} MB: {growth:+.1f} %"
    )


def report(soak: Soak) -> str:
    if not soak.samples:
        return "soak: the exporter never completed a refresh\nverdict: refresh FAILED"
    after = [s for s in soak.samples if s[0] >= WARMUP]
    before = [s for s in soak.samples if s[0] < WARMUP]
    hwm_warm = (before[-1][2] if before else soak.samples[0][2]) / 1024
    hwm_end = soak.samples[-1][2] / 1024
    growth = 100.0 * (hwm_end - hwm_warm) / hwm_warm if hwm_warm else 0.0
    threads_warm = [s[3] for s in before] or [s[3] for s in soak.samples]
    threads_after = [s[3] for s in after] or threads_warm
    # overlaps: a refresh that started before the previous one ended (log times have ms)
    overlaps = sum(
        1
        for a, b in zip(soak.refreshes, soak.refreshes[1:], strict=False)
        if b.start < a.end - 0.05
    )
    # stalls: a refresh that began later than the interval allows (start to start), by >2 s
    gaps = [
        b.start - max(a.end, a.start + soak.interval)
        for a, b in zip(soak.refreshes, soak.refreshes[1:], strict=False)
    ]
    stalls = sum(1 for g in gaps if g > 2.0)
    durations = [r.duration for r in soak.refreshes] or [0.0]
    scrape = sorted(soak.scrape_ms) or [0.0]
    rows = [
        ["duration", f"{(soak.samples[-1][0] if soak.samples else 0) / 60:.1f} min"],
        ["computers", f"{soak.hosts + 1}"],
        ["interval / scrape", f"{soak.interval:g} s / {soak.scrape_every:g} s"],
        ["peak RSS at 5 min -> end", f"{hwm_warm:.0f} MB -> {hwm_end:.0f} MB"],
        ["peak RSS growth after 5 min", f"{growth:+.1f} % (target < 10 %)"],
        [
            "server's own peak RSS at 5 min -> end",
            f"{_at_warmup(soak, soak.server_hwm) / 1024:.0f} MB -> "
            f"{(soak.server_hwm or [0])[-1] / 1024:.0f} MB",
        ],
        ["peak RSS growth after the 2nd refresh", _after_second(soak)],
        [
            "RSS now (min / max after 5 min)",
            f"{soak.samples[-1][1] / 1024:.0f} MB "
            f"({min(s[1] for s in after or soak.samples) / 1024:.0f} / "
            f"{max(s[1] for s in after or soak.samples) / 1024:.0f})",
        ],
        [
            "threads first 5 min (min / median / max)",
            f"{min(threads_warm)} / {statistics.median(threads_warm):.0f} / {max(threads_warm)}",
        ],
        [
            "threads after 5 min (min / median / max)",
            f"{min(threads_after)} / {statistics.median(threads_after):.0f} / {max(threads_after)}",
        ],
        [
            "refreshes (duration p50 / max)",
            f"{len(soak.refreshes)} ({statistics.median(durations):.1f} s / "
            f"{max(durations):.1f} s)",
        ],
        ["refresh overlaps", str(overlaps)],
        ["refresh stalls (> 2 s late)", f"{stalls} (max lateness {max(gaps or [0]):.2f} s)"],
        ["errors logged (crashes)", str(soak.crashes)],
        ["fault changes (skipped: host busy)", f"{soak.fault_changes} ({soak.fault_skipped_busy})"],
        ["certificates renewed", str(soak.renewals)],
        [
            "machine load, 1 min (min / median / max)",
            f"{min(soak.loads or [0]):.1f} / {statistics.median(soak.loads or [0]):.1f} / "
            f"{max(soak.loads or [0]):.1f} on {os.cpu_count()} cores",
        ],
        [
            "scrapes with every healthy host ok",
            f"{soak.scrapes_complete} / {soak.scrapes} (missing events {soak.missing_events})",
        ],
        [
            "/metrics latency p50 / p99 / max",
            f"{scrape[len(scrape) // 2]:.0f} / {scrape[int(len(scrape) * 0.99)]:.0f} / "
            f"{scrape[-1]:.0f} ms",
        ],
        [
            "exit after SIGTERM",
            f"status {soak.exit_code} in {soak.exit_seconds or 0:.1f} s",
        ],
        ["shells left open in the lab", str(soak.shells_left)],
        ["  of them on computers never given a fault", str(len(_unfaulted_shells(soak)))],
    ]
    lines = [
        table(
            "soak: exporter against the lab, faults changing every refresh",
            ["figure", "value"],
            rows,
        )
    ]
    if soak.missing_examples:
        lines.append("missing healthy computers: " + "; ".join(soak.missing_examples))
    if soak.shells_left:
        lines.append(f"open shells: {soak.shells_left_hosts}")
    verdicts = {
        "rss": growth < 10.0,
        "threads": max(threads_after) <= max(threads_warm) + 2,
        "overlaps": overlaps == 0,
        "stalls": stalls == 0,
        "healthy in every scrape": soak.scrapes > 0 and soak.scrapes_complete == soak.scrapes,
        # a fault (a black hole, a refused connection) also swallows the shell's Delete, as
        # a hung Windows host does until WinRM's idle timeout: only the others are leaks
        "shells": soak.shells_left is not None and not _unfaulted_shells(soak),
        "exit": soak.exit_code == 0,
    }
    lines.append(
        "verdict: " + ", ".join(f"{k} {'ok' if v else 'FAILED'}" for k, v in verdicts.items())
    )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--hosts", type=int, default=2000)
    parser.add_argument("--interval", default="10s", help="collection.interval")
    parser.add_argument("--scrape", type=float, default=5.0, help="seconds between scrapes")
    parser.add_argument("--timeout", default="5s", help="winrm.timeout")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--fault-share", type=float, default=0.05)
    parser.add_argument("--renew-share", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--name", default="soak", help="bench/results/<name>.txt")
    args = parser.parse_args()
    soak = run(args)
    text = report(soak)
    print(text, flush=True)
    write_result(args.name, text)
    return 0 if "FAILED" not in text.splitlines()[-1] else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
