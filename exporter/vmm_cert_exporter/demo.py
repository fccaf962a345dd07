"""``vmm-cert-exporter demo`` (what ``make demo`` runs): the whole loop on one machine.

Starts the built-in ``demo`` lab on 127.0.0.1, the exporter against it, and — when Debian's
``prometheus`` and ``prometheus-alertmanager`` are installed (``make demo`` installs them as
root) — a real Prometheus with the shipped rules and a real Alertmanager with the shipped
routes. Everything lives under ``.demo/``; Ctrl-C stops every process it started.

The demo rules are the shipped ones with short ``for:`` durations, so that a newcomer sees
alerts fire in the Prometheus UI within a minute instead of after an hour.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import socket
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import yaml

from vmm_cert_exporter.config import load_config
from vmm_cert_exporter.lab.runner import RunningLab, start_lab
from vmm_cert_exporter.logs import setup_logging
from vmm_cert_exporter.promstack import Process, find_binary, start_alertmanager, start_prometheus
from vmm_cert_exporter.rules import FOR_DURATIONS, render_rules
from vmm_cert_exporter.serve import Exporter, start_exporter

log = logging.getLogger(__name__)

DEMO_DIR = Path(".demo")
DEPLOY_DIR = Path(__file__).resolve().parents[2] / "deploy"
EXPORTER_PORT, PROMETHEUS_PORT, ALERTMANAGER_PORT = 9868, 9090, 9093
DEMO_FOR = "10s"  # alerts fire 10 s after the condition holds (shipped: 15 min to 1 h)
DEMO_TOKEN = "demo-token-for-the-renewal-receiver"  # noqa: S105 - the lab only, nothing real


def free_port(preferred: int) -> int:
    """The documented port when it is free, else any free one (the demo must start)."""
    for port in (preferred, 0):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(s.getsockname()[1])
    raise OSError("no free port on 127.0.0.1")


def _have(binary: str) -> bool:
    try:
        find_binary(binary)
    except FileNotFoundError:
        return False
    return True


def alertmanager_config(workdir: Path, webhook_url: str | None) -> Path:
    """The shipped deploy/alertmanager.yml, with demo timings and local addresses."""
    data: dict[str, Any] = yaml.safe_load((DEPLOY_DIR / "alertmanager.yml").read_text())
    data["route"]["group_wait"] = "5s"
    data["route"]["group_interval"] = "10s"
    token = workdir / "receiver-token"
    token.write_text(DEMO_TOKEN)
    for receiver in data["receivers"]:
        for hook in receiver.get("webhook_configs", []):
            if webhook_url is None:
                continue
            hook["url"] = webhook_url
            hook["http_config"]["authorization"]["credentials_file"] = str(token.resolve())
        if webhook_url is None:
            receiver.pop("webhook_configs", None)
    path = workdir / "alertmanager.yml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def prometheus_config(workdir: Path, exporter: str, alertmanager: str | None) -> Path:
    rules = workdir / "vmm-certificates.rules.yml"
    rules.write_text(render_rules(for_durations=dict.fromkeys(FOR_DURATIONS, DEMO_FOR)))
    data: dict[str, Any] = {
        "global": {"scrape_interval": "5s", "evaluation_interval": "5s"},
        "rule_files": [str(rules.resolve())],
        "scrape_configs": [
            {"job_name": "vmm-cert-exporter", "static_configs": [{"targets": [exporter]}]}
        ],
    }
    if alertmanager is not None:
        data["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": [alertmanager]}]}]}
    path = workdir / "prometheus.yml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@contextlib.contextmanager
def running_stack(workdir: Path) -> Iterator[tuple[RunningLab, Exporter, list[Process]]]:
    """Lab, exporter and (when installed) Prometheus + Alertmanager; all stopped on exit."""
    workdir.mkdir(parents=True, exist_ok=True)
    processes: list[Process] = []
    with start_lab(scenario="demo", state_dir=workdir / "lab") as lab:
        config_path = lab.write_config(workdir / "exporter.yml")
        data = yaml.safe_load(config_path.read_text())
        data["collection"]["interval"] = "15s"  # the demo shows renewals quickly
        config_path.write_text(yaml.safe_dump(data, sort_keys=False))
        exporter = start_exporter(load_config(config_path), f"127.0.0.1:{free_port(EXPORTER_PORT)}")
        try:
            if _have("prometheus-alertmanager"):
                am_cfg = alertmanager_config(workdir, None)
                processes.append(start_alertmanager(am_cfg, workdir, free_port(ALERTMANAGER_PORT)))
            if _have("prometheus"):
                am = processes[0].url.removeprefix("http://") if processes else None
                prom_cfg = prometheus_config(workdir, exporter.url.removeprefix("http://"), am)
                processes.append(start_prometheus(prom_cfg, workdir, free_port(PROMETHEUS_PORT)))
            yield lab, exporter, processes
        finally:
            for process in reversed(processes):
                process.stop()
            exporter.stop()


def run(args: argparse.Namespace) -> int:
    setup_logging(args.log_level, args.log_format)
    stopping = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    with running_stack(DEMO_DIR) as (lab, exporter, processes):
        exporter.refresher.wait_first(timeout=120)
        urls = {p.name: p.url for p in processes}
        lines = [
            "",
            "vmm-cert-exporter demo is running (Ctrl-C stops everything):",
            f"  exporter overview   {exporter.url}/",
            f"  metrics             {exporter.url}/metrics",
        ]
        if "prometheus" in urls:
            lines.append(
                f"  Prometheus alerts   {urls['prometheus']}/alerts   (firing within a minute)"
            )
        else:
            lines.append("  Prometheus          not installed (apt-get install prometheus)")
        if "alertmanager" in urls:
            lines.append(f"  Alertmanager        {urls['alertmanager']}/")
        else:
            lines.append(
                "  Alertmanager        not installed (apt-get install prometheus-alertmanager)"
            )
        lines += [
            f"  lab WS-Management   {lab.endpoint_template}",
            f"  lab control API     {lab.control_url}/computers",
            f"  configuration       {(DEMO_DIR / 'exporter.yml').resolve()}",
            "",
        ]
        print("\n".join(lines), flush=True)
        stopping.wait()
        print("stopping...", file=sys.stderr, flush=True)
    return 0
