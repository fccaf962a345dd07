"""The ``receiver:`` section: defaults, every key, and malformed sections with their errors."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from vmm_cert_exporter.config import (
    DEFAULT_RECEIVER_LISTEN_ADDRESS,
    ConfigError,
    MaintenanceWindow,
    ReceiverConfig,
    loads_config,
)
from vmm_cert_exporter.rules import TRIGGER_ALERTS

TOKEN = "Canary-T0ken-7c1d"
BASE = """\
winrm:
  transport: ntlm
  username: 'CORP\\svc-vmmcert'
  password_file: pw
vmm_servers:
  - host: vmm01.corp.example
"""


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    for name, value in (("pw", "winrm-password"), ("token", TOKEN), ("basic", "b4sic")):
        (tmp_path / name).write_text(value + "\n")
        (tmp_path / name).chmod(0o600)
    for name in ("cert.pem", "key.pem", "ca.pem"):
        (tmp_path / name).write_text("-----BEGIN CERTIFICATE-----\n")
        (tmp_path / name).chmod(0o600)
    (tmp_path / "var").mkdir()
    return tmp_path


def load(workdir: Path, receiver: str) -> ReceiverConfig:
    config = loads_config(BASE + receiver, file="r.yml", base_dir=workdir, environ={"TOK": "env-t"})
    assert config.receiver is not None
    return config.receiver


MINIMAL = """\
receiver:
  run_as_account: VMM Host Admins
  bearer_token_file: token
  journal: var/renewals.sqlite
"""


def test_minimal_section_and_defaults(workdir: Path) -> None:
    r = load(workdir, MINIMAL)
    assert r.run_as_account == "VMM Host Admins"
    assert r.bearer_token is not None and r.bearer_token.reveal() == TOKEN
    assert r.listen_address == DEFAULT_RECEIVER_LISTEN_ADDRESS == "127.0.0.1:9869"
    assert r.mode == "dry-run" and not r.execute
    assert r.trigger_alerts == TRIGGER_ALERTS
    assert r.allow_hosts == ("*",) and r.deny_hosts == ()
    assert r.allow_roles == ("vmm_server", "hyperv_host", "library_server")
    assert (r.max_concurrent, r.max_concurrent_per_vmm_server) == (1, 1)
    assert r.min_validity == 365 * 86400
    assert (r.backoff_initial, r.backoff_max, r.max_attempts) == (3600, 32 * 3600, 8)
    assert r.cooldown == 6 * 3600 and r.require_approval is False
    assert r.maintenance_windows == () and r.pause_file is None
    assert r.journal == str(workdir / "var" / "renewals.sqlite")
    assert r.journal_retention is None  # opt-in: the journal is never pruned by default
    assert r.max_request_bytes == 1024 * 1024 and r.step_timeout == 600


def test_no_section_means_no_receiver(workdir: Path) -> None:
    assert loads_config(BASE, base_dir=workdir).receiver is None
    assert loads_config(BASE + "receiver:\n", base_dir=workdir).receiver is None


def test_every_key(workdir: Path) -> None:
    r = load(
        workdir,
        """\
receiver:
  listen_address: "0.0.0.0:19869"
  bearer_token_env: TOK
  basic_auth: {username: alertmanager, password_file: basic}
  tls: {cert_file: cert.pem, key_file: key.pem, client_ca_file: ca.pem}
  max_request_bytes: 65536
  mode: execute
  run_as_account: "CORP Hyper-V Admins (VMM)"
  trigger_alerts: [VMMCertificateExpired, MyOwnRenamedAlert]
  allow_hosts: ["hv*.corp.example", "lib0?.corp.example"]
  deny_hosts: ["vmm*.corp.example"]
  allow_roles: [hyperv_host]
  max_concurrent: 4
  max_concurrent_per_vmm_server: 2
  min_validity: 400d
  cooldown: 0s
  backoff_initial: 30m
  backoff_max: 1d
  max_attempts: 3
  require_approval: true
  maintenance_windows:
    - {weekdays: [sat, sun], start: "01:00", end: "24:00", timezone: Europe/Berlin}
    - {start: "22:00", end: "02:00"}
  pause_file: var/pause
  journal: var/j.sqlite
  journal_retention: 400d
  step_timeout: 20m
