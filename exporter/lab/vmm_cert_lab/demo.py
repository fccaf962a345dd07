"""``vmm-cert-exporter demo`` (what ``make demo`` runs): the whole loop on one machine.

Starts the built-in ``demo`` lab on 127.0.0.1, the exporter against it, the renewal receiver
in execute mode against the lab only, and — when Debian's ``prometheus`` and
``prometheus-alertmanager`` are installed (``make demo`` installs them as root) — a real
Prometheus with the shipped rules and a real Alertmanager with the shipped routes, whose
webhook reaches the receiver. A newcomer watches alerts fire, renewals run and alerts resolve
by themselves. Everything lives under ``.demo/``; Ctrl-C stops every process it started.

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
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import yaml

from vmm_cert_exporter import kerberos
from vmm_cert_exporter.config import load_config
from vmm_cert_exporter.logs import setup_logging
from vmm_cert_exporter.receiver.service import Receiver, start_receiver
from vmm_cert_exporter.rules import FOR_DURATIONS, render_rules
from vmm_cert_exporter.serve import Exporter, start_exporter
from vmm_cert_lab.fleet.runner import RunningLab, start_lab
from vmm_cert_lab.kdc import KDC, LabRealm, lab_realm, realm_environment
from vmm_cert_lab.processes import Process
from vmm_cert_lab.promstack import (
    amtool_query_command,
    find_binary,
    prometheus_alerts_path,
    start_alertmanager,
    start_prometheus,
)
from vmm_cert_lab.receiver_config import desk_user, write_lab_receiver_config

log = logging.getLogger(__name__)

DEMO_DIR = Path(".demo")
# the repository's deploy/: the demo runs from a checkout
DEPLOY_DIR = Path(__file__).resolve().parents[3] / "deploy"
EXPORTER_PORT, RECEIVER_PORT, PROMETHEUS_PORT, ALERTMANAGER_PORT = 9868, 9869, 9090, 9093
DEMO_FOR = "10s"  # alerts fire 10 s after the condition holds (shipped: 15 min to 1 h)
DEMO_TOKEN = "demo-token-for-the-renewal-receiver"  # noqa: S105 - the lab only, nothing real
# the renewal desk's sign-in, printed with its link: the lab only, nothing real
DEMO_DESK_USER, DEMO_DESK_PASSWORD = "demo", "demo-desk-password"


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


def prometheus_config(
    workdir: Path,
    exporter: str,
    alertmanager: str | None,
    receiver: str | None = None,
    *,
    for_durations: dict[str, str] | None = None,
    scrape_interval: str = "5s",
) -> Path:
    rules = workdir / "vmm-certificates.rules.yml"
    rules.write_text(
        render_rules(for_durations=for_durations or dict.fromkeys(FOR_DURATIONS, DEMO_FOR))
    )
    jobs = [{"job_name": "vmm-cert-exporter", "static_configs": [{"targets": [exporter]}]}]
    if receiver is not None:
        jobs.append({"job_name": "vmm-cert-receiver", "static_configs": [{"targets": [receiver]}]})
    data: dict[str, Any] = {
        "global": {"scrape_interval": scrape_interval, "evaluation_interval": scrape_interval},
        "rule_files": [str(rules.resolve())],
        "scrape_configs": jobs,
    }
    if alertmanager is not None:
        data["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": [alertmanager]}]}]}
    path = workdir / "prometheus.yml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@dataclass
class Stack:
    """Everything the demo (and the closed-loop test) runs, each part reachable."""

    lab: RunningLab
    exporter: Exporter
    receiver: Receiver | None
    processes: dict[str, Process] = field(default_factory=dict)


def _host_port(url: str) -> str:
    return url.split("://", 1)[1]


@contextlib.contextmanager
def running_stack(
    workdir: Path,
    *,
    receiver_mode: str | None = "execute",
    interval: str = "15s",
    scrape_interval: str = "5s",
    for_durations: dict[str, str] | None = None,
    preferred_ports: bool = True,
    scenario: str = "demo",
    locale: str | None = None,
    kerberos_only: bool = False,
) -> Iterator[Stack]:
    """Lab, exporter, the renewal receiver (against the lab only) and, when installed,
    Prometheus + Alertmanager; everything is stopped on exit, in reverse order.

    ``scenario`` and ``locale`` choose the lab's fleet and the language its VMM servers
    display (``ja-JP``: a Japanese VMM, whose invariant values are the same).
    ``kerberos_only``: a real KDC (``vmm_cert_lab.kdc``) beside the lab, every computer
    accepting Negotiate with Kerberos only (NTLM refused, as "Restrict NTLM" does), the
    exporter and the receiver each logging on with its own keytab."""
    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)

    def port(preferred: int) -> int:
        return free_port(preferred if preferred_ports else 0)

    with contextlib.ExitStack() as stack:
        realm: LabRealm | None = None
        if kerberos_only:
            lab, realm = _kerberos_lab(stack, workdir, scenario, locale)
        else:
            lab = stack.enter_context(
                start_lab(scenario=scenario, state_dir=workdir / "lab", locale=locale)
            )
        config_path = lab.write_config(workdir / "exporter.yml")
        data = yaml.safe_load(config_path.read_text())
        data["collection"]["interval"] = interval  # the demo shows renewals quickly
        if realm is not None:
            for key, value in realm.winrm("exporter").items():
                if value is None:
                    data["winrm"].pop(key, None)
                else:
                    data["winrm"][key] = value
        config_path.write_text(yaml.safe_dump(data, sort_keys=False))
        exporter = start_exporter(load_config(config_path), f"127.0.0.1:{port(EXPORTER_PORT)}")
        stack.callback(exporter.stop)
        receiver: Receiver | None = None
        if receiver_mode is not None:
            receiver_path = write_lab_receiver_config(
                lab,
                workdir / "receiver.yml",
                token=DEMO_TOKEN,
                mode=receiver_mode,
                listen_address=f"127.0.0.1:{port(RECEIVER_PORT)}",
                receiver={"desk_users": [desk_user(workdir, DEMO_DESK_USER, DEMO_DESK_PASSWORD)]},
                winrm=realm.winrm("receiver") if realm is not None else None,
            )
            receiver = start_receiver(load_config(receiver_path))
            stack.callback(receiver.stop)
        result = Stack(lab=lab, exporter=exporter, receiver=receiver)
        if _have("prometheus-alertmanager"):
            hook = receiver.url + "/alertmanager" if receiver is not None else None
            am_cfg = alertmanager_config(workdir, hook)
            am = start_alertmanager(am_cfg, workdir, port(ALERTMANAGER_PORT))
            stack.callback(am.stop)
            result.processes["alertmanager"] = am
        if _have("prometheus"):
            am_process = result.processes.get("alertmanager")
            prom_cfg = prometheus_config(
                workdir,
                _host_port(exporter.url),
                _host_port(am_process.url) if am_process else None,
                _host_port(receiver.url) if receiver is not None else None,
                for_durations=for_durations,
                scrape_interval=scrape_interval,
            )
            prom = start_prometheus(prom_cfg, workdir, port(PROMETHEUS_PORT))
            stack.callback(prom.stop)
            result.processes["prometheus"] = prom
        yield result


def links(stack: Stack, workdir: Path = DEMO_DIR) -> str:
    """What the demo prints: every link answers 200 (a test follows each), and where a part
    has no page (Debian's Alertmanager ships without its UI) the command that shows it."""
    exporter, lab = stack.exporter, stack.lab
    lines = [
        "",
        "vmm-cert-exporter demo is running (Ctrl-C stops everything):",
        f"  exporter overview   {exporter.url}/",
        f"  metrics             {exporter.url}/metrics",
    ]
    prometheus = stack.processes.get("prometheus")
    if prometheus is None:
        lines.append("  Prometheus          not installed (apt-get install prometheus)")
    else:
        path = prometheus_alerts_path(prometheus.url)
        if path is None:
            lines.append(f"  Prometheus          {prometheus.url}/-/ready   (no alerts page found)")
        else:
            lines.append(f"  Prometheus alerts   {prometheus.url}{path}   (firing within a minute)")
    receiver = stack.receiver
    if receiver is not None:
        lines.append(
            f"  renewal desk        {receiver.url}/   (user {DEMO_DESK_USER}, password "
            f"{DEMO_DESK_PASSWORD}; execute mode, the lab only)"
        )
        token = (workdir / "receiver.token").resolve()
        lines.append(
            f"  renewal API         {receiver.url}/api/jobs   (Authorization: Bearer, the token "
            f"in {token})"
        )
    alertmanager = stack.processes.get("alertmanager")
    if alertmanager is None:
        lines.append(
            "  Alertmanager        not installed (apt-get install prometheus-alertmanager)"
        )
    else:
        lines += [
            "  Alertmanager        Debian's package has no web UI; the renewal desk shows what",
            "                      its webhook started, and this lists the alerts it holds:",
            f"    $ {amtool_query_command(alertmanager.url)}",
        ]
    lines += [
        f"  lab control API     {lab.control_url}/computers",
        f"  configuration       {(workdir / 'exporter.yml').resolve()}   (winrm.endpoint is the "
        "lab's WS-Management)",
        "",
    ]
    return "\n".join(lines)


def _kerberos_lab(
    stack: contextlib.ExitStack, workdir: Path, scenario: str, locale: str | None
) -> tuple[RunningLab, LabRealm]:
    """The lab with its realm: a KDC, the accounts' keytabs, the computers' SPNs, and every
    computer refusing NTLM."""
    from vmm_cert_lab.fleet.scenario import load_fleet

    kdc = stack.enter_context(KDC(workdir / "kdc"))
    stack.enter_context(realm_environment(kdc))
    # last out: the exporter's and the receiver's logins (renewal threads, their caches)
    stack.callback(kerberos.stop_all)
    fleet = load_fleet(scenario, locale=locale)
    fqdns = [str(c["fqdn"]) for c in fleet.list_computers()]
    realm = lab_realm(kdc, fqdns, workdir / "keytabs")
    lab = stack.enter_context(
        start_lab(fleet=fleet, state_dir=workdir / "lab", kerberos_keytab=realm.computers_keytab)
    )
    for fqdn in fqdns:
        faults = lab.model.faults(fqdn)
        faults.auth = ["negotiate", "kerberos"]
        lab.model.set_faults(fqdn, faults)
    return lab, realm


def run(args: argparse.Namespace) -> int:
    setup_logging(args.log_level, args.log_format)
    stopping = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    kerberos_only = bool(getattr(args, "kerberos_only", False))
    with running_stack(
        DEMO_DIR, scenario=args.scenario, locale=args.locale, kerberos_only=kerberos_only
    ) as stack:
        stack.exporter.refresher.wait_first(timeout=120)
        text = links(stack)
        if kerberos_only:
            text += (
                f"  Kerberos realm      {(DEMO_DIR / 'kdc' / 'krb5.conf').resolve()} "
                "(every computer refuses NTLM: vmm-cert-exporter check with "
                'transport: ntlm shows reason=auth "refused NTLM")\n'
            )
        print(text, flush=True)
        stopping.wait()
        print("stopping...", file=sys.stderr, flush=True)
    return 0
