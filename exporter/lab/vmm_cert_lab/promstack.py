"""Start real Prometheus and Alertmanager processes on 127.0.0.1 (for the demo and tests).

Debian ships them as ``prometheus`` and ``prometheus-alertmanager``. Each process gets a
free port and a data directory of its own, and is stopped (TERM, then KILL) by ``stop()``.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

PROMETHEUS = "prometheus"
ALERTMANAGER = "prometheus-alertmanager"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def find_binary(name: str) -> str:
    path = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None)
    if path is None:
        raise FileNotFoundError(
            f"{name} not found: install Debian's prometheus and prometheus-alertmanager "
            "(make tools does it)"
        )
    return path


@dataclass
class Process:
    name: str
    url: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    _closed: bool = field(default=False, repr=False)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def wait_ready(self, path: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited early:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url + path, timeout=2) as resp:  # noqa: S310 - our own loopback URL
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.1)
        raise TimeoutError(f"{self.name} not ready after {timeout:g}s:\n{self.log_tail()}")

    def stop(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)


def _spawn(name: str, argv: list[str], workdir: Path, url: str) -> Process:
    log_path = workdir / f"{name}.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=workdir)
    return Process(name=name, url=url, proc=proc, log_path=log_path)


def _start(
    name: str, binary: str, flags: list[str], config_file: Path, workdir: Path, port: int | None
) -> Process:
    port = port or free_port()
    workdir, config_file = workdir.resolve(), config_file.resolve()
    data = workdir / f"{name}-data"
    data.mkdir(parents=True, exist_ok=True)
    argv = [
        find_binary(binary),
        f"--config.file={config_file}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--log.level=warn",
        *(flag.format(data=data) for flag in flags),
    ]
    process = _spawn(name, argv, workdir, f"http://127.0.0.1:{port}")
    try:
        process.wait_ready("/-/ready")
    except BaseException:
        process.stop()
        raise
    return process


def start_prometheus(config_file: Path, workdir: Path, port: int | None = None) -> Process:
    """Start Prometheus with ``config_file``; data under ``workdir``; returns when ready."""
    flags = ["--storage.tsdb.path={data}", "--web.enable-lifecycle"]
    return _start("prometheus", PROMETHEUS, flags, config_file, workdir, port)


def start_alertmanager(config_file: Path, workdir: Path, port: int | None = None) -> Process:
    """Start Alertmanager (clustering off) with ``config_file``; returns when ready."""
    flags = ["--storage.path={data}", "--cluster.listen-address="]
    return _start("alertmanager", ALERTMANAGER, flags, config_file, workdir, port)
