"""The lab's WS-Management transport, driven by real pywinrm over real sockets.

Nothing in pywinrm, requests or pyspnego is mocked: every test goes through HTTP on 127.0.0.1
and asserts what pywinrm itself returns or raises.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

import pytest
import requests
import winrm
import xmltodict  # type: ignore[import-untyped]  # pywinrm builds its envelopes with it
from winrm.exceptions import (
    InvalidCredentialsError,
    WinRMOperationTimeoutError,
    WinRMTransportError,
    WSManFaultError,
)
from winrm.protocol import Protocol

from vmm_cert_lab.fleet.interfaces import Account, Faults, FleetModel
from vmm_cert_lab.fleet.lab_ca import LabTLS, create_lab_tls
from vmm_cert_lab.fleet.server import LabServer
from vmm_cert_lab.fleet.wsman import CODE_SHELL_NOT_FOUND, decode_encoded_command
from vmm_cert_lab.processes import wait_until

Transport = Literal["basic", "ntlm"]
TRANSPORTS: tuple[Transport, ...] = ("basic", "ntlm")
HOST = "hv0001.lab.example"
ACCOUNT = Account("LAB", "svc-vmmcert", "Lab-Passw0rd!")  # the light fleet's account
USER = f"{ACCOUNT.domain}\\{ACCOUNT.username}"


def protocol(
    endpoint: str,
    transport: Transport = "basic",
    username: str = USER,
    password: str = ACCOUNT.password,
    read_timeout: int = 3,
    operation_timeout: int = 1,
    **kwargs: Any,
) -> Protocol:
    return Protocol(
        endpoint,
        transport=transport,
        username=username,
        password=password,
        read_timeout_sec=read_timeout,
        operation_timeout_sec=operation_timeout,
        **kwargs,
    )


def session(endpoint: str, **kwargs: Any) -> winrm.Session:
    """A winrm.Session whose Protocol keeps the /wsman/<fqdn> path (Session drops it)."""
    sess = winrm.Session("127.0.0.1", auth=(USER, ACCOUNT.password))
    sess.protocol = protocol(endpoint, **kwargs)
    return sess


def encode(script: str) -> str:
    return base64.b64encode(script.encode("utf-16-le")).decode("ascii")


def run_raw(p: Protocol, command: str, args: tuple[str, ...] = ()) -> tuple[bytes, bytes, int, int]:
    """Create/Command/Receive.../Signal/Delete; also returns how many Receives it took."""
    shell = p.open_shell()
    try:
        cid = p.run_command(shell, command, args)
        out, err, receives = b"", b"", 0
        while True:
            o, e, code, done = p.get_command_output_raw(shell, cid)
            out, err, receives = out + o, err + e, receives + 1
            if done:
                break
        p.cleanup_command(shell, cid)
    finally:
        p.close_shell(shell)
    return out, err, code, receives


@pytest.fixture(scope="module")
def lab_tls(tmp_path_factory: pytest.TempPathFactory) -> LabTLS:
    return create_lab_tls(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def tls_lab(light_fleet: Any, lab_tls: LabTLS, make_server: Callable[..., LabServer]) -> LabServer:
    return make_server(light_fleet, tls=lab_tls, receive_chunk=1000, max_operation_wait=1.0)


# --- the happy paths -----------------------------------------------------------------------


def test_run_ps_basic_http(lab: LabServer) -> None:
    r = session(lab.endpoint(HOST)).run_ps("Get-Date")
    assert r.status_code == 0
    assert r.std_out == b'{"computer": "hv0001.lab.example", "script": "Get-Date"}\r\n'
    assert r.std_err == b""
    assert lab.stats()["open_shells_total"] == 0


def test_fqdn_is_case_insensitive_and_unknown_fqdn_is_404(lab: LabServer) -> None:
    r = session(lab.endpoint("HV0001.Lab.Example")).run_ps("x")
    assert b'"computer": "hv0001.lab.example"' in r.std_out
    with pytest.raises(WinRMTransportError) as exc:
        protocol(lab.endpoint("nosuch.lab.example")).open_shell()
    assert exc.value.code == 404
    with pytest.raises(WinRMTransportError) as exc:
        protocol(lab.url + "/wsman").open_shell()
    assert exc.value.code == 404


def test_clixml_stderr_and_exit_code_come_through_run_ps(lab: LabServer) -> None:
    r = session(lab.endpoint(HOST)).run_ps("fail")
    assert r.status_code == 1
    # pywinrm decoded the CLIXML error record into its text.
    assert r.std_err == b"boom: the script failed\nat line 1"
    assert session(lab.endpoint(HOST)).run_ps("exit:7").status_code == 7


def test_output_is_split_over_several_receives(lab: LabServer) -> None:
    p = protocol(lab.endpoint(HOST))
    out, err, code, receives = run_raw(p, f"powershell -encodedcommand {encode('big:4500')}")
    assert code == 0 and err == b""
    assert out == bytes((i % 26) + 65 for i in range(4500))
    assert receives == 5  # 1000-byte chunks in this fixture
    out, err, code, receives = run_raw(p, f"powershell -encodedcommand {encode('both:1500')}")
    assert (out, err, code) == (b"o" * 1500, b"e" * 1500, 0)
    assert receives == 3


def test_exporter_style_command_with_arguments(lab: LabServer, light_fleet: Any) -> None:
    p = protocol(lab.endpoint(HOST))
    args = ("-NoProfile", "-NonInteractive", "-EncodedCommand", encode("hello"))
    out, _, code, _ = run_raw(p, "powershell", args)
    assert code == 0 and b'"script": "hello"' in out
    for flag in ("-enc", "-E", "-ENCODEDCOMMAND", "-ec"):
        out, _, _, _ = run_raw(p, f"PowerShell.exe -NoProfile {flag} {encode('v')}")
        assert b'"script": "v"' in out, flag
    assert light_fleet.commands == []


def test_other_commands_go_to_run_command(lab: LabServer, light_fleet: Any) -> None:
    r = session(lab.endpoint(HOST)).run_cmd("ipconfig", ["/all"])
    assert r.std_out == b"ipconfig|/all\r\n"
    assert light_fleet.commands == [(HOST, "ipconfig", ["/all"])]


def test_command_line_over_cmd_limit_fails_like_cmd(lab: LabServer) -> None:
    r = session(lab.endpoint(HOST)).run_ps("x" * 4000)  # ~10.7k characters once encoded
    assert r.status_code == 1
    assert r.std_err == b"The command line is too long.\r\n"


def test_bad_encoded_command() -> None:
    assert decode_encoded_command("cmd /c dir") is None
    assert decode_encoded_command("powershell -Command Get-Date") is None
    with pytest.raises(ValueError):
        decode_encoded_command("powershell -EncodedCommand !!notbase64!!")


def test_basic_user_forms(lab: LabServer) -> None:
    for user in ("svc-vmmcert", "LAB\\SVC-VMMCERT", "svc-vmmcert@lab.example", "lab\\svc-vmmcert"):
        assert session(lab.endpoint(HOST), username=user).run_ps("a").status_code == 0, user
    for user, password in (
        ("LAB\\svc-vmmcert", ACCOUNT.password.lower()),
        ("OTHER\\svc-vmmcert", ACCOUNT.password),
        ("LAB\\nobody", ACCOUNT.password),
    ):
        with pytest.raises(InvalidCredentialsError):
            protocol(lab.endpoint(HOST), username=user, password=password).open_shell()


def test_basic_https_with_lab_ca_validated(tls_lab: LabServer, lab_tls: LabTLS) -> None:
    assert tls_lab.url.startswith("https://127.0.0.1:")
    p = protocol(
        tls_lab.endpoint(HOST),
        server_cert_validation="validate",
        ca_trust_path=str(lab_tls.ca_path),
    )
    out, _, code, _ = run_raw(p, f"powershell -encodedcommand {encode('tls')}")
    assert code == 0 and b'"script": "tls"' in out
    # Without the lab CA the certificate is rejected: validation really happens.
    bad = protocol(tls_lab.endpoint(HOST), server_cert_validation="validate", ca_trust_path=None)
    with pytest.raises(requests.exceptions.SSLError):
        bad.open_shell()


def test_ntlm_http_with_message_encryption(lab: LabServer) -> None:
    p = protocol(lab.endpoint(HOST), transport="ntlm")
    out, _err, code, receives = run_raw(p, f"powershell -encodedcommand {encode('big:2500')}")
    assert code == 0 and len(out) == 2500 and receives == 3
    # pywinrm set up WinRM message encryption, and the lab answered encrypted bodies.
    assert p.transport.encryption is not None
    stats = lab.stats()
    # One handshake for the whole connection: the bare 401, then the challenge.
    assert stats["responses"]["401"] == 2
    r = session(lab.endpoint(HOST), transport="ntlm").run_ps("fail")
    assert r.status_code == 1 and r.std_err.startswith(b"boom")


def test_ntlm_request_on_the_wire_is_encrypted(lab: LabServer) -> None:
    p = protocol(lab.endpoint(HOST), transport="ntlm")
    p.open_shell()
    sess = p.transport.session
    assert sess is not None
    encryption = p.transport.encryption
    assert encryption is not None
    body = encryption.prepare_encrypted_request(sess, lab.endpoint(HOST), b"<x/>").body
    assert (
        isinstance(body, bytes)
        and b"<x/>" not in body
        and b"application/HTTP-SPNEGO-session-encrypted" in body
    )


def test_ntlm_https_and_wrong_password(tls_lab: LabServer, lab_tls: LabTLS) -> None:
    p = protocol(tls_lab.endpoint(HOST), transport="ntlm", ca_trust_path=str(lab_tls.ca_path))
    out, _, code, _ = run_raw(p, f"powershell -encodedcommand {encode('n')}")
    assert code == 0 and b'"script": "n"' in out
    assert p.transport.encryption is None  # HTTPS: no message encryption, as on Windows
    bad = protocol(
        tls_lab.endpoint(HOST),
        transport="ntlm",
        password="wrong",
        ca_trust_path=str(lab_tls.ca_path),
    )
    with pytest.raises(InvalidCredentialsError):
        bad.open_shell()


# --- SOAP faults ---------------------------------------------------------------------------


def test_unknown_shell_fault(lab: LabServer) -> None:
    p = protocol(lab.endpoint(HOST))
    with pytest.raises(WSManFaultError) as exc:
        p.run_command("11111111-1111-1111-1111-111111111111", "ipconfig")
    f = exc.value
    assert f.code == 500
    assert f.fault_code == "s:Sender" and f.fault_subcode == "w:InvalidSelectors"
    assert f.wsman_fault_code == CODE_SHELL_NOT_FOUND
    assert "11111111-1111-1111-1111-111111111111" in f.response
    # A shell of one computer is unknown to another.
    shell = p.open_shell()
    with pytest.raises(WSManFaultError) as exc:
        protocol(lab.endpoint("hv0002.lab.example")).close_shell(shell)
    assert exc.value.wsman_fault_code == CODE_SHELL_NOT_FOUND
    p.close_shell(shell)


def test_access_denied_fault(lab: LabServer, light_fleet: Any) -> None:
    light_fleet.set_faults(HOST, Faults(access_denied=True))
    for transport in TRANSPORTS:
        with pytest.raises(WSManFaultError) as exc:
            protocol(lab.endpoint(HOST), transport=transport).open_shell()
        assert exc.value.fault_subcode == "w:AccessDenied"
        assert exc.value.wsman_fault_code == 5
        assert exc.value.reason.startswith("Access is denied.")


def test_receive_timeout_fault_is_pywinrm_operation_timeout(
    lab: LabServer, light_fleet: Any
) -> None:
    p = protocol(lab.endpoint(HOST), read_timeout=3, operation_timeout=2)
    shell = p.open_shell()
    cid = p.run_command(shell, "ipconfig")
    light_fleet.set_faults(HOST, Faults(receive_timeout=True))
    start = time.monotonic()
    with pytest.raises(WinRMOperationTimeoutError):
        p.get_command_output_raw(shell, cid)
    # Held for the request's OperationTimeout (2 s), capped at max_operation_wait (1 s).
    assert 0.9 <= time.monotonic() - start < 2.0
    light_fleet.set_faults(HOST, Faults())
    out, _, code, _ = p.get_command_output_raw(shell, cid)
    assert code == 0 and out == b"ipconfig|\r\n"
    p.cleanup_command(shell, cid)
    p.close_shell(shell)


def test_doctype_is_rejected_with_a_soap_fault(lab: LabServer) -> None:
    body = (
        b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaa">]>'
        b'<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope"><s:Header/>'
        b"<s:Body>&a;</s:Body></s:Envelope>"
    )
    r = requests.post(lab.endpoint(HOST), data=body, auth=(USER, ACCOUNT.password), timeout=5)
    assert r.status_code == 500 and b"w:SchemaValidationError" in r.content


# --- shells --------------------------------------------------------------------------------


def test_signal_and_delete_close_shells(lab: LabServer) -> None:
    p = protocol(lab.endpoint(HOST))
    shells = [p.open_shell() for _ in range(3)]
    p2 = protocol(lab.endpoint("hv0002.lab.example"))
    other = p2.open_shell()
    stats = lab.stats()
    assert stats["open_shells_total"] == 4
    assert stats["open_shells"] == {HOST: 3, "hv0002.lab.example": 1}
    cid = p.run_command(shells[0], "ipconfig")
    p.cleanup_command(shells[0], cid)  # Signal terminate: RelatesTo is checked by pywinrm
    with pytest.raises(WSManFaultError):  # the command is gone after terminate
        p.get_command_output_raw(shells[0], cid)
    for shell in shells:
        p.close_shell(shell, close_session=False)
    p2.close_shell(other)
    assert lab.stats()["open_shells_total"] == 0
    with pytest.raises(WSManFaultError) as exc:  # deleting twice: the shell is gone
        p.close_shell(shells[0])
    assert exc.value.wsman_fault_code == CODE_SHELL_NOT_FOUND


def test_idle_shells_expire(light_fleet: FleetModel) -> None:
    with LabServer(light_fleet, shell_idle_timeout=0.3) as server:
        protocol(server.endpoint(HOST)).open_shell()
        assert server.stats()["open_shells_total"] == 1
        time.sleep(0.5)
        assert server.stats()["open_shells_total"] == 0


# --- transport faults ----------------------------------------------------------------------


def test_connection_refused(lab: LabServer, light_fleet: Any) -> None:
    light_fleet.set_faults(HOST, Faults(connection_refused=True))
    with pytest.raises(requests.exceptions.ConnectionError) as exc:
        protocol(lab.endpoint(HOST)).open_shell()
    assert not isinstance(exc.value, requests.exceptions.SSLError)
    # Other computers on the same port are unaffected.
    assert session(lab.endpoint("hv0002.lab.example")).run_ps("x").status_code == 0


def test_black_hole_hits_the_read_timeout(lab: LabServer, light_fleet: Any) -> None:
    light_fleet.set_faults(HOST, Faults(black_hole=True))
    start = time.monotonic()
    with pytest.raises(requests.exceptions.ReadTimeout):
        protocol(lab.endpoint(HOST), read_timeout=2).open_shell()
    assert 1.9 <= time.monotonic() - start < 3.5


def test_latency_delays_every_request(lab: LabServer, light_fleet: Any) -> None:
    light_fleet.set_faults(HOST, Faults(latency=0.2))
    start = time.monotonic()
    r = session(lab.endpoint(HOST)).run_ps("slow")
    assert r.status_code == 0
    assert time.monotonic() - start >= 5 * 0.2  # Create, Command, Receive, Signal, Delete


def test_drip_outlives_the_read_timeout(lab: LabServer, light_fleet: Any) -> None:
    # ~1,100 bytes at 2.5 ms each: longer than the 2 s read timeout, yet no read ever waits
    # 2 s, so pywinrm never times out. Only a deadline of the caller's own stops this.
    light_fleet.set_faults(HOST, Faults(drip=0.0025))
    p = protocol(lab.endpoint(HOST), read_timeout=2)
    start = time.monotonic()
    shell = p.open_shell()
    assert time.monotonic() - start > 2.0
    light_fleet.set_faults(HOST, Faults())
    p.close_shell(shell)


def test_http_401_fault(lab: LabServer, light_fleet: Any) -> None:
    light_fleet.set_faults(HOST, Faults(http_401=True))
    for transport in TRANSPORTS:
        with pytest.raises(InvalidCredentialsError):
            protocol(lab.endpoint(HOST), transport=transport).open_shell()


def test_401_mid_session_for_an_ntlm_connection(lab: LabServer, light_fleet: Any) -> None:
    p = protocol(lab.endpoint(HOST), transport="ntlm")
    shell = p.open_shell()
    light_fleet.set_faults(HOST, Faults(http_401=True))
    with pytest.raises(InvalidCredentialsError):
        p.run_command(shell, "ipconfig")


def test_tls_error_over_https_and_http(
    lab: LabServer, tls_lab: LabServer, light_fleet: Any, lab_tls: LabTLS
) -> None:
    light_fleet.set_faults(HOST, Faults(tls_error=True))
    with pytest.raises(requests.exceptions.SSLError) as exc:
        protocol(tls_lab.endpoint(HOST), ca_trust_path=str(lab_tls.ca_path)).open_shell()
    assert "WRONG_VERSION_NUMBER" in str(exc.value) or "record" in str(exc.value).lower()
    # Over plain HTTP the same bytes are a bad status line.
    with pytest.raises(requests.exceptions.ConnectionError) as exc2:
        protocol(lab.endpoint(HOST)).open_shell()
    assert not isinstance(exc2.value, requests.exceptions.SSLError)
    assert "BadStatusLine" in repr(exc2.value)


def test_faults_switch_at_run_time_through_the_control_api(lab: LabServer) -> None:
    p = protocol(lab.endpoint(HOST))
    shell = p.open_shell()
    url = f"{lab.url}/lab/computers/{HOST}/faults"
    r = requests.patch(url, json={"access_denied": True}, timeout=5)
    assert r.status_code == 200 and r.json()["access_denied"] is True
    with pytest.raises(WSManFaultError):
        p.run_command(shell, "ipconfig")
    requests.put(url, json={}, timeout=5).raise_for_status()
    p.close_shell(shell)


def test_stop_is_prompt_with_black_holed_requests(light_fleet: FleetModel) -> None:
    server = LabServer(light_fleet).start()
    light_fleet.set_faults(HOST, Faults(black_hole=True))
    errors: list[BaseException] = []

    def call() -> None:
        try:
            protocol(server.endpoint(HOST), read_timeout=30, operation_timeout=20).open_shell()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=call) for _ in range(3)]
    for t in threads:
        t.start()
    wait_until(
        lambda: server.stats()["open_connections"] == 3,
        lambda: f"3 held connections, {server.stats()['open_connections']} so far",
        timeout=30,
    )
    start = time.monotonic()
    server.stop()
    assert time.monotonic() - start < 1.5
    for t in threads:
        t.join(5)
    assert len(errors) == 3  # every client saw its connection end, none hung


# --- scale ---------------------------------------------------------------------------------


def test_one_process_serves_1000_computers(make_fleet: Any) -> None:
    fleet: FleetModel = make_fleet(1000)
    with LabServer(fleet) as server:
        hosts = [f"hv{i:04d}.lab.example" for i in range(1, 1001)]

        def one(host: str) -> bytes:
            p = protocol(server.endpoint(host))
            shell = p.open_shell()
            cid = p.run_command(shell, f"powershell -encodedcommand {encode('x')}")
            out, _, code, done = p.get_command_output_raw(shell, cid)
            p.close_shell(shell)
            assert code == 0 and done
            return bytes(out)

        with ThreadPoolExecutor(max_workers=8) as pool:
            outputs = list(pool.map(one, hosts))
        assert all(f'"computer": "{h}"'.encode() in o for h, o in zip(hosts, outputs, strict=True))
        stats = server.stats()
        assert stats["open_shells_total"] == 0
        assert stats["responses"]["200"] == 4000


# --- the real model: the demo scenario through real pywinrm --------------------------------


def _script(operation: str, params: dict[str, Any]) -> str:
    """A script-contract header: operation line, then the base64 JSON parameters."""
    blob = base64.b64encode(json.dumps(params).encode()).decode()
    return f"# vmm-cert-exporter:{operation}/1\n$Params = '{blob}'\n"


def test_demo_scenario_through_pywinrm(tmp_path: Path) -> None:
    from vmm_cert_lab.fleet.runner import start_lab

    with start_lab(state_dir=tmp_path, receive_chunk=4096) as running:
        acc = running.account
        user = f"{acc.domain}\\{acc.username}"
        [vmm] = running.vmm_servers
        for transport in TRANSPORTS:
            sess = session(
                running.endpoint(vmm), transport=transport, username=user, password=acc.password
            )
            r = sess.run_ps(_script("list-managed-computers", {}))
            assert r.status_code == 0, r.std_err
            doc = json.loads(r.std_out)
            assert doc["vmm_server"] == vmm and len(doc["managed_computers"]) >= 40
        # Every managed computer answers collect-certificates with DER over several Receives.
        hosts = [c["fqdn"] for c in doc["managed_computers"]]
        refused = [h for h in hosts if running.model.faults(h).connection_refused]
        assert refused
        host = next(h for h in hosts if h not in refused and h != vmm)
        p = protocol(running.endpoint(host), username=user, password=acc.password)
        out, err, code, _receives = run_raw(
            p, f"powershell -encodedcommand {encode(_script('collect-certificates', {}))}"
        )
        assert code == 0, err
        cert_doc = json.loads(out)
        assert cert_doc["computer"] == host and cert_doc["certificates"]
        with pytest.raises(requests.exceptions.ConnectionError):
            protocol(
                running.endpoint(refused[0]), username=user, password=acc.password
            ).open_shell()
        assert running.server.stats()["open_shells_total"] == 0


def test_ntlm_account_of_the_latest_lab_wins(light_fleet: FleetModel) -> None:
    # pyspnego reads one process-wide user file: a lab started later with the same account
    # name and another password must still accept NTLM logons (tests start many labs).
    from vmm_cert_lab.fleet.runner import start_lab

    with start_lab(fleet=light_fleet) as first:
        assert session(first.endpoint(HOST), transport="ntlm").run_ps("a").status_code == 0
    other = Account(ACCOUNT.domain, ACCOUNT.username, "another-password")
    light_fleet._accounts = [other]  # type: ignore[attr-defined]
    with LabServer(light_fleet) as second:
        r = session(second.endpoint(HOST), transport="ntlm", password="another-password")
        assert r.run_ps("b").status_code == 0
        with pytest.raises(InvalidCredentialsError):
            protocol(second.endpoint(HOST), transport="ntlm").open_shell()


def test_ctrl_c_signal_drops_unsent_output(lab: LabServer) -> None:
    p = protocol(lab.endpoint(HOST))
    shell = p.open_shell()
    cid = p.run_command(shell, f"powershell -encodedcommand {encode('big:3000')}")
    out, _, _, done = p.get_command_output_raw(shell, cid)
    assert len(out) == 1000 and not done
    message = p.build_wsman_header(
        resource_uri="http://schemas.microsoft.com/wbem/wsman/1/windows/shell/cmd",
        action="http://schemas.microsoft.com/wbem/wsman/1/windows/shell/Signal",
        shell_id=shell,
    )
    message.setdefault("env:Body", {})["rsp:Signal"] = {
        "@CommandId": cid,
        "rsp:Code": "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/signal/ctrl_c",
    }
    p.send_message(xmltodict.unparse({"env:Envelope": message}))
    out, _, code, done = p.get_command_output_raw(shell, cid)
    assert (out, done, code) == (b"", True, 0)
    p.close_shell(shell)
