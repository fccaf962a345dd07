"""Shared pieces of the benchmarks: a lab in a child process, resource figures, tables."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

RESULTS = Path(__file__).resolve().parent / "results"


def peak_rss_mb() -> float:
    """Peak resident set size of this process (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@contextmanager
def lab_process(
    hosts: int,
    *,
    tls: bool = False,
    seed: int = 1,
    latency: str = "none",
    extra: Sequence[str] = (),
) -> Iterator[Path]:
    """Run ``vmm-cert-exporter lab --hosts N [--latency P]`` in a child; yield its config.

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
            "--latency",
            latency,
        ]
        if tls:
            argv.append("--tls")
        argv += extra  # e.g. --kerberos-keytab PATH
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


# ---- the fleet-scale benchmarks ----------------------------------------------------------

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of another process (its threads included), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def process_rss_mb(pid: int, field: str = "VmRSS") -> float:
    """Resident set size of another process: current (``VmRSS``) or peak (``VmHWM``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024.0
    return 0.0


def run_child(argv: list[str], timeout: float = 1800) -> dict[str, Any]:
    """Run ``python -m <argv>`` in a fresh process; its last stdout line is a JSON object.

    One measurement per process keeps peak RSS and CPU figures of different runs apart.
    """
    result = subprocess.run(
        [sys.executable, "-m", *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    lines = result.stdout.strip().splitlines()
    if result.returncode != 0 or not lines:
        raise RuntimeError(f"{' '.join(argv)} failed ({result.returncode}):\n{result.stderr}")
    import json

    data = json.loads(lines[-1])
    if not isinstance(data, dict):
        raise RuntimeError(f"{' '.join(argv)}: expected a JSON object, got {lines[-1]!r}")
    return data


@dataclass(frozen=True)
class LabChild:
    """A lab running in a child process: the exporter config it wrote, and its pid."""

    config: Path
    pid: int

    @property
    def tls_address(self) -> tuple[str, int]:
        return lab_tls_address(self.config)


@contextmanager
def lab_child(
    hosts: int,
    *,
    tls: bool = False,
    seed: int = 1,
    latency: str = "none",
    extra: Sequence[str] = (),
) -> Iterator[LabChild]:
    """``lab_process`` that also tells the lab's pid (to measure the lab's own CPU)."""
    with lab_process(hosts, tls=tls, seed=seed, latency=latency, extra=extra) as config:
        yield LabChild(config=config, pid=_lab_pid(config))


@contextmanager
def kerberos_lab(hosts: int, *, seed: int = 1) -> Iterator[tuple[LabChild, Any]]:
    """``lab_child`` accepting Kerberos: a real MIT KDC (``vmm_cert_lab.kdc``) with every
    computer's service principal, the lab holding their keytab; yields the lab and its
    ``LabRealm`` (``realm.winrm("exporter")``: the keys that log on with a keytab). The
    realm's ``KRB5_CONFIG`` is in this process's environment meanwhile, so children see it."""
    from vmm_cert_lab.fleet.scenario import load_fleet
    from vmm_cert_lab.kdc import KDC, lab_realm, realm_environment

    with tempfile.TemporaryDirectory(prefix="vmm-bench-krb-") as tmp, KDC(Path(tmp) / "kdc") as kdc:
        with realm_environment(kdc):
            fleet = load_fleet("demo", hosts=hosts, seed=seed)
            fqdns = [str(c["fqdn"]) for c in fleet.list_computers()]
            realm = lab_realm(kdc, fqdns, Path(tmp) / "keytabs")
            extra = ["--kerberos-keytab", str(realm.computers_keytab)]
            with lab_child(hosts, seed=seed, extra=extra) as lab:
                yield lab, realm


def _lab_pid(config: Path) -> int:
    # the lab's working directory holds the config it writes; find the process by its argv
    target = str(config).encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if target in argv and b"lab" in argv:
            return int(entry.name)
    raise RuntimeError(f"no lab process writing {config}")


def lab_tls_address(config: Path) -> tuple[str, int]:
    """The lab's TLS listener, from the ``tls:`` section of the config the lab wrote."""
    import yaml

    section = yaml.safe_load(config.read_text())["tls"]
    return str(section["address"]), int(section["port"])


def save_chart(name: str, figure: Figure) -> Path:
    """Write a matplotlib figure as ``bench/results/<name>.png``."""
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.png"
    figure.savefig(path, dpi=110, bbox_inches="tight")
    return path


def new_figure(columns: int = 1, width: float = 6.0) -> tuple[Figure, list[Axes]]:
    """A figure with ``columns`` side-by-side axes, drawn by the file-only Agg backend."""
    from matplotlib.figure import Figure as _Figure

    figure = _Figure(figsize=(width * columns, 4.2))
    axes = [figure.add_subplot(1, columns, i + 1) for i in range(columns)]
    return figure, axes
