"""Secrets hygiene: a canary password through every path, found nowhere.

A unique random password (the canary) is the lab account's password, so every real WinRM
call carries it. The exporter's commands then run as an administrator would run them — as
subprocesses, with debug logging in both formats — through every path where a secret could
escape: config errors with the secret pasted in the wrong place, authentication failures
(the lab's ``http_401`` fault, over Basic and NTLM), every other failure reason, ``/metrics``,
the ``/`` overview, the JSON of ``check``, interrupted runs (tracebacks), the renewal
receiver's API and journal. Every byte they print, serve or write is searched for it.

The same runs check the log structure: every failure line names the computer, the operation
and the reason, and each refresh ends with one summary line.
"""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bcrypt
import pytest
import yaml

from vmm_cert_lab.fleet.interfaces import Faults
from vmm_cert_lab.fleet.runner import RunningLab
from vmm_cert_lab.fleet.scenario import LAB_DOMAIN, lab_host, load_fleet
from vmm_cert_lab.kdc import KDC
from vmm_cert_lab.processes import ExporterCommand, Processes

# what the lab does to which computer: one of every failure the exporter classifies
FAULTS = {
    lab_host("hv02"): Faults(http_401=True),  # auth: the password was refused
    lab_host("hv03"): Faults(access_denied=True),  # auth: WS-Man AccessDenied
    lab_host("hv04"): Faults(garbage_stdout=True),  # parse
    lab_host("hv05"): Faults(script_error=True),  # script (CLIXML error record)
    lab_host("hv06"): Faults(progress_only_stderr=True),  # fine: progress records only
    lab_host("hv07"): Faults(receive_timeout=True),  # timeout
    lab_host("hv08"): Faults(tls_error=True),  # connect (not TLS on plain HTTP)
    # hv40 is refused by the demo scenario itself: connect
}
REASONS = {"auth", "parse", "script", "timeout", "connect"}


@dataclass
class Canary:
    password: str  # the WinRM account's password
    token: str  # the receiver's bearer token
    scrape: str  # the /metrics basic auth password
    root: Path
    lab: RunningLab
    command: ExporterCommand
    seen: list[tuple[str, str]] = field(default_factory=list)  # (where, text) examined

    def check(self, where: str, text: str | bytes) -> None:
        if isinstance(text, bytes):
            text = text.decode("utf-8", "replace")
        self.seen.append((where, text))
        for name, value in (
            ("password", self.password),
            ("token", self.token),
            ("scrape password", self.scrape),
        ):
            assert value not in text, f"the {name} canary leaked into {where}"


@pytest.fixture(scope="module")
def canary(
    tmp_path_factory: pytest.TempPathFactory,
    open_lab: Callable[..., AbstractContextManager[RunningLab]],
    exporter_command: ExporterCommand,
) -> Iterator[Canary]:
    root = tmp_path_factory.mktemp("canary")
    password = "Canary-" + secrets.token_urlsafe(18)
    (root / "home").mkdir()
    (root / "work").mkdir()
    with open_lab(root / "lab", password=password, faults=FAULTS) as lab:
        yield Canary(
            password=password,
            token="Token-" + secrets.token_urlsafe(18),
            scrape="Scrape-" + secrets.token_urlsafe(18),
            root=root,
            lab=lab,
            command=exporter_command,
        )


def _env(c: Canary, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "HOME": str(c.root / "home"),
        "PYTHONUNBUFFERED": "1",
        **extra,
    }


def _config(c: Canary, name: str, **winrm: Any) -> Path:
    path = c.lab.write_config(c.root / "cfg" / f"{name}.yml")
    data = yaml.safe_load(path.read_text())
    data["winrm"].update({"timeout": "3s", **winrm})
    path.write_text(yaml.safe_dump(data))
    return path


def _run(c: Canary, where: str, *args: str, env: dict[str, str] | None = None) -> str:
    """Run the CLI; check stdout and stderr; return both (stdout first)."""
    return _run2(c, where, *args, env=env)[2]


