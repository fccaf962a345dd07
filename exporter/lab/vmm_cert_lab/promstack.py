"""Start real Prometheus and Alertmanager processes on 127.0.0.1 (for the demo and tests).

Debian ships them as ``prometheus`` and ``prometheus-alertmanager``. Each process gets a
free port and a data directory of its own, and is stopped (TERM, then KILL) by ``stop()``.
``promtool`` and ``amtool`` come with them (``Tool``, ``Promtool``).
"""

from __future__ import annotations

import http.client
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from vmm_cert_lab.processes import Process, free_port

PROMETHEUS = "prometheus"
ALERTMANAGER = "prometheus-alertmanager"


def find_binary(name: str) -> str:
    path = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None)
    if path is None:
        raise FileNotFoundError(
            f"{name} not found: install Debian's prometheus and prometheus-alertmanager "
            "(make tools does it)"
        )
    return path


class Tool:
    """A binary of Debian's prometheus packages (promtool, amtool...), run to completion."""

    def __init__(self, name: str) -> None:
        self.path = find_binary(name)

    def run(
        self, *args: str, cwd: Path | None = None, input: str | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """Its whole report (failures go to stderr) is in ``stdout``."""
        return subprocess.run(
            [self.path, *args],
            cwd=cwd,
            input=input,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=timeout,
            check=False,
        )


class Promtool(Tool):
    def __init__(self) -> None:
        super().__init__("promtool")

    def check_metrics(self, exposition: str | bytes) -> subprocess.CompletedProcess[str]:
        """``promtool check metrics`` (the exposition format's lint) on ``exposition``."""
        text = exposition.decode() if isinstance(exposition, bytes) else exposition
        return self.run("check", "metrics", input=text)

    def query(self, prometheus_url: str, expr: str) -> list[dict[str, Any]]:
        """``promtool query instant``: the result vector as JSON (it must succeed)."""
        result = subprocess.run(
            [self.path, "query", "instant", "-o", "json", prometheus_url, expr],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"promtool query {expr}: {result.stderr}")
        data: list[dict[str, Any]] = json.loads(result.stdout)
        return data


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
    process = Process(argv, port=port, log=workdir / f"{name}.log", cwd=workdir, name=name)
    try:
        process.wait_ready("/-/ready", timeout=30)
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


def _get(url: str, path: str) -> tuple[int, str | None]:
    """GET ``path`` of ``url`` without following a redirect: (status, Location)."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=10)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        response.read()
        return response.status, response.getheader("Location")
    finally:
        conn.close()


def prometheus_alerts_path(url: str) -> str | None:
    """The path of the alerts page the Prometheus at ``url`` serves, or None.

    Debian's Prometheus 2.42 is built without the React UI: ``/`` redirects to
    ``/classic/graph`` and only ``/classic/alerts`` exists, while upstream builds serve
    ``/alerts``. Asked at run time, so that a printed link never answers 404.
    """
    candidates = []
    status, location = _get(url, "/")
    if status in (301, 302, 303, 307, 308) and location:
        path = urlsplit(location).path
        if path.endswith("/graph"):
            candidates.append(path[: -len("graph")] + "alerts")
    candidates += ["/alerts", "/classic/alerts"]
    for path in dict.fromkeys(candidates):
        if _get(url, path)[0] == 200:
            return path
    return None


def amtool_query_command(alertmanager_url: str) -> str:
    """The exact ``amtool`` command line that lists the alerts of ``alertmanager_url``
    (Debian's Alertmanager ships without its web UI)."""
    return f"{find_binary('amtool')} alert query --alertmanager.url={alertmanager_url}"