""",
    )
    assert r.bearer_token is not None and r.bearer_token.reveal() == "env-t"
    assert r.basic_auth_username == "alertmanager"
    assert r.basic_auth_password is not None and r.basic_auth_password.reveal() == "b4sic"
    assert r.tls_client_ca_file == str(workdir / "ca.pem")
    assert r.execute and r.trigger_alerts == ("VMMCertificateExpired", "MyOwnRenamedAlert")
    assert r.maintenance_windows == (
        MaintenanceWindow((5, 6), 60, 1440, "Europe/Berlin"),
        MaintenanceWindow((0, 1, 2, 3, 4, 5, 6), 1320, 120, "UTC"),
    )
    assert (r.max_concurrent, r.max_concurrent_per_vmm_server, r.max_attempts) == (4, 2, 3)
    assert (r.backoff_initial, r.backoff_max, r.cooldown) == (1800, 86400, 0)
    assert r.pause_file == str(workdir / "var" / "pause")
    assert r.journal_retention == 400 * 86400


def test_journal_retention_may_equal_cooldown(workdir: Path) -> None:
    r = load(workdir, MINIMAL + "  cooldown: 14d\n  journal_retention: 2w\n")
    assert r.journal_retention == r.cooldown == 14 * 86400


def test_secrets_never_print(workdir: Path) -> None:
    config = loads_config(BASE + MINIMAL, base_dir=workdir)
    for text in (str(config), repr(config), str(dataclasses.asdict(config))):
        assert TOKEN not in text


BAD = [
    ("unknown key", "  colour: blue\n", "receiver.colour", "unknown key 'colour'"),
    (
        "token in the file",
        "  bearer_token: abc\n",
        "receiver.bearer_token",
        "use bearer_token_file or bearer_token_env",
    ),
    ("bad mode", "  mode: yes-please\n", "receiver.mode", "expected one of dry-run, execute"),
    ("mode boolean", "  mode: true\n", "receiver.mode", "got the boolean true"),
    ("listen address", "  listen_address: 9869\n", "receiver.listen_address", "expected host:port"),
    (
        "no run as account",
        None,
        "receiver.run_as_account",
        "required: expected the name of a VMM Run As account",
    ),
    (
        "run as account too long",
        "  run_as_account: " + "a" * 200 + "\n",
        "receiver.run_as_account",
        "at most 128 characters",
    ),
    (
        "trigger on the receiver's own alert",
        "  trigger_alerts: [VMMCertificateRenewalFailed]\n",
        "receiver.trigger_alerts[0]",
        "cannot trigger a renewal",
    ),
    (
        "trigger on a stale exporter",
        "  trigger_alerts: [VMMCertificateExporterStale]\n",
        "receiver.trigger_alerts[0]",
        "cannot trigger a renewal",
    ),
    (
        "trigger on collection failures",
        "  trigger_alerts: [VMMCertificateExpired, VMMCertificateCollectionFailing]\n",
        "receiver.trigger_alerts[1]",
        "cannot trigger a renewal",
    ),
    ("empty trigger list", "  trigger_alerts: []\n", "receiver.trigger_alerts", "at least one"),
    (
        "trigger twice",
        "  trigger_alerts: [VMMCertificateExpired, VMMCertificateExpired]\n",
        "receiver.trigger_alerts[1]",
        "listed twice",
    ),
    ("alert name", "  trigger_alerts: ['a b']\n", "receiver.trigger_alerts[0]", "letters, digits"),
    ("glob", "  allow_hosts: ['hv01;calc']\n", "receiver.allow_hosts[0]", "glob pattern"),
    ("role", "  allow_roles: [hypervisor]\n", "receiver.allow_roles[0]", "expected one of"),
    (
        "per-server above overall",
        "  max_concurrent: 2\n  max_concurrent_per_vmm_server: 3\n",
        "receiver.max_concurrent_per_vmm_server",
        "cannot exceed max_concurrent (2)",
    ),
    ("max_concurrent 0", "  max_concurrent: 0\n", "receiver.max_concurrent", "from 1 to 64"),
    ("min_validity number", "  min_validity: 365\n", "receiver.min_validity", "bare numbers"),
    ("min_validity tiny", "  min_validity: 1h\n", "receiver.min_validity", "between 1d"),
    (
        "backoff max below initial",
        "  backoff_initial: 2h\n  backoff_max: 1h\n",
        "receiver.backoff_max",
        "must be at least backoff_initial (2h)",
    ),
    ("max_attempts", "  max_attempts: 0\n", "receiver.max_attempts", "from 1 to 100"),
    ("approval string", "  require_approval: 'no'\n", "receiver.require_approval", "true or false"),
    (
        "window time",
        "  maintenance_windows: [{start: '25:00', end: '02:00'}]\n",
        "receiver.maintenance_windows[0].start",
        'expected a time of day as "HH:MM"',
    ),
    (
        "window time unquoted",
        "  maintenance_windows: [{start: 22, end: '02:00'}]\n",
        "receiver.maintenance_windows[0].start",
        "got the integer 22",
    ),
    (
        "window empty",
        "  maintenance_windows: [{start: '02:00', end: '02:00'}]\n",
        "receiver.maintenance_windows[0].end",
        "the window would be empty",
    ),
    (
        "window without end",
        "  maintenance_windows: [{start: '02:00'}]\n",
        "receiver.maintenance_windows[0].end",
        "required",
    ),
    (
        "window weekday",
        "  maintenance_windows: [{weekdays: [monday], start: '01:00', end: '02:00'}]\n",
        "receiver.maintenance_windows[0].weekdays[0]",
        "expected one of mon, tue",
    ),
    (
        "window time zone",
        "  maintenance_windows: [{start: '01:00', end: '02:00', timezone: Mars/Olympus}]\n",
        "receiver.maintenance_windows[0].timezone",
        "IANA time zone",
    ),
    (
        "journal directory missing",
        "  journal: nowhere/j.sqlite\n",
        "receiver.journal",
        "does not exist; create it",
    ),
    ("journal is a directory", "  journal: var\n", "receiver.journal", "is a directory"),
    (
        "journal_retention number",
        "  journal_retention: 400\n",
        "receiver.journal_retention",
        "bare numbers are not durations",
    ),
    (
        "journal_retention boolean",
        "  journal_retention: false\n",
        "receiver.journal_retention",
        "got the boolean false",
    ),
    (
        "journal_retention word",
        "  journal_retention: forever\n",
        "receiver.journal_retention",
        "'forever' is not a duration",
    ),
    (
        "journal_retention tiny",
        "  journal_retention: 12h\n",
        "receiver.journal_retention",
        "expected a duration between 1d and 7300d, got 12h",
    ),
    (
        "journal_retention below cooldown",
        "  cooldown: 14d\n  journal_retention: 7d\n",
        "receiver.journal_retention",
        "journal_retention (7d) must be at least cooldown (14d)",
    ),
    (
        "token file missing",
        "  bearer_token_file: no-such-file\n",
        "receiver.bearer_token_file",
        "the bearer token file does not exist",
    ),
    (
        "token env unset",
        "receiver:\n  run_as_account: x\n  bearer_token_env: NOT_SET_ANYWHERE\n",
        "receiver.bearer_token_env",
        "is not set",
    ),
    (
        "both token sources",
        "  bearer_token_env: TOK\n",
        "receiver.bearer_token_env",
        "exactly one of bearer_token_file and bearer_token_env",
    ),
    (
        "basic without password",
        "  basic_auth: {username: am}\n",
        "receiver.basic_auth.password_file",
        "basic_auth needs a password",
    ),
    (
        "basic user with colon",
        "  basic_auth: {username: 'a:b', password_file: basic}\n",
        "receiver.basic_auth.username",
        "cannot contain ':'",
    ),
    (
        "tls without key",
        "  tls: {cert_file: cert.pem}\n",
        "receiver.tls.key_file",
        "required when tls is set",
    ),
    (
        "tls file missing",
        "  tls: {cert_file: cert.pem, key_file: none.pem}\n",
        "receiver.tls.key_file",
        "does not exist",
    ),
    ("body limit", "  max_request_bytes: 10\n", "receiver.max_request_bytes", "from 1024"),
    ("section a list", "receiver: [1]\n", "receiver", "expected a mapping"),
]


@pytest.mark.parametrize(("name", "extra", "field", "message"), BAD, ids=[b[0] for b in BAD])
def test_malformed_receiver_sections(
    workdir: Path, name: str, extra: str | None, field: str, message: str
) -> None:
    if extra is None:
        text = MINIMAL.replace("  run_as_account: VMM Host Admins\n", "")
    elif extra.startswith("receiver:"):
        text = extra
    else:
        # a key MINIMAL already has is replaced, any other added
        lines = MINIMAL.splitlines(keepends=True)
        for line in extra.splitlines(keepends=True):
            key = line.split(":", 1)[0]
            same = [i for i, old in enumerate(lines) if old.split(":", 1)[0] == key]
            if same and not key.strip().startswith("bearer_token_env"):
                lines[same[0]] = line
            else:
                lines.append(line)
        text = "".join(lines)
    with pytest.raises(ConfigError) as caught:
        loads_config(BASE + text, file="r.yml", base_dir=workdir, environ={"TOK": "env-t"})
    error = caught.value
    assert error.field == field, str(error)
    assert message in error.message, str(error)
    assert TOKEN not in str(error)


def test_authentication_is_mandatory(workdir: Path) -> None:
    text = MINIMAL.replace("  bearer_token_file: token\n", "")
    with pytest.raises(ConfigError) as caught:
        loads_config(BASE + text, file="r.yml", base_dir=workdir)
    assert caught.value.field == "receiver.bearer_token_file"
    assert "never runs without authentication" in caught.value.message


def test_summary_mentions_the_receiver(workdir: Path) -> None:
    config = loads_config(
        BASE + MINIMAL.replace("receiver:\n", "receiver:\n  mode: execute\n"), base_dir=workdir
    )
    assert config.summary().endswith(", receiver in execute mode")
