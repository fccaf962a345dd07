"""The configuration: a table of malformed files, good files with defaults, secrets, the CLI."""

from __future__ import annotations

import dataclasses
import logging
import os
import textwrap
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vmm_cert_exporter import config as config_module
from vmm_cert_exporter.cli import main
from vmm_cert_exporter.config import (
    DEFAULT_LISTEN_ADDRESS,
    CollectionConfig,
    Config,
    ConfigError,
    HostConfig,
    StrictSafeLoader,
    VmmServerConfig,
    WebConfig,
    WinRMConfig,
    load_config,
    loads_config,
    parse_listen_address,
    validate_fqdn,
)
from vmm_cert_exporter.config_schema import declared_keys
from vmm_cert_exporter.durations import format_duration, parse_duration
from vmm_cert_exporter.secrets import Secret, SecretError, read_secret_env, read_secret_file

CANARY = "Canary-S3cr3t-9f2e!pw"
CANARY_IDENT = "CanaryS3cr3t9f2e"  # a secret that is also a valid variable name
ENV_NAME = "VMMCERT_TEST_PASSWORD"

GOOD = """\
winrm:
  username: 'CORP\\svc-vmmcert'
  password_file: pw
hosts:
  - host: hv01.corp.example
"""


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A config directory with a 0600 password file ``pw``, ``ca.pem`` and a client cert."""
    secret = tmp_path / "pw"
    secret.write_text(CANARY + "\n")
    secret.chmod(0o600)
    for name in ("ca.pem", "client.pem", "client.key"):
        (tmp_path / name).write_text("-----BEGIN CERTIFICATE-----\n")
        (tmp_path / name).chmod(0o600)
    (tmp_path / "empty").write_text("")
    (tmp_path / "newline-only").write_text("\n")
    (tmp_path / "adir").mkdir()
    monkeypatch.setenv(ENV_NAME, CANARY)
    monkeypatch.setenv("VMMCERT_EMPTY", "")
    monkeypatch.delenv("VMMCERT_UNSET", raising=False)
    monkeypatch.delenv(CANARY_IDENT, raising=False)
    return tmp_path


def write(workdir: Path, text: str, name: str = "config.yml") -> Path:
    path = workdir / name
    path.write_text(textwrap.dedent(text))
    return path


def load_text(workdir: Path, text: str) -> Config:
    return load_config(write(workdir, text))


def error_for(workdir: Path, text: str) -> ConfigError:
    path = write(workdir, text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    error = caught.value
    assert error.file == str(path)
    assert str(error) == f"{path}: {error.field}: {error.message}"
    return error


def winrm(extra: str = "", base: str = "username: x\n  password_file: pw\n") -> str:
    """A config whose winrm section is ``base`` plus ``extra`` (two-space indented keys)."""
    return f"winrm:\n  {base}  {extra}\nhosts:\n  - host: hv01.corp.example\n"


# --------------------------------------------------------------------------------------------
# The table: (id, yaml, field, distinctive part of the message)

MALFORMED: list[tuple[str, str, str, str]] = [
    # the document
    ("empty file", "", "(root)", "the file is empty"),
    ("only comments", "# nothing here\n", "(root)", "the file is empty"),
    ("root is a list", "- winrm\n- hosts\n", "(root)", "expected a mapping of sections"),
    ("root is a string", "hello\n", "(root)", "got the string 'hello'"),
    ("syntax error", "winrm: [unclosed\n", "(syntax)", "not valid YAML"),
    ("tab indentation", "winrm:\n\tusername: x\n", "(syntax)", "not valid YAML"),
    ("two documents", GOOD + "---\n" + GOOD, "(syntax)", "expected a single document"),
    (
        "python tag",
        "winrm: !!python/object/apply:os.system ['echo pwned']\n",
        "(syntax)",
        "could not determine a constructor",
    ),
    (
        "impossible date",
        GOOD + "  - host: 2020-13-45\n",
        "(syntax)",
        "cannot be read as timestamp (quote it",
    ),
    ("explicit int tag", winrm("timeout: !!int abc\n"), "(syntax)", "cannot be read as int"),
    ("explicit bool tag", winrm("allow_unencrypted_basic: !!bool maybe\n"), "(syntax)", "bool"),
    ("explicit timestamp tag", winrm("timeout: !!timestamp x\n"), "(syntax)", "timestamp"),
    ("explicit float tag, no value", winrm("timeout: !!float\n"), "(syntax)", "as float"),
    (
        "5000-digit integer",
        GOOD + "collection:\n  concurrency: " + "9" * 5000 + "\n",
        "(syntax)",
        "int",
    ),
    ("duplicate section", GOOD + "hosts: []\n", "hosts", "duplicate key 'hosts'"),
    (
        "duplicate nested key",
        winrm("timeout: 5s\n  timeout: 6s\n"),
        "winrm.timeout",
        "duplicate key 'timeout' (first defined on line 4)",
    ),
    (
        "duplicate key in a list item",
        GOOD + "  - host: hv02.corp.example\n    role: other\n    role: other\n",
        "hosts[1].role",
        "duplicate key 'role'",
    ),
    ("unknown section", GOOD + "recever: {}\n", "recever", "unknown section 'recever'"),
    ("unknown section lists allowed", GOOD + "x: 1\n", "x", "allowed: winrm, vmm_servers, hosts"),
    ("non-string section", GOOD + "1: x\n", "1", "unknown section 1"),
    ("missing winrm", "hosts:\n  - host: hv01.corp.example\n", "winrm", "required section"),
    ("winrm is a list", "winrm: [a]\nhosts: []\n", "winrm", "expected a mapping, got a list"),
    ("unknown winrm key", winrm("pasword_file: x\n"), "winrm.pasword_file", "did you mean"),
    (
        "inline password",
        winrm("password: hunter2\n"),
        "winrm.password",
        "secrets are never written in the file",
    ),
    # endpoint
    (
        "endpoint without {host}",
        winrm("endpoint: https://hv01:5986/wsman\n"),
        "winrm.endpoint",
        "containing {host} exactly once",
    ),
    (
        "endpoint with {host} twice",
        winrm("endpoint: 'https://{host}:5986/{host}'\n"),
        "winrm.endpoint",
        "(2 times)",
    ),
    (
        "endpoint with another placeholder",
        winrm("endpoint: 'https://{host}:{port}/wsman'\n"),
        "winrm.endpoint",
        "only {host} may appear in braces",
    ),
    (
        "endpoint ftp",
        winrm("endpoint: 'ftp://{host}/wsman'\n"),
        "winrm.endpoint",
        "expected an http:// or https:// URL",
    ),
    (
        "endpoint not a URL",
        winrm("endpoint: '{host}'\n"),
        "winrm.endpoint",
        "expected an http:// or https:// URL",
    ),
    (
        "endpoint bad port",
        winrm("endpoint: 'https://{host}:99999/wsman'\n"),
        "winrm.endpoint",
        "out of range",
    ),
    (
        "endpoint with credentials",
        winrm("endpoint: 'https://u:hunter2@{host}:5986/wsman'\n"),
        "winrm.endpoint",
        "credentials must not be written in the URL",
    ),
    ("endpoint is a number", winrm("endpoint: 5986\n"), "winrm.endpoint", "the integer 5986"),
    # transport and credentials
    (
        "unknown transport",
        winrm("transport: negotiate\n"),
        "winrm.transport",
        "expected one of ntlm, kerberos, basic, certificate, credssp; got the string 'negotiate'",
    ),
    (
        "basic over http",
        winrm("transport: basic\n  endpoint: 'http://{host}:5985/wsman'\n"),
        "winrm.transport",
        "set winrm.allow_unencrypted_basic: true to accept that risk",
    ),
    (
        "certificate over http",
        "winrm:\n  transport: certificate\n  endpoint: 'http://{host}:5985/wsman'\n"
        "hosts: [{host: hv01.corp.example}]\n",
        "winrm.transport",
        "needs an https endpoint",
    ),
    (
        "certificate without cert_pem",
        "winrm:\n  transport: certificate\n  cert_key_pem: client.key\n"
        "hosts: [{host: hv01.corp.example}]\n",
        "winrm.cert_pem",
        "required for transport certificate",
    ),
    (
        "certificate with missing cert file",
        "winrm:\n  transport: certificate\n  cert_pem: nope.pem\n  cert_key_pem: client.key\n"
        "hosts: [{host: hv01.corp.example}]\n",
        "winrm.cert_pem",
        "client certificate",
    ),
    (
        "certificate with username",
        "winrm:\n  transport: certificate\n  username: x\n  cert_pem: client.pem\n"
        "  cert_key_pem: client.key\nhosts: [{host: hv01.corp.example}]\n",
        "winrm.username",
        "not used by transport certificate",
    ),
    (
        "cert_pem with ntlm",
        winrm("cert_pem: client.pem\n"),
        "winrm.cert_pem",
        "only used by transport certificate (transport is ntlm)",
    ),
    (
        "missing username",
        winrm(base="password_file: pw\n"),
        "winrm.username",
        "required for transport ntlm",
    ),
    (
        "username is a number",
        winrm(base="username: 5\n  password_file: pw\n"),
        "winrm.username",
        "expected an account name, got the integer 5",
    ),
    (
        "both password sources",
        winrm(f"password_env: {ENV_NAME}\n"),
        "winrm.password_env",
        "exactly one of password_file and password_env",
    ),
    (
        "no password source",
        winrm(base="username: x\n"),
        "winrm.password_file",
        "transport ntlm needs a password",
    ),
    (
        "password file missing",
        winrm(base="username: x\n  password_file: missing-pw\n"),
        "winrm.password_file",
        "the password file does not exist",
    ),
    (
        "password file empty",
        winrm(base="username: x\n  password_file: empty\n"),
        "winrm.password_file",
        "the password file is empty",
    ),
    (
        "password file only a newline",
        winrm(base="username: x\n  password_file: newline-only\n"),
        "winrm.password_file",
        "the password file is empty",
    ),
    (
        "password file is a directory",
        winrm(base="username: x\n  password_file: adir\n"),
        "winrm.password_file",
        "the password file is not a regular file",
    ),
    (
        "password env not set",
        winrm(base="username: x\n  password_env: VMMCERT_UNSET\n"),
        "winrm.password_env",
        "is not set in the environment",
    ),
    (
        "password env empty",
        winrm(base="username: x\n  password_env: VMMCERT_EMPTY\n"),
        "winrm.password_env",
        "set in the environment but empty",
    ),
    (
        "password env not a name",
        winrm(base="username: x\n  password_env: 'my pass!'\n"),
        "winrm.password_env",
        "not the password itself",
    ),
    (
        "kerberos password without principal",
        "winrm:\n  transport: kerberos\n  password_file: pw\nhosts: [{host: hv01.corp.example}]\n",
        "winrm.username",
        "transport kerberos with a password needs the principal",
    ),
    (
        "kerberos keytab without principal",
        "winrm:\n  transport: kerberos\n  keytab_file: pw\nhosts: [{host: hv01.corp.example}]\n",
        "winrm.username",
        "a keytab needs the principal",
    ),
    (
        "kerberos keytab and password",
        "winrm:\n  transport: kerberos\n  username: a@LAB.EXAMPLE\n  password_file: pw\n"
        "  keytab_file: pw\nhosts: [{host: hv01.corp.example}]\n",
        "winrm.keytab_file",
        "give the keytab or a password, not both",
    ),
    (
        "kerberos keytab missing",
        "winrm:\n  transport: kerberos\n  username: a@LAB.EXAMPLE\n  keytab_file: nope.keytab\n"
        "hosts: [{host: hv01.corp.example}]\n",
        "winrm.keytab_file",
        "nope.keytab",
    ),
    (
        "kerberos ccache and keytab",
        "winrm:\n  transport: kerberos\n  username: a@LAB.EXAMPLE\n  keytab_file: pw\n"
        "  kerberos_ccache: FILE:/tmp/cc\nhosts: [{host: hv01.corp.example}]\n",
        "winrm.kerberos_ccache",
        "give only one of keytab_file",
    ),
    (
        "kerberos service",
        "winrm:\n  transport: kerberos\n  kerberos_service: HOST\n"
        "hosts: [{host: hv01.corp.example}]\n",
        "winrm.kerberos_service",
        "expected one of HTTP, WSMAN; got 'HOST'",
    ),
    (
        "kerberos hostname override",
        "winrm:\n  transport: kerberos\n  kerberos_hostname_override: 'a b'\n"
        "hosts: [{host: hv01.corp.example}]\n",
        "winrm.kerberos_hostname_override",
        "expected the host name of the computers' SPN",
    ),
    (
        "keytab with ntlm",
        winrm("keytab_file: pw\n"),
        "winrm.keytab_file",
        "only used by transport kerberos (transport is ntlm)",
    ),
    # TLS
    (
        "server_cert_validation no",
        winrm("server_cert_validation: no\n"),
        "winrm.server_cert_validation",
        "expected one of validate, ignore; got the boolean false",
    ),
    (
        "ca_trust_path missing",
        winrm("ca_trust_path: /nonexistent/ca.pem\n"),
        "winrm.ca_trust_path",
        "CA bundle /nonexistent/ca.pem does not exist",
    ),
    (
        "ca_trust_path with ignore",
        winrm("ca_trust_path: ca.pem\n  server_cert_validation: ignore\n"),
        "winrm.ca_trust_path",
        "the CA would never be used",
    ),
    (
        "allow_unencrypted_basic string",
        winrm("allow_unencrypted_basic: 'yes please'\n"),
        "winrm.allow_unencrypted_basic",
        "expected true or false",
    ),
    # durations
    ("timeout in words", winrm("timeout: 15 minutes\n"), "winrm.timeout", "is not a duration"),
    ("timeout negative", winrm("timeout: -5s\n"), "winrm.timeout", "is negative"),
    ("timeout zero", winrm("timeout: 0s\n"), "winrm.timeout", "between 1s and 1h, got 0s"),
    (
        "timeout bare number",
        winrm("timeout: 60\n"),
        "winrm.timeout",
        "bare numbers are not durations (as in Prometheus): add a unit, e.g. 60s",
    ),
    ("timeout too long", winrm("timeout: 2h\n"), "winrm.timeout", "between 1s and 1h, got 2h"),
    ("timeout fraction", winrm("timeout: 1.5m\n"), "winrm.timeout", "is not a duration"),
    ("timeout units out of order", winrm("timeout: 1s1m\n"), "winrm.timeout", "in that order"),
    (
        "interval too short",
        GOOD + "collection:\n  interval: 5s\n",
        "collection.interval",
        "between 10s and 1d, got 5s",
    ),
    (
        "interval quoted number",
        GOOD + "collection:\n  interval: '15'\n",
        "collection.interval",
        "has no unit",
    ),
    (
        "key with a trailing space",
        GOOD + "collection:\n  'interval ': 15m\n",
        "collection.'interval '",
        "unknown key 'interval '",
    ),
    (
        "interval typo",
        GOOD + "collection:\n  intervall: 15m\n",
        "collection.intervall",
        "did you mean 'interval'",
    ),
    # concurrency
    (
        "concurrency zero",
        GOOD + "collection:\n  concurrency: 0\n",
        "collection.concurrency",
        "from 1 to 1024, got 0",
    ),
    (
        "concurrency string",
        GOOD + "collection:\n  concurrency: '16'\n",
        "collection.concurrency",
        "got the string '16'",
    ),
    (
        "concurrency boolean",
        GOOD + "collection:\n  concurrency: yes\n",
        "collection.concurrency",
        "got the boolean true",
    ),
    (
        "concurrency too high",
        GOOD + "collection:\n  concurrency: 5000\n",
        "collection.concurrency",
        "from 1 to 1024, got 5000",
    ),
    # hosts
    (
        "host with a space",
        GOOD + "  - host: hv 02.corp.example\n",
        "hosts[1].host",
        "character ' ' is not allowed",
    ),
    (
        "host with a semicolon",
        GOOD + "  - host: 'hv02.corp.example;calc'\n",
        "hosts[1].host",
        "character ';' is not allowed",
    ),
    (
        "host with a dollar",
        GOOD + "  - host: '$env:COMPUTERNAME'\n",
        "hosts[1].host",
        "character '$' is not allowed",
    ),
    (
        "host with a quote",
        GOOD + '  - host: "hv02\'.corp.example"\n',
        "hosts[1].host",
        'character "\'" is not allowed',
    ),
    (
        "host look-alike unicode",
        GOOD + "  - host: hv02.соrp.example\n",
        "hosts[1].host",
        "non-ASCII character 'с'",
    ),
    ("host not qualified", GOOD + "  - host: hv02\n", "hosts[1].host", "not fully qualified"),
    ("host IP address", GOOD + "  - host: 10.0.0.5\n", "hosts[1].host", "looks like an IP"),
    ("host trailing dot", GOOD + "  - host: hv02.corp.\n", "hosts[1].host", "trailing dot"),
    (
        "host label too long",
        GOOD + f"  - host: {'a' * 64}.corp.example\n",
        "hosts[1].host",
        "1-63 letters",
    ),
    ("host label hyphen", GOOD + "  - host: -hv.corp.example\n", "hosts[1].host", "hyphen"),
    ("host empty", GOOD + "  - host: ''\n", "hosts[1].host", "got an empty string"),
    ("host missing", GOOD + "  - role: other\n", "hosts[1].host", "required"),
    ("host is a date", GOOD + "  - host: 2020-01-01\n", "hosts[1].host", "a date/time"),
    ("hosts entry a string", GOOD + "  - hv02.corp.example\n", "hosts[1]", "expected a mapping"),
    (
        "hosts a mapping",
        "winrm: {username: x, password_file: pw}\nhosts: {a: 1}\n",
        "hosts",
        "list",
    ),
    (
        "bad role",
        GOOD + "    role: hypervisor\n",
        "hosts[0].role",
        "expected one of vmm_server, hyperv_host, library_server, other",
    ),
    (
        "duplicate host across sections",
        GOOD + "vmm_servers:\n  - host: HV01.Corp.Example\n",
        "hosts[0].host",
        "listed twice (also at vmm_servers[0].host",
    ),
    (
        "duplicate host within hosts",
        GOOD + "  - host: hv01.CORP.example\n    role: other\n",
        "hosts[1].host",
        "compared case-insensitively",
    ),
    (
        "discover not a boolean",
        GOOD + "vmm_servers:\n  - host: vmm01.corp.example\n    discover: 'always'\n",
        "vmm_servers[0].discover",
        "expected true or false, got the string 'always'",
    ),
    (
        "vmm server unknown key",
        GOOD + "vmm_servers:\n  - host: vmm01.corp.example\n    role: vmm_server\n",
        "vmm_servers[0].role",
        "unknown key 'role'; allowed: host, discover",
    ),
    (
        "no computers",
        "winrm: {username: x, password_file: pw}\nvmm_servers: []\n",
        "(root)",
        "no computers to watch",
    ),
    # web
    (
        "listen address a number",
        GOOD + "web:\n  listen_address: 9868\n",
        "web.listen_address",
        "expected host:port, got the integer 9868",
    ),
    (
        "listen address without port",
        GOOD + "web:\n  listen_address: localhost\n",
        "web.listen_address",
        "expected host:port or :port",
    ),
    (
        "listen port too high",
        GOOD + "web:\n  listen_address: ':99999'\n",
        "web.listen_address",
        "port number from 0 to 65535",
    ),
    (
        "listen port a name",
        GOOD + "web:\n  listen_address: 'localhost:http'\n",
        "web.listen_address",
        "expected a port number",
    ),
    (
        "listen ipv6 unbracketed",
        GOOD + "web:\n  listen_address: '::1:9868'\n",
        "web.listen_address",
        "must be in brackets",
    ),
    (
        "listen bad host",
        GOOD + "web:\n  listen_address: 'my host:9868'\n",
        "web.listen_address",
        "is not a host name or IP address",
    ),
    ("web unknown key", GOOD + "web:\n  port: 9868\n", "web.port", "allowed: listen_address"),
]


def test_table_is_big_enough() -> None:
    assert len(MALFORMED) >= 20
    assert len({case[0] for case in MALFORMED}) == len(MALFORMED)


@pytest.mark.parametrize(
    ("text", "field", "fragment"),
    [pytest.param(text, field, fragment, id=name) for name, text, field, fragment in MALFORMED],
)
def test_malformed_config(workdir: Path, text: str, field: str, fragment: str) -> None:
    error = error_for(workdir, text)
    assert error.field == field, str(error)
    assert fragment in error.message, str(error)
    # Never the password, whatever went wrong.
    assert CANARY not in str(error) and CANARY not in repr(error)


def test_errors_carry_line_numbers(workdir: Path) -> None:
    error = error_for(workdir, GOOD + "collection:\n  interval: 5s\n")
    assert error.line == 7
    assert error.message.endswith("(line 7)")
    error = error_for(workdir, GOOD + "  - host: bad host\n")
    assert error.line == 6
    error = error_for(workdir, winrm("bogus: 1\n"))
    assert error.line == 4


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path / "nope.yml")
    assert caught.value.field == "(file)"
    assert "does not exist" in caught.value.message


def test_directory_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path)
    assert "directory" in caught.value.message


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yml"
    path.write_bytes(GOOD.encode() + "# caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert (caught.value.field, "not valid UTF-8" in caught.value.message) == ("(file)", True)


def test_huge_file(tmp_path: Path) -> None:
    path = tmp_path / "huge.yml"
    path.write_bytes(b"#" * (2 * 1024 * 1024))
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert "larger than" in caught.value.message


def test_utf8_bom_is_accepted(workdir: Path) -> None:
    path = workdir / "bom.yml"
    path.write_bytes(b"\xef\xbb\xbf" + GOOD.encode())
    assert load_config(path).hosts[0].host == "hv01.corp.example"


# --------------------------------------------------------------------------------------------
# Good configurations


def test_minimal_config_gets_every_default(workdir: Path) -> None:
    config = load_text(workdir, GOOD)
    assert config.path == str(workdir / "config.yml")
    assert config.winrm == WinRMConfig(
        endpoint="https://{host}:5986/wsman",
        transport="ntlm",
        username="CORP\\svc-vmmcert",
        password=Secret(CANARY),
        cert_pem=None,
        cert_key_pem=None,
        server_cert_validation="validate",
        ca_trust_path=None,
        allow_unencrypted_basic=False,
        timeout=60.0,
    )
    assert config.winrm.password is not None
    assert config.winrm.password.reveal() == CANARY  # one trailing newline stripped
    assert config.vmm_servers == ()
    assert config.hosts == (HostConfig(host="hv01.corp.example", role="hyperv_host"),)
    assert config.collection == CollectionConfig(interval=900.0, concurrency=16)
    assert config.web == WebConfig(listen_address=":9868")
    assert DEFAULT_LISTEN_ADDRESS == ":9868"
    assert config.winrm.endpoint_for("hv01.corp.example") == "https://hv01.corp.example:5986/wsman"
    assert config.winrm.uses_tls


FULL = """\
winrm:
  endpoint: "https://{host}:5986/wsman"
  transport: ntlm
  username: 'CORP\\svc-vmmcert'
  password_env: VMMCERT_TEST_PASSWORD
  server_cert_validation: validate
  ca_trust_path: ca.pem
  allow_unencrypted_basic: false
  timeout: 1m30s
