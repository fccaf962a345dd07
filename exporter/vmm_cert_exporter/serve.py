"""``vmm-cert-exporter serve``: validate, listen, refresh in the background until SIGTERM."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from vmm_cert_exporter import malloc_tuning
from vmm_cert_exporter.config import Config, ConfigError, load_config, parse_listen_address
from vmm_cert_exporter.http.limits import Limits
from vmm_cert_exporter.http.server import HTTPServer
from vmm_cert_exporter.logs import setup_logging
from vmm_cert_exporter.metrics import Exposition, SnapshotCollector
from vmm_cert_exporter.pages.prepared import FleetCache
from vmm_cert_exporter.refresh_process import RefreshProcess
from vmm_cert_exporter.sharding import Shard
from vmm_cert_exporter.web import make_app, make_server
from vmm_cert_exporter.webconfig import WebConfigFile, load_web_config

if TYPE_CHECKING:
    from vmm_cert_exporter.collection import Refresher

log = logging.getLogger(__name__)


@dataclass
class Exporter:
    """A running exporter: the refresher and the HTTP server, for the CLI and tests."""

    config: Config
    refresher: Refresher | RefreshProcess
    server: HTTPServer

    @property
    def url(self) -> str:
        return self.server.url

    def stop(self, drain: float | None = None) -> bool:
        """Graceful: no new WinRM call; the calls in flight finish or reach their deadline and
        send Signal + Delete (at most ``refresher.drain_seconds``); /metrics keeps serving the
        last snapshot meanwhile. Returns whether the refresher stopped in time."""
        stopped = self.refresher.stop(
            timeout=self.refresher.drain_seconds if drain is None else drain
        )
        self.server.stop()
        return stopped


def start_exporter(
    config: Config,
    listen_address: str | None = None,
    shard: Shard | None = None,
    web_config: WebConfigFile | None = None,
    *,
    isolate: bool = True,
    limits: Limits | None = None,
) -> Exporter:
    """Start refreshing and serving; returns once the server listens.

    ``isolate``: refresh in a child process (``refresh_process.py``), so that scrapes never
    wait for a refresh; a configuration that is not a file (built in code) refreshes in a
    thread of this process instead.
    """
    refresher: Refresher | RefreshProcess
    process: RefreshProcess | None = None
    if isolate and Path(config.path).is_file():
        refresher = process = RefreshProcess(config, shard=shard)
    else:
        # only here does this process refresh, and load the WinRM stack for it
        from vmm_cert_exporter.collection import Refresher

        refresher = Refresher(config, shard=shard)
    collector = SnapshotCollector(
        lambda: refresher.snapshot,
        lambda: refresher.histogram,
        # in-process, nothing is ever restarted: the counter stays 0
        restarts=None if process is None else (lambda: process.restarts),
    )
    exposition = Exposition(
        collector,
        lambda: refresher.snapshot,
        lambda: refresher.histogram.count,
        # the refresh process renders each snapshot itself: none is rendered here
        prerendered=None if process is None else (lambda: process.rendered),
    )
    fleets = FleetCache()
    if process is None:
        refresher.listeners += [exposition.warm, fleets.warm]
    # else the pages prepare a snapshot when one is first asked for: warming them after each
    # refresh would unpickle every snapshot the refresh process has already rendered
    app = make_app(
        exposition, lambda: refresher.snapshot, fleets=fleets, ready=lambda: refresher.ready
    )
    server = make_server(
        app, listen_address or config.web.listen_address, web_config=web_config, limits=limits
    )
    server.start()  # binds first, so a taken port fails before we report success
    refresher.start()
    exporter = Exporter(config=config, refresher=refresher, server=server)
    log.info("listening", extra={"address": exporter.url, "config": config.path})
    return exporter


def run(args: argparse.Namespace) -> int:
    malloc_tuning.limit_arenas()  # before any thread: the HTTP layer's handlers are threads
    setup_logging(args.log_level, args.log_format)
    try:
        config = load_config(args.config)
        if args.listen_address is not None:
            parse_listen_address(args.listen_address)
        web_config_file = getattr(args, "web_config_file", None)
        web_config = load_web_config(web_config_file) if web_config_file else None
    except (ConfigError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    try:
        exporter = start_exporter(
            config, args.listen_address, getattr(args, "shard", None), web_config
        )
    except OSError as exc:
        print(
            f"error: cannot listen on {args.listen_address or config.web.listen_address}: {exc}",
            file=sys.stderr,
        )
        return 1
    stopping = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if stopping.is_set():
            # a second signal: end the calls in flight now (they still send Signal + Delete)
            log.warning("second signal: abandoning the WinRM calls in flight")
            exporter.refresher.abort()
        stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    stopping.wait()
    began = time.monotonic()
    log.info(
        "shutting down: no new WinRM calls; waiting for the calls in flight",
        extra={"max_wait_seconds": round(exporter.refresher.drain_seconds, 1)},
    )
    stopped = exporter.stop()
    log.info(
        "stopped" if stopped else "stopped without waiting for every call",
        extra={"seconds": round(time.monotonic() - began, 3)},
    )
    return 0
