"""The WinRM source (method: winrm) against the lab's demo fleet, over real pywinrm."""

from __future__ import annotations

import dataclasses
import threading
import time
from typing import Any

import pytest

from vmm_cert_exporter.config import Config, load_config
from vmm_cert_exporter.failures import CollectError
from vmm_cert_exporter.inventory import fqdn_key
from vmm_cert_exporter.results import CertificateRecord, CertificatesResult
from vmm_cert_exporter.sources.winrm import WinRMSource, stored_certificates
from vmm_cert_exporter.trust import trust_of
from vmm_cert_lab.fleet.interfaces import Faults
from vmm_cert_lab.fleet.runner import RunningLab
from vmm_cert_lab.fleet.scenario import lab_host


@pytest.fixture(scope="module")
def config(demo_lab: RunningLab, tmp_path_factory: pytest.TempPathFactory) -> Config:
    return load_config(demo_lab.write_config(tmp_path_factory.mktemp("cfg") / "exporter.yml"))


@pytest.fixture(scope="module")
def source(config: Config) -> WinRMSource:
    return WinRMSource(config.winrm)


def scvmm_thumbprints(lab: RunningLab, fqdn: str) -> set[str]:
    """What the lab holds in the computer's My store, by its own description."""
    described = lab.model.describe(fqdn)
    return {c["thumbprint"].upper() for c in described["certificates"] if c["scvmm"]}


# ---- reading a computer ------------------------------------------------------------------


def test_read_returns_every_scvmm_certificate_of_the_store(
    demo_lab: RunningLab, source: WinRMSource
) -> None:
    for fqdn in (lab_host("hv01"), lab_host("HV41"), lab_host("vmm01"), lab_host("lib01")):
        certificates = source.read(fqdn)
        assert {c.info.thumbprint for c in certificates} == scvmm_thumbprints(demo_lab, fqdn), fqdn
        for stored in certificates:
            assert stored.friendly_name.upper() == f"SCVMM_CERTIFICATE_KEY_CONTAINER{fqdn}".upper()
            assert stored.has_private_key
    assert len(source.read(lab_host("hv41"))) == 2  # a leftover beside the current one


def test_a_store_without_the_scvmm_certificate_reads_as_empty(source: WinRMSource) -> None:
    assert source.read(lab_host("hv38")) == ()  # deleted by mistake in the demo


def test_an_unparsable_scvmm_certificate_is_a_parse_failure() -> None:
    def record(friendly_name: str, der: bytes) -> CertificateRecord:
        return CertificateRecord("My", "AB" * 20, friendly_name, True, der)

    other = record("Remote Desktop", b"not DER either")
    assert stored_certificates(CertificatesResult(lab_host("hv01"), (other,))) == ()
    broken = record(lab_host("SCVMM_CERTIFICATE_KEY_CONTAINERhv01"), b"not DER")
    with pytest.raises(CollectError) as err:
        stored_certificates(CertificatesResult(lab_host("hv01"), (other, broken)))
    assert err.value.reason == "parse"
    assert "AB" * 20 in err.value.detail


# ---- the VMM server ----------------------------------------------------------------------


def test_discover_returns_what_vmm_manages(demo_lab: RunningLab, source: WinRMSource) -> None:
    vmm = demo_lab.vmm_servers[0]
    view = source.discover(vmm)
    assert view.vmm_server == vmm
    assert view.reported_name == lab_host("vmm01")
    expected = {
        fqdn_key(c["fqdn"])
        for c in demo_lab.model.list_computers()
        if fqdn_key(c["managed_by"]) == fqdn_key(vmm)
    }
    assert {c.key for c in view.managed} == expected
    by_key = {c.key: c for c in view.managed}
    assert by_key[lab_host("vmm01")].role == "vmm_server"  # VMM lists itself
    assert by_key[lab_host("lib01")].role == "library_server"
    assert (by_key[lab_host("hv01")].role, by_key[lab_host("hv01")].vmm_state) == (
        "hyperv_host",
        "Responding",
    )
    assert by_key[lab_host("hv37")].vmm_state == "NotResponding"
    assert by_key[lab_host("hv38")].vmm_state == "AccessDenied"


def test_trusted_copies_judge_each_computer(demo_lab: RunningLab, source: WinRMSource) -> None:
    vmm = demo_lab.vmm_servers[0]
    view = source.discover(vmm)
    copies = source.trusted_copies(vmm)
    hv39 = demo_lab.model.describe(lab_host("hv39"))["trusted"]
    assert copies.by_name[lab_host("hv39")] == {hv39["thumbprint"].upper()}
    by_key = {c.key: c for c in view.managed}
    verdicts = {}
    for name in ("hv01", "hv39", "hv41", "lib01"):
        stored = source.read(lab_host(name))
        current = max(stored, key=lambda c: c.info.not_after)
        verdicts[name] = trust_of(by_key[lab_host(name)], current, copies)
    # hv39's copy is an older certificate; hv41's is its current one, not the leftover
    assert verdicts == {"hv01": True, "hv39": False, "hv41": True, "lib01": True}


# ---- failures ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("faults", "reason"),
    [
        ({"language_mode": "ConstrainedLanguage"}, "language_mode"),
        ({"script_error": True}, "script"),
        ({"garbage_stdout": True}, "parse"),
        ({"http_401": True}, "auth"),
        ({"connection_refused": True}, "connect"),
    ],
)
def test_every_operation_reports_the_failure_reason(
    demo_lab: RunningLab, source: WinRMSource, faults: dict[str, Any], reason: str
) -> None:
    vmm = demo_lab.vmm_servers[0]
    demo_lab.model.set_faults(vmm, Faults.from_dict(faults))
    try:
        for operation in (source.read, source.discover, source.trusted_copies):
            with pytest.raises(CollectError) as err:
                operation(vmm)
            assert err.value.reason == reason, (operation.__name__, err.value)
    finally:
        demo_lab.model.set_faults(vmm, Faults())


def test_abort_ends_the_calls_in_flight_and_refuses_new_ones(
    demo_lab: RunningLab, config: Config
) -> None:
    source = WinRMSource(dataclasses.replace(config.winrm, timeout=20.0))
    fqdn = lab_host("hv05")
    demo_lab.model.set_faults(fqdn, Faults(black_hole=True))
    errors: list[CollectError] = []

    def read() -> None:
        try:
            source.read(fqdn)
        except CollectError as exc:
            errors.append(exc)

    try:
        reader = threading.Thread(target=read)
        reader.start()
        time.sleep(0.5)  # the request is on its way
        started = time.monotonic()
        source.abort()
        reader.join(10)
        assert not reader.is_alive()
        # the Create never answers: it gets the Signal + Delete allowance (5 s here) to name
        # the shell Delete would free, then ends, far below the 20 s deadline
        assert time.monotonic() - started < 8.0
    finally:
        demo_lab.model.set_faults(fqdn, Faults())
    assert [e.reason for e in errors] == ["timeout"]
    assert "shutting down" in errors[0].detail
    with pytest.raises(CollectError) as err:
        source.read(lab_host("hv01"))
    assert "not started" in err.value.detail
    assert source.max_call_seconds > 20.0