vmm_servers:
  - host: VMM01.corp.example
    discover: true
  - host: vmm02.corp.example
    discover: false
hosts:
  - host: hv99.corp.example
    role: hyperv_host
  - host: lib01.corp.example
    role: library_server
  - host: sofs01.corp.example
    role: other
collection:
  interval: 1h
  concurrency: 32
web:
  listen_address: "127.0.0.1:19868"
"""


def test_full_config(workdir: Path) -> None:
    config = load_text(workdir, FULL)
    assert config.winrm.password is not None and config.winrm.password.reveal() == CANARY
    assert config.winrm.password.source == f"env {ENV_NAME}"
    assert config.winrm.ca_trust_path == str(workdir / "ca.pem")
    assert config.winrm.timeout == 90.0
    assert config.vmm_servers == (
        VmmServerConfig("VMM01.corp.example", True),  # spelled as configured
        VmmServerConfig("vmm02.corp.example", False),
    )
    assert [h.role for h in config.hosts] == ["hyperv_host", "library_server", "other"]
    assert config.collection == CollectionConfig(interval=3600.0, concurrency=32)
    assert parse_listen_address(config.web.listen_address) == ("127.0.0.1", 19868)


def test_round_trip_through_yaml_dump(workdir: Path) -> None:
    """A Config written back as YAML (with durations formatted) loads to the same Config."""
    config = load_text(workdir, FULL)
    data = {
        "winrm": {
            "endpoint": config.winrm.endpoint,
            "transport": config.winrm.transport,
            "username": config.winrm.username,
            "password_env": ENV_NAME,
            "ca_trust_path": config.winrm.ca_trust_path,
            "server_cert_validation": config.winrm.server_cert_validation,
            "allow_unencrypted_basic": config.winrm.allow_unencrypted_basic,
            "timeout": format_duration(config.winrm.timeout),
        },
        "vmm_servers": [dataclasses.asdict(s) for s in config.vmm_servers],
        "hosts": [dataclasses.asdict(h) for h in config.hosts],
        "collection": {
            "interval": format_duration(config.collection.interval),
            "concurrency": config.collection.concurrency,
        },
        "web": {"listen_address": config.web.listen_address},
    }
    again = load_text(workdir, yaml.safe_dump(data))
    assert dataclasses.replace(again, path=config.path) == config


def test_null_sections_and_keys_mean_defaults(workdir: Path) -> None:
    config = load_text(workdir, GOOD + "collection:\nweb:\nvmm_servers:\n")
    assert config.collection == CollectionConfig()
    assert config.web == WebConfig()
    config = load_text(workdir, winrm("timeout:\n"))
    assert config.winrm.timeout == 60.0


def test_vmm_server_only_and_discover_default(workdir: Path) -> None:
    text = "winrm: {username: x, password_file: pw}\nvmm_servers:\n  - host: vmm01.corp.example\n"
    config = load_text(workdir, text)
    assert config.vmm_servers == (VmmServerConfig("vmm01.corp.example", discover=True),)
    assert config.hosts == ()


def test_basic_over_http_when_explicitly_allowed(workdir: Path) -> None:
    config = load_text(
        workdir,
        winrm(
            "transport: basic\n  endpoint: 'http://127.0.0.1:5985/wsman/{host}'\n"
            "  allow_unencrypted_basic: true\n"
        ),
    )
    assert config.winrm.transport == "basic"
    assert config.winrm.endpoint_for("hv01.corp.example") == (
        "http://127.0.0.1:5985/wsman/hv01.corp.example"
    )
    assert not config.winrm.uses_tls


def test_basic_over_https_needs_no_permission(workdir: Path) -> None:
    assert load_text(workdir, winrm("transport: basic\n")).winrm.transport == "basic"


def test_kerberos_without_username_or_password(workdir: Path) -> None:
    config = load_text(
        workdir, "winrm:\n  transport: kerberos\nhosts: [{host: hv01.corp.example}]\n"
    )
    assert (config.winrm.username, config.winrm.password) == (None, None)


def test_kerberos_keytab_and_spn_keys(workdir: Path) -> None:
    config = load_text(
        workdir,
        "winrm:\n  transport: kerberos\n  username: svc@LAB.EXAMPLE\n  keytab_file: pw\n"
        "  kerberos_hostname_override: '{host}.mgmt.example'\n  kerberos_service: WSMAN\n"
        "hosts: [{host: hv01.corp.example}]\n",
    )
    assert config.winrm.keytab_file == str(workdir / "pw")
    assert config.winrm.kerberos_host("hv01.corp.example") == "hv01.corp.example.mgmt.example"
    assert config.winrm.kerberos_service == "WSMAN"


def test_kerberos_password_is_for_kinit(workdir: Path) -> None:
    config = load_text(
        workdir,
        "winrm:\n  transport: kerberos\n  username: svc@LAB.EXAMPLE\n  password_file: pw\n"
        "hosts: [{host: hv01.corp.example}]\n",
    )
    assert config.winrm.password is not None and config.winrm.keytab_file is None
    assert config.winrm.kerberos_host("hv01.corp.example") == "hv01.corp.example"


def test_certificate_transport(workdir: Path) -> None:
    config = load_text(
        workdir,
        "winrm:\n  transport: certificate\n  cert_pem: client.pem\n  cert_key_pem: client.key\n"
        "hosts: [{host: hv01.corp.example}]\n",
    )
    assert config.winrm.cert_pem == str(workdir / "client.pem")
    assert config.winrm.cert_key_pem == str(workdir / "client.key")
    assert config.winrm.username is None and config.winrm.password is None


def test_ca_trust_path_may_be_a_directory(workdir: Path) -> None:
    config = load_text(workdir, winrm("ca_trust_path: adir\n"))
    assert config.winrm.ca_trust_path == str(workdir / "adir")


def test_password_keeps_everything_but_one_newline(workdir: Path) -> None:
    (workdir / "pw2").write_text("  spaced pass \n\n")
    (workdir / "pw2").chmod(0o600)
    (workdir / "pw3").write_bytes(b"crlf\r\n")
    (workdir / "pw3").chmod(0o600)
    config = load_text(workdir, winrm(base="username: x\n  password_file: pw2\n"))
    assert config.winrm.password is not None
    assert config.winrm.password.reveal() == "  spaced pass \n"
    config = load_text(workdir, winrm(base="username: x\n  password_file: pw3\n"))
    assert config.winrm.password is not None and config.winrm.password.reveal() == "crlf"


def test_absolute_password_path_and_merge_keys(workdir: Path) -> None:
    # Anchors and merge keys are YAML features, not extra sections: only under known keys.
    text = f"""\
    winrm:
      username: x
      password_file: {workdir / "pw"}
    hosts:
      - &h {{host: lib01.corp.example, role: library_server}}
      - {{<<: *h, host: lib02.corp.example}}
    """
    config = load_text(workdir, text)
    assert [(h.host, h.role) for h in config.hosts] == [
        ("lib01.corp.example", "library_server"),
        ("lib02.corp.example", "library_server"),
    ]


def test_loads_config_without_a_file(workdir: Path) -> None:
    config = loads_config(GOOD, file="inline.yml", base_dir=workdir)
    assert config.path == "inline.yml"
    with pytest.raises(ConfigError) as caught:
        loads_config("winrm: {}\n", file="inline.yml", base_dir=workdir)
    assert str(caught.value).startswith("inline.yml: winrm.username: ")


def test_environ_can_be_passed(workdir: Path) -> None:
    text = winrm(base="username: x\n  password_env: OTHER_VAR\n")
    config = loads_config(text, base_dir=workdir, environ={"OTHER_VAR": "from-mapping"})
    assert config.winrm.password is not None
    assert config.winrm.password.reveal() == "from-mapping"


@pytest.mark.parametrize("prefix", ["$CREDENTIALS_DIRECTORY/", "${CREDENTIALS_DIRECTORY}/"])
def test_paths_under_the_credentials_directory(workdir: Path, prefix: str) -> None:
    """systemd's LoadCredential= directory, for secrets and key files alike."""
    credentials = workdir / "credentials"
    credentials.mkdir()
    (credentials / "winrm-password").write_text("from-credentials\n")
    (credentials / "client.key").write_text("-----BEGIN PRIVATE KEY-----\n")
    text = winrm(
        base=(
            f"transport: certificate\n  cert_pem: client.pem\n  cert_key_pem: {prefix}client.key\n"
        ),
    ).replace("winrm:\n", "winrm:\n  endpoint: 'https://{host}:5986/wsman'\n", 1)
    environ = {"CREDENTIALS_DIRECTORY": str(credentials)}
    config = loads_config(text, base_dir=workdir, environ=environ)
    assert config.winrm.cert_key_pem == str(credentials / "client.key")
    text = winrm(base=f"username: x\n  password_file: {prefix}winrm-password\n")
    config = loads_config(text, base_dir=workdir, environ=environ)
    assert config.winrm.password is not None
    assert config.winrm.password.reveal() == "from-credentials"
    with pytest.raises(ConfigError, match=r"\$CREDENTIALS_DIRECTORY is not set"):
        loads_config(text, base_dir=workdir, environ={})
    # only this variable, and only at the start
    text = winrm(base="username: x\n  password_file: $HOME/winrm-password\n")
    with pytest.raises(ConfigError, match=r"does not exist \(relative paths are resolved from"):
        loads_config(text, base_dir=workdir, environ={"HOME": str(credentials)})


