"""At least 100 hostile requests against a receiver in EXECUTE mode: nothing runs, nothing
crashes, every request gets the right status code.

"Nothing runs" is checked three ways after the barrage: the journal holds no job, the lab
model (every computer's stores, TrustedPeople, VMM state) is unchanged, and the lab
server's request count stayed flat (not one WinRM request reached any computer).
"""

from __future__ import annotations

import base64
import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from vmm_cert_exporter.powershell import render_script
from vmm_cert_exporter.receiver.service import Receiver, start_receiver
from vmm_cert_lab.fleet.runner import RunningLab
from vmm_cert_lab.fleet.scenario import LAB_DOMAIN, lab_host
from vmm_cert_lab.receiver_testing import (
    TOKEN,
    alert,
    auth,
    fleet_of,
    http,
    payload,
    receiver_config,
)

LIMIT = 512 * 1024


@dataclass(frozen=True)
class Case:
    name: str
    status: int
    body: bytes | None = None
    headers: tuple[tuple[str, str], ...] = tuple(auth().items())
    method: str = "POST"
    path: str = "/alertmanager"


def body(*alerts: dict[str, Any], **top: Any) -> bytes:
    doc = payload(*alerts)
    doc.update(top)
    return json.dumps(doc).encode()


VALID = body(alert(lab_host("hv36")))

# PowerShell metacharacters and injection attempts
INJECTIONS = [
    f"hv36.{LAB_DOMAIN}'; Remove-Item -Recurse -Force C:\\ #",
    f'hv36.{LAB_DOMAIN}"; Stop-Computer -Force; "',
    f"$(Stop-Computer).{LAB_DOMAIN}",
    "`nStop-Computer",
    f"hv36.{LAB_DOMAIN}; calc.exe",
    f"hv36.{LAB_DOMAIN} | Out-File C:\\pwned",
    f"hv36.{LAB_DOMAIN} & whoami",
    f"hv36.{LAB_DOMAIN}`r`nwhoami",
    "${env:COMPUTERNAME}",
    "@(Get-Process)",
    "'+(Invoke-Expression 'whoami')+'",
    f"hv36.{LAB_DOMAIN}\nwhoami",
    f"hv36.{LAB_DOMAIN}\r\n",
    f"hv36.{LAB_DOMAIN}\x00",
    f"hv36.{LAB_DOMAIN} ",
    f" hv36.{LAB_DOMAIN}",
    f"hv36.{LAB_DOMAIN}.",
    f"hv36.{LAB_DOMAIN},hv37.{LAB_DOMAIN}",
    f"hv3*.{LAB_DOMAIN}",
    f"hv3?.{LAB_DOMAIN}",
    "*",
    "..\\..\\windows\\system32",
    "/etc/passwd",
    f"hv36.{LAB_DOMAIN}<script>",
    f"-ComputerName hv36.{LAB_DOMAIN}",
    "$null",
    "#",
    "",
    "x" * 300,
    f"hv36.{LAB_DOMAIN}%00",
]
# look-alikes of hv36.lab.example
LOOKALIKES = [
    "hv36.lаb.example",  # Cyrillic а
    "hv36.lab.еxample",  # Cyrillic е
    "hv36.lab.exаmple",  # Cyrillic а
    "һv36.lab.example",  # Cyrillic һ
    "hv36．lab．example",  # fullwidth full stops
    "hv36\u200b.lab.example",  # zero-width space
    "hv36\u00a0.lab.example",  # no-break space
    "hv3\u0666.lab.example",  # Arabic-Indic digit six
    "\u202ehv36.lab.example",  # right-to-left override
    "hv36.lab.example\u0301",  # combining acute accent
    "ｈｖ３６.lab.example",  # fullwidth letters and digits
    "hv36.lab.exampl\u0435",  # Cyrillic е at the end
    "xn--hv36-lab-example",  # punycode-looking, not in the inventory
]
NOT_IN_INVENTORY = [
    lab_host("hv99"),
    f"hv36.{LAB_DOMAIN}.evil.example",
    "hv36",
    "localhost",
    "127.0.0.1",
    f"vmm01.{LAB_DOMAIN}.",
    "hv36.lab.example.lab.example",
]
UNKNOWN_ALERTS = [
    "VMMCertificateRenewalFailed",
    "VMMCertificateCollectionFailing",
    "VMMCertificateDuplicate",
    "Watchdog",
    "vmmcertificateexpired",
    "VMMCertificateExpired ",
    "VMMCertificateExpired'; whoami",
]