def _run2(
    c: Canary, where: str, *args: str, env: dict[str, str] | None = None
) -> tuple[str, str, str]:
    """Run the CLI; check stdout and stderr; return (stdout, stderr, both)."""
    result = c.command.run(*args, cwd=c.root / "work", env=env or _env(c))
    c.check(f"{where} stdout", result.stdout)
    c.check(f"{where} stderr", result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    return result.stdout, result.stderr, result.stdout + result.stderr


# --------------------------------------------------------------------------------------------
# Configuration errors with the secret pasted where it does not belong


@pytest.mark.e2e
def test_config_errors_never_echo_the_secret(canary: Canary) -> None:
    c = canary
    good = _config(c, "good")
    base = yaml.safe_load(good.read_text())
    ident = "Canary" + secrets.token_hex(8)  # a secret that is also a valid variable name
    cases: dict[str, tuple[str, str]] = {
        # name: (YAML text, the field the error must name)
        "password-in-password_file": (
            _yaml(base, password_file=c.password),
            "winrm.password_file",
        ),
        "password-in-password_env": (
            _yaml(base, password_file=None, password_env=c.password),
            "winrm.password_env",
        ),
        "identifier-password-in-password_env": (
            _yaml(base, password_file=None, password_env=ident),
            "winrm.password_env",
        ),
        "password-as-a-key": (_yaml(base, password=c.password), "winrm.password"),
        "password-in-the-url": (
            _yaml(base, endpoint=f"http://svc:{c.password}@{{host}}:5985/wsman"),
            "winrm.endpoint",
        ),
        "password-on-a-syntax-error-line": (
            good.read_text().replace("timeout: 3s", f"timeout: [{c.password}"),
            "(syntax)",
        ),
        "password-twice": (
            good.read_text() + f"\nwinrm:\n  password: {c.password}\n",
            "winrm",
        ),
    }
    for name, (text, field_name) in cases.items():
        path = c.root / "inputs" / f"bad-{name}.yml"  # holds the secret on purpose
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
        out = _run(c, f"check-config {name}", "check-config", "--config", str(path))
        assert f"{path}: {field_name}" in out, (name, out)
        assert ident not in out
        for command in ("serve", "check"):
            out = _run(c, f"{command} {name}", command, "--config", str(path), "--log.level=debug")
            assert field_name in out


def _yaml(base: dict[str, Any], **winrm: Any) -> str:
    data = json.loads(json.dumps(base))
    for key, value in winrm.items():
        if value is None:
            data["winrm"].pop(key, None)
        else:
            data["winrm"][key] = value
    return yaml.safe_dump(data)


@pytest.mark.e2e
def test_a_secret_file_readable_by_others_is_warned_about(canary: Canary) -> None:
    c = canary
    config = _config(c, "readable")
    password_file = config.with_name("readable.password")
    password_file.chmod(0o644)
    try:
        out = _run(c, "check-config readable", "check-config", "--config", str(config))
        assert "readable by group or others" in out and str(password_file) in out
        assert ": OK" in out
    finally:
        password_file.chmod(0o600)
    out = _run(c, "check-config private", "check-config", "--config", str(config))
    assert "readable by group or others" not in out


# --------------------------------------------------------------------------------------------
# check: every failure reason, debug logs, both formats, Basic and NTLM, file and env


def _lines(text: str, fmt: str) -> list[dict[str, str]]:
    out: list[dict[str, str]] = []
    for line in text.splitlines():
        if fmt == "json":
            if line.startswith("{"):
                out.append({k: str(v) for k, v in json.loads(line).items()})
        elif line.startswith("ts="):
            pairs = re.findall(r'(\w+)=("(?:[^"\\]|\\.)*"|\S*)', line)
            out.append({k: v[1:-1] if v.startswith('"') else v for k, v in pairs})
    return out


def _check_log_structure(text: str, fmt: str, refreshes: int | None) -> set[str]:
    lines = _lines(text, fmt)
    assert lines, text
    failures = [line for line in lines if line["msg"] == "call failed"]
    for line in lines:
        if line["level"] in ("warn", "error") and line["logger"].startswith(
            "vmm_cert_exporter.collection"
        ):
            assert {"host", "operation", "reason"} <= set(line), line
    summaries = [line for line in lines if line["msg"] == "refresh done"]
    if refreshes is not None:
        assert len(summaries) == refreshes, summaries
    for summary in summaries:
        assert {"computers", "ok", "failed", "calls", "duration_seconds", "reasons"} <= set(
            summary
        ), summary
    return {line["reason"] for line in failures}


@pytest.mark.parametrize("fmt", ["logfmt", "json"])
@pytest.mark.e2e
def test_check_with_every_failure_and_debug_logs(canary: Canary, fmt: str) -> None:
    c = canary
    config = _config(c, f"check-{fmt}")
    for extra in ([], ["--json"]):
        _, err, _ = _run2(
            c,
            f"check {fmt} {extra}",
            "check",
            "--config",
            str(config),
            "--log.level=debug",
            f"--log.format={fmt}",
            *extra,
        )
        reasons = _check_log_structure(err, fmt, refreshes=1)
        assert reasons == REASONS, reasons


@pytest.mark.e2e
def test_check_over_ntlm_and_from_the_environment(canary: Canary) -> None:
    c = canary
    ntlm = _config(c, "ntlm", transport="ntlm", allow_unencrypted_basic=False)
    out = _run(c, "check ntlm", "check", "--config", str(ntlm), "--log.level=debug")
    assert f"host=hv02.{LAB_DOMAIN}" in out and "reason=auth" in out
    env = _config(c, "env", password_file=None, password_env="VMM_CANARY_PASSWORD")
    data = yaml.safe_load(env.read_text())
    data["winrm"].pop("password_file")
    env.write_text(yaml.safe_dump(data))
    stdout, _, _ = _run2(
        c,
        "check env",
        "check",
        "--config",
        str(env),
        "--log.level=debug",
        "--json",
        env=_env(c, VMM_CANARY_PASSWORD=c.password),
    )
    assert len(json.loads(stdout)["computers"]) == 43


@pytest.mark.e2e
def test_an_interrupted_check_prints_no_secret(canary: Canary, processes: Processes) -> None:
    c = canary
    config = _config(c, "slow", timeout="20s")
    slow = [lab_host(f"hv1{n}") for n in range(6)]
    for fqdn in slow:
        c.lab.model.set_faults(fqdn, Faults(receive_timeout=True))
    try:
        proc = processes.exporter(
            "check", "--config", str(config), "--log.level=debug", cwd=c.root / "work", env=_env(c)
        )
        deadline = time.monotonic() + 30
        while not c.lab.server.stats()["open_shells"].keys() & set(slow):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        for fqdn in slow:
            c.lab.model.set_faults(fqdn, Faults())
    # the interrupt path really ran (check.py ends it with exit 130, no traceback)
    assert proc.returncode == 130
    assert "interrupted" in stderr
    c.check("interrupted check stdout", stdout)
    c.check("interrupted check stderr", stderr)


# --------------------------------------------------------------------------------------------
# serve: /metrics, /, every endpoint, auth failures, SIGTERM


def _http(url: str, *, method: str = "GET", headers: dict[str, str] | None = None) -> bytes:
    request = urllib.request.Request(url, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return bytes(response.read())
    except urllib.error.HTTPError as exc:
        return bytes(exc.read())


@pytest.mark.parametrize("fmt", ["json", "logfmt"])
@pytest.mark.e2e
def test_serve_pages_and_logs(canary: Canary, fmt: str, processes: Processes) -> None:
    import base64

    c = canary
    config = _config(c, f"serve-{fmt}")
    web = c.root / "cfg" / f"web-{fmt}.yml"
    hashed = bcrypt.hashpw(c.scrape.encode(), bcrypt.gensalt(4)).decode()
    web.write_text(f"basic_auth_users:\n  prometheus: '{hashed}'\n")
    good = {
        "Authorization": "Basic " + base64.b64encode(f"prometheus:{c.scrape}".encode()).decode()
    }
    proc = processes.exporter(
        "serve",
        "--config",
        str(config),
        f"--web.config.file={web}",
        "--log.level=debug",
        f"--log.format={fmt}",
        listen=True,
        cwd=c.root / "work",
        env=_env(c),
    )
    base = proc.url
    try:
        proc.wait_until(lambda: _http(base + "/-/ready", headers=good) == b"Ready\n", "ready")
        pages = {
            path: _http(base + path, headers=good)
            for path in ("/metrics", "/", "/-/healthy", "/-/ready", "/nope", "/metrics?x=1")
        }
        assert b"vmm_cert_collect_errors_total" in pages["/metrics"]
        assert lab_host("hv02").encode() in pages["/"]
        pages["POST /"] = _http(base + "/", method="POST", headers=good)
        # wrong credentials, the right password under another name, the secret as a user name
        for user, password in (("prometheus", "wrong"), ("admin", c.scrape), (c.scrape, "x")):
            token = base64.b64encode(f"{user}:{password}".encode()).decode()
            pages[f"401 {user[:8]}"] = _http(
                base + "/metrics", headers={"Authorization": f"Basic {token}"}
            )
            assert pages[f"401 {user[:8]}"] == b"Unauthorized\n"
        for path, body in pages.items():
            c.check(f"serve {fmt} {path}", body)
        time.sleep(1.0)  # let a second refresh start: SIGTERM lands mid-refresh or between
    finally:
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0
    c.check(f"serve {fmt} stdout", stdout)
    c.check(f"serve {fmt} stderr", stderr)
    reasons = _check_log_structure(stderr, fmt, refreshes=None)
    assert reasons == REASONS, reasons
    assert any(line["msg"] == "refresh done" for line in _lines(stderr, fmt))


# --------------------------------------------------------------------------------------------
# The renewal receiver: its logs, API answers and journal


@pytest.mark.e2e
def test_receiver_api_and_journal(canary: Canary, processes: Processes) -> None:
    from vmm_cert_lab.receiver_config import write_lab_receiver_config

    c = canary
    journal = c.root / "work" / "renewals.sqlite"
    config = write_lab_receiver_config(
        c.lab, c.root / "cfg" / "receiver.yml", token=c.token, mode="dry-run", journal=journal
    )
    proc = processes.exporter(
        "receiver",
        "--config",
        str(config),
        "--log.level=debug",
        "--log.format=json",
        listen=True,
        cwd=c.root / "work",
        env=_env(c),
    )
    base = proc.url
    bearer = {"Authorization": f"Bearer {c.token}", "Content-Type": "application/json"}
    try:
        # ready: the first discovery has loaded the inventory, so the webhook is not a 503
        proc.wait_ready("/-/ready")
        alert = {
            "status": "firing",
            "labels": {"alertname": "VMMCertificateExpired", "host": lab_host("hv37")},
            "annotations": {},
            "startsAt": "2030-06-01T00:00:00Z",
            "endsAt": "0001-01-01T00:00:00Z",
            "generatorURL": "http://prometheus.invalid/graph",
            "fingerprint": "0123456789abcdef",
        }
        body = json.dumps(
            {
                "version": "4",
                "groupKey": "{}:{}",
                "truncatedAlerts": 0,
                "status": "firing",
                "receiver": "vmm",
                "groupLabels": {},
                "commonLabels": {},
                "commonAnnotations": {},
                "externalURL": "http://am.invalid",
                "alerts": [alert],
            }
        ).encode()
        answers = []
        for headers in (bearer, {"Authorization": f"Bearer {c.token}x"}, {}):
            request = urllib.request.Request(
                base + "/alertmanager", data=body, method="POST", headers=headers
            )
            try:
                with urllib.request.urlopen(request, timeout=15) as response:
                    answers.append(response.read())
            except urllib.error.HTTPError as exc:
                answers.append(exc.read())
        # the engine plans the dry run on its own loop: wait for it, not for a fixed time
        proc.wait_until(lambda: b"hv37" in _http(base + "/api/jobs", headers=bearer), "hv37's job")
        for path in ("/api/jobs", "/api/jobs/1", "/api/status", "/metrics"):
            answers.append(_http(base + path, headers=bearer))
        assert b"hv37" in answers[3]
        for i, answer in enumerate(answers):
            c.check(f"receiver answer {i}", answer)
    finally:
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=60)
    c.check("receiver stdout", stdout)
    c.check("receiver stderr", stderr)
    assert journal.exists()
    for written in journal.parent.rglob("renewals.sqlite*"):
        if written.is_file():
            c.check(f"journal {written.name}", written.read_bytes())


# --------------------------------------------------------------------------------------------
# Last: nothing written anywhere holds a secret


@pytest.mark.e2e
def test_no_file_written_holds_a_secret(canary: Canary) -> None:
    c = canary
    # the secrets' own files hold them on purpose; everything else must not
    own = {p.resolve() for p in (c.root / "cfg").glob("*.password")}
    own |= {p.resolve() for p in (c.root / "cfg").glob("*.token")}
    scanned = 0
    for path in c.root.rglob("*"):
        if not path.is_file() or path.resolve() in own:
            continue
        if (c.root / "lab") in path.parents or (c.root / "inputs") in path.parents:
            continue  # the lab's own state (its scenario holds the password); the bad
            # configurations written by the test
        scanned += 1
        c.check(f"file {path.relative_to(c.root)}", path.read_bytes())
    assert scanned >= 10
    assert len(c.seen) >= 60  # every run above really was examined


@pytest.mark.parametrize("fmt", ["logfmt", "json"])
def test_an_exception_that_ends_a_thread_is_one_structured_line(fmt: str) -> None:
    import io
    import logging
    import threading

    from vmm_cert_exporter.logs import setup_logging

    root = logging.getLogger()
    handlers, level, hook = list(root.handlers), root.level, threading.excepthook
    stream = io.StringIO()
    try:
        setup_logging("info", fmt, stream=stream)

        def boom() -> None:
            raise ValueError("boom")

        worker = threading.Thread(target=boom, name="worker-7")
        worker.start()
        worker.join()
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        threading.excepthook = hook
    lines = _lines(stream.getvalue(), fmt)
    assert len(lines) == 1, stream.getvalue()
    assert lines[0]["level"] == "error" and lines[0]["thread_name"] == "worker-7"
    assert "ValueError: boom" in lines[0]["exc"]


# --------------------------------------------------------------------------------------------
# Kerberos: the canary is the principal's password, and its keytab's keys are canaries too


def _keytab_keys(kdc: KDC, keytab: Path) -> list[bytes]:
    listing = subprocess.run(
        ["klist", "-k", "-K", "-t", str(keytab)],
        env=kdc.env(),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [bytes.fromhex(h) for h in re.findall(r"\(0x([0-9a-f]{32,})\)", listing)]


@pytest.mark.e2e
def test_check_over_kerberos_with_a_password_and_a_keytab(
    canary: Canary, kdc: KDC, make_lab: Callable[..., RunningLab], tmp_path: Path
) -> None:
    c = canary
    principal = kdc.add_user("svc-canary", c.password)
    keytab = kdc.user_keytab(principal, tmp_path / "svc-canary.keytab")
    keytab.chmod(0o600)
    keys = _keytab_keys(kdc, keytab)
    assert len(keys) == 2  # aes256 and aes128
    leaks = [k.hex() for k in keys] + [k.hex().upper() for k in keys]
    leaks += [base64.b64encode(k).decode() for k in keys]
    computers = tmp_path / "computers.keytab"
    fleet = load_fleet("demo")
    kdc.add_computers([str(x["fqdn"]) for x in fleet.list_computers()], computers)
    lab = make_lab(fleet=fleet, kerberos_keytab=computers)
    password_file = tmp_path / "password"
    password_file.write_text(c.password)
    password_file.chmod(0o600)
    for name, credential in (
        ("keytab", {"keytab_file": str(keytab)}),
        ("password", {"password_file": str(password_file)}),
    ):
        data = lab.exporter_config(password_file)
        for key in ("password_file", "allow_unencrypted_basic"):
            data["winrm"].pop(key)
        data["winrm"].update(transport="kerberos", username=principal, timeout="5s", **credential)
        config = tmp_path / f"kerberos-{name}.yml"
        config.write_text(yaml.safe_dump(data))
        out = _run(
            c, f"check kerberos {name}", "check", "--config", str(config), "--log.level=debug"
        )
        # it really logged on: the computers answered, only the demo's unreachable one failed
        assert "ok=42 failed=1" in out and "reason=auth" not in out, out[-2000:]
        for leak in leaks:
            assert leak not in out, f"a key of the keytab leaked into check ({name})"