def test_sections_table_matches_config_fields() -> None:
    """One table of section parsers; each section is a Config field of the same name."""
    names = [f.name for f in dataclasses.fields(Config)]
    assert names == ["path", *config_module._SECTIONS]


def test_summary_line(workdir: Path) -> None:
    assert load_text(workdir, FULL).summary() == (
        "3 static hosts, 2 VMM servers, interval 1h, concurrency 32"
    )


# --------------------------------------------------------------------------------------------
# Secrets


def test_secret_never_prints(workdir: Path) -> None:
    config = load_text(workdir, GOOD)
    secret = config.winrm.password
    assert secret is not None
    for text in (
        str(config),
        repr(config),
        str(config.winrm),
        repr(secret),
        str(secret),
        f"{secret}",
        f"{secret:>30}",
        "%s %r" % (secret, secret),  # noqa: UP031 - the old style must redact too
        str(dataclasses.asdict(config)),
    ):
        assert CANARY not in text
        assert "****" in text


def test_secret_equality_and_hash() -> None:
    assert Secret("a") == Secret("a", source="elsewhere")
    assert Secret("a") != Secret("b")
    assert hash(Secret("a")) == hash(Secret("a"))
    with pytest.raises(TypeError):
        import pickle

        pickle.dumps(Secret("a"))


