"""The ``vmm-cert-exporter`` command: one subcommand per job, each in its own module.

Subcommand modules are imported only when chosen, so ``vmm-cert-exporter lab`` never loads
the collector and the exporter never loads the lab. ``lab`` and ``demo`` are handled by the
lab package (``vmm_cert_lab``), which only a checkout installs (``make venv``): the product
names it here by module name and never imports it, and without it they say where to run them.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence

from vmm_cert_exporter.version import VersionAction

# the package of `lab` and `demo`: installed from a checkout, absent from the wheel and image
_LAB_PACKAGE = "vmm_cert_lab"
# subcommand -> (module, function taking the parsed args and returning an exit code)
_HANDLERS: dict[str, tuple[str, str]] = {
    "lab": ("vmm_cert_lab.fleet.cli", "run"),
    "serve": ("vmm_cert_exporter.serve", "run"),
    "check": ("vmm_cert_exporter.check", "run"),
    "cohorts": ("vmm_cert_exporter.cohorts_command", "run"),
    "check-config": ("vmm_cert_exporter.config", "check_config_command"),
    "capture": ("vmm_cert_exporter.capture", "capture_command"),
    "print-script": ("vmm_cert_exporter.powershell", "print_script_command"),
    "demo": ("vmm_cert_lab.demo", "run"),
    "rules": ("vmm_cert_exporter.rules", "rules_command"),
    "receiver": ("vmm_cert_exporter.receiver.commands", "receiver_command"),
    "renew": ("vmm_cert_exporter.receiver.commands", "renew_command"),
    "jobs": ("vmm_cert_exporter.receiver.commands", "jobs_command"),
}


def _add_config(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, metavar="FILE", help="YAML configuration file")


def _add_logging(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--log.level",
        dest="log_level",
        default="info",
        choices=["debug", "info", "warn", "error"],
        help="only log messages with the given severity or above",
    )
    p.add_argument(
        "--log.format",
        dest="log_format",
        default="logfmt",
        choices=["logfmt", "json"],
        help="output format of log messages",
    )


def _add_shard(p: argparse.ArgumentParser) -> None:
    from vmm_cert_exporter.sharding import shard_argument

    p.add_argument(
        "--shard",
        type=shard_argument,
        default=None,
        metavar="K/N",
        help="read only shard K (0-based) of N: N exporters split the fleet by a hash of "
        "each FQDN, with no overlap and no gap; auto/N takes K from the host name's trailing "
        "ordinal, as in a StatefulSet (docs/scaling.md)",
    )


def _add_web_config(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--web.config.file",
        dest="web_config_file",
        default=None,
        metavar="FILE",
        help="exporter-toolkit web configuration (TLS, client certificates, basic auth); "
        "see docs/security.md",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vmm-cert-exporter",
        description="Watch SCVMM self-signed certificates over WinRM; publish them to Prometheus.",
    )
    parser.add_argument(
        "--version", action=VersionAction, help="print the version, Python's and pywinrm's"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("serve", help="run the exporter: refresh in the background, serve /metrics")
    _add_config(p)
    p.add_argument(
        "--web.listen-address",
        dest="listen_address",
        default=None,
        metavar="ADDR",
        help="address to listen on (overrides web.listen_address; default :9868)",
    )
    _add_web_config(p)
    _add_shard(p)
    _add_logging(p)

    p = sub.add_parser("check", help="one refresh, a table, exit 0 ok / 1 warning / 2 critical")
    _add_config(p)
    p.add_argument("--warn-days", type=float, default=30.0, metavar="N")
    p.add_argument("--critical-days", type=float, default=7.0, metavar="M")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    _add_shard(p)
    _add_logging(p)

    p = sub.add_parser(
        "cohorts",
        help="computers per expiry day against the receiver's capacity: on time or at risk",
    )
    _add_config(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    _add_logging(p)

    p = sub.add_parser("check-config", help="validate a configuration file and exit")
    _add_config(p)

    p = sub.add_parser(
        "capture",
        help="run every read-only call on the fleet once and record the answers (docs/capture.md)",
    )
    _add_config(p)
    p.add_argument("--out", required=True, metavar="DIR", help="a new or empty directory")
    p.add_argument(
        "--redact",
        action="store_true",
        help="replace every hostname by hostNNN.redacted and re-issue the certificates",
    )
    p.add_argument("--force", action="store_true", help="replace an earlier capture in DIR")
    _add_logging(p)

    p = sub.add_parser("print-script", help="print the exact PowerShell sent for an operation")
    p.add_argument("operation", help="a script-contract operation, e.g. collect-certificates")
    p.add_argument(
        "--params",
        default=None,
        metavar="JSON",
        help="parameters to embed (JSON object); default: the operation's example",
    )

    p = sub.add_parser("lab", help="start the simulated SCVMM fleet (WS-Management on 127.0.0.1)")
    p.add_argument("--scenario", default="demo", metavar="demo|ha|big-cohort|FILE")
    p.add_argument("--hosts", type=int, default=None, metavar="N", help="generate N hosts")
    p.add_argument("--seed", type=int, default=1, metavar="S")
    p.add_argument("--listen", default="127.0.0.1:0", metavar="127.0.0.1:PORT")
    p.add_argument("--tls", action="store_true", help="serve HTTPS with the lab CA")
    p.add_argument(
        "--locale",
        default=None,
        metavar="en-US|ja-JP",
        help="language of VMM's display strings (default: the scenario's, else en-US)",
    )
    p.add_argument(
        "--latency",
        default="none",
        metavar="none|windows",
        help="windows: 800 ms per shell, 100 ms per other request, as real hosts answer",
    )
    p.add_argument("--write-config", default=None, metavar="PATH")
    p.add_argument(
        "--kerberos-keytab",
        default=None,
        metavar="PATH",
        help="accept Kerberos with the computers' HTTP/<fqdn> keys in this keytab",
    )
    p.add_argument(
        "--replay",
        default=None,
        metavar="DIR",
        help="serve the answers recorded by `vmm-cert-exporter capture` (read-only)",
    )
    _add_logging(p)

    p = sub.add_parser("rules", help="print the alerting rules, optionally with other thresholds")
    p.add_argument("--warn-days", type=int, default=30, metavar="N")
    p.add_argument("--critical-days", type=int, default=7, metavar="M")
    p.add_argument(
        "--format",
        choices=["prometheus", "kubernetes"],
        default="prometheus",
        help="a Prometheus rule file, or a Kubernetes PrometheusRule manifest",
    )
    p.add_argument(
        "--runbook-base-url",
        default=None,
        metavar="URL",
        help="where the runbooks are published (each alert links <URL><AlertName>.md)",
    )

    p = sub.add_parser(
        "receiver", help="the renewal receiver: Alertmanager webhook -> guarded renewals"
    )
    _add_config(p)
    p.add_argument(
        "--web.listen-address",
        dest="listen_address",
        default=None,
        metavar="ADDR",
        help="address to listen on (overrides receiver.listen_address; default 127.0.0.1:9869)",
    )
    _add_web_config(p)
    _add_logging(p)

    p = sub.add_parser(
        "renew", help="renew one host's certificate by hand (a dry run unless --execute)"
    )
    _add_config(p)
    p.add_argument("--host", required=True, metavar="FQDN", help="the computer to renew")
    p.add_argument(
        "--execute",
        action="store_true",
        help="change the host (default: print the plan and the exact PowerShell only)",
    )
    _add_logging(p)

    p = sub.add_parser("jobs", help="list the renewal journal")
    _add_config(p)
    p.add_argument("--host", default=None, metavar="FQDN", help="only this host's jobs")
    p.add_argument("--status", default=None, metavar="STATUS", help="only jobs in STATUS")
    p.add_argument("--limit", type=int, default=50, metavar="N", help="newest N jobs (50)")
    p.add_argument("--json", action="store_true", help="JSON with every job's steps")

    p = sub.add_parser("demo", help="start the lab and the exporter against it, print the URLs")
    p.add_argument("--scenario", default="demo", metavar="demo|ha|FILE", help="the lab's fleet")
    p.add_argument(
        "--locale",
        default=None,
        metavar="en-US|ja-JP",
        help="language of the lab VMM's display strings (ja-JP: a Japanese VMM)",
    )
    p.add_argument(
        "--kerberos-only",
        action="store_true",
        help="a real KDC beside the lab; every computer refuses NTLM; Kerberos keytabs",
    )
    _add_logging(p)
    return parser


def _lab_missing(command: str) -> int:
    print(
        f"vmm-cert-exporter {command}: the lab ships with the repository only, not with this "
        f"installation: run `make demo` (or `make venv`, then `.venv/bin/vmm-cert-exporter "
        f"{command}`) from a checkout",
        file=sys.stderr,
    )
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    module_name, func_name = _HANDLERS[args.command]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        # only the lab package itself may be absent; a module missing inside it is a bug
        if exc.name != _LAB_PACKAGE or not module_name.startswith(f"{_LAB_PACKAGE}."):
            raise
        return _lab_missing(args.command)
    handler: Callable[[argparse.Namespace], int] = getattr(module, func_name)
    return handler(args)


if __name__ == "__main__":
    sys.exit(main())
