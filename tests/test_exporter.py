"""The exporter against the lab's demo fleet, over real pywinrm: every case of the scenario."""

from __future__ import annotations

import gzip
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from vmm_cert_exporter.collection import Refresher
from vmm_cert_exporter.config import Config, load_config
from vmm_cert_exporter.metrics import SnapshotCollector
from vmm_cert_exporter.snapshot import Snapshot
from vmm_cert_lab.fleet.interfaces import Faults
from vmm_cert_lab.fleet.runner import RunningLab, start_lab
from vmm_cert_lab.fleet.scenario import LAB_DOMAIN, lab_host
from vmm_cert_lab.promstack import Promtool

DAY = 86400.0


def lab_config(lab: RunningLab, directory: Path, **winrm: Any) -> Config:
    """The lab's own config, with winrm overrides (e.g. a short timeout for fault tests)."""
    path = lab.write_config(directory / "exporter.yml")
    data = yaml.safe_load(path.read_text())
    data["winrm"].update(winrm)
    path.write_text(yaml.safe_dump(data))
    return load_config(path)


def render(refresher: Refresher) -> str:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(lambda: refresher.snapshot, lambda: refresher.histogram))
    return generate_latest(registry).decode()


def samples(text: str) -> dict[str, dict[str, float]]:
    """{sample name: {host: value}} for per-host series (labels other than host ignored)."""
    out: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if "host" in s.labels:
                out.setdefault(s.name, {})[s.labels["host"]] = s.value
    return out


@pytest.fixture(scope="module")
def demo(
    demo_lab: RunningLab, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Refresher, Snapshot, str]:
    refresher = Refresher(lab_config(demo_lab, tmp_path_factory.mktemp("cfg")))
    snapshot = refresher.refresh_once()
    return refresher, snapshot, render(refresher)


def test_every_demo_case_has_the_right_value(demo: tuple[Refresher, Snapshot, str]) -> None:
    _, snapshot, text = demo
    m = samples(text)
    now = time.time()
    expiry = m["vmm_cert_expiry_seconds"]
    days = {h: v / DAY for h, v in expiry.items()}
    # 42 computers VMM reports + lib01: 43, every one in the inventory
    assert len(snapshot.hosts) == 43
    # healthy: present, one certificate, trusted, more than a year left
    for n in range(1, 31):
        host = lab_host(f"hv{n:02d}")
        assert m["vmm_cert_present"][host] == 1
        assert m["vmm_cert_certificates"][host] == 1
        assert m["vmm_cert_trusted"][host] == 1
        assert days[host] > 30
        assert m["vmm_cert_collect_success"][host] == 1
    # the cohort: same NotAfter, within 30 days
    cohort = {m["vmm_cert_not_after_timestamp_seconds"][lab_host(f"hv{n}")] for n in range(31, 36)}
    assert len(cohort) == 1
    assert 7 < (cohort.pop() - now) / DAY <= 30
    assert 0 < days[lab_host("hv36")] <= 7
    assert days[lab_host("hv37")] < 0  # expired: negative
    # deleted: read, none there; no expiry series, no trust verdict
    assert m["vmm_cert_present"][lab_host("hv38")] == 0
    assert m["vmm_cert_certificates"][lab_host("hv38")] == 0
    assert lab_host("hv38") not in expiry
    assert lab_host("hv38") not in m["vmm_cert_trusted"]
    assert m["vmm_cert_trusted"][lab_host("hv39")] == 0  # TrustedPeople copy does not match
    # unreachable: never read, so no present/expiry, and a connect error
    assert lab_host("hv40") not in m["vmm_cert_present"]
    assert lab_host("hv40") not in expiry
    assert m["vmm_cert_collect_success"][lab_host("hv40")] == 0
    assert m["vmm_cert_collect_errors_total"][lab_host("hv40")] == 1
    assert m["vmm_cert_certificates"][lab_host("hv41")] == 2  # duplicated
    # the VMM server itself: within 30 days; no self-copy in TrustedPeople, so no verdict
    vmm = lab_host("vmm01")
    assert 7 < days[vmm] <= 30
    assert vmm not in m["vmm_cert_trusted"]
    assert m["vmm_cert_collect_success"][vmm] == 1