def test_secret_file_readable_by_others_warns_without_value(
    workdir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (workdir / "pw").chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="vmm_cert_exporter.secrets"):
        load_text(workdir, GOOD)
    messages = [r.getMessage() for r in caplog.records]
    assert any("readable by group or others" in m and "0644" in m for m in messages), messages
    assert all(CANARY not in m for m in messages)


def test_private_secret_file_does_not_warn(workdir: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="vmm_cert_exporter.secrets"):
        load_text(workdir, GOOD)
    assert not caplog.records


MISPLACED_SECRETS = [
    # The commonest mistakes: the secret pasted where its file or variable name belongs.
    ("inline password key", winrm(f"password: '{CANARY}'\n")),
    ("password_file holds the password", winrm(base=f"username: x\n  password_file: '{CANARY}'\n")),
    ("password_env holds the password", winrm(base=f"username: x\n  password_env: '{CANARY}'\n")),
    (
        "password_env holds an identifier-like password",
        winrm(base=f"username: x\n  password_env: {CANARY_IDENT}\n"),
    ),
    ("password_file is a number", winrm(base="username: x\n  password_file: 73915502\n")),
    ("password_env is a number", winrm(base="username: x\n  password_env: 73915502\n")),
    ("URL credentials", winrm(f"endpoint: 'https://svc:{CANARY}@{{host}}:5986/wsman'\n")),
    ("syntax error on the secret line", f"winrm:\n  password: [{CANARY}\n"),
    ("unknown section holding it", GOOD + f"secrets:\n  winrm: '{CANARY}'\n"),
]


