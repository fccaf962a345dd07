"""Kerberos against a real KDC: the product's three ways to log on, message encryption over
HTTP, channel binding over HTTPS, renewal, a KDC that goes down, an unknown SPN, an expired
password, clock skew and a computer that refuses NTLM, through the real pywinrm stack
(pykerberos) and the lab's real acceptor (pyspnego + GSSAPI, with the computers' keytab).
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from vmm_cert_exporter import failures, kerberos
from vmm_cert_exporter.config import WinRMConfig, load_config
from vmm_cert_exporter.failures import CollectError
from vmm_cert_exporter.powershell import render_script
from vmm_cert_exporter.remoting import WinRMRunner
from vmm_cert_lab.fleet.runner import RunningLab
from vmm_cert_lab.fleet.scenario import load_fleet
from vmm_cert_lab.kdc import KDC
from vmm_cert_lab.processes import EXPORTER, Processes, wait_until

pytestmark = pytest.mark.e2e

PASSWORD = "Exp0rter-secret"
SCRIPT = render_script("collect-certificates")


@dataclass
class Realm:
    kdc: KDC
    lab: RunningLab
    principal: str
    keytab: Path
    directory: Path

    def config(self, **winrm: Any) -> WinRMConfig:
        """The lab's exporter configuration with ``transport: kerberos`` and ``winrm``."""
        password_file = self.directory / "password"
        password_file.write_text(PASSWORD)
        password_file.chmod(0o600)
        data = self.lab.exporter_config(password_file)
        section = data["winrm"]
        for key in ("username", "password_file", "allow_unencrypted_basic"):
            section.pop(key)
        section["transport"] = "kerberos"
        section.update({k: v for k, v in winrm.items() if v is not None})
        if section.get("password_file") == "password":
            section["password_file"] = str(password_file)
        path = self.directory / f"exporter-{len(list(self.directory.glob('exporter-*')))}.yml"
        path.write_text(yaml.safe_dump(data))
        return load_config(path).winrm

    def keytab_config(self, **winrm: Any) -> WinRMConfig:
        return self.config(username=self.principal, keytab_file=str(self.keytab), **winrm)

    def computers(self) -> list[str]:
        return [c["fqdn"] for c in self.lab.model.list_computers()]

    def kinit(self, name: str) -> str:
        """A ticket for the principal in a cache of its own, made as a user would (``kinit``
        with the password); returns the cache's name."""
        ccache = f"FILE:{self.directory / name}"
        subprocess.run(
            ["kinit", "-c", ccache, self.principal],
            input=PASSWORD.encode() + b"\n",
            env=self.kdc.env(),
            check=True,
            capture_output=True,
        )
        return ccache


@pytest.fixture(scope="module")
def shared(
    tmp_path_factory: pytest.TempPathFactory, open_lab: Callable[..., Any]
) -> Iterator[Realm]:
    """One KDC and one Kerberos lab for the tests that change neither (or put back what
    they change): each test's own realm would cost a KDC, a database and a lab apiece."""
    root = tmp_path_factory.mktemp("kerberos")
    with pytest.MonkeyPatch.context() as env:
        for name in ("KRB5CCNAME", "KRB5_KTNAME", "KRB5_CLIENT_KTNAME", kerberos.MANAGED_ENV):
            env.delenv(name, raising=False)
        with KDC(root / "kdc") as kdc:
            env.setenv("KRB5_CONFIG", str(kdc.krb5_conf))
            env.setenv("KRB5_KDC_PROFILE", str(kdc.kdc_conf))
            directory = root / "realm"
            directory.mkdir()
            principal = kdc.add_user("svc-exporter", PASSWORD)
            keytab = kdc.user_keytab(principal, directory / "svc-exporter.keytab")
            fleet = load_fleet("demo")
            kdc.add_computers([c["fqdn"] for c in fleet.list_computers()], _computers(directory))
            with open_lab(root / "lab", fleet=fleet, kerberos_keytab=_computers(directory)) as lab:
                try:
                    yield Realm(kdc, lab, principal, keytab, directory)
                finally:
                    kerberos.stop_all()


