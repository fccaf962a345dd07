"""The agentless TLS source (method: tls) against the lab's SNI listener, over real sockets."""

from __future__ import annotations

import socket
import ssl
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from vmm_cert_exporter.collection import Refresher
from vmm_cert_exporter.config import (
    Config,
    ConfigError,
    HostConfig,
    TlsConfig,
    VmmServerConfig,
    load_config,
    loads_config,
)
from vmm_cert_exporter.failures import CollectError
from vmm_cert_exporter.metrics import SnapshotCollector
from vmm_cert_exporter.snapshot import Snapshot
from vmm_cert_exporter.sources.tls_probe import TlsProber
from vmm_cert_lab.fleet.interfaces import Faults
from vmm_cert_lab.fleet.runner import RunningLab
from vmm_cert_lab.fleet.scenario import lab_host
from vmm_cert_lab.fleet.sni_listener import server_name
from vmm_cert_lab.promstack import Promtool


def prober(lab: RunningLab, timeout: float = 2.0) -> TlsProber:
    assert lab.tls_probe_address is not None
    host, port = lab.tls_probe_address
    return TlsProber(TlsConfig(address=host, port=port, timeout=timeout))


def write_config(lab: RunningLab, directory: Path, **changes: Any) -> Config:
    path = lab.write_config(directory / "exporter.yml")
    data = yaml.safe_load(path.read_text())
    for key, value in changes.items():
        data[key] = value
    path.write_text(yaml.safe_dump(data))
    return load_config(path)


def families(snapshot: Snapshot) -> dict[str, list[tuple[dict[str, str], float]]]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(lambda: snapshot))
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in family.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


def by_host(samples: list[tuple[dict[str, str], float]]) -> dict[str, float]:
    return {labels["host"]: value for labels, value in samples}


# ---- configuration ----------------------------------------------------------------------

BASE = "winrm: {transport: kerberos}\n"


def test_defaults_are_winrm_and_port_443() -> None:
    config = loads_config(BASE + "hosts:\n  - host: hv01.corp.example\n")
    assert config.tls == TlsConfig(address="{host}", port=443, timeout=10.0)
    assert config.hosts == (HostConfig("hv01.corp.example", "hyperv_host", "winrm"),)
    assert config.tls.address_for("hv01.corp.example") == "hv01.corp.example"


def test_methods_per_host_and_per_vmm_server() -> None:
    config = loads_config(
        BASE
        + "vmm_servers:\n  - host: vmm01.corp.example\n    discovered_method: tls\n"
        + "hosts:\n  - host: edge01.dmz.example\n    method: tls\n"
        + "tls:\n  address: '{host}.mgmt.corp.example'\n  port: 8443\n  timeout: 3s\n"
    )
    assert config.vmm_servers == (VmmServerConfig("vmm01.corp.example", True, "tls"),)
    assert config.hosts[0].method == "tls"
    assert config.tls.address_for("hv01.corp.example") == "hv01.corp.example.mgmt.corp.example"
    assert (config.tls.port, config.tls.timeout) == (8443, 3.0)


@pytest.mark.parametrize(
    ("text", "field", "message"),
    [
        ("hosts:\n  - host: a.b.c\n    method: ssh\n", "hosts[0].method", "one of winrm, tls"),
        (
            "vmm_servers:\n  - host: vmm.b.c\n    discover: false\n    discovered_method: tls\n",
            "vmm_servers[0].discovered_method",
            "only used with discover: true",
        ),
        ("hosts: [{host: a.b.c}]\ntls: {port: 0}\n", "tls.port", "from 1 to 65535"),
        ("hosts: [{host: a.b.c}]\ntls: {port: '443'}\n", "tls.port", "integer"),
        ("hosts: [{host: a.b.c}]\ntls: {timeout: 5}\n", "tls.timeout", "add a unit"),
        ("hosts: [{host: a.b.c}]\ntls: {address: 'x:443'}\n", "tls.address", "tls.port"),
        ("hosts: [{host: a.b.c}]\ntls: {address: '{host}{host}'}\n", "tls.address", "at most once"),
        ("hosts: [{host: a.b.c}]\ntls: {sni: x}\n", "tls.sni", "allowed: address, port, timeout"),
    ],
)
def test_bad_tls_settings_get_their_error(text: str, field: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        loads_config(BASE + text)
    assert err.value.field == field
    assert message in err.value.message


def test_ip_addresses_are_accepted_as_the_address() -> None:
    for text, expected in (("127.0.0.1", "127.0.0.1"), ("'[::1]'", "::1"), ("'::1'", "::1")):
        config = loads_config(BASE + f"hosts: [{{host: a.b.c}}]\ntls: {{address: {text}}}\n")
        assert config.tls.address == expected


# ---- the lab's SNI listener and the probe -----------------------------------------------


def test_server_name_is_read_from_a_real_client_hello() -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname="hv07.lab.example")
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    hello = outgoing.read()
    assert server_name(hello) == "hv07.lab.example"
    assert server_name(hello[:20]) is None
    assert server_name(b"GET / HTTP/1.1\r\n\r\n") is None


def test_each_computer_presents_its_current_certificate(demo_lab: RunningLab) -> None:
    probe = prober(demo_lab)
    for fqdn in (lab_host("hv01"), lab_host("HV37"), lab_host("vmm01"), lab_host("hv41")):
        certs = probe.read(fqdn)
        described = demo_lab.model.describe(fqdn)
        assert len(certs) == 1, fqdn
        info = certs[0].info
        assert info.common_name is not None and info.common_name.lower() == fqdn.lower()
        assert info.self_signed
        # the latest NotAfter when there are several (hv41 holds two)
        assert info.not_after.isoformat().replace("+00:00", "Z") == described["not_after"]


