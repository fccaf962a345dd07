"""The HTTP API and /metrics of a running receiver, TLS with client certificates, basic
auth as Alertmanager sends it, and the renew / jobs / receiver commands."""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import json
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from vmm_cert_exporter.cli import main
from vmm_cert_exporter.powershell import render_script
from vmm_cert_exporter.receiver.journal import Journal
from vmm_cert_exporter.receiver.service import Receiver, start_receiver
from vmm_cert_lab.fleet.runner import RunningLab, start_lab
from vmm_cert_lab.fleet.scenario import LAB_DOMAIN, lab_host, load_fleet
from vmm_cert_lab.promstack import Promtool
from vmm_cert_lab.receiver_testing import (
    TOKEN,
    CountingFleet,
    alert,
    auth,
    fleet_of,
    http,
    payload,
    receiver_config,
)


def post_alerts(receiver: Receiver, *hosts: str, headers: dict[str, str] | None = None) -> Any:
    alerts = [alert(h, fingerprint=f"{i + 1:016x}") for i, h in enumerate(hosts)]
    status, answer = http(
        "POST",
        receiver.url + "/alertmanager",
        json.dumps(payload(*alerts)).encode(),
        headers or auth(),
    )
    assert status == 200, answer
    return answer


def wait_idle(receiver: Receiver, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        active = receiver.journal.active_jobs()
        if not active or all(j.status == "waiting" for j in active):
            return
        time.sleep(0.05)
    raise TimeoutError([(j.host, j.status) for j in receiver.journal.active_jobs()])


def test_jobs_api_and_metrics(start: Callable[..., Receiver], promtool: Promtool) -> None:
    receiver = start()
    answer = post_alerts(receiver, lab_host("hv36"), lab_host("hv01"))
    assert [a["outcome"] for a in answer["alerts"]] == ["created", "created"]
    wait_idle(receiver)
    status, listing = http("GET", receiver.url + "/api/jobs", headers=auth())
    assert status == 200 and listing["mode"] == "execute" and listing["paused"] is False
    jobs = {j["host"]: j for j in listing["jobs"]}
    assert jobs[lab_host("hv36")]["status"] == "succeeded"
    assert jobs[lab_host("hv01")]["status"] == "already-fresh"
    for job in jobs.values():
        assert {"id", "host", "procedure", "status", "steps"} <= set(job)
    status, detail = http(
        "GET", f"{receiver.url}/api/jobs/{jobs[lab_host('hv36')]['id']}", headers=auth()
    )
    assert status == 200
    assert [s["name"] for s in detail["steps"]] == [
        "preflight",
        "remove-certificates",
        "register-managed-computer",
        "verify",
    ]
    assert detail["procedure"] == "remove-register"
    assert detail["plan"]["steps"][1]["script"].startswith(
        "# vmm-cert-exporter:register-managed-computer/1\n"
    )
    assert detail["alerts"][0]["outcome"] == "created"
    assert detail["certificates_after"][0]["not_after"].endswith("Z")
    status, filtered = http(
        "GET", receiver.url + "/api/jobs?status=succeeded&limit=5", headers=auth()
    )
    assert [j["host"] for j in filtered["jobs"]] == [lab_host("hv36")]

    status, text = http("GET", receiver.url + "/metrics")
    assert status == 200 and isinstance(text, str)
    assert 'vmm_renewal_jobs_total{procedure="remove-register",result="succeeded"} 1.0' in text
    assert 'vmm_renewal_jobs_total{procedure="remove-register",result="already-fresh"} 1.0' in text
    assert "vmm_renewal_jobs_in_progress 0.0" in text
    assert f'vmm_renewal_last_success_timestamp_seconds{{host="hv36.{LAB_DOMAIN}"}}' in text
    assert 'vmm_receiver_webhooks_total{outcome="accepted"} 1.0' in text
    assert 'vmm_receiver_info{mode="execute"' in text
    check = promtool.check_metrics(text)
    assert check.returncode == 0, check.stdout


def test_approve_cancel_pause_resume(start: Callable[..., Receiver]) -> None:
    receiver = start(require_approval=True)
    answer = post_alerts(receiver, lab_host("hv36"), lab_host("hv37"))
    first, second = (a["job_id"] for a in answer["alerts"])
    wait_idle(receiver)
    status, job = http("GET", f"{receiver.url}/api/jobs/{first}", headers=auth())
    assert job["status"] == "waiting" and job["reason"].startswith("awaiting manual approval")
    # cancel one, approve the other
    status, cancelled = http("POST", f"{receiver.url}/api/jobs/{second}/cancel", headers=auth())
    assert status == 200 and cancelled["status"] == "cancelled"
    assert http("POST", f"{receiver.url}/api/jobs/{second}/cancel", headers=auth())[0] == 409
    assert http("POST", f"{receiver.url}/api/jobs/{second}/approve", headers=auth())[0] == 409
    # paused: even an approved job waits
    status, state = http("POST", receiver.url + "/api/pause", headers=auth())
    assert status == 200 and state["paused"] is True and state["paused_by"] == "bearer"
    status, approved = http("POST", f"{receiver.url}/api/jobs/{first}/approve", headers=auth())
    assert status == 200 and approved["approved_by"] == "bearer"
    time.sleep(0.3)
    wait_idle(receiver)
    status, job = http("GET", f"{receiver.url}/api/jobs/{first}", headers=auth())
    assert job["status"] == "waiting" and job["reason"].startswith("paused by bearer")
    assert "vmm_receiver_paused 1.0" in http("GET", receiver.url + "/metrics")[1]
    status, state = http("POST", receiver.url + "/api/resume", headers=auth())
    assert state["paused"] is False
    time.sleep(0.2)
    wait_idle(receiver)
    status, job = http("GET", f"{receiver.url}/api/jobs/{first}", headers=auth())
    assert job["status"] == "succeeded"
    status, overview = http("GET", receiver.url + "/api/status", headers=auth())
    assert overview["inventory"]["computers"] == 43 and overview["limits"]["require_approval"]


def test_inventory_not_loaded_yet_is_503(lab: RunningLab, tmp_path: Path) -> None:
    config = receiver_config(lab, tmp_path, interval="1h")
    receiver = start_receiver(config, background=False)
    try:
        status, answer = http(
            "POST",
            receiver.url + "/alertmanager",
            json.dumps(payload(alert(lab_host("hv36")))).encode(),
            auth(),
        )
        assert status == 503 and "retry" in answer["error"]
        assert http("GET", receiver.url + "/-/ready")[0] == 503
        receiver.inventory.refresh()
        assert http("GET", receiver.url + "/-/ready")[0] == 200
        assert http("GET", receiver.url + "/-/healthy")[0] == 200
    finally:
        receiver.stop()


# --------------------------------------------------------------------------------------------
# TLS with client certificates, and basic auth as Alertmanager sends it


def _cert(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Certificate | None,
    issuer_key: ec.EllipticCurvePrivateKey | None,
    *,
    ca: bool = False,
    server: bool = False,
) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer.subject if issuer else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
    return builder.sign(issuer_key or key, hashes.SHA256())


def _write(path: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
    path.with_suffix(".pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    path.with_suffix(".key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.with_suffix(".key").chmod(0o600)


def test_tls_with_client_certificates_and_basic_auth(
    start: Callable[..., Receiver], tmp_path: Path
) -> None:
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("test CA", ca_key, None, None, ca=True)
    _write(tmp_path / "ca", ca, ca_key)
    server_key = ec.generate_private_key(ec.SECP256R1())
    _write(tmp_path / "server", _cert("127.0.0.1", server_key, ca, ca_key, server=True), server_key)
    client_key = ec.generate_private_key(ec.SECP256R1())
    _write(tmp_path / "client", _cert("alertmanager", client_key, ca, ca_key), client_key)
    password = tmp_path / "basic.password"
    password.write_text("s3cret-pa:ss\n")
    password.chmod(0o600)
    receiver = start(
        tls={
            "cert_file": str(tmp_path / "server.pem"),
            "key_file": str(tmp_path / "server.key"),
            "client_ca_file": str(tmp_path / "ca.pem"),
        },
        basic_auth={"username": "alertmanager", "password_file": str(password)},
    )
    assert receiver.url.startswith("https://")
    body = json.dumps(payload(alert(lab_host("hv36")))).encode()

    def call(headers: dict[str, str], client: bool) -> int:
        context = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
        if client:
            context.load_cert_chain(str(tmp_path / "client.pem"), str(tmp_path / "client.key"))
        request = urllib.request.Request(
            receiver.url + "/alertmanager", data=body, method="POST", headers=headers
        )
        try:
            with urllib.request.urlopen(request, context=context, timeout=10) as response:
                return int(response.status)
        except urllib.error.HTTPError as exc:
            return exc.code

    basic = "Basic " + base64.b64encode(b"alertmanager:s3cret-pa:ss").decode()
    json_type = {"Content-Type": "application/json"}
    # no client certificate: the handshake fails before HTTP
    with pytest.raises((urllib.error.URLError, ssl.SSLError, ConnectionError)):
        call({"Authorization": basic, **json_type}, client=False)
    assert (
        call(
            {
                "Authorization": "Basic " + base64.b64encode(b"alertmanager:wrong").decode(),
                **json_type,
            },
            client=True,
        )
        == 401
    )
    assert call({"Authorization": f"Bearer {TOKEN}", **json_type}, client=True) == 200
    assert call({"Authorization": basic, **json_type}, client=True) == 200


# --------------------------------------------------------------------------------------------
# The commands


def test_renew_dry_run_prints_the_exact_powershell_and_changes_nothing(
    lab: RunningLab, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = receiver_config(lab, tmp_path, mode="execute")
    picture = lab.model.describe(lab_host("hv36"))
    assert main(["renew", "--config", config.path, "--host", lab_host("hv36")]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"DRY RUN (nothing will be changed): hv36.{LAB_DOMAIN} (hyperv_host)")
    thumbprint = next(c for c in picture["certificates"] if c["scvmm"])["thumbprint"]
    assert render_script("remove-certificates", {"thumbprints": [thumbprint]}) in out
    assert (
        render_script(
            "register-managed-computer",
            {"computer": lab_host("hv36"), "run_as_account": "VMM Host Admins"},
        )
        in out
    )
    assert "dry run: nothing was changed" in out
    assert lab.model.describe(lab_host("hv36")) == picture
    assert not Path(config.receiver.journal).exists()  # type: ignore[union-attr]
    # refused before any WinRM call: not in the inventory, a look-alike, denied
    assert main(["renew", "--config", config.path, "--host", lab_host("hv99")]) == 2
    assert main(["renew", "--config", config.path, "--host", "hv3б.lab.example"]) == 2


def test_renew_execute_then_jobs(
    lab: RunningLab, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = receiver_config(lab, tmp_path, mode="dry-run")  # the flag decides, not the mode
    assert config.receiver is not None
    assert main(["renew", "--config", config.path, "--host", lab_host("hv37"), "--execute"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"EXECUTE: hv37.{LAB_DOMAIN}")
    assert "job 1: succeeded" in out
    assert fleet_of(lab).count("remove-certificates", lab_host("hv37")) == 1
    journal = Journal(config.receiver.journal)
    job = journal.get(1)
    assert job is not None and job.source == "cli" and job.status == "succeeded"
    journal.close()
    # already fresh now: nothing to do, exit 0
    assert main(["renew", "--config", config.path, "--host", lab_host("hv37"), "--execute"]) == 0
    assert "already fresh" in capsys.readouterr().out
    assert main(["jobs", "--config", config.path]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:5] == ["ID", "HOST", "PROCEDURE", "MODE", "STATUS"]
    assert table[1].split()[:5] == [
        "1",
        lab_host("hv37"),
        "remove-register",
        "execute",
        "succeeded",
    ]
    assert main(["jobs", "--config", config.path, "--json", "--host", lab_host("hv37")]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [s["name"] for s in doc["jobs"][0]["steps"]] == [
        "preflight",
        "remove-certificates",
        "register-managed-computer",
        "verify",
    ]
    assert main(["jobs", "--config", config.path, "--status", "bogus"]) == 2


def test_renew_refuses_while_paused_and_commands_need_the_section(
    lab: RunningLab, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = receiver_config(lab, tmp_path)
    assert config.receiver is not None
    journal = Journal(config.receiver.journal)
    journal.set_paused(True, "ops")
    journal.close()
    assert main(["renew", "--config", config.path, "--host", lab_host("hv36"), "--execute"]) == 1
    assert "paused" in capsys.readouterr().err
    assert fleet_of(lab).count("remove-certificates") == 0
    plain = lab.write_config(tmp_path / "exporter-only.yml")
    # the lab writes a dry-run receiver section too: drop it for an exporter-only file
    data = yaml.safe_load(plain.read_text())
    del data["receiver"]
    plain.write_text(yaml.safe_dump(data))
    for command in (["receiver"], ["renew", "--host", lab_host("hv36")], ["jobs"]):
        assert main([*command, "--config", str(plain)]) == 2
        assert "no receiver: section" in capsys.readouterr().err


def test_job_details_show_vmm_state_and_its_display_text_on_a_japanese_vmm(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Decisions read the invariant State; people also see VMM's own (translated) text."""
    fleet = CountingFleet(load_fleet("demo", locale="ja-JP"))
    with start_lab(fleet=fleet, state_dir=tmp_path / "lab") as lab:
        config = receiver_config(lab, tmp_path, interval="1h")
        host = lab_host("hv37")  # expired: NotResponding, 応答なし in Japanese
        assert main(["renew", "--config", config.path, "--host", host]) == 0
        assert "VMM state: NotResponding (応答なし)\n" in capsys.readouterr().out
        receiver = start_receiver(config, poll_interval=0.05)
        try:
            assert receiver.inventory.loaded.wait(30)
            answer = post_alerts(receiver, host)
            assert answer["alerts"][0]["outcome"] == "created"
            wait_idle(receiver)
            status, detail = http(
                "GET", f"{receiver.url}/api/jobs/{answer['alerts'][0]['job_id']}", headers=auth()
            )
        finally:
            receiver.stop()
    assert status == 200 and detail["status"] == "succeeded", detail["reason"]
    preflight, verify = detail["steps"][0], detail["steps"][-1]
    assert (preflight["result"]["vmm_state"], preflight["result"]["vmm_state_display"]) == (
        "NotResponding",
        "応答なし",
    )
    assert (verify["result"]["vmm_state"], verify["result"]["vmm_state_display"]) == (
        "Responding",
        "稼働中",
    )
