"""Start a whole lab from Python: the API tests, benchmarks and ``make demo`` use.

with start_lab() as lab:            # demo scenario, plain HTTP, a free port
    lab.write_config("exporter.yaml")
    ...                             # point pywinrm / the exporter at lab.endpoint_template
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import shutil
import tempfile
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import yaml

from vmm_cert_lab.fleet.interfaces import Account, FleetModel
from vmm_cert_lab.fleet.lab_ca import create_lab_tls
from vmm_cert_lab.fleet.latency import NONE, Latency
from vmm_cert_lab.fleet.server import LabServer

if TYPE_CHECKING:
    from vmm_cert_lab.fleet.sni_listener import TlsListener


def parse_listen(listen: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6) on loopback only; ValueError otherwise.

    The lab accepts a published password and has an unauthenticated control API: it must never
    be reachable from another machine.
    """
    host, sep, port_text = listen.rpartition(":")
    if not sep or not port_text.isdigit():
        raise ValueError(f"--listen {listen!r}: expected HOST:PORT, e.g. 127.0.0.1:5985")
    host = host.strip("[]")
    try:
        addr = ipaddress.ip_address(host)
    except ValueError as exc:
        raise ValueError(
            f"--listen {listen!r}: the host must be a loopback IP address "
            "(127.0.0.0/8 or ::1), not a name"
        ) from exc
    if not addr.is_loopback:
        raise ValueError(
            f"--listen {listen!r}: the lab only listens on loopback (127.0.0.0/8 or ::1); "
            "it accepts a published password and its control API has no authentication"
        )
    port = int(port_text)
    if port > 65535:
        raise ValueError(f"--listen {listen!r}: port out of range")
    return str(addr), port