@pytest.mark.parametrize("text", [pytest.param(text, id=name) for name, text in MISPLACED_SECRETS])
def test_misplaced_secret_is_never_echoed(workdir: Path, text: str) -> None:
    error = error_for(workdir, text)
    for secret in (CANARY, CANARY_IDENT, "73915502"):
        assert secret not in str(error), str(error)
        assert secret not in repr(error)
        assert all(secret not in str(arg) for arg in error.args)


def test_read_secret_helpers(tmp_path: Path) -> None:
    path = tmp_path / "s"
    path.write_text("value\n")
    path.chmod(0o600)
    assert read_secret_file(path).reveal() == "value"
    with pytest.raises(SecretError, match="does not exist"):
        read_secret_file(tmp_path / "missing")
    (tmp_path / "bin").write_bytes(b"\xff\xfe\n")
    with pytest.raises(SecretError, match="not valid UTF-8"):
        read_secret_file(tmp_path / "bin")
    (tmp_path / "big").write_bytes(b"x" * (65 * 1024))
    with pytest.raises(SecretError, match="larger than"):
        read_secret_file(tmp_path / "big")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(SecretError, match="not a regular file"):
        read_secret_file(fifo)  # must not hang waiting for a writer
    assert read_secret_env("X", {"X": "v"}).reveal() == "v"
    with pytest.raises(SecretError, match="is not set"):
        read_secret_env("X", {})


