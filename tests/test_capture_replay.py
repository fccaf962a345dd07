"""capture and lab --replay, over real pywinrm: record a fleet, serve it back, judge it the same.

One lab plays the fleet: the demo scenario with a random canary password and one computer of
each failure the exporter classifies. It is captured as is and with --redact (as an
administrator runs the command), then each capture is replayed by the lab and read by the
exporter, whose verdicts must match what it said of the original fleet.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
import shutil
import stat
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from cryptography import x509

from vmm_cert_exporter.capture_format import Call, Capture, Member
from vmm_cert_exporter.capture_redact import redact, scrub
from vmm_cert_exporter.cli import main
from vmm_cert_exporter.collection import Refresher
from vmm_cert_exporter.config import load_config
from vmm_cert_exporter.failures import CollectError
from vmm_cert_exporter.powershell import render_script
from vmm_cert_exporter.remoting import WinRMRunner
from vmm_cert_exporter.results import parse_collect_certificates, parse_job_result
from vmm_cert_lab.fleet import powershell as lab_ps
from vmm_cert_lab.fleet.interfaces import Faults
from vmm_cert_lab.fleet.replay import load_replay, write_replay_config
from vmm_cert_lab.fleet.runner import RunningLab, start_lab
from vmm_cert_lab.fleet.scenario import LAB_DOMAIN, lab_host
from vmm_cert_lab.processes import ExporterCommand, Processes

FAULTS = {
    lab_host("hv02"): Faults(http_401=True),  # auth, before any script
    lab_host("hv03"): Faults(access_denied=True),  # auth: WS-Man AccessDenied
    lab_host("hv04"): Faults(garbage_stdout=True),  # parse: bytes that are not UTF-8
    lab_host("hv05"): Faults(script_error=True),  # script: a CLIXML error record, exit 1
    lab_host("hv06"): Faults(progress_only_stderr=True),  # fine, with CLIXML progress on stderr
    lab_host("hv07"): Faults(receive_timeout=True),  # timeout
    # hv40 is refused by the demo scenario itself: connect
}
ACCOUNT_NAME = "svc-vmmcert"


@dataclass(frozen=True)
class Verdict:
    """What the exporter concluded about one computer, as compared across captures."""

    role: str
    vmm_state: str | None
    present: bool | None
    certificates: int | None
    not_after: datetime | None
    trusted: bool | None
    ok: bool
    reason: str | None


@dataclass
class Fleet:
    lab: RunningLab
    root: Path
    password: str
    config: Path
    original: dict[str, Verdict]
    plain: Path
    redacted: Path
    printed: str  # what both capture commands printed
    command: ExporterCommand


def verdicts(config: Path) -> dict[str, Verdict]:
    snapshot = Refresher(load_config(config)).refresh_once()
    return {
        h.computer.fqdn.lower(): Verdict(
            role=h.computer.role,
            vmm_state=h.computer.vmm_state,
            present=h.present,
            certificates=None if h.certificates is None else len(h.certificates),
            not_after=h.current.info.not_after if h.current else None,
            trusted=h.trusted,
            ok=h.last_ok,
            reason=h.last_error_reason,
        )
        for h in snapshot.hosts
    }


def redacted_names(original: dict[str, Verdict]) -> dict[str, str]:
    """The documented numbering: every name of the capture, sorted, from host001."""
    return {name: f"host{n:03d}.redacted" for n, name in enumerate(sorted(original), start=1)}


@pytest.fixture(scope="module")
def fleet(
    tmp_path_factory: pytest.TempPathFactory,
    open_lab: Callable[..., AbstractContextManager[RunningLab]],
    exporter_command: ExporterCommand,
) -> Iterator[Fleet]:
    root = tmp_path_factory.mktemp("capture")
    password = "Canary-" + secrets.token_urlsafe(18)
    lab_options = {"password": password, "faults": FAULTS, "max_operation_wait": 2.0}
    with open_lab(root / "lab", **lab_options) as lab:
        assert lab.account.username == ACCOUNT_NAME
        config = lab.write_config(root / "exporter.yml")
        data = yaml.safe_load(config.read_text())
        data["winrm"]["timeout"] = "5s"
        config.write_text(yaml.safe_dump(data))
        original = verdicts(config)
        printed = ""
        for name, extra in (("plain", []), ("redacted", ["--redact"])):
            result = exporter_command.run(
                "capture", "--config", str(config), "--out", str(root / name), *extra
            )
            assert result.returncode == 0, result.stderr
            assert "Traceback" not in result.stderr
            printed += result.stdout + result.stderr
        yield Fleet(
            lab,
            root,
            password,
            config,
            original,
            root / "plain",
            root / "redacted",
            printed,
            exporter_command,
        )


def files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.is_file())


def load(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


# --------------------------------------------------------------------------------------------
# What a capture holds


@pytest.mark.e2e
def test_the_original_fleet_has_every_case(fleet: Fleet) -> None:
    reasons = {k: v.reason for k, v in fleet.original.items() if v.reason}
    assert reasons == {
        lab_host("hv02"): "auth",
        lab_host("hv03"): "auth",
        lab_host("hv04"): "parse",
        lab_host("hv05"): "script",
        lab_host("hv07"): "timeout",
        lab_host("hv40"): "connect",
    }
    assert fleet.original[lab_host("hv39")].trusted is False
    assert fleet.original[lab_host("hv38")].present is False


@pytest.mark.e2e
def test_layout_manifest_and_raw_bytes(fleet: Fleet) -> None:
    manifest = load(fleet.plain / "manifest.json")
    assert manifest["format"] == "vmm-cert-exporter-capture" and manifest["format_version"] == 1
    assert manifest["redacted"] is False
    assert manifest["operations"] == [
        "list-managed-computers",
        "list-trusted-certificates",
        "collect-certificates",
    ]
    assert manifest["vmm_servers"] == [{"host": lab_host("vmm01"), "discover": True}]
    assert {m["fqdn"].lower() for m in manifest["computers"]} == set(fleet.original)
    assert manifest["summary"]["failed"] == {"auth": 2, "connect": 1, "timeout": 1}
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", manifest["captured_at"])
    assert stat.S_IMODE(fleet.plain.stat().st_mode) == 0o700  # hostnames: private by default

    computers = fleet.plain / "computers"
    assert {p.name for p in computers.iterdir()} == set(fleet.original)
    vmm = computers / lab_host("vmm01")
    assert {p.name for p in vmm.iterdir()} == {
        f"{op}.{ext}"
        for op in ("list-managed-computers", "list-trusted-certificates", "collect-certificates")
        for ext in ("json", "stdout", "stderr")
    }
    # the bytes as the computer sent them: not decoded, not re-encoded
    assert (computers / lab_host("hv04") / "collect-certificates.stdout").read_bytes() == (
        lab_ps.garbage_stdout()
    )
    script_error = computers / lab_host("hv05")
    assert load(script_error / "collect-certificates.json")["exit_code"] == 1
    assert (script_error / "collect-certificates.stderr").read_bytes().startswith(b"#< CLIXML")
    assert (
        (computers / lab_host("hv06") / "collect-certificates.stderr")
        .read_bytes()
        .startswith(b"#< CLIXML")
    )
    refused = load(computers / lab_host("hv40") / "collect-certificates.json")
    assert refused["failure"]["reason"] == "connect"
    assert not (computers / lab_host("hv40") / "collect-certificates.stdout").exists()
    assert load(computers / lab_host("hv02") / "collect-certificates.json")["failure"] == {
        "reason": "auth",
        "detail": "credentials rejected (HTTP 401)",
    }
    healthy = (computers / lab_host("hv01") / "collect-certificates.stdout").read_text()
    (certificate,) = parse_collect_certificates(healthy).certificates
    described = fleet.lab.model.describe(lab_host("hv01"))
    assert certificate.thumbprint in {c["thumbprint"] for c in described["certificates"]}
    assert "captured 45 calls on 43 computers" in fleet.printed
    assert "use --redact before sharing" in fleet.printed


@pytest.mark.e2e
def test_no_credential_is_written_or_printed(fleet: Fleet) -> None:
    assert fleet.password not in fleet.printed
    for path in files(fleet.plain) + files(fleet.redacted):
        data = path.read_bytes().lower()
        assert fleet.password.lower().encode() not in data, path
        assert ACCOUNT_NAME.encode() not in data, path
    for name in ("plain", "redacted"):
        assert not list(fleet.root.glob(f".{name}.partial-*"))  # nothing left behind


# --------------------------------------------------------------------------------------------
# --redact


def _json_strings(value: Any, key: str | None = None) -> Iterator[tuple[str | None, str]]:
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _json_strings(v, k)
    elif isinstance(value, list):
        for v in value:
            yield from _json_strings(v, key)
    elif isinstance(value, str):
        yield key, value


@pytest.mark.e2e
def test_redaction_leaves_no_hostname_anywhere(fleet: Fleet) -> None:
    fqdns = sorted(fleet.original)
    shorts = sorted({f.split(".")[0] for f in fqdns})
    # the short names are tested as words: inside random bytes "hv1" can occur by chance
    word = re.compile(r"(?<![a-z0-9])(?:" + "|".join(shorts) + r")(?![a-z0-9])", re.IGNORECASE)
    long_names = [n.encode() for n in [*fqdns, LAB_DOMAIN]]

    def no_name_in_text(text: str, where: str) -> None:
        lowered = text.lower()
        for name in long_names:
            assert name.decode() not in lowered, where
        assert word.search(text) is None, (where, word.search(text))

    ders: list[tuple[str, bytes]] = []
    for path in files(fleet.redacted):
        relative = str(path.relative_to(fleet.redacted))
        no_name_in_text(relative, "file name")
        data = path.read_bytes()
        try:
            document = json.loads(data)
        except ValueError:
            no_name_in_text(data.decode("latin-1"), relative)  # e.g. the garbage stdout
            continue
        for key, value in _json_strings(document):
            if key == "der_base64":
                ders.append((relative, base64.b64decode(value)))
            else:
                no_name_in_text(value, relative)
    assert len(ders) > 40
    for relative, der in ders:
        lowered = der.lower()
        for name in long_names:
            assert name not in lowered, relative
            assert name.decode().encode("utf-16-be") not in lowered, relative
        cert = x509.load_der_x509_certificate(der)
        texts = [cert.subject.rfc4514_string(), cert.issuer.rfc4514_string()]
        try:
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            texts.extend(san.get_values_for_type(x509.DNSName))
        except x509.ExtensionNotFound:
            pass
        for text in texts:
            no_name_in_text(text, relative)


def _certificates(directory: Path, computer: str, operation: str) -> list[dict[str, Any]]:
    path = directory / "computers" / computer / f"{operation}.stdout"
    return list(load(path)["certificates"])


@pytest.mark.e2e
def test_redaction_reissues_certificates_and_keeps_what_is_judged(fleet: Fleet) -> None:
    names = redacted_names(fleet.original)
    for original, redacted in names.items():
        path = fleet.plain / "computers" / original / "collect-certificates.stdout"
        if original.startswith(("hv04", "hv05")) or not path.exists():
            continue
        before = _certificates(fleet.plain, original, "collect-certificates")
        after = _certificates(fleet.redacted, redacted, "collect-certificates")
        assert len(before) == len(after)
        for old, new in zip(before, after, strict=True):
            der = base64.b64decode(new["der_base64"])
            assert (
                new["thumbprint"]
                == hashlib.sha1(der, usedforsecurity=False).hexdigest().upper()
                != old["thumbprint"]
            )
            assert new["friendly_name"] == "SCVMM_CERTIFICATE_KEY_CONTAINER" + redacted
            a = x509.load_der_x509_certificate(base64.b64decode(old["der_base64"]))
            b = x509.load_der_x509_certificate(der)
            assert (a.not_valid_before_utc, a.not_valid_after_utc, a.serial_number) == (
                b.not_valid_before_utc,
                b.not_valid_after_utc,
                b.serial_number,
            )
            assert a.public_key().public_numbers() != b.public_key().public_numbers()  # type: ignore[union-attr]
            assert b.issuer == b.subject
            assert b.subject.rfc4514_string() == f"CN={redacted}"
            assert [e.oid for e in a.extensions] == [e.oid for e in b.extensions]
    # the same certificate in a host's My and in VMM's TrustedPeople is the same copy
    trusted = {
        c["thumbprint"]
        for c in _certificates(
            fleet.redacted, names[lab_host("vmm01")], "list-trusted-certificates"
        )
    }
    host = _certificates(fleet.redacted, names[lab_host("hv01")], "collect-certificates")[0]
    assert host["thumbprint"] in trusted


# --------------------------------------------------------------------------------------------
# lab --replay


@pytest.fixture(scope="module", params=["plain", "redacted"])
def replay(request: pytest.FixtureRequest, fleet: Fleet) -> Iterator[tuple[str, RunningLab]]:
    replayed = load_replay(getattr(fleet, request.param))
    with start_lab(fleet=replayed, state_dir=fleet.root / f"replay-{request.param}") as lab:
        write_replay_config(lab, replayed, fleet.root / f"replay-{request.param}.yml")
        yield request.param, lab


@pytest.mark.e2e
def test_the_replay_gets_the_same_verdicts(fleet: Fleet, replay: tuple[str, RunningLab]) -> None:
    kind, _ = replay
    config = fleet.root / f"replay-{kind}.yml"
    data = yaml.safe_load(config.read_text())
    data["winrm"]["timeout"] = "5s"
    config.write_text(yaml.safe_dump(data))
    replayed = verdicts(config)
    names = redacted_names(fleet.original) if kind == "redacted" else {k: k for k in fleet.original}
    assert replayed == {names[k]: v for k, v in fleet.original.items()}


@pytest.mark.parametrize(("scenario", "locale"), [("ha", None), ("demo", "ja-JP")])
def test_other_fleets_replay_the_same(scenario: str, locale: str | None, tmp_path: Path) -> None:
    """HA VMM servers (role names, nodes, aliases) and Japanese display text survive both."""
    with start_lab(scenario=scenario, locale=locale, state_dir=tmp_path / "lab") as lab:
        config = lab.write_config(tmp_path / "fleet.yml")
        original = verdicts(config)
        names = {c["fqdn"].lower() for c in lab.model.list_computers()}
        for kind, extra in (("plain", []), ("redacted", ["--redact"])):
            out = tmp_path / kind
            assert main(["capture", "--config", str(config), "--out", str(out), *extra]) == 0
    for kind in ("plain", "redacted"):
        replayed = load_replay(tmp_path / kind)
        with start_lab(fleet=replayed, state_dir=tmp_path / f"lab-{kind}") as lab:
            result = verdicts(write_replay_config(lab, replayed, tmp_path / f"{kind}.yml"))
        if kind == "plain":
            assert result == original
        else:  # the same verdicts under other names
            assert sorted(map(repr, result.values())) == sorted(map(repr, original.values()))
            assert not names & {n.lower() for n in result}
            assert all(n.endswith(".redacted") for n in result)


def _runner(lab: RunningLab) -> WinRMRunner:
    config = lab.write_config(lab.state_dir / "runner.yml")
    return WinRMRunner(load_config(config).winrm)


@pytest.mark.e2e
def test_the_replay_refuses_every_change(fleet: Fleet, replay: tuple[str, RunningLab]) -> None:
    kind, lab = replay
    names = redacted_names(fleet.original) if kind == "redacted" else {k: k for k in fleet.original}
    host, vmm = names[lab_host("hv01")], names[lab_host("vmm01")]
    runner = _runner(lab)
    before = runner.run(host, render_script("collect-certificates"))
    thumbprint = parse_collect_certificates(before.stdout).certificates[0].thumbprint
    removed = runner.run(host, render_script("remove-certificates", {"thumbprints": [thumbprint]}))
    assert removed.exit_code == 1 and "read-only" in removed.stderr and removed.stdout == ""
    for operation, params in (
        ("register-managed-computer", {"computer": host, "run_as_account": "VMM Host Admins"}),
        ("update-vmm-certificate", {"vmm_server": vmm}),
    ):
        output = runner.run(vmm, render_script(operation, params))
        assert output.exit_code == 1 and "read-only" in output.stderr
        job = parse_job_result(output.stdout, operation)
        assert job.status == "Failed" and job.error is not None and "read-only" in job.error
    assert runner.run(host, render_script("collect-certificates")) == before
    answer = requests.post(f"{lab.control_url}/computers/{host}/renew", timeout=10)
    assert answer.status_code == 400 and "read-only" in answer.json()["error"]
    with pytest.raises(CollectError) as unknown:
        runner.run(lab_host("nosuch"), render_script("collect-certificates"))
    assert unknown.value.reason == "wsman_fault" and "404" in unknown.value.detail


@pytest.mark.e2e
def test_the_replay_accepts_only_the_lab_account(replay: tuple[str, RunningLab]) -> None:
    _, lab = replay
    config = lab.write_config(lab.state_dir / "wrong.yml")
    config.with_name("wrong.password").write_text("not-the-password")
    runner = WinRMRunner(load_config(config).winrm)
    with pytest.raises(CollectError) as refused:
        runner.run(lab.vmm_servers[0], render_script("collect-certificates"))
    assert refused.value.reason == "auth"


@pytest.mark.e2e
def test_lab_replay_command_and_check(fleet: Fleet, tmp_path: Path, processes: Processes) -> None:
    """As a user runs it: lab --replay DIR --write-config, then check against it."""
    config = tmp_path / "replay.yml"
    proc = processes.exporter("lab", "--replay", str(fleet.redacted), "--write-config", str(config))
    try:
        assert proc.stdout is not None
        lines: list[str] = []
        while not lines or not lines[-1].startswith("computers:"):
            line = proc.stdout.readline()
            assert line, proc.stderr.read() if proc.stderr else ""
            lines.append(line)
        assert lines[-1].startswith("computers: 43 ")
        assert "host043.redacted" in lines[-1]
        written = yaml.safe_load(config.read_text())
        assert written["vmm_servers"] == [{"host": "host043.redacted", "discover": True}]
        written["winrm"]["timeout"] = "5s"
        config.write_text(yaml.safe_dump(written))
        replayed = fleet.command.run("check", "--json", "--config", str(config))
        original = fleet.command.run("check", "--json", "--config", str(fleet.config))
    finally:
        proc.terminate()
        assert proc.wait(timeout=20) == 0
    assert replayed.returncode == original.returncode == 2
    names = redacted_names(fleet.original)
    before = {names[c["host"]]: c for c in json.loads(original.stdout)["computers"]}
    after = {c["host"]: c for c in json.loads(replayed.stdout)["computers"]}
    assert set(before) == set(after)
    for host, was in before.items():
        now = after[host]
        assert (now["status"], now["role"], now["not_after"]) == (
            was["status"],
            was["role"],
            was["not_after"],
        )
        if was["days_left"] is not None:
            assert abs(now["days_left"] - was["days_left"]) < 0.05
        assert [p.split(":")[0] for p in now["problems"]] == [
            p.split(":")[0] for p in was["problems"]
        ]


@pytest.mark.e2e
def test_a_capture_edited_by_hand_is_a_test_case(fleet: Fleet, tmp_path: Path) -> None:
    """Turning a capture into a test: change one recorded answer, replay, see the effect."""
    edited = tmp_path / "edited"
    shutil.copytree(fleet.plain, edited)
    trusted = edited / "computers" / lab_host("vmm01") / "list-trusted-certificates"
    record = load(trusted.with_suffix(".json"))
    del record["exit_code"]
    record["failure"] = {"reason": "wsman_fault", "detail": "w:InternalError: the store is gone"}
    trusted.with_suffix(".json").write_text(json.dumps(record))
    trusted.with_suffix(".stdout").unlink()
    hv01 = edited / "computers" / lab_host("hv01") / "collect-certificates.stdout"
    document = load(hv01)
    document["certificates"] = []
    hv01.write_text(json.dumps(document))
    replayed = load_replay(edited)
    with start_lab(fleet=replayed, state_dir=tmp_path / "lab") as lab:
        config = write_replay_config(lab, replayed, tmp_path / "edited.yml")
        data = yaml.safe_load(config.read_text())
        data["vmm_servers"] = [{"host": lab_host("vmm01"), "discover": True}]
        data["winrm"]["timeout"] = "5s"
        config.write_text(yaml.safe_dump(data))
        result = verdicts(config)
    assert result[lab_host("vmm01")].reason == "wsman_fault"
    assert result[lab_host("hv39")].trusted is None  # no TrustedPeople, no verdict
    assert result[lab_host("hv01")].present is False
    assert result[lab_host("hv10")] == replace(fleet.original[lab_host("hv10")], trusted=None)


# --------------------------------------------------------------------------------------------
# Bad arguments and awkward directories


def _small_config(fleet: Fleet, path: Path, hosts: list[str]) -> Path:
    data = yaml.safe_load(fleet.config.read_text())
    data["vmm_servers"] = []
    data["hosts"] = [{"host": h} for h in hosts]
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.e2e
def test_capture_refuses_bad_arguments(
    fleet: Fleet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _small_config(fleet, tmp_path / "one.yml", [lab_host("hv01")])

    def capture(*args: str) -> tuple[int, str]:
        code = main(["capture", "--config", *args])
        return code, capsys.readouterr().err

    code, err = capture(str(tmp_path / "missing.yml"), "--out", str(tmp_path / "a"))
    assert code == 2 and "missing.yml" in err and "does not exist" in err
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    code, err = capture(str(config), "--out", str(busy))
    assert code == 2 and "not empty and not a capture" in err
    code, err = capture(str(config), "--out", str(busy), "--force")
    assert code == 2 and (busy / "notes.txt").read_text() == "mine"
    a_file = tmp_path / "file"
    a_file.write_text("")
    code, err = capture(str(config), "--out", str(a_file / "sub"))
    assert code == 2 and "cannot write there" in err
    code, err = capture(str(config), "--out", str(a_file))
    assert code == 2 and "not a directory" in err

    out = tmp_path / "again"
    assert main(["capture", "--config", str(config), "--out", str(out)]) == 0
    code, err = capture(str(config), "--out", str(out))
    assert code == 2 and "--force" in err
    (out / "notes.txt").write_text("mine")
    code, err = capture(str(config), "--out", str(out), "--force")
    assert code == 2 and "other files (notes.txt)" in err
    (out / "notes.txt").unlink()
    assert main(["capture", "--config", str(config), "--out", str(out), "--force"]) == 0
    assert {p.name for p in (out / "computers").iterdir()} == {lab_host("hv01")}
    assert not list(tmp_path.glob(".*.partial-*"))


@pytest.mark.e2e
def test_capture_of_a_fleet_that_never_answers(
    fleet: Fleet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _small_config(fleet, tmp_path / "down.yml", [lab_host("hv40")])
    out = tmp_path / "down"
    assert main(["capture", "--config", str(config), "--out", str(out)]) == 1
    assert "no computer answered" in capsys.readouterr().err
    record = load(out / "computers" / lab_host("hv40") / "collect-certificates.json")
    assert record["failure"]["reason"] == "connect"  # written all the same: it is evidence
    replayed = load_replay(out)
    assert replayed.faults(lab_host("hv40")).connection_refused


@pytest.mark.e2e
def test_lab_replay_refuses_what_it_cannot_serve(
    fleet: Fleet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def lab(*args: str) -> tuple[int, str]:
        code = main(["lab", *args])
        return code, capsys.readouterr().err

    code, err = lab("--replay", str(tmp_path / "nowhere"))
    assert code == 2 and "not a directory" in err
    code, err = lab("--replay", str(tmp_path))
    assert code == 2 and "manifest.json" in err
    code, err = lab("--replay", str(fleet.plain), "--hosts", "3")
    assert code == 2 and "--scenario or --hosts" in err
    broken = tmp_path / "broken"
    shutil.copytree(fleet.plain, broken)
    stdout = broken / "computers" / lab_host("hv01") / "collect-certificates.stdout"
    stdout.unlink()
    code, err = lab("--replay", str(broken))
    assert code == 2 and str(stdout) in err
    manifest = load(broken / "manifest.json")
    manifest["format_version"] = 2
    (broken / "manifest.json").write_text(json.dumps(manifest))
    code, err = lab("--replay", str(broken))
    assert code == 2 and "format version 2" in err


# --------------------------------------------------------------------------------------------
# Redaction and scrubbing of the text forms a fleet may answer with


def _capture_of(*calls: Call) -> Capture:
    return Capture(
        captured_at=0.0,
        duration=0.0,
        exporter_version="test",
        winrm={},
        concurrency=1,
        vmm_servers=[(lab_host("vmm01"), True)],
        hosts=[],
        members=[Member(c.computer, "hyperv_host", lab_host("vmm01"), "winrm") for c in calls],
        calls=list(calls),
    )


def test_redaction_of_every_text_form() -> None:
    clixml = (
        b'#< CLIXML\r\n<Objs Version="1.1.0.1" xmlns="http://schemas.microsoft.com/powershell/'
        b'2004/04"><S S="Error">Cannot reach HV01 (HV01.LAB.example) in lab.example'
        b"_x000D__x000A_</S></Objs>"
    )
    document = (
        '{"schema":1,"computer":"hv01.lab.example","ratio":1.50,"n":1,"n":2,'
        '"dns_names":["HV01","hv99.lab.example"],"role":"Host","note":"Host on host"}\r\n'
    )
    calls = (
        Call(lab_host("HV01"), "collect-certificates", 0.1, document.encode(), clixml, 0),
        Call(lab_host("host"), "collect-certificates", 0.1, b"", b"", 0),
        Call(lab_host("scvmm"), "collect-certificates", 0.1,
             b'{"friendly_name":"SCVMM_CERTIFICATE_KEY_CONTAINERscvmm.lab.example"}', b"", 0),
        Call(lab_host("hv02"), "collect-certificates", 0.1,
             lab_host("hv02").encode("utf-16-le"), b"", 0),
        Call(lab_host("hv03"), "collect-certificates", 0.1, failure_reason="connect",
             failure_detail=f"HTTPConnectionPool(host='hv03.{LAB_DOMAIN}', port=5986)"),
    )  # fmt: skip
    redacted = redact(_capture_of(*calls))
    # sorted: host, hv01, hv02, hv03, hv99, scvmm, vmm01
    assert [c.computer for c in redacted.calls] == [
        "host002.redacted",
        "host001.redacted",
        "host006.redacted",
        "host003.redacted",
        "host004.redacted",
    ]
    stdout = redacted.calls[0].stdout.decode()
    # numbers keep their text, duplicate keys and order stay, "Host" is a word VMM decides on
    assert stdout == (
        '{"schema":1,"computer":"host002.redacted","ratio":1.50,"n":1,"n":2,'
        '"dns_names":["host002","host005.redacted"],"role":"Host","note":"Host on host"}\r\n'
    )
    stderr = redacted.calls[0].stderr.decode()
    assert stderr.startswith('#< CLIXML\r\n<Objs Version="1.1.0.1"')
    assert "Cannot reach host002 (host002.redacted) in domain001.redacted_x000D_" in stderr
    # a computer named like a word of the friendly-name prefix leaves the prefix alone
    assert redacted.calls[2].stdout == (
        b'{"friendly_name":"SCVMM_CERTIFICATE_KEY_CONTAINERhost006.redacted"}'
    )
    assert b"hv02" not in redacted.calls[3].stdout.decode("utf-16-le").encode()
    assert len(redacted.calls[3].stdout) == len(calls[3].stdout)  # masked in place
    assert redacted.calls[4].failure_detail == (
        "HTTPConnectionPool(host='host004.redacted', port=5986)"
    )
    assert redacted.vmm_servers == [("host007.redacted", True)]
    assert redacted.redacted and not _capture_of(*calls).redacted


def test_the_account_is_scrubbed_from_every_answer() -> None:
    call = Call(
        lab_host("hv01"),
        "collect-certificates",
        0.1,
        b'{"schema":1,"who":"LAB\\\\svc-vmmcert","der_base64":"MIIsvc"}',
        b"access for SVC-VMMCERT with S3cret-Passw0rd denied",
        1,
    )
    failed = Call(
        lab_host("hv02"), "collect-certificates", 0.1, failure_reason="auth",
        failure_detail="user svc-vmmcert@lab.example: S3cret-Passw0rd",
    )  # fmt: skip
    scrubbed = scrub(
        _capture_of(call, failed),
        anywhere=["S3cret-Passw0rd"],
        words=["LAB\\svc-vmmcert", "svc-vmmcert"],
    )
    assert scrubbed.calls[0].stdout == (
        b'{"schema":1,"who":"[redacted]","der_base64":"MIIsvc"}'  # certificates are left alone
    )
    assert scrubbed.calls[0].stderr == b"access for [redacted] with [redacted] denied"
    assert scrubbed.calls[1].failure_detail == "user [redacted]@lab.example: [redacted]"