class RunningLab:
    """A started lab: its server, model and the facts a client needs to reach it."""

    def __init__(
        self,
        server: LabServer,
        model: FleetModel,
        state_dir: Path,
        owns_state_dir: bool,
        tls_listener: TlsListener | None = None,
    ) -> None:
        self.server = server
        self.tls_listener = tls_listener  # every computer's certificate by SNI (method: tls)
        self.model = model
        self.state_dir = state_dir
        self._owns_state_dir = owns_state_dir
        self.ca_path: Path | None = server.tls.ca_path if server.tls else None
        self.account: Account = model.accounts()[0]

    @property
    def url(self) -> str:
        """Base URL of the listener, e.g. ``http://127.0.0.1:40123``."""
        return self.server.url

    @property
    def endpoint_template(self) -> str:
        """The exporter's ``winrm.endpoint``: ``{host}`` is replaced by the computer's FQDN."""
        return self.server.url + "/wsman/{host}"

    @property
    def tls_probe_address(self) -> tuple[str, int] | None:
        """``(host, port)`` of the TLS listener presenting each computer's certificate by SNI."""
        return self.tls_listener.address if self.tls_listener is not None else None

    @property
    def control_url(self) -> str:
        return self.server.url + "/lab"

    @property
    def tls(self) -> bool:
        return self.server.tls is not None

    def endpoint(self, fqdn: str) -> str:
        return self.server.endpoint(fqdn)

    @property
    def username(self) -> str:
        """The account as pywinrm takes it: ``DOMAIN\\user``."""
        return f"{self.account.domain}\\{self.account.username}"

    @property
    def vmm_servers(self) -> list[str]:
        """The names the written configuration uses for the model's VMM servers: each one's
        ``config_name`` (an HA server's role name, or an alias), else its FQDN; empty if the
        model does not say."""
        for method in ("vmm_config_names", "vmm_server_fqdns"):
            finder = getattr(self.model, method, None)
            if callable(finder):
                return [str(f) for f in finder()]
        # Fallback for models without vmm_server_fqdns(): look at the listing's roles.
        out = []
        for comp in self.model.list_computers():
            if comp.get("role") == "vmm_server" and isinstance(comp.get("fqdn"), str):
                out.append(comp["fqdn"])
        return out

    def exporter_config(self, password_file: Path) -> dict[str, Any]:
        """The exporter configuration that points at this lab."""
        winrm: dict[str, Any] = {
            "endpoint": self.endpoint_template,
            "transport": "basic",
            "username": self.username,
            "password_file": str(password_file),
            "server_cert_validation": "validate",
            # Basic over plain HTTP is refused by the exporter unless allowed explicitly.
            "allow_unencrypted_basic": not self.tls,
            "timeout": "10s",
        }
        if self.ca_path is not None:
            winrm["ca_trust_path"] = str(self.ca_path)
        config: dict[str, Any] = {
            "winrm": winrm,
            "vmm_servers": [{"host": fqdn, "discover": True} for fqdn in self.vmm_servers],
            "collection": {"interval": "30s", "concurrency": 16},
            "web": {"listen_address": "127.0.0.1:9868"},
        }
        if self.tls_probe_address is not None:
            # for computers switched to method: tls (every name on one port, told apart by SNI)
            host, port = self.tls_probe_address
            config["tls"] = {"address": host, "port": port, "timeout": "5s"}
        return config

    def _receiver_section(self, target: Path) -> dict[str, Any]:
        """The renewal receiver's section: dry-run (it only plans), the lab's Run As account.

        ``vmm-cert-exporter receiver --config`` on the same file then renews against this
        lab; a random bearer token is written beside the config (mode 0600).
        """
        token_file = target.with_name(target.stem + ".token")
        fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(secrets.token_hex(16))
        os.chmod(token_file, 0o600)
        finder = getattr(self.model, "run_as_accounts", None)
        names = [str(n) for n in finder()] if callable(finder) else []
        return {
            "listen_address": "127.0.0.1:9869",
            "bearer_token_file": str(token_file.resolve()),
            "mode": "dry-run",
            "run_as_account": names[0] if names else "VMM Host Admins",
            "journal": str(target.with_name(target.stem + ".sqlite").resolve()),
        }

    def write_config(self, path: str | os.PathLike[str]) -> Path:
        """Write a ready config (exporter and receiver sections) and its secrets (0600)."""
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        password_file = target.with_name(target.stem + ".password")
        fd = os.open(password_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(self.account.password)
        os.chmod(password_file, 0o600)  # an existing file keeps its old mode otherwise
        config = self.exporter_config(password_file.resolve())
        config["receiver"] = self._receiver_section(target)
        text = yaml.safe_dump(config, sort_keys=False)
        header = f"# Written by the vmm-cert-exporter lab listening at {self.url}\n"
        target.write_text(header + text, encoding="utf-8")
        return target

    def stop(self) -> None:
        if self.tls_listener is not None:
            self.tls_listener.stop()
        self.server.stop()
        if self._owns_state_dir:
            shutil.rmtree(self.state_dir, ignore_errors=True)

    def __enter__(self) -> RunningLab:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def start_lab(
    scenario: str = "demo",
    hosts: int | None = None,
    seed: int = 1,
    listen: str = "127.0.0.1:0",
    tls: bool = False,
    state_dir: str | os.PathLike[str] | None = None,
    fleet: FleetModel | None = None,
    *,
    receive_chunk: int = 8192,
    max_operation_wait: float = 60.0,
    tls_listener: bool = True,
    latency: Latency = NONE,
    locale: str | None = None,
    kerberos_keytab: Path | None = None,
) -> RunningLab:
    """Load the scenario (or use ``fleet``), start serving, return the running lab.

    Usable as a context manager (``with start_lab() as lab:``) or stopped with ``.stop()``.
    ``state_dir`` receives the lab CA; a temporary one is made (and removed) if omitted.
    ``tls_listener`` also starts the TLS listener that presents every computer's current
    certificate by SNI (``.tls_probe_address``), for models that are a ``Fleet``.
    ``latency`` is how long each WS-Management request takes (``lab.latency.WINDOWS``).
    ``locale`` (``"en-US"``, ``"ja-JP"``) is the language of VMM's display strings; it
    overrides the scenario's ``locale`` (a given ``fleet`` must be a ``Fleet``).
    ``kerberos_keytab`` holds the computers' ``HTTP/<fqdn>`` keys (``vmm_cert_lab.kdc``): with
    it the listeners accept Kerberos.
    """
    host, port = parse_listen(listen)
    if fleet is None:
        # Imported here: the model is another module's job and heavy to import.
        from vmm_cert_lab.fleet.scenario import load_fleet

        fleet = load_fleet(scenario, hosts=hosts, seed=seed, locale=locale)
    elif locale is not None:
        set_locale = getattr(fleet, "set_locale", None)
        if not callable(set_locale):
            raise ValueError("locale: this fleet model has no display language to set")
        set_locale(locale)
    owns = state_dir is None
    directory = Path(tempfile.mkdtemp(prefix="vmm-lab-")) if state_dir is None else Path(state_dir)
    directory.mkdir(parents=True, exist_ok=True)
    lab_tls = create_lab_tls(directory) if tls else None
    server = LabServer(
        fleet,
        host=host,
        port=port,
        tls=lab_tls,
        receive_chunk=receive_chunk,
        max_operation_wait=max_operation_wait,
        latency=latency,
        kerberos_keytab=kerberos_keytab,
    )
    server.start()
    from vmm_cert_lab.fleet.model import Fleet
    from vmm_cert_lab.fleet.sni_listener import TlsListener

    listener = None
    if tls_listener and isinstance(fleet, Fleet):
        # the agentless TLS source's counterpart: a free port on the same loopback address
        listener = TlsListener(fleet, host=host)
        listener.start()
    return RunningLab(server, fleet, directory, owns, listener)