# --------------------------------------------------------------------------------------------
# Durations, host names, listen addresses


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90s", 90.0),
        ("15m", 900.0),
        ("1h", 3600.0),
        ("365d", 365 * 86400.0),
        ("1h30m", 5400.0),
        ("500ms", 0.5),
        ("1m500ms", 60.5),
        ("2w", 14 * 86400.0),
        ("1y", 365 * 86400.0),
        ("1d2h3m4s5ms", 93784.005),
        ("0s", 0.0),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("60", "bare numbers are not durations"),
        ("0", "bare numbers are not durations"),
        ("1.5", "bare numbers are not durations"),
        ("-5s", "negative"),
        ("15 minutes", "is not a duration"),
        ("", "empty"),
        ("1m1h", "in that order"),
        ("1h1h", "in that order"),
        ("1.5h", "is not a duration"),
        ("5S", "is not a duration"),
        ("٥s", "is not a duration"),  # Arabic-Indic digit five
        ("1s\n", "is not a duration"),
        ("9999999999999d", "too large"),
    ],
)
def test_parse_duration_rejects(text: str, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        parse_duration(text)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (0.5, "500ms"), (90, "1m30s"), (5400, "1h30m"), (900, "15m"), (86400 * 2, "2d")],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@given(st.integers(min_value=0, max_value=10**12))
def test_duration_round_trip(milliseconds: int) -> None:
    seconds = milliseconds / 1000
    assert parse_duration(format_duration(seconds)) == pytest.approx(seconds, abs=1e-9)