@pytest.fixture(autouse=True)
def _logins_end(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Each test starts with no Kerberos login in this process, and leaves none."""
    monkeypatch.delenv("KRB5CCNAME", raising=False)
    yield
    kerberos.stop_all()


def _computers(directory: Path) -> Path:
    return directory / "computers.keytab"


@pytest.fixture
def realm(shared: Realm) -> Realm:
    return shared


def _other_account(realm: Realm, name: str, max_life: str | None = None) -> Realm:
    """Another account of the shared realm (its own ticket lifetime, its own password)."""
    principal = realm.kdc.add_user(name, PASSWORD, max_life=max_life)
    keytab = realm.kdc.user_keytab(principal, realm.directory / f"{name}.keytab")
    return Realm(realm.kdc, realm.lab, principal, keytab, realm.directory)


@pytest.fixture
def realm_factory(
    kdc: KDC, make_lab: Callable[..., RunningLab], tmp_path: Path
) -> Callable[..., Realm]:
    def make(max_life: str | None = None, **lab_options: Any) -> Realm:
        directory = tmp_path / "realm"
        directory.mkdir(exist_ok=True)
        principal = kdc.add_user("svc-exporter", PASSWORD, max_life=max_life)
        keytab = kdc.user_keytab(principal, directory / "svc-exporter.keytab")
        service_keytab = _computers(directory)
        fleet = load_fleet("demo")
        kdc.add_computers([c["fqdn"] for c in fleet.list_computers()], service_keytab)
        lab = make_lab(fleet=fleet, kerberos_keytab=service_keytab, **lab_options)
        return Realm(kdc, lab, principal, keytab, directory)

    return make


def _auth_error(runner: WinRMRunner, host: str) -> str:
    with pytest.raises(CollectError) as caught:
        runner.run(host, SCRIPT, timeout=10)
    assert caught.value.reason == failures.AUTH, caught.value
    return caught.value.detail


# ---- logging on ----------------------------------------------------------------------------


def test_keytab_over_http_encrypts_with_the_kerberos_session(realm: Realm) -> None:
    runner = WinRMRunner(realm.keytab_config())
    for host in realm.computers()[:3]:
        output = runner.run(host, SCRIPT, timeout=10)
        assert output.exit_code == 0 and '"certificates"' in output.stdout
    responses = realm.lab.server.stats()["responses"]
    assert responses.get("kerberos_logon", 0) >= 3
    # every WS-Management message went encrypted with the Kerberos context
    assert responses.get("encrypted_kerberos", 0) >= 3 * 4
    assert "encrypted_ntlm" not in responses


def test_service_tickets_stay_out_of_the_cache_file(realm: Realm) -> None:
    """MIT reads a FILE cache entry by entry for every new security context, so a file that
    gained a service ticket per computer would make every call cost more as the fleet grows:
    the calls keep them in memory (ticket_mirror.py)."""
    runner = WinRMRunner(realm.keytab_config())
    assert runner.kerberos is not None
    hosts = realm.computers()[:4]
    for host in hosts:
        assert runner.run(host, SCRIPT, timeout=10).exit_code == 0
    stored = runner.kerberos.cache_file.read_bytes()
    assert b"krbtgt" in stored
    assert not [host for host in hosts if host.lower().encode() in stored.lower()]
    responses = realm.lab.server.stats()["responses"]
    assert responses.get("kerberos_logon", 0) >= len(hosts)


def test_two_accounts_in_one_process_never_share_tickets(shared: Realm, tmp_path: Path) -> None:
    """The exporter's and the receiver's accounts can live in one process and call from the
    same thread: each call uses its own account's tickets, never the previous call's."""
    wrong = tmp_path / "wrong-password"
    wrong.write_text("not-the-password")
    wrong.chmod(0o600)
    second, third = _other_account(shared, "svc-second"), _other_account(shared, "svc-third")
    working = WinRMRunner(shared.keytab_config())
    also_working = WinRMRunner(shared.config(username=third.principal, password_file="password"))
    refused = WinRMRunner(shared.config(username=second.principal, password_file=str(wrong)))
    host = shared.computers()[0]
    for _ in range(2):
        assert working.run(host, SCRIPT, timeout=10).exit_code == 0
        detail = _auth_error(refused, host)
        assert detail.startswith("Kerberos:") and "svc-second" in detail, detail
        assert also_working.run(host, SCRIPT, timeout=10).exit_code == 0


def test_password_login_with_kinit(realm: Realm) -> None:
    runner = WinRMRunner(realm.config(username=realm.principal, password_file="password"))
    assert runner.kerberos is not None and runner.kerberos.renewals == 1
    assert runner.run(realm.computers()[0], SCRIPT, timeout=10).exit_code == 0


def test_existing_ccache(realm: Realm) -> None:
    ccache = realm.kinit("ccache")
    runner = WinRMRunner(realm.config(kerberos_ccache=ccache))
    assert runner.kerberos is not None and not runner.kerberos.managed
    assert runner.run(realm.computers()[0], SCRIPT, timeout=10).exit_code == 0


def test_https_with_channel_binding_when_strict(
    shared: Realm, make_lab: Callable[..., RunningLab]
) -> None:
    lab = make_lab(
        fleet=load_fleet("demo"),
        kerberos_keytab=_computers(shared.directory),
        tls=True,
        tls_listener=False,
    )
    realm = Realm(shared.kdc, lab, shared.principal, shared.keytab, shared.directory)
    host = realm.computers()[0]
    faults = realm.lab.model.faults(host)
    faults.cbt_hardening = "strict"
    realm.lab.model.set_faults(host, faults)
    # every way of logging on binds its logon to the TLS channel
    ccache = realm.kinit("https-ccache")
    for config in (
        realm.keytab_config(),
        realm.config(username=realm.principal, password_file="password"),
        realm.config(kerberos_ccache=ccache),
    ):
        assert WinRMRunner(config).run(host, SCRIPT, timeout=10).exit_code == 0
        kerberos.stop_all()
    assert realm.lab.server.stats()["responses"].get("kerberos_logon", 0) >= 3
    # the same logon without the channel's binding is refused by a strict listener only
    from winrm.exceptions import InvalidCredentialsError
    from winrm.protocol import Protocol

    def bare_login() -> None:
        protocol = Protocol(
            realm.lab.endpoint(host),
            transport="kerberos",
            username=realm.principal,
            kerberos_hostname_override=host,
            ca_trust_path=str(realm.lab.ca_path),
            send_cbt=False,
        )
        protocol.close_shell(protocol.open_shell())

    with pytest.raises(InvalidCredentialsError):
        bare_login()
    faults.cbt_hardening = "relaxed"
    realm.lab.model.set_faults(host, faults)
    bare_login()


# ---- what fails, said in Kerberos' terms ----------------------------------------------------


def test_unknown_spn(realm: Realm) -> None:
    host = realm.computers()[2]  # no other test of the module uses it
    realm.kdc.delete(f"HTTP/{host}@{realm.kdc.realm}")
    runner = WinRMRunner(realm.keytab_config())
    detail = _auth_error(runner, host)
    assert detail.startswith("Kerberos: unknown SPN HTTP/" + host), detail
    assert f"setspn -S HTTP/{host}" in detail
    # the WSMAN SPN is still registered: kerberos_service chooses it
    assert (
        WinRMRunner(realm.keytab_config(kerberos_service="WSMAN")).run(host, SCRIPT).exit_code == 0
    )


def test_a_computer_accepts_only_tickets_for_its_own_spn(realm: Realm) -> None:
    """As a Windows computer holds only its own keys, a lab computer refuses a ticket made
    for another computer's SPN (service_keys.py): the refusal a duplicate or misplaced SPN
    causes."""
    host, other = realm.computers()[3:5]
    runner = WinRMRunner(realm.keytab_config(kerberos_hostname_override=other))
    detail = _auth_error(runner, host)
    assert detail.startswith(f"Kerberos: the computer refused the ticket for HTTP/{other}"), detail
    assert WinRMRunner(realm.keytab_config()).run(host, SCRIPT, timeout=10).exit_code == 0


def test_expired_password(shared: Realm) -> None:
    realm = _other_account(shared, "svc-expired")
    realm.kdc.expire_password(realm.principal)
    runner = WinRMRunner(realm.config(username=realm.principal, password_file="password"))
    detail = _auth_error(runner, realm.computers()[0])
    assert "Kerberos" in detail and "Password has expired" in detail, detail


def test_access_denied_after_a_kerberos_logon_is_not_a_kerberos_failure(realm: Realm) -> None:
    host = realm.computers()[3]
    faults = realm.lab.model.faults(host)
    faults.access_denied = True
    realm.lab.model.set_faults(host, faults)
    try:
        detail = _auth_error(WinRMRunner(realm.keytab_config()), host)
    finally:
        faults.access_denied = False
        realm.lab.model.set_faults(host, faults)
    assert detail.startswith("access denied"), detail


def test_revoked_account(shared: Realm) -> None:
    realm = _other_account(shared, "svc-revoked")
    realm.kdc.kadmin(f"modprinc -allow_tix {realm.principal}")  # a disabled account
    runner = WinRMRunner(realm.keytab_config())
    detail = _auth_error(runner, realm.computers()[0])
    assert detail.startswith("Kerberos: no ticket in the credential cache"), detail
    assert "credentials have been revoked" in detail, detail


def test_kerberos_only_computer_refuses_ntlm(realm: Realm, tmp_path: Path) -> None:
    host = realm.computers()[0]
    faults = realm.lab.model.faults(host)
    faults.auth = ["negotiate", "kerberos"]
    realm.lab.model.set_faults(host, faults)
    password_file = tmp_path / "lab-password"
    password_file.write_text(realm.lab.account.password)
    password_file.chmod(0o600)
    data = realm.lab.exporter_config(password_file)
    data["winrm"].update(transport="ntlm", allow_unencrypted_basic=False)
    (tmp_path / "ntlm.yml").write_text(yaml.safe_dump(data))
    ntlm = WinRMRunner(load_config(tmp_path / "ntlm.yml").winrm)
    assert ntlm.run(realm.computers()[1], SCRIPT, timeout=10).exit_code == 0
    assert "refused NTLM" in _auth_error(ntlm, host)
    assert realm.lab.server.stats()["responses"].get("ntlm_refused", 0) >= 1
    assert WinRMRunner(realm.keytab_config()).run(host, SCRIPT, timeout=10).exit_code == 0
    faults.auth = ["basic", "ntlm", "kerberos", "negotiate"]
    realm.lab.model.set_faults(host, faults)


# ---- tickets over time ----------------------------------------------------------------------


def test_renewal_in_the_background_never_interrupts_calls(shared: Realm) -> None:
    realm = _other_account(shared, "svc-short", max_life="3 seconds")
    runner = WinRMRunner(realm.keytab_config())
    assert runner.kerberos is not None
    hosts = realm.computers()[:2]
    deadline = time.monotonic() + 7
    calls = 0
    while time.monotonic() < deadline:
        for host in hosts:
            assert runner.run(host, SCRIPT, timeout=10).exit_code == 0
            calls += 1
    # 3 s tickets renewed every 2 s: at least two renewals beyond the first kinit
    assert runner.kerberos.renewals >= 3, runner.kerberos.renewals
    assert calls >= 6


def test_kdc_down_after_login(realm_factory: Callable[..., Realm]) -> None:
    realm = realm_factory(max_life="6 seconds")
    runner = WinRMRunner(realm.keytab_config())
    first, second = realm.computers()[:2]
    assert runner.run(first, SCRIPT, timeout=10).exit_code == 0
    realm.kdc.stop_serving()
    # the TGT and the service ticket already issued keep working
    assert runner.run(first, SCRIPT, timeout=10).exit_code == 0
    # a computer never asked for needs the KDC
    detail = _auth_error(runner, second)
    assert "no KDC reachable" in detail, detail
    assert runner.kerberos is not None and runner.kerberos.expires is not None
    expires = runner.kerberos.expires
    wait_until(lambda: time.time() > expires + 1, "the ticket to expire", timeout=15)
    detail = _auth_error(runner, first)
    assert detail.startswith("Kerberos:"), detail
    assert "Cannot contact any KDC" in detail or "no KDC reachable" in detail, detail


def test_clock_skew_on_a_computer(realm: Realm, processes: Processes, tmp_path: Path) -> None:
    """A lab computer whose clock is 10 minutes ahead, in a process of its own under
    faketime: its real acceptor sees the skew and refuses the ticket."""
    config = tmp_path / "skewed.yml"
    lab = processes.start(
        "faketime",
        "-f",
        "+10m",
        EXPORTER,
        "lab",
        "--kerberos-keytab",
        str(_computers(realm.directory)),
        "--write-config",
        str(config),
        log=tmp_path / "skewed-lab.log",
        start_new_session=True,  # faketime forks the lab: stopping it stops both
    )
    lab.wait_until(lambda: "endpoint:" in lab.log_tail(), "the skewed lab to listen", timeout=60)
    endpoint = yaml.safe_load(config.read_text())["winrm"]["endpoint"]
    runner = WinRMRunner(realm.keytab_config(endpoint=endpoint))
    detail = _auth_error(runner, realm.computers()[0])
    assert "clock skew" in detail and "10 minutes ahead" in detail, detail


def test_spnego_as_windows_clients_send_it(realm: Realm, monkeypatch: pytest.MonkeyPatch) -> None:
    """Windows wraps the ticket in SPNEGO (pywinrm sends it bare): the lab accepts both,
    and its answer completes the client's context (mutual authentication)."""
    import base64

    import requests
    import spnego

    ccache = realm.kinit("spnego-ccache")
    monkeypatch.setenv("KRB5CCNAME", ccache)
    host = realm.computers()[0]
    client = spnego.client(hostname=host, service="HTTP", protocol="negotiate")
    token = client.step()
    assert token is not None and token[:1] == b"\x60"
    answer = requests.post(
        realm.lab.endpoint(host),
        data=b"",
        headers={"Authorization": "Negotiate " + base64.b64encode(token).decode()},
        timeout=10,
    )
    assert answer.status_code == 200
    scheme, _, reply = answer.headers["WWW-Authenticate"].partition(" ")
    assert scheme == "Negotiate"
    client.step(base64.b64decode(reply))
    assert client.complete and client.negotiated_protocol == "kerberos"
