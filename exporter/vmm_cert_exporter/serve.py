"""``vmm-cert-exporter serve``: validate, listen, refresh in the background until SIGTERM."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from dataclasses import dataclass
from types import FrameType

from cheroot import wsgi

from vmm_cert_exporter.collection import Refresher
from vmm_cert_exporter.config import Config, ConfigError, load_config, parse_listen_address
from vmm_cert_exporter.logs import setup_logging
from vmm_cert_exporter.metrics import Exposition, SnapshotCollector
from vmm_cert_exporter.web import make_app, make_server

log = logging.getLogger(__name__)


@dataclass
class Exporter:
    """A running exporter: the refresher and the HTTP server, for the CLI and tests."""

    config: Config
    refresher: Refresher
    server: wsgi.Server
    thread: threading.Thread

    @property
    def url(self) -> str:
        host, port = self.server.bind_addr[:2]
        if host in ("0.0.0.0", "::"):  # noqa: S104 - we connect, not bind, here
            host = "127.0.0.1"
        return f"http://{host}:{port}"

    def stop(self) -> None:
        self.refresher.stop(timeout=1.0)
        self.server.stop()
        self.thread.join(timeout=5.0)


def start_exporter(config: Config, listen_address: str | None = None) -> Exporter:
    """Start refreshing and serving; returns once the server listens."""
    refresher = Refresher(config)
    collector = SnapshotCollector(lambda: refresher.snapshot, lambda: refresher.histogram)
    exposition = Exposition(
        collector, lambda: refresher.snapshot, lambda: refresher.histogram.count
    )
    refresher.listeners.append(exposition.warm)
    app = make_app(exposition, lambda: refresher.snapshot)
    server = make_server(app, listen_address or config.web.listen_address)
    server.prepare()  # binds now, so a taken port fails before we report success
    thread = threading.Thread(target=server.serve, name="http", daemon=True)
    thread.start()
    refresher.start()
    exporter = Exporter(config=config, refresher=refresher, server=server, thread=thread)
    log.info("listening", extra={"address": exporter.url, "config": config.path})
    return exporter


def run(args: argparse.Namespace) -> int:
    setup_logging(args.log_level, args.log_format)
    try:
        config = load_config(args.config)
        if args.listen_address is not None:
            parse_listen_address(args.listen_address)
    except (ConfigError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    try:
        exporter = start_exporter(config, args.listen_address)
    except OSError as exc:
        print(
            f"error: cannot listen on {args.listen_address or config.web.listen_address}: {exc}",
            file=sys.stderr,
        )
        return 1
    stopping = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    stopping.wait()
    log.info("shutting down")
    exporter.stop()
    return 0