def test_validate_fqdn() -> None:
    assert validate_fqdn("HV01.Corp.Example") == "HV01.Corp.Example"
    assert validate_fqdn("a-b.c1.example") == "a-b.c1.example"
    for bad in ("hv01", "hv01.corp.", ".corp.example", "a..b", "1.2.3.4", "hv_01.corp.example"):
        with pytest.raises(ValueError):
            validate_fqdn(bad)
    with pytest.raises(ValueError, match="longer than 253"):
        validate_fqdn(".".join(["abcdefghi"] * 30))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (":9868", ("", 9868)),
        ("0.0.0.0:9868", ("0.0.0.0", 9868)),
        ("localhost:9868", ("localhost", 9868)),
        ("[::1]:9868", ("::1", 9868)),
        ("[::]:80", ("::", 80)),
        ("127.0.0.1:0", ("127.0.0.1", 0)),
    ],
)
def test_parse_listen_address(text: str, expected: tuple[str, int]) -> None:
    assert parse_listen_address(text) == expected


# --------------------------------------------------------------------------------------------
# The loader itself


def test_strict_loader_rejects_duplicates_and_keeps_lines() -> None:
    data = yaml.load("a: 1\nb:\n  - x\n  - y\n", Loader=StrictSafeLoader)  # noqa: S506 - a SafeLoader
    assert data == {"a": 1, "b": ["x", "y"]}
    assert data.key_lines == {"a": 1, "b": 2}
    assert data["b"].item_lines == [3, 4]
    with pytest.raises(yaml.YAMLError, match="duplicate key 'a'"):
        yaml.load("a: 1\na: 2\n", Loader=StrictSafeLoader)  # noqa: S506 - a SafeLoader


def test_alias_bomb_is_cheap(workdir: Path) -> None:
    # Aliases share objects; validation only walks known keys, so this fails fast.
    layers = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 12):
        layers.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]")
    error = error_for(workdir, "\n".join(layers) + "\n")
    assert error.field == "a0"


def test_deep_nesting(workdir: Path) -> None:
    error = error_for(workdir, "winrm: " + "[" * 5000 + "]" * 5000 + "\n")
    assert error.field in ("(syntax)", "winrm")


# --------------------------------------------------------------------------------------------
# Fuzzing: Config or ConfigError, never anything else

YAML_WORDS = st.sampled_from(
    [
        "winrm", "hosts", "vmm_servers", "collection", "web", "host", "role", "discover",
        "endpoint", "transport", "username", "password_file", "password_env", "timeout",
        "interval", "concurrency", "listen_address", "basic", "ntlm", "certificate", "kerberos",
        "pw", "ca.pem", "15m", "0s", "-1s", "60", "yes", "null", "~", "hv01.corp.example",
        "'https://{host}:5986/wsman'", "http://{host}/wsman", ":9868", "[", "]", "{", "}",
        ":", "- ", "&a", "*a", "<<", "!!binary", "!!python/name:os.system", "'", '"', "#",
        "\n", "\n  ", "\n    ", "\t", "---", "...", "%YAML 1.1", "\x00", "\ufeff", "é",
        "2020-13-45", "2020-01-01", "!!int", "!!bool", "!!float", "!!timestamp", "!!set", "!!omap",
        "!!str", "? ", "1:60", "0x1F", ".inf", "!local",
    ]
)  # fmt: skip


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(st.lists(YAML_WORDS, max_size=40).map(" ".join) | st.text(max_size=300))
def test_arbitrary_text_gives_config_or_config_error(workdir: Path, text: str) -> None:
    try:
        result = loads_config(text, file="fuzz.yml", base_dir=workdir)
    except ConfigError as error:
        assert error.file == "fuzz.yml"
        assert str(error).startswith(f"fuzz.yml: {error.field}: ")
        assert CANARY not in str(error)
    else:
        assert isinstance(result, Config)


