"""Shared pieces of the benchmarks: a lab in a child process, resource figures, tables."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def peak_rss_mb() -> float:
    """Peak resident set size of this process (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@contextmanager
def lab_process(hosts: int, *, tls: bool = False, seed: int = 1) -> Iterator[Path]:
    """Run ``vmm-cert-exporter lab --hosts N`` in a child; yield the config it writes.

    A separate process, so the exporter's CPU and memory are measured alone (both still
    share this machine's two cores, as they would share a small VM).
    """
    with tempfile.TemporaryDirectory(prefix="vmm-bench-") as tmp:
        config = Path(tmp) / "exporter.yml"
        argv = [
            sys.executable,
            "-m",
            "vmm_cert_exporter",
            "lab",
            "--hosts",
            str(hosts),
            "--seed",
            str(seed),
            "--write-config",
            str(config),
        ]
        if tls:
            argv.append("--tls")
        log = Path(tmp) / "lab.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 120
            while not config.exists():
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"lab did not start:\n{log.read_text()}")
                time.sleep(0.1)
            time.sleep(0.2)  # the file is written in one go, but give the writer a moment
            yield config
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()


def table(title: str, header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = "  ".join("-" * w for w in widths)
    out = [title, "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)), line]
    out += ["  ".join(str(c).rjust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(out)


def write_result(name: str, text: str) -> None:
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.txt").write_text(text + "\n")
    os.environ.setdefault("VMM_BENCH_QUIET", "")
