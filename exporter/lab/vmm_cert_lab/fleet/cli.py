"""``vmm-cert-exporter lab``: run the simulated fleet until interrupted."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from vmm_cert_lab.fleet.latency import latency_profile
from vmm_cert_lab.fleet.locales import parse_locale
from vmm_cert_lab.fleet.replay import replay_from_args, write_replay_config
from vmm_cert_lab.fleet.runner import parse_listen, start_lab

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING}


def run(args: argparse.Namespace) -> int:
    level = _LEVELS.get(getattr(args, "log_level", "info"), logging.ERROR)
    logging.basicConfig(level=level, format="level=%(levelname)s msg=%(message)s")
    try:
        parse_listen(args.listen)  # refuse a non-loopback address before loading anything
    except ValueError as exc:
        print(f"vmm-cert-exporter lab: {exc}", file=sys.stderr)
        return 2
    if args.hosts is not None and args.hosts < 0:
        print("vmm-cert-exporter lab: --hosts must be >= 0", file=sys.stderr)
        return 2
    try:
        latency = latency_profile(args.latency)
    except ValueError as exc:
        print(f"vmm-cert-exporter lab: --latency: {exc}", file=sys.stderr)
        return 2
    try:
        locale = None if getattr(args, "locale", None) is None else parse_locale(args.locale)
    except ValueError as exc:
        print(f"vmm-cert-exporter lab: --locale: {exc}", file=sys.stderr)
        return 2
    try:
        replay = replay_from_args(args)
    except ValueError as exc:
        print(f"vmm-cert-exporter lab: --replay: {exc}", file=sys.stderr)
        return 2
    try:
        lab = start_lab(
            scenario=args.scenario,
            hosts=args.hosts,
            seed=args.seed,
            listen=args.listen,
            tls=args.tls,
            fleet=replay,
            locale=locale,
            latency=latency,
            kerberos_keytab=Path(args.kerberos_keytab) if args.kerberos_keytab else None,
        )
    except (OSError, ValueError) as exc:
        print(f"vmm-cert-exporter lab: cannot start: {exc}", file=sys.stderr)
        return 1

    stop = threading.Event()

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    try:
        if args.write_config:
            path = (
                lab.write_config(args.write_config)
                if replay is None
                else write_replay_config(lab, replay, args.write_config)
            )
            print(f"config:    {path}")
        print(f"endpoint:  {lab.endpoint_template}")
        print(f"control:   {lab.control_url}")
        print(f"account:   {lab.username}  password: {lab.account.password}")
        if lab.ca_path is not None:
            print(f"lab CA:    {lab.ca_path}")
        if lab.tls_probe_address is not None:
            host, port = lab.tls_probe_address
            print(f"tls probe: {host}:{port} (every computer's certificate, chosen by SNI)")
        print(f"computers: {len(lab.model.list_computers())}  vmm servers: {lab.vmm_servers}")
        sys.stdout.flush()
        while not stop.wait(0.5):
            pass
    finally:
        lab.stop()
    return 0