def test_a_certificate_that_is_not_the_scvmm_one_counts_as_absent(demo_lab: RunningLab) -> None:
    # hv38's SCVMM certificate was deleted: its listener presents a CA-issued one
    presented = prober(demo_lab).fetch(lab_host("hv38"))
    assert presented.der
    assert prober(demo_lab).read(lab_host("hv38")) == ()


@pytest.mark.parametrize(
    ("faults", "reason"),
    [
        ({"black_hole": True}, "timeout"),
        ({"drip": 0.3}, "timeout"),
        ({"tls_error": True}, "tls"),
        ({"connection_refused": True}, "connect"),
    ],
)
def test_failures_are_classified_and_bounded_by_the_deadline(
    demo_lab: RunningLab, faults: dict[str, Any], reason: str
) -> None:
    fqdn = lab_host("hv05")
    demo_lab.model.set_faults(fqdn, Faults.from_dict(faults))
    try:
        started = time.monotonic()
        with pytest.raises(CollectError) as err:
            prober(demo_lab, timeout=1.5).read(fqdn)
        elapsed = time.monotonic() - started
    finally:
        demo_lab.model.set_faults(fqdn, Faults())
    assert err.value.reason == reason, err.value
    assert elapsed < 1.5 + 0.5


def test_unknown_names_and_closed_ports_are_connect_failures(demo_lab: RunningLab) -> None:
    with pytest.raises(CollectError) as err:
        prober(demo_lab).read(lab_host("nobody"))
    assert err.value.reason == "connect"
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    closed = TlsProber(TlsConfig(address="127.0.0.1", port=port, timeout=1.0))
    with pytest.raises(CollectError) as err:
        closed.read(lab_host("hv01"))
    assert err.value.reason == "connect"
    unresolvable = TlsProber(TlsConfig(address="{host}", port=443, timeout=1.0))
    with pytest.raises(CollectError) as err:
        unresolvable.read("no-such-host.invalid")
    assert err.value.reason == "connect"


# ---- the exporter with method: tls -------------------------------------------------------


@pytest.fixture(scope="module")
def mixed(
    demo_lab: RunningLab, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Snapshot, Snapshot, Refresher]:
    """The demo fleet read twice: all over WinRM, then VMM's computers over TLS."""
    directory = tmp_path_factory.mktemp("mixed")
    winrm_only = Refresher(write_config(demo_lab, directory / "w")).refresh_once()
    vmm = demo_lab.vmm_servers[0]
    config = write_config(
        demo_lab,
        directory / "t",
        vmm_servers=[{"host": vmm, "discover": True, "discovered_method": "tls"}],
        hosts=[{"host": lab_host("lib01"), "role": "library_server", "method": "winrm"}],
    )
    refresher = Refresher(config)
    return winrm_only, refresher.refresh_once(), refresher


def test_tls_hosts_publish_what_tls_can_know(mixed: tuple[Snapshot, Snapshot, Refresher]) -> None:
    winrm_only, snapshot, _ = mixed
    methods = {h.computer.fqdn: h.method for h in snapshot.hosts}
    assert methods[lab_host("vmm01")] == "winrm"  # a VMM server is always read over WinRM
    assert methods[lab_host("lib01")] == "winrm"  # a static entry says so
    assert methods[lab_host("hv01")] == "tls"
    m = families(snapshot)
    w = families(winrm_only)
    # the same NotAfter either way, for every computer with an SCVMM certificate
    tls_after = by_host(m["vmm_cert_not_after_timestamp_seconds"])
    winrm_after = by_host(w["vmm_cert_not_after_timestamp_seconds"])
    assert tls_after == winrm_after
    present = by_host(m["vmm_cert_present"])
    assert present[lab_host("hv01")] == 1
    assert present[lab_host("hv38")] == 0  # deleted: another certificate is presented
    # not knowable over TLS: the store count and the trust verdict
    assert lab_host("hv01") not in by_host(m["vmm_cert_certificates"])
    assert lab_host("hv41") not in by_host(m["vmm_cert_certificates"])
    assert lab_host("hv39") not in by_host(m.get("vmm_cert_trusted", []))
    assert by_host(m["vmm_cert_certificates"])[lab_host("vmm01")] == 1
    info = {(labels["host"], labels["method"]) for labels, _ in m["vmm_cert_info"]}
    assert (lab_host("hv01"), "tls") in info
    assert (lab_host("vmm01"), "winrm") in info
    assert len([h for h, _ in info if h == lab_host("hv41")]) == 1  # only the presented one
    # hv40 is unreachable: a connect failure, counted like any other
    errors = {
        (labels["host"], labels["reason"]): value
        for labels, value in m["vmm_cert_collect_errors_total"]
    }
    assert errors[(lab_host("hv40"), "connect")] == 1
    assert by_host(m["vmm_cert_collect_success"])[lab_host("hv01")] == 1


def test_tls_output_passes_promtool_and_equals_the_fast_path(
    mixed: tuple[Snapshot, Snapshot, Refresher], promtool: Promtool, two_expositions: Any
) -> None:
    _, _, refresher = mixed
    instant = 1_800_000_000.5
    exposition, reference = two_expositions(refresher, instant)
    assert exposition.render(now=instant) == reference()
    result = promtool.check_metrics(reference())
    assert result.returncode == 0, result.stdout


def test_the_lab_config_carries_the_tls_listener(demo_lab: RunningLab, tmp_path: Path) -> None:
    config = write_config(demo_lab, tmp_path)
    assert demo_lab.tls_probe_address == (config.tls.address, config.tls.port)