def hostile_cases() -> list[Case]:
    cases: list[Case] = []
    add = cases.append
    # ---- authentication: 401, nothing read ---------------------------------------------
    for name, headers in [
        ("no credentials", {"Content-Type": "application/json"}),
        ("wrong bearer", {"Authorization": "Bearer wrong"}),
        ("token plus a byte", {"Authorization": f"Bearer {TOKEN}x"}),
        ("token prefix", {"Authorization": f"Bearer {TOKEN[:-1]}"}),
        ("empty bearer", {"Authorization": "Bearer "}),
        ("bearer, two spaces", {"Authorization": f"Bearer  {TOKEN}"}),
        ("token without scheme", {"Authorization": TOKEN}),
        ("other scheme", {"Authorization": f"Token {TOKEN}"}),
        (
            "basic with the token",
            {"Authorization": "Basic " + base64.b64encode(f"admin:{TOKEN}".encode()).decode()},
        ),
        ("basic garbage", {"Authorization": "Basic !!!notbase64"}),
        ("huge header", {"Authorization": "Bearer " + "A" * 9000}),
        ("latin-1 token", {"Authorization": "Bearer tökén"}),
    ]:
        add(
            Case(
                f"auth: {name}",
                401,
                VALID,
                tuple({**headers, "Content-Type": "application/json"}.items()),
            )
        )
    for path, method in [
        ("/api/jobs", "GET"),
        ("/api/pause", "POST"),
        ("/api/jobs/1/approve", "POST"),
        ("/api/status", "GET"),
    ]:
        add(Case(f"auth: {method} {path}", 401, None, (), method, path))
    add(Case("browser origin", 403, VALID, (*auth().items(), ("Origin", "http://evil.example"))))
    add(Case("cross-site fetch", 403, VALID, (*auth().items(), ("Sec-Fetch-Site", "cross-site"))))
    # ---- transport and schema: 4xx ---------------------------------------------------------
    add(Case("method GET", 405, None, tuple(auth().items()), "GET"))
    add(Case("method PUT", 405, VALID, tuple(auth().items()), "PUT"))
    add(
        Case(
            "text/plain",
            415,
            VALID,
            (("Authorization", f"Bearer {TOKEN}"), ("Content-Type", "text/plain")),
        )
    )
    add(
        Case(
            "form",
            415,
            b"a=b",
            (
                ("Authorization", f"Bearer {TOKEN}"),
                ("Content-Type", "application/x-www-form-urlencoded"),
            ),
        )
    )
    for cut in (1, 10, 50, 100, len(VALID) // 2, len(VALID) - 1):
        add(Case(f"truncated at {cut}", 400, VALID[:cut]))
    good = payload(alert(lab_host("hv36")))
    for name, raw in [
        ("empty", b""),
        ("not JSON", b"hello"),
        ("array", b"[]"),
        ("string", b'"firing"'),
        ("NaN", b'{"version": NaN}'),
        ("two documents", VALID + VALID),
        ("invalid UTF-8", VALID.replace(b"hv36", b"hv\xff6")),
        ("UTF-16", json.dumps(good).encode("utf-16")),
        ("deep nesting", b"[" * 50_000 + b"]" * 50_000),
        ("duplicate key", VALID.replace(b'"version": "4"', b'"version": "4", "version": "4"')),
        ("lone surrogate", VALID.replace(b"hv36", b"\\ud800hv36")),
    ]:
        add(Case(f"bad body: {name}", 400, raw))

    def mutate(path: str, value: Any, *, delete: bool = False) -> bytes:
        doc = json.loads(VALID)
        parts = path.split(".")
        target = doc
        for part in parts[:-1]:
            target = target[int(part)] if part.isdigit() else target[part]
        if delete:
            del target[parts[-1]]
        else:
            target[parts[-1]] = value
        return json.dumps(doc).encode()

    for name, raw in [
        ("version 3", mutate("version", "3")),
        ("version number", mutate("version", 4)),
        ("no alerts key", mutate("alerts", None, delete=True)),
        ("no status", mutate("status", None, delete=True)),
        ("unknown top field", mutate("command", "Stop-Computer")),
        ("alerts empty", mutate("alerts", [])),
        ("alerts object", mutate("alerts", {"a": 1})),
        ("too many alerts", mutate("alerts", [alert(lab_host("hv36"))] * 1001)),
        ("status FIRING", mutate("status", "FIRING")),
        ("alert status null", mutate("alerts.0.status", None)),
        ("firing group, resolved alerts", mutate("alerts.0.status", "resolved")),
        ("no fingerprint", mutate("alerts.0.fingerprint", None, delete=True)),
        ("bad fingerprint", mutate("alerts.0.fingerprint", "'; whoami #")),
        ("bad startsAt", mutate("alerts.0.startsAt", "yesterday")),
        ("impossible date", mutate("alerts.0.startsAt", "2030-02-30T00:00:00Z")),
        ("label value a number", mutate("alerts.0.labels.host", 36)),
        ("label value null", mutate("alerts.0.labels.host", None)),
        ("label name with dash", mutate("alerts.0.labels.ho-st", "x")),
        ("label name injection", mutate("alerts.0.labels.$(whoami)", "x")),
        ("no alertname", mutate("alerts.0.labels.alertname", None, delete=True)),
        ("labels a list", mutate("alerts.0.labels", [["host", lab_host("hv36")]])),
        ("unknown alert field", mutate("alerts.0.script", "whoami")),
        ("truncatedAlerts negative", mutate("truncatedAlerts", -1)),
        ("truncatedAlerts boolean", mutate("truncatedAlerts", True)),
        ("groupLabels a string", mutate("groupLabels", "host")),
        ("label value 100 KB", mutate("alerts.0.labels.host", "h" * 100_000)),
    ]:
        add(Case(f"schema: {name}", 400, raw))
    # ---- valid webhooks that must cause no work: 200, every alert rejected ----------------------
    for n, host in enumerate(INJECTIONS):
        add(Case(f"injection in host #{n}", 200, body(alert(host, fingerprint=f"{n:016x}"))))
    for n, host in enumerate(LOOKALIKES):
        add(Case(f"look-alike host #{n}", 200, body(alert(host, fingerprint=f"{n + 100:016x}"))))
    for host in NOT_IN_INVENTORY:
        add(Case(f"not in the inventory: {host[:30]}", 200, body(alert(host))))
    for name in UNKNOWN_ALERTS:
        add(Case(f"alert not a trigger: {name!r}", 200, body(alert(lab_host("hv36"), name))))
    for n, name in enumerate(INJECTIONS[:10]):
        add(Case(f"injection in alertname #{n}", 200, body(alert(lab_host("hv36"), name or "x"))))
    add(Case("no host label", 200, body(alert(None))))
    add(Case("denied host", 200, body(alert(lab_host("lib01")))))
    for name in ("VMMCertificateExpired", "VMMCertificateMissing", "VMMCertificateNotTrusted"):
        resolved = alert(lab_host("hv36"), name, status="resolved")
        resolved["endsAt"] = "2030-06-02T00:00:00Z"
        add(Case(f"resolved only: {name}", 200, body(resolved)))
    add(
        Case(
            "resolved group of several",
            200,
            body(
                *[
                    alert(lab_host(f"hv3{i}"), status="resolved", fingerprint=f"{i:016x}")
                    for i in range(1, 7)
                ]
            ),
        )
    )
    add(
        Case(
            "injection in every label, bad host",
            200,
            body(alert(INJECTIONS[0], **{f"l{i}": v for i, v in enumerate(INJECTIONS[:20])})),
        )
    )
    # ---- the API, authenticated, with bad input ---------------------------------------------
    for path, method, status in [
        ("/api/jobs/999", "GET", 404),
        ("/api/jobs/1;whoami", "GET", 404),
        ("/api/jobs/-1", "GET", 404),
        ("/api/jobs/99999999999999999999", "GET", 404),
        ("/api/jobs/1/delete", "POST", 404),
        ("/api/jobs/999/approve", "POST", 404),
        ("/api/jobs/999/cancel", "POST", 404),
        ("/api/jobs/1/approve", "GET", 405),
        ("/api/pause", "GET", 405),
        ("/api/jobs?status=running';--", "GET", 400),
        ("/api/jobs?limit=1e9", "GET", 400),
        ("/api/nothing", "GET", 404),
        ("/../../etc/passwd", "GET", 404),
    ]:
        add(Case(f"api: {method} {path}", status, None, tuple(auth().items()), method, path))
    return cases


RAW_REQUESTS = [
    # (name, bytes sent, expected status in the first line or None for "closed, no crash")
    (
        "Content-Length larger than the body, then close",
        b"POST /alertmanager HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
        + TOKEN.encode()
        + b"\r\nContent-Type: application/json\r\nContent-Length: 5000\r\n\r\n"
        + VALID[:100],
        None,
    ),
    (
        # the server answers from the headers alone, without reading a byte of the body
        "declared body over the limit",
        b"POST /alertmanager HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
        + TOKEN.encode()
        + b"\r\nContent-Type: application/json\r\nContent-Length: "
        + str(LIMIT + 1).encode()
        + b"\r\n\r\n"
        + b" " * 1024,
        413,
    ),
    (
        "declared body over the limit, unauthenticated",
        b"POST /alertmanager HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 999999999\r\n\r\n",
        413,
    ),
    (
        "chunked body over the limit",
        b"POST /alertmanager HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
        + TOKEN.encode()
        + b"\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"".join(b"4000\r\n" + b" " * 0x4000 + b"\r\n" for _ in range(40))
        + b"0\r\n\r\n",
        413,
    ),
    ("garbage request line", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n", 400),
    (
        "bad Content-Length",
        b"POST /alertmanager HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
        400,
    ),
    (
        "header block of 100 KB",
        b"GET /api/jobs HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 100_000 + b"\r\n\r\n",
        None,
    ),
]


def raw(url: str, data: bytes) -> int | None:
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=15) as sock:
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        chunks = b""
        try:
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                chunks += chunk
        except OSError:
            pass
    line = chunks.split(b"\r\n", 1)[0].split()
    return int(line[1]) if len(line) > 1 and line[1].isdigit() else None


@pytest.fixture
def receiver(lab: RunningLab, tmp_path: Path) -> Iterator[Receiver]:
    config = receiver_config(
        lab,
        tmp_path,
        mode="execute",
        interval="1h",  # no discovery during the barrage: the request count must stay flat
        max_request_bytes=LIMIT,
        allow_hosts=["*.lab.example"],
        deny_hosts=["lib01.lab.example"],
    )
    running = start_receiver(config, poll_interval=0.05)
    assert running.inventory.loaded.wait(30)
    yield running
    running.stop()


def lab_picture(lab: RunningLab) -> dict[str, Any]:
    return {c["fqdn"]: lab.model.describe(c["fqdn"]) for c in lab.model.list_computers()}


def test_hostile_requests_run_nothing(receiver: Receiver, lab: RunningLab) -> None:
    cases = hostile_cases()
    assert len(cases) + len(RAW_REQUESTS) >= 100, len(cases)
    fleet = fleet_of(lab)
    picture = lab_picture(lab)
    requests_before = lab.server.stats()["requests_total"]
    calls_before = len(fleet.calls)
    wrong: list[tuple[str, int | None, int, str]] = []
    counted: dict[int, int] = {}
    for case in cases:
        status, answer = http(case.method, receiver.url + case.path, case.body, dict(case.headers))
        counted[status] = counted.get(status, 0) + 1
        if status != case.status:
            wrong.append((case.name, status, case.status, str(answer)[:200]))
        elif status == 200 and case.path == "/alertmanager":
            assert answer["outcome"] == "no_action", case.name
            assert all(a["outcome"] == "rejected" for a in answer["alerts"]), case.name
    for name, data, expected in RAW_REQUESTS:
        raw_status = raw(receiver.url, data)
        if expected is not None and raw_status != expected:
            wrong.append((name, raw_status, expected, "raw"))
    assert wrong == []
    time.sleep(0.5)  # the engine polls every 50 ms: give a wrongly created job time to start
    receiver.engine.tick(wait=True)
    assert receiver.journal.list_jobs() == []
    assert lab.server.stats()["requests_total"] == requests_before
    assert len(fleet.calls) == calls_before
    assert lab_picture(lab) == picture
    # every rejected alert was journaled with its reason, and the counters add up
    rejected = receiver.journal.rejected_alerts(limit=1000)
    assert any("not a plain FQDN" in r["reason"] for r in rejected)
    assert any("not a computer of the inventory" in r["reason"] for r in rejected)
    assert any("not in trigger_alerts" in r["reason"] for r in rejected)
    assert any(r["reason"].startswith("resolved") for r in rejected)
    assert any("deny_hosts" in r["reason"] for r in rejected)
    webhooks = receiver.app.webhooks.snapshot()
    assert webhooks["unauthorized"] == 12 and webhooks["forbidden"] == 2
    assert webhooks["accepted"] == 0 and webhooks["error"] == 0
    # and it still serves: a valid alert is accepted and renewed
    status, answer = http("POST", receiver.url + "/alertmanager", VALID, auth())
    assert status == 200 and answer["outcome"] == "accepted"


def test_replayed_and_duplicated_alerts_make_one_job(receiver: Receiver, lab: RunningLab) -> None:
    fleet = fleet_of(lab)
    same = body(
        alert(lab_host("hv36")),
        alert(lab_host("hv36")),
        alert(lab_host("hv36"), "VMMCertificateExpired", fingerprint="fedcba9876543210"),
    )
    statuses: list[int] = []

    def send() -> None:
        statuses.append(http("POST", receiver.url + "/alertmanager", same, auth())[0])

    threads = [threading.Thread(target=send) for _ in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for _ in range(10):
        send()
    assert statuses == [200] * 20
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(j.active for j in receiver.journal.list_jobs()):
        time.sleep(0.05)
    jobs = receiver.journal.list_jobs()
    assert [(j.host, j.status) for j in jobs] == [(lab_host("hv36"), "succeeded")]
    assert fleet.count("remove-certificates", lab_host("hv36")) == 1
    assert fleet.count("register-managed-computer") == 1
    # Alertmanager repeats the same alert later: it joins the finished job, nothing runs
    before = len(fleet.calls)
    status, answer = http("POST", receiver.url + "/alertmanager", same, auth())
    assert status == 200
    assert {a["outcome"] for a in answer["alerts"]} == {"joined"}
    receiver.engine.tick(wait=True)
    assert len(fleet.calls) == before
    assert len(receiver.journal.job_alerts(jobs[0].id)) == 63


def test_labels_never_reach_powershell(receiver: Receiver, lab: RunningLab) -> None:
    """Injection in every other label of a valid alert: the scripts carry only the FQDN."""
    hostile = {f"l{i}": v for i, v in enumerate(INJECTIONS) if v}
    doc = alert(lab_host("hv36"), **hostile)
    doc["annotations"] = {"description": INJECTIONS[0], "runbook": INJECTIONS[1]}
    status, answer = http("POST", receiver.url + "/alertmanager", body(doc), auth())
    assert status == 200 and answer["alerts"][0]["outcome"] == "created"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(j.active for j in receiver.journal.list_jobs()):
        time.sleep(0.05)
    job = receiver.journal.list_jobs()[0]
    assert job.status == "succeeded"
    assert job.plan is not None
    # each script is exactly the shipped one with the inventory's parameters, no more
    for step in job.plan["steps"]:
        assert step["script"] == render_script(step["name"], step["params"])
        line2 = step["script"].split("\n")[1]
        decoded = json.loads(base64.b64decode(line2.split("'")[1]))
        assert decoded == step["params"]
        text = json.dumps(decoded)
        for value in hostile.values():
            if len(value) > 3:
                assert value not in text
    assert job.plan["steps"][0]["params"]["thumbprints"]
    assert job.plan["steps"][1]["params"] == {
        "computer": lab_host("hv36"),
        "run_as_account": "VMM Host Admins",
    }