def test_roles_info_and_vmm_states(demo: tuple[Refresher, Snapshot, str]) -> None:
    _, _, text = demo
    roles: dict[str, str] = {}
    states: dict[str, str] = {}
    infos: dict[str, list[dict[str, str]]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "vmm_cert_present":
                roles[s.labels["host"]] = s.labels["role"]
            if s.name == "vmm_managed_computer_state":
                states[s.labels["host"]] = s.labels["state"]
                assert s.labels["vmm_server"] == lab_host("vmm01")
            if s.name == "vmm_cert_info":
                infos.setdefault(s.labels["host"], []).append(s.labels)
    assert roles[lab_host("vmm01")] == "vmm_server"
    assert roles[lab_host("lib01")] == "library_server"
    assert roles[lab_host("hv01")] == "hyperv_host"
    assert states[lab_host("hv01")] == "Responding"
    assert states[lab_host("hv38")] == "AccessDenied"
    assert states[lab_host("hv40")] == "NotResponding"
    info = infos[lab_host("hv01")][0]
    assert info["self_signed"] == "true"
    assert info["subject"] == info["issuer"] == f"CN=hv01.{LAB_DOMAIN}"
    assert info["key_algorithm"] == "RSA"
    assert len(info["thumbprint"]) == 40
    assert len(infos[lab_host("hv41")]) == 2


def test_every_family_has_help_and_passes_promtool(
    demo: tuple[Refresher, Snapshot, str], promtool: Promtool
) -> None:
    _, _, text = demo
    for family in text_string_to_metric_families(text):
        assert family.documentation, family.name
    result = promtool.check_metrics(text)
    assert result.returncode == 0, result.stdout
    assert "vmm_cert_exporter_build_info" in text
    assert "vmm_cert_exporter_refresh_duration_seconds_bucket" in text


def test_promtool_check_metrics_can_fail(promtool: Promtool) -> None:
    bad = "# TYPE foo_total counter\nfoo_total 1\n# TYPE bar counter\nbar 1\n"
    result = promtool.check_metrics(bad)
    assert result.returncode != 0


def test_no_shell_left_open(demo: tuple[Refresher, Snapshot, str], demo_lab: RunningLab) -> None:
    assert demo_lab.server.stats()["open_shells_total"] == 0


def test_credentials_never_in_metrics(
    demo: tuple[Refresher, Snapshot, str], demo_lab: RunningLab
) -> None:
    _, _, text = demo
    assert demo_lab.account.password not in text
    assert "svc-vmmcert" not in text


# ---- faults -------------------------------------------------------------------------------

FAULT_CASES: list[tuple[str, dict[str, Any], str | None]] = [
    ("hv01", {"black_hole": True}, "timeout"),
    ("hv02", {"drip": 0.4}, "timeout"),
    ("hv03", {"receive_timeout": True}, "timeout"),
    ("hv04", {"http_401": True}, "auth"),
    ("hv05", {"access_denied": True}, "auth"),
    ("hv06", {"tls_error": True}, "connect"),  # over plain HTTP the garbage is no HTTP at all
    ("hv07", {"garbage_stdout": True}, "parse"),
    ("hv08", {"script_error": True}, "script"),
    ("hv09", {"progress_only_stderr": True}, None),  # progress records are not errors
    ("hv10", {"latency": 0.3}, None),
    ("hv11", {"connection_refused": True}, "connect"),
]


@pytest.fixture()
def fresh_lab(make_lab: Callable[..., RunningLab]) -> RunningLab:
    return make_lab(max_operation_wait=1.0)


def test_each_fault_maps_to_its_reason_and_never_holds_the_others(
    fresh_lab: RunningLab, tmp_path: Path, promtool: Promtool
) -> None:
    for name, faults, _ in FAULT_CASES:
        fresh_lab.model.set_faults(lab_host(name), Faults.from_dict(faults))
    timeout = 3.0
    refresher = Refresher(lab_config(fresh_lab, tmp_path, timeout=f"{timeout:g}s"))
    started = time.monotonic()
    snapshot = refresher.refresh_once()
    elapsed = time.monotonic() - started
    by_host = {h.computer.fqdn: h for h in snapshot.hosts}
    for name, _, reason in FAULT_CASES:
        host = by_host[lab_host(name)]
        assert host.last_error_reason == reason, (name, host.last_error)
        assert host.last_ok is (reason is None), name
    # the bad hosts run side by side: the refresh lasts about one deadline (plus the short
    # Signal/Delete allowance), not the sum of them
    assert elapsed < timeout + 1.5 + 4.0, elapsed
    # healthy computers were read in the same refresh
    assert by_host[lab_host("hv20")].last_ok
    # nothing leaked: every shell we opened was deleted (a black-holed Delete is cleaned up
    # by the lab when the connection drops, or counted here)
    result = promtool.check_metrics(render(refresher))
    assert result.returncode == 0, result.stdout


def test_tls_validation_failure_is_tls(tmp_path: Path) -> None:
    with start_lab(scenario="demo", tls=True, state_dir=tmp_path / "lab") as lab:
        # a trust store that does not hold the lab CA: validation must fail, as tls
        other = tmp_path / "other-ca.pem"
        from vmm_cert_lab.fleet.lab_ca import create_lab_tls

        other_tls = create_lab_tls(tmp_path / "other")
        other.write_bytes(Path(other_tls.ca_path).read_bytes())
        refresher = Refresher(lab_config(lab, tmp_path, ca_trust_path=str(other)))
        snapshot = refresher.refresh_once()
        assert {h.last_error_reason for h in snapshot.hosts} == {"tls"}


def test_https_with_the_lab_ca_and_a_tls_fault(tmp_path: Path) -> None:
    with start_lab(scenario="demo", tls=True, state_dir=tmp_path / "lab") as lab:
        lab.model.set_faults(lab_host("hv02"), Faults(tls_error=True))
        refresher = Refresher(lab_config(lab, tmp_path))
        by_host = {h.computer.fqdn: h for h in refresher.refresh_once().hosts}
        assert by_host[lab_host("hv01")].last_ok
        assert by_host[lab_host("hv02")].last_error_reason == "tls"
        # the demo's refused host: over HTTPS the lab can only reset after the handshake,
        # which must still read as a connection problem, not a certificate one
        assert by_host[lab_host("hv40")].last_error_reason == "connect"


def test_ntlm_with_message_encryption(tmp_path: Path) -> None:
    with start_lab(scenario="demo", state_dir=tmp_path / "lab") as lab:
        config = lab_config(lab, tmp_path, transport="ntlm", allow_unencrypted_basic=False)
        snapshot = Refresher(config).refresh_once()
        ok = [h for h in snapshot.hosts if h.last_ok]
        assert len(ok) == 42  # all but the unreachable one
        assert lab.server.stats()["open_shells_total"] == 0


def test_auth_failure_is_not_retried_in_the_same_refresh(
    fresh_lab: RunningLab, tmp_path: Path
) -> None:
    fresh_lab.model.set_faults(lab_host("vmm01"), Faults(http_401=True))
    refresher = Refresher(lab_config(fresh_lab, tmp_path))
    snapshot = refresher.refresh_once()
    vmm = next(h for h in snapshot.hosts if h.computer.fqdn == lab_host("vmm01"))
    # list-managed-computers failed with 401: neither TrustedPeople nor the store was tried
    assert vmm.errors_total == {"auth": 1}
    assert not vmm.last_ok


def test_a_computer_removed_from_vmm_leaves_metrics(fresh_lab: RunningLab, tmp_path: Path) -> None:
    refresher = Refresher(lab_config(fresh_lab, tmp_path))
    refresher.refresh_once()
    assert f'host="hv05.{LAB_DOMAIN}"' in render(refresher)
    fresh_lab.model.remove_computer(lab_host("hv05"))
    refresher.refresh_once()
    text = render(refresher)
    assert f'host="hv05.{LAB_DOMAIN}"' not in text
    assert f'host="hv06.{LAB_DOMAIN}"' in text


def test_vmm_unreachable_keeps_its_computers(fresh_lab: RunningLab, tmp_path: Path) -> None:
    refresher = Refresher(lab_config(fresh_lab, tmp_path))
    first = refresher.refresh_once()
    fresh_lab.model.set_faults(lab_host("vmm01"), Faults(connection_refused=True))
    second = refresher.refresh_once()
    assert {h.computer.key for h in second.hosts} == {h.computer.key for h in first.hosts}
    # the expiry of a host survives its own unreachability too
    fresh_lab.model.set_faults(lab_host("hv31"), Faults(connection_refused=True))
    third = refresher.refresh_once()
    hv31 = next(h for h in third.hosts if h.computer.fqdn == lab_host("hv31"))
    assert not hv31.last_ok and hv31.present is True and hv31.current is not None


def test_renewal_shows_at_the_next_refresh(fresh_lab: RunningLab, tmp_path: Path) -> None:
    refresher = Refresher(lab_config(fresh_lab, tmp_path))
    before = samples(render_after(refresher))["vmm_cert_expiry_seconds"][lab_host("hv36")]
    fresh_lab.model.renew(lab_host("hv36"))
    after = samples(render_after(refresher))["vmm_cert_expiry_seconds"][lab_host("hv36")]
    assert before < 7 * DAY < 365 * DAY < after


def render_after(refresher: Refresher) -> str:
    refresher.refresh_once()
    return render(refresher)


# ---- HTTP ---------------------------------------------------------------------------------


def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def test_http_endpoints(demo_lab: RunningLab, tmp_path: Path) -> None:
    from vmm_cert_exporter.serve import start_exporter

    config = lab_config(demo_lab, tmp_path)
    exporter = start_exporter(config, "127.0.0.1:0")
    try:
        assert _get(exporter.url + "/-/healthy")[0] == 200
        assert exporter.refresher.wait_first(timeout=60)
        assert _get(exporter.url + "/-/ready")[0] == 200
        status, headers, body = _get(exporter.url + "/metrics", {"Accept-Encoding": "gzip"})
        assert status == 200
        assert headers.get("Content-Encoding") == "gzip"
        assert b"vmm_cert_expiry_seconds" in gzip.decompress(body)
        status, headers, body = _get(exporter.url + "/")
        page = body.decode()
        assert status == 200 and headers["Content-Type"].startswith("text/html")
        assert lab_host("hv38") in page and "missing: " in page and "not trusted: " in page
        # problems first: the expired host, then the one within 7 days, then the healthy ones
        assert (
            page.index(lab_host("hv37"))
            < page.index(lab_host("hv36"))
            < page.index(lab_host("hv01"))
        )
        assert _get(exporter.url + "/nope")[0] == 404
    finally:
        exporter.stop()


def test_ready_only_after_the_first_refresh(tmp_path: Path) -> None:
    from vmm_cert_exporter.serve import start_exporter

    with start_lab(scenario="demo", state_dir=tmp_path / "lab") as lab:
        lab.model.set_faults(lab_host("vmm01"), Faults(latency=0.3))
        exporter = start_exporter(lab_config(lab, tmp_path), "127.0.0.1:0")
        try:
            assert _get(exporter.url + "/-/ready")[0] == 503
            assert _get(exporter.url + "/metrics")[0] == 200  # served at once, even empty
            assert exporter.refresher.wait_first(timeout=60)
            assert _get(exporter.url + "/-/ready")[0] == 200
        finally:
            exporter.stop()


def test_fast_exposition_equals_the_reference_collector(
    demo: tuple[Refresher, Snapshot, str], two_expositions: Any
) -> None:
    """The cached /metrics path must produce exactly what generate_latest would."""
    refresher, _, _ = demo
    instant = 1_800_000_000.25
    exposition, reference = two_expositions(refresher, instant)
    assert exposition.render(now=instant) == reference()
    assert gzip.decompress(exposition.render_gzip(now=instant)) == reference()
    # a new snapshot (a refresh) is picked up, not served stale from the cache
    refresher.refresh_once()
    assert exposition.render(now=instant) == reference()


def test_label_values_are_escaped_like_prometheus_client() -> None:
    from vmm_cert_exporter.metrics import _escape_label_value

    registry = CollectorRegistry(auto_describe=False)
    from prometheus_client.core import GaugeMetricFamily

    value = 'a"b\\c\nd'
    family = GaugeMetricFamily("x", "x", labels=["host"])
    family.add_metric([value], 1.0)

    class One:
        def collect(self):
            return [family]

    registry.register(One())
    assert f'x{{host="{_escape_label_value(value)}"}} 1.0' in generate_latest(registry).decode()


def test_unchanged_certificates_are_kept_from_the_last_refresh(
    lab: RunningLab, tmp_path: Path
) -> None:
    """A refresh holds one copy of the fleet's certificates: an unchanged store keeps the
    last snapshot's objects, a renewed one gets the new certificate."""
    refresher = Refresher(lab_config(lab, tmp_path))
    before = {h.computer.fqdn: h for h in refresher.refresh_once().hosts}
    renewed = lab_host("hv01")
    lab.model.renew(renewed)
    after = {h.computer.fqdn: h for h in refresher.refresh_once().hosts}
    held = [f for f, h in after.items() if h.certificates and f != renewed]
    assert held and all(after[f].certificates is before[f].certificates for f in held)
    old, new = before[renewed].current, after[renewed].current
    assert old is not None and new is not None
    assert new.info.thumbprint != old.info.thumbprint
