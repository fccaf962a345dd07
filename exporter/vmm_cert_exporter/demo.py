"""``vmm-cert-exporter demo`` (what ``make demo`` runs): the lab and the exporter, wired up.

Starts the built-in ``demo`` lab on 127.0.0.1, writes a configuration pointing at it under
``.demo/``, starts the exporter on that configuration and prints every URL. Ctrl-C stops
everything it started.
"""

from __future__ import annotations

import argparse
import logging
import signal
import socket
import threading
from pathlib import Path
from types import FrameType

from vmm_cert_exporter.config import load_config
from vmm_cert_exporter.lab.runner import start_lab
from vmm_cert_exporter.logs import setup_logging
from vmm_cert_exporter.serve import start_exporter

log = logging.getLogger(__name__)

DEMO_DIR = Path(".demo")
EXPORTER_PORT = 9868


def _free_port(preferred: int) -> int:
    """The documented port when it is free, else any free one (the demo must start)."""
    for port in (preferred, 0):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(s.getsockname()[1])
    raise OSError("no free port on 127.0.0.1")


def run(args: argparse.Namespace) -> int:
    setup_logging(args.log_level, args.log_format)
    DEMO_DIR.mkdir(exist_ok=True)
    stopping = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    with start_lab(scenario="demo", state_dir=DEMO_DIR / "lab") as lab:
        config_path = DEMO_DIR / "exporter.yml"
        lab.write_config(config_path)
        config = load_config(config_path)
        exporter = start_exporter(config, f"127.0.0.1:{_free_port(EXPORTER_PORT)}")
        try:
            exporter.refresher.wait_first(timeout=120)
            print(
                "\nvmm-cert-exporter demo is running (Ctrl-C stops everything):\n"
                f"  exporter overview  {exporter.url}/\n"
                f"  metrics            {exporter.url}/metrics\n"
                f"  lab WS-Management  {lab.endpoint_template}\n"
                f"  lab control API    {lab.control_url}\n"
                f"  configuration      {config_path.resolve()}\n",
                flush=True,
            )
            stopping.wait()
        finally:
            exporter.stop()
    return 0
