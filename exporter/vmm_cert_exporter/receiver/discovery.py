"""The receiver's inventory: the configured computers plus what each VMM server manages.

Built by the exporter's own code (``inventory.view_from_result`` and ``build_inventory``),
so an alert's ``host`` label names exactly the computers the exporter publishes. The
receiver asks every configured VMM server for its managed computers, because renewing a
computer needs to know which VMM server re-registers it; computers of a server with
``discover: false`` are only kept when they are also configured under ``hosts`` (the VMM
server's own names, its cluster nodes included, are always kept).

Refreshed in the background every ``collection.interval``; a VMM server that cannot be read
keeps its last view (as in the exporter). Webhook requests never cause WinRM calls. With
``census`` on (the running receiver), each refresh also learns every computer's NotAfter
(``census.read_census``: two scripts per VMM server) for the cohort projections and
``renew_ahead``, then calls the ``listeners``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import replace

from vmm_cert_exporter.config import Config
from vmm_cert_exporter.failures import CollectError
from vmm_cert_exporter.inventory import Inventory, VmmView, build_inventory, fqdn_key
from vmm_cert_exporter.inventory import view_from_result as _view
from vmm_cert_exporter.powershell import render_script
from vmm_cert_exporter.receiver.census import Holding, read_census
from vmm_cert_exporter.receiver.runbook import ScriptRunner
from vmm_cert_exporter.results import ScriptOutputError, parse_managed_computers

log = logging.getLogger(__name__)


def read_view(runner: ScriptRunner, vmm_server: str) -> VmmView:
    """``list-managed-computers`` on one VMM server; CollectError on any failure."""
    output = runner.run(vmm_server, render_script("list-managed-computers"))
    failure = output.failure()
    if failure is not None:
        raise failure
    try:
        return _view(vmm_server, parse_managed_computers(output.stdout))
    except ScriptOutputError as exc:
        raise CollectError("parse", str(exc)) from exc


class InventoryCache:
    """The current inventory; ``loaded`` once the first discovery pass has finished."""

    def __init__(self, config: Config, runner: ScriptRunner, *, census: bool = False) -> None:
        self._config = config
        self._runner = runner
        self._census = census
        self.holdings: list[Holding] = []
        self.census_errors: dict[str, str] = {}
        self.listeners: list[Callable[[], None]] = []
        self._views: dict[str, VmmView] = {}
        self.errors: dict[str, str] = {}
        self.inventory: Inventory = build_inventory(config, ())
        self.loaded = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def refresh(self) -> Inventory:
        static = {fqdn_key(h.host) for h in self._config.hosts}
        for server in self._config.vmm_servers:
            try:
                view = read_view(self._runner, server.host)
            except CollectError as exc:
                self.errors[server.host] = str(exc)
                log.warning(
                    "discovery failed; keeping the last view",
                    extra={"host": server.host, "reason": exc.reason, "detail": exc.detail},
                )
                continue
            self.errors.pop(server.host, None)
            if not server.discover:
                # still read, to learn which static hosts this server manages; the VMM
                # server's own names stay, so that none of them is ever taken for a host
                keep = static | {fqdn_key(server.host)}
                view = replace(
                    view,
                    managed=tuple(c for c in view.managed if c.key in keep or c.is_vmm_server),
                )
            self._views[fqdn_key(server.host)] = view
        self.inventory = build_inventory(self._config, self._views.values())
        if self._census:
            self.holdings, self.census_errors = read_census(self._runner, self.inventory)
        self.loaded.set()
        log.info(
            "inventory refreshed",
            extra={"computers": len(self.inventory.computers), "failed_servers": len(self.errors)},
        )
        for listener in self.listeners:
            listener()
        return self.inventory

    def view_for(self, vmm_server: str | None) -> VmmView | None:
        if vmm_server is None:
            return None
        return self.inventory.vmm_views.get(fqdn_key(vmm_server))

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="inventory", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.refresh()
            except Exception:  # a bug must not end the loop; the last inventory stays
                log.exception("inventory refresh crashed")
                self.loaded.set()
            self._stop.wait(self._config.collection.interval)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