def _yaml_values() -> st.SearchStrategy[object]:
    scalars = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(2**70), max_value=2**70),
        st.floats(allow_nan=True),
        st.text(max_size=20),
        st.sampled_from(["15m", "hv01.corp.example", "ntlm", "basic", ":9868", "pw", "1h"]),
    )
    keys = st.sampled_from(
        ["winrm", "hosts", "vmm_servers", "collection", "web", "host", "role", "timeout",
         "username", "password_file", "transport", "interval", "concurrency", "discover", "x"]
    )  # fmt: skip
    return st.recursive(
        scalars,
        lambda children: (
            st.lists(children, max_size=4) | st.dictionaries(keys, children, max_size=5)
        ),
        max_leaves=25,
    )


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(_yaml_values())
def test_arbitrary_yaml_structures_give_config_or_config_error(workdir: Path, data: object) -> None:
    text = yaml.safe_dump(data)
    try:
        loads_config(text, file="fuzz.yml", base_dir=workdir)
    except ConfigError as error:
        assert error.field and error.message


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(st.data())
def test_mutated_good_config_gives_config_or_config_error(
    workdir: Path, data: st.DataObject
) -> None:
    text = list(FULL)
    for _ in range(data.draw(st.integers(min_value=1, max_value=5))):
        position = data.draw(st.integers(min_value=0, max_value=len(text) - 1))
        replacement = data.draw(st.sampled_from(["", " ", ":", "-", "\n", "'", "{", "x", "9"]))
        text[position] = replacement
    try:
        loads_config("".join(text), file="fuzz.yml", base_dir=workdir)
    except ConfigError:
        pass


# --------------------------------------------------------------------------------------------
# The CLI


def test_check_config_ok(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(workdir, FULL)
    assert main(["check-config", "--config", str(path)]) == 0
    out, err = capsys.readouterr()
    assert out == (f"{path}: OK (3 static hosts, 2 VMM servers, interval 1h, concurrency 32)\n")
    assert err == ""
    assert CANARY not in out


def test_check_config_error(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(workdir, winrm("timeout: 15 minutes\n"))
    assert main(["check-config", "--config", str(path)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith(f"{path}: winrm.timeout: expected a duration between 1s and 1h: ")
    assert err.count("\n") == 1  # one error, one line


def test_check_config_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", "--config", str(tmp_path / "nope.yml")]) == 1
    assert "(file): the file does not exist" in capsys.readouterr().err


@pytest.mark.parametrize("name", [case[0] for case in MALFORMED[:25]])
def test_check_config_exit_code_for_malformed(
    workdir: Path, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    text, field = next((c[1], c[2]) for c in MALFORMED if c[0] == name)
    path = write(workdir, text)
    assert main(["check-config", "--config", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"{path}: {field}: ")
    assert CANARY not in err


# --------------------------------------------------------------------------------------------
# The documentation's examples are valid configurations

DOCS = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"


def _doc_examples() -> list[str]:
    text = DOCS.read_text(encoding="utf-8")
    examples = text.split("## A full example", 1)[1]
    blocks = examples.split("```yaml\n")[1:]
    return [block.split("```", 1)[0] for block in blocks]


def test_docs_have_examples() -> None:
    assert len(_doc_examples()) >= 3


@pytest.mark.parametrize("index", range(4))
def test_docs_examples_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, index: int) -> None:
    examples = _doc_examples()
    assert index < len(examples)
    text = examples[index]
    # Point the absolute paths of the example at real files of the right kind.
    for absolute in (
        "/etc/vmm-cert-exporter/winrm.password",
        "/run/secrets/winrm-password",
        "/etc/vmm-cert-exporter/svc-vmmcert.keytab",
    ):
        local = tmp_path / Path(absolute).name
        local.write_text("example-password\n")
        local.chmod(0o600)
        text = text.replace(absolute, str(local))
    ca = tmp_path / "corp-root-ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    text = text.replace("/etc/ssl/certs/corp-root-ca.pem", str(ca))
    monkeypatch.setenv("LAB_WINRM_PASSWORD", "lab")
    config = loads_config(text, file="example.yml", base_dir=tmp_path)
    assert config.vmm_servers or config.hosts


# --------------------------------------------------------------------------------------------
# The reference lists every declared key, with the declared default and range


def _reference_tables(text: str) -> dict[str, dict[str, list[str]]]:
    """Table rows of each ``## `section` `` of the page: section -> key -> its cells."""
    tables: dict[str, dict[str, list[str]]] = {}
    section = ""
    for line in text.splitlines():
        if line.startswith("## "):
            named = line.split("`")
            section = named[1] if len(named) > 2 else ""
            tables.setdefault(section, {})
        elif section and line.startswith("| `"):
            cells = [cell.strip() for cell in line.strip("|").split(" | ")]
            tables[section][cells[0].strip("`")] = cells
    return tables


def _reference_problems(text: str) -> list[str]:
    tables = _reference_tables(text)
    problems = []
    for entry in declared_keys(Config):
        where = f"{entry.section}: {entry.path}"
        cells = tables.get(entry.section, {}).get(entry.path)
        if cells is None:
            problems.append(f"{where} is missing; add a row like {entry.row()}")
            continue
        _key, kind, default, rules = cells
        if kind != entry.kind:
            problems.append(f"{where}: type {kind}, declared {entry.kind}")
        for bound in entry.key.bounds:
            if bound not in rules:
                problems.append(f"{where}: the rules do not say {bound}")
        expected = entry.default_text
        if expected is None:
            continue
        if entry.key.kind == "duration":
            written = default.split("`")[1] if default.count("`") >= 2 else default
            if parse_duration(written) != entry.default:
                problems.append(f"{where}: default {default}, declared {expected}")
        elif f"`{expected}`" not in default:
            problems.append(f"{where}: default {default}, declared `{expected}`")
    return problems


def test_reference_lists_every_declared_key() -> None:
    assert _reference_problems(DOCS.read_text(encoding="utf-8")) == []


def test_reference_check_notices_a_missing_row_and_a_wrong_default() -> None:
    text = DOCS.read_text(encoding="utf-8")
    without = "\n".join(
        line for line in text.splitlines() if not line.startswith("| `step_timeout` |")
    )
    assert _reference_problems(without) == [
        "receiver: step_timeout is missing; add a row like | `step_timeout` | duration | `10m` "
        "| 10s to 6h; deadline of one change step |"
    ]
    wrong = text.replace("| `concurrency` | integer | `16` |", "| `concurrency` | integer | `8` |")
    assert _reference_problems(wrong) == ["collection: concurrency: default `8`, declared `16`"]
    wrong = text.replace("| `timeout` | duration | `60s` |", "| `timeout` | duration | `2m` |")
    assert _reference_problems(wrong) == ["winrm: timeout: default `2m`, declared 1m"]
