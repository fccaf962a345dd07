"""--web.config.file: a table of bad files, then real TLS clients against real servers.

Every client here is real (ssl sockets, urllib, requests) and every server is ours, with the
web config applied exactly as ``serve`` applies it; the last tests run the ``serve`` command.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import socket
import ssl
import statistics
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bcrypt
import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from vmm_cert_exporter.http.credentials import parse_basic_auth
from vmm_cert_exporter.http.server import HTTPServer
from vmm_cert_exporter.web import make_server
from vmm_cert_exporter.webconfig import (
    WebConfigError,
    WebConfigFile,
    load_web_config,
    loads_web_config,
)
from vmm_cert_lab.fleet.runner import RunningLab
from vmm_cert_lab.processes import ExporterCommand, Process, Processes

PASSWORD = "Scrape-Passw0rd!"
# cost 10, as the toolkit's examples: slow enough that timing differences would show
HASH = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(10)).decode()


# --------------------------------------------------------------------------------------------
# A small PKI: a server CA, a client CA, an unrelated CA


@dataclass
class Issued:
    cert: Path
    key: Path


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write(directory: Path, stem: str, cert: x509.Certificate, key: Any) -> Issued:
    cert_path, key_path = directory / f"{stem}.pem", directory / f"{stem}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return Issued(cert_path, key_path)


class CA:
    def __init__(self, directory: Path, name: str) -> None:
        self.key = _key()
        now = datetime.datetime.now(datetime.UTC)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(_name(name))
            .issuer_name(_name(name))
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                critical=True,
            )
            .sign(self.key, hashes.SHA256())
        )
        self.directory = directory
        self.path = directory / f"{name.replace(' ', '-')}.pem"
        self.path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, stem: str, *, server: bool) -> Issued:
        key = _key()
        now = datetime.datetime.now(datetime.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(stem))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
        )
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
                ),
                critical=False,
            )
        return _write(self.directory, stem, builder.sign(self.key, hashes.SHA256()), key)


def self_signed(directory: Path, stem: str) -> Issued:
    key = _key()
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(stem))
        .issuer_name(_name(stem))
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    return _write(directory, stem, cert, key)


@dataclass
class PKI:
    directory: Path
    server_ca: CA
    client_ca: CA
    server: Issued
    client: Issued
    stranger: Issued  # a client certificate from another CA
    self_signed: Issued


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    d = tmp_path_factory.mktemp("pki")
    server_ca, client_ca, other_ca = CA(d, "Server CA"), CA(d, "Client CA"), CA(d, "Other CA")
    return PKI(
        directory=d,
        server_ca=server_ca,
        client_ca=client_ca,
        server=server_ca.issue("server", server=True),
        client=client_ca.issue("prometheus", server=False),
        stranger=other_ca.issue("intruder", server=False),
        self_signed=self_signed(d, "selfsigned"),
    )


# --------------------------------------------------------------------------------------------
# Validation: one specific error per bad file


def _config_text(pki: PKI, body: str) -> str:
    return body.format(cert=pki.server.cert, key=pki.server.key, ca=pki.client_ca.path, hash=HASH)


BAD_FILES: list[tuple[str, str, str, str]] = [
    # (id, file body, field, expected fragment)
    ("unknown-top", "tls_server_cofnig: {{}}\n", "tls_server_cofnig", "did you mean"),
    ("not-mapping", "- a\n- b\n", "(root)", "expected a mapping"),
    ("syntax", "tls_server_config: [\n", "(syntax)", "not valid YAML"),
    (
        "duplicate",
        "basic_auth_users:\n  a: '{hash}'\n  a: '{hash}'\n",
        "basic_auth_users.a",
        "duplicate key",
    ),
    (
        "no-cert",
        "tls_server_config:\n  key_file: {key}\n",
        "tls_server_config.cert_file",
        "required",
    ),
    (
        "no-key",
        "tls_server_config:\n  cert_file: {cert}\n",
        "tls_server_config.key_file",
        "required",
    ),
    (
        "missing-cert",
        "tls_server_config:\n  cert_file: nope.pem\n  key_file: {key}\n",
        "tls_server_config.cert_file",
        "does not exist",
    ),
    (
        "cert-not-pem",
        "tls_server_config:\n  cert_file: {key}\n  key_file: {key}\n",
        "tls_server_config.cert_file",
        "expected PEM certificates",
    ),
    (
        "key-not-pem",
        "tls_server_config:\n  cert_file: {cert}\n  key_file: {cert}\n",
        "tls_server_config.key_file",
        "expected a PEM private key",
    ),
    (
        "bad-auth-type",
        "tls_server_config:\n  cert_file: {cert}\n  key_file: {key}\n"
        "  client_auth_type: RequireAndVerifyClientCerts\n",
        "tls_server_config.client_auth_type",
        "did you mean 'RequireAndVerifyClientCert'",
    ),
    (
        "unverified-request",
        "tls_server_config:\n  cert_file: {cert}\n  key_file: {key}\n"
        "  client_auth_type: RequestClientCert\n",
        "tls_server_config.client_auth_type",
        "without verifying it",
    ),
    (
        "unverified-require-any",
        "tls_server_config:\n  cert_file: {cert}\n  key_file: {key}\n"
        "  client_auth_type: RequireAnyClientCert\n",
        "tls_server_config.client_auth_type",
        "use RequireAndVerifyClientCert",
    ),
    (
        "legacy-require",
        "tls_server_config:\n  cert_file: {cert}\n  key_file: {key}\n"
        "  client_auth_type: RequireClientCert\n",
        "tls_server_config.client_auth_type",
        "RequireAnyClientCert asks for a client certificate without verifying",
    ),
    (
        "verify-without-ca",
        "tls_server_config:\n  cert_file: {cert}\n  key_file: {key}\n"
        "  client_auth_type: RequireAndVerifyClientCert\n",
        "tls_server_config.client_ca_file",
        "needs client_ca_file",
    ),
    (
        "ca-without-policy",
        "tls_server_config:\n  cert_file: {cert}\n  key_file: {key}\n  client_ca_file: {ca}\n",
        "tls_server_config.client_auth_type",
        "would never be checked",
    ),
    (
        "ca-is-a-key",
        "tls_server_config:\n  cert_file: {cert}\n  key_file: {key}\n  client_ca_file: {key}\n"
        "  client_auth_type: RequireAndVerifyClientCert\n",
        "tls_server_config.client_ca_file",
        "contains a private key",
    ),
    (
        "tls10",
        "tls_server_config:\n  cert_file: {cert}\n  key_file: {key}\n  min_version: TLS10\n",
        "tls_server_config.min_version",
        "obsolete",
    ),
    (
        "tls-typo",
        "tls_server_config:\n  cert_file: {cert}\n  key_file: {key}\n  min_version: TLS1.2\n",
        "tls_server_config.min_version",
        "expected TLS12 or TLS13",
    ),
    (
        "max-below-min",
        "tls_server_config:\n  cert_file: {cert}\n  key_file: {key}\n"
        "  min_version: TLS13\n  max_version: TLS12\n",
        "tls_server_config.max_version",
        "lower than min_version",
    ),
    (
        "inline-key",
        "tls_server_config:\n  cert_file: {cert}\n  key: 'xyz'\n",
        "tls_server_config.key",
        "never written inside a configuration file",
    ),
    (
        "cipher-suites",
        "tls_server_config:\n  cert_file: {cert}\n  key_file: {key}\n  cipher_suites: [a]\n",
        "tls_server_config.cipher_suites",
        "not supported",
    ),
    (
        "allowed-sans",
        "tls_server_config:\n  cert_file: {cert}\n  key_file: {key}\n  client_allowed_sans: [a]\n",
        "tls_server_config.client_allowed_sans",
        "not supported",
    ),
    (
        "plaintext-password",
        "basic_auth_users:\n  prometheus: Hunter2-Plaintext\n",
        "basic_auth_users.prometheus",
        "expected a bcrypt hash",
    ),
    (
        "bcrypt-cost",
        "basic_auth_users:\n  prometheus: '$2y$03$" + "a" * 53 + "'\n",
        "basic_auth_users.prometheus",
        "cost 3 is out of range",
    ),
    (
        "colon-user",
        "basic_auth_users:\n  'a:b': '{hash}'\n",
        "basic_auth_users",
        "cannot contain ':'",
    ),
    ("number-user", "basic_auth_users:\n  42: '{hash}'\n", "basic_auth_users", "user names"),
    ("users-list", "basic_auth_users: [a]\n", "basic_auth_users", "expected a mapping"),
    ("http2", "http_server_config:\n  http2: true\n", "http_server_config.http2", "HTTP/2"),
    (
        "header-name",
        "http_server_config:\n  headers:\n    Set-Cookie: a\n",
        "http_server_config.headers.Set-Cookie",
        "unknown header",
    ),
    (
        "header-value",
        "http_server_config:\n  headers:\n    X-Frame-Options: allow\n",
        "http_server_config.headers.X-Frame-Options",
        "deny, sameorigin",
    ),
    ("rate-bare", "rate_limit:\n  interval: 1\n  burst: 2\n", "rate_limit.interval", "duration"),
    ("rate-burst", "rate_limit:\n  interval: 1s\n  burst: 0\n", "rate_limit.burst", "1 to 1000000"),
]


@pytest.mark.parametrize(
    ("body", "field", "fragment"), [c[1:] for c in BAD_FILES], ids=[c[0] for c in BAD_FILES]
)
def test_every_bad_web_config_gets_its_specific_error(
    pki: PKI, tmp_path: Path, body: str, field: str, fragment: str
) -> None:
    path = tmp_path / "web.yml"
    path.write_text(_config_text(pki, body))
    with pytest.raises(WebConfigError) as info:
        load_web_config(path)
    err = info.value
    assert err.file == str(path)
    assert err.field == field, str(err)
    assert fragment in err.message, str(err)
    assert str(err).startswith(f"{path}: {field}: ")
    # never echo what may be a pasted password
    assert "Hunter2-Plaintext" not in str(err)


def test_file_level_errors(tmp_path: Path) -> None:
    with pytest.raises(WebConfigError, match=r"\(file\): the web config file does not exist"):
        load_web_config(tmp_path / "missing.yml")
    (tmp_path / "bin.yml").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(WebConfigError, match="not valid UTF-8"):
        load_web_config(tmp_path / "bin.yml")
    with pytest.raises(WebConfigError, match="found a directory"):
        load_web_config(tmp_path)


def test_encrypted_and_mismatched_keys_are_refused(pki: PKI, tmp_path: Path) -> None:
    key = serialization.load_pem_private_key(pki.server.key.read_bytes(), None)
    encrypted = tmp_path / "enc.key"
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"passphrase"),
        )
    )
    encrypted.chmod(0o600)
    text = f"tls_server_config:\n  cert_file: {pki.server.cert}\n  key_file: {encrypted}\n"
    with pytest.raises(WebConfigError, match="private key is encrypted"):
        loads_web_config(text, file="w.yml")
    text = f"tls_server_config:\n  cert_file: {pki.server.cert}\n  key_file: {pki.client.key}\n"
    with pytest.raises(WebConfigError, match="does not belong to the certificate"):
        loads_web_config(text, file="w.yml")


def test_relative_paths_and_a_world_readable_key_warn(
    pki: PKI, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "s.pem").write_bytes(pki.server.cert.read_bytes())
    (tmp_path / "s.key").write_bytes(pki.server.key.read_bytes())
    (tmp_path / "s.key").chmod(0o644)
    (tmp_path / "web.yml").write_text(
        "tls_server_config:\n  cert_file: s.pem\n  key_file: s.key\n"
        "  min_version: TLS13\nbasic_auth_users:\n"
        f"  prometheus: '{HASH}'\n"
    )
    with caplog.at_level("WARNING"):
        cfg = load_web_config(tmp_path / "web.yml")
    assert cfg.tls is not None and cfg.tls.cert_file == str(tmp_path / "s.pem")
    assert cfg.tls.min_version == "TLS13" and cfg.scheme == "https"
    assert "readable by group or others" in caplog.text
    # the hash is a secret too: it never prints
    assert HASH not in repr(cfg) and HASH not in cfg.summary()


def test_basic_auth_header_parsing() -> None:
    def enc(raw: bytes) -> str:
        return "Basic " + base64.b64encode(raw).decode()

    assert parse_basic_auth(enc(b"u:p:with:colons")) == (b"u", b"p:with:colons")
    assert parse_basic_auth("basic " + base64.b64encode(b"u:").decode()) == (b"u", b"")
    for bad in (None, "", "Bearer x", "Basic", "Basic !!!", enc(b"nocolon"), "Basic " + "A" * 9000):
        assert parse_basic_auth(bad) is None


# --------------------------------------------------------------------------------------------
# Real servers, real clients


def hello(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    body = f"hello {environ.get('wsgi.url_scheme')}\n".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


@pytest.fixture
def serve_with(tmp_path: Path) -> Iterator[Any]:
    servers: list[HTTPServer] = []

    def start(body: str) -> tuple[str, WebConfigFile]:
        path = tmp_path / f"web{len(servers)}.yml"
        path.write_text(body)
        cfg = load_web_config(path)
        server = make_server(hello, "127.0.0.1:0", threads=4, web_config=cfg)
        server.prepare()
        threading.Thread(target=server.serve, daemon=True).start()
        servers.append(server)
        return server.url, cfg

    yield start
    for server in servers:
        server.stop()


def _mtls(pki: PKI, auth: str = "RequireAndVerifyClientCert", extra: str = "") -> str:
    return (
        f"tls_server_config:\n  cert_file: {pki.server.cert}\n  key_file: {pki.server.key}\n"
        f"  client_ca_file: {pki.client_ca.path}\n  client_auth_type: {auth}\n"
        f"basic_auth_users:\n  prometheus: '{HASH}'\n{extra}"
    )


def _get(
    url: str,
    pki: PKI,
    client: Issued | None,
    auth: tuple[str, str] | None = ("prometheus", PASSWORD),
) -> requests.Response:
    return requests.get(
        url + "/metrics",
        verify=str(pki.server_ca.path),
        cert=(str(client.cert), str(client.key)) if client else None,
        auth=auth,
        timeout=10,
    )


def test_mutual_tls_and_basic_auth_with_requests(pki: PKI, serve_with: Any) -> None:
    url, _ = serve_with(_mtls(pki))
    assert url.startswith("https://127.0.0.1:")
    ok = _get(url, pki, pki.client)
    assert ok.status_code == 200 and ok.text == "hello https\n"
    # wrong password, unknown user, no credentials: 401 with a challenge, nothing served
    for auth in (("prometheus", "wrong"), ("nobody", PASSWORD), None):
        refused = _get(url, pki, pki.client, auth)
        assert refused.status_code == 401
        assert refused.headers["WWW-Authenticate"].startswith("Basic")
        assert "hello" not in refused.text
    # no client certificate, one from another CA, a self-signed one: no TLS session at all
    for client in (None, pki.stranger, pki.self_signed):
        with pytest.raises((requests.exceptions.SSLError, requests.exceptions.ConnectionError)):
            _get(url, pki, client)


def test_mutual_tls_with_the_ssl_module(pki: PKI, serve_with: Any) -> None:
    url, _ = serve_with(_mtls(pki))
    port = int(url.rsplit(":", 1)[1])

    def handshake(client: Issued | None) -> str:
        ctx = ssl.create_default_context(cafile=str(pki.server_ca.path))
        if client is not None:
            ctx.load_cert_chain(str(client.cert), str(client.key))
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                token = base64.b64encode(f"prometheus:{PASSWORD}".encode()).decode()
                tls.sendall(
                    f"GET / HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {token}\r\n"
                    "Connection: close\r\n\r\n".encode()
                )
                data = b""
                while chunk := tls.recv(4096):
                    data += chunk
                return data.decode()

    assert handshake(pki.client).startswith("HTTP/1.1 200 OK")
    # TLS 1.3: the server checks the client certificate after the client thinks the
    # handshake is done, so the refusal shows up as an alert on the first read
    for client in (None, pki.stranger):
        with pytest.raises((ssl.SSLError, ConnectionError)):
            handshake(client)


def test_verify_if_given_and_urllib(pki: PKI, serve_with: Any) -> None:
    url, _ = serve_with(_mtls(pki, "VerifyClientCertIfGiven"))
    ctx = ssl.create_default_context(cafile=str(pki.server_ca.path))
    token = base64.b64encode(f"prometheus:{PASSWORD}".encode()).decode()
    request = urllib.request.Request(url + "/", headers={"Authorization": f"Basic {token}"})
    with urllib.request.urlopen(request, context=ctx, timeout=10) as response:
        assert response.read() == b"hello https\n"
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(url + "/", context=ctx, timeout=10)
    assert info.value.code == 401
    assert _get(url, pki, pki.client).status_code == 200
    with pytest.raises((requests.exceptions.SSLError, requests.exceptions.ConnectionError)):
        _get(url, pki, pki.stranger)


def test_min_version_tls13_refuses_tls12_clients(pki: PKI, serve_with: Any) -> None:
    url, _ = serve_with(
        f"tls_server_config:\n  cert_file: {pki.server.cert}\n  key_file: {pki.server.key}\n"
        "  min_version: TLS13\n"
    )
    port = int(url.rsplit(":", 1)[1])

    def connect(maximum: ssl.TLSVersion) -> str:
        ctx = ssl.create_default_context(cafile=str(pki.server_ca.path))
        ctx.maximum_version = maximum
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                return str(tls.version())

    assert connect(ssl.TLSVersion.TLSv1_3) == "TLSv1.3"
    with pytest.raises(ssl.SSLError):
        connect(ssl.TLSVersion.TLSv1_2)


def test_plain_http_to_the_tls_port_gets_nothing(pki: PKI, serve_with: Any) -> None:
    url, _ = serve_with(_mtls(pki))
    with pytest.raises((ConnectionError, urllib.error.URLError, OSError)):
        urllib.request.urlopen(url.replace("https://", "http://") + "/", timeout=10).read()


def test_silent_clients_do_not_hold_the_accept_loop(pki: PKI, serve_with: Any) -> None:
    """A client that never starts its handshake holds up nobody else's."""
    url, _ = serve_with(_mtls(pki))
    port = int(url.rsplit(":", 1)[1])
    silent = [socket.create_connection(("127.0.0.1", port)) for _ in range(2)]
    try:
        time.sleep(0.2)
        began = time.monotonic()
        assert _get(url, pki, pki.client).status_code == 200
        assert time.monotonic() - began < 3.0  # not the 10 s socket timeout
    finally:
        for s in silent:
            s.close()


def test_unknown_users_cost_what_known_users_cost(pki: PKI, serve_with: Any) -> None:
    """No user enumeration by timing: an unknown name is checked against a dummy hash."""
    url, _ = serve_with(_mtls(pki))
    session = requests.Session()
    session.trust_env = False  # REQUESTS_CA_BUNDLE would override session.verify
    session.verify = str(pki.server_ca.path)
    session.cert = (str(pki.client.cert), str(pki.client.key))
    session.get(url + "/", auth=("prometheus", PASSWORD), timeout=10)  # warm the connection

    def timed(user: str, attempt: int) -> float:
        began = time.perf_counter()
        # a fresh password each time: the outcome cache must not answer
        r = session.get(url + "/", auth=(user, f"wrong-{attempt}-{time.time_ns()}"), timeout=10)
        assert r.status_code == 401
        return time.perf_counter() - began

    known = statistics.median(timed("prometheus", i) for i in range(5))
    unknown = statistics.median(timed("mallory", i) for i in range(5))
    assert known > 0.01  # bcrypt cost 10 really ran
    assert 0.5 < unknown / known < 2.0, (known, unknown)


def test_hostile_credentials_get_401_never_500(pki: PKI, serve_with: Any) -> None:
    url, _ = serve_with(_mtls(pki))
    session = requests.Session()
    session.trust_env = False  # REQUESTS_CA_BUNDLE would override session.verify
    session.verify = str(pki.server_ca.path)
    session.cert = (str(pki.client.cert), str(pki.client.key))
    headers = [
        "Basic " + base64.b64encode(b"prometheus:" + b"x" * 100).decode(),  # > 72 bytes
        "Basic " + base64.b64encode(b"prometheus:a\x00b").decode(),
        "Basic " + base64.b64encode(b"\xff\xfe:\xff").decode(),
        "Basic " + base64.b64encode(PASSWORD.encode()).decode(),  # no user part
        "Basic =====",
        "Digest username=prometheus",
        "Basic " + "A" * 20000,
    ]
    for header in headers:
        r = session.get(url + "/", headers={"Authorization": header}, timeout=10)
        assert r.status_code in (401, 431, 400), (header[:40], r.status_code)
        assert "hello" not in r.text


def test_headers_and_rate_limit(pki: PKI, serve_with: Any) -> None:
    url, _ = serve_with(
        _mtls(
            pki,
            extra="http_server_config:\n  headers:\n    X-Frame-Options: deny\n"
            "    X-Content-Type-Options: nosniff\n    Content-Security-Policy: ''\n"
            "rate_limit:\n  interval: 1h\n  burst: 3\n",
        )
    )
    codes = []
    for _ in range(4):
        r = _get(url, pki, pki.client)
        codes.append(r.status_code)
        assert r.headers["X-Frame-Options"] == "deny"
        assert r.headers["X-Content-Type-Options"] == "nosniff"
        assert "Content-Security-Policy" not in r.headers  # blank means unset
    assert codes == [200, 200, 200, 429]


# --------------------------------------------------------------------------------------------
# The serve command


@pytest.mark.e2e
def test_serve_refuses_a_bad_web_config_before_listening(
    lab: RunningLab,
    pki: PKI,
    tmp_path: Path,
    exporter_command: ExporterCommand,
    free_port: Callable[[], int],
) -> None:
    config = lab.write_config(tmp_path / "exporter.yml")
    web = tmp_path / "web.yml"
    web.write_text(_mtls(pki, "RequireAnyClientCert"))
    port = free_port()
    result = exporter_command.run(
        "serve",
        "--config",
        str(config),
        f"--web.listen-address=127.0.0.1:{port}",
        f"--web.config.file={web}",
        timeout=60,
    )
    assert result.returncode == 1
    assert f"{web}: tls_server_config.client_auth_type: RequireAnyClientCert" in result.stderr
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))  # nobody listened


@pytest.mark.e2e
def test_serve_with_mutual_tls_and_basic_auth(
    lab: RunningLab, pki: PKI, tmp_path: Path, processes: Processes
) -> None:
    config = lab.write_config(tmp_path / "exporter.yml")
    web = tmp_path / "web.yml"
    web.write_text(_mtls(pki))
    proc = processes.exporter(
        "serve", "--config", str(config), f"--web.config.file={web}", listen=True
    )
    url = f"https://127.0.0.1:{proc.port}"
    try:
        proc.wait_until(
            lambda: (
                requests.get(
                    url + "/-/ready",
                    verify=str(pki.server_ca.path),
                    cert=(str(pki.client.cert), str(pki.client.key)),
                    auth=("prometheus", PASSWORD),
                    timeout=5,
                ).status_code
                == 200
            ),
            "/-/ready over mutual TLS",
        )
        metrics = _get(url, pki, pki.client)
        assert metrics.status_code == 200 and "vmm_cert_expiry_seconds{" in metrics.text
        assert _get(url, pki, pki.client, ("prometheus", "nope")).status_code == 401
        with pytest.raises((requests.exceptions.SSLError, requests.exceptions.ConnectionError)):
            _get(url, pki, pki.stranger)
        with pytest.raises((requests.exceptions.SSLError, requests.exceptions.ConnectionError)):
            requests.get(url.replace("https", "http") + "/metrics", timeout=5)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    _, stderr = proc.communicate()
    assert f"address={url}" in stderr


# --------------------------------------------------------------------------------------------
# The renewal receiver takes the same file


def _receiver(
    processes: Processes, lab: RunningLab, tmp_path: Path, web: Path, **receiver: Any
) -> tuple[Process, int | None]:
    from vmm_cert_lab.receiver_config import write_lab_receiver_config

    config = write_lab_receiver_config(
        lab,
        tmp_path / "receiver.yml",
        token="t0ken-for-tests",
        mode="dry-run",
        receiver=receiver or None,
    )
    proc = processes.exporter(
        "receiver", "--config", str(config), f"--web.config.file={web}", listen=True
    )
    return proc, proc.port


@pytest.mark.e2e
def test_receiver_with_mutual_tls_from_the_web_config(
    lab: RunningLab, pki: PKI, tmp_path: Path, processes: Processes
) -> None:
    web = tmp_path / "web.yml"
    web.write_text(
        f"tls_server_config:\n  cert_file: {pki.server.cert}\n  key_file: {pki.server.key}\n"
        f"  client_ca_file: {pki.client_ca.path}\n  client_auth_type: RequireAndVerifyClientCert\n"
        "http_server_config:\n  headers:\n    X-Content-Type-Options: nosniff\n"
    )
    proc, port = _receiver(processes, lab, tmp_path, web)
    url = f"https://127.0.0.1:{port}"
    session = requests.Session()
    session.trust_env = False
    session.verify = str(pki.server_ca.path)
    session.cert = (str(pki.client.cert), str(pki.client.key))
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                r = session.get(
                    url + "/api/status",
                    timeout=5,
                    headers={"Authorization": "Bearer t0ken-for-tests"},
                )
                break
            except requests.exceptions.ConnectionError:
                assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()
                time.sleep(0.3)
        assert r.status_code == 200 and r.json()["mode"] == "dry-run"
        assert r.headers["X-Content-Type-Options"] == "nosniff"
        # the receiver's own bearer token still applies behind TLS
        assert session.get(url + "/api/status", timeout=5).status_code == 401
        with pytest.raises((requests.exceptions.SSLError, requests.exceptions.ConnectionError)):
            requests.get(
                url + "/api/status",
                verify=str(pki.server_ca.path),
                timeout=5,
                cert=(str(pki.stranger.cert), str(pki.stranger.key)),
                headers={"Authorization": "Bearer t0ken-for-tests"},
            )
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    _, stderr = proc.communicate()
    assert f"address={url}" in stderr


@pytest.mark.e2e
def test_receiver_refuses_a_web_config_that_doubles_its_own_security(
    lab: RunningLab, pki: PKI, tmp_path: Path, processes: Processes
) -> None:
    web = tmp_path / "web.yml"
    web.write_text(f"basic_auth_users:\n  alertmanager: '{HASH}'\n")
    proc, _ = _receiver(processes, lab, tmp_path, web)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert "basic_auth_users cannot be combined with the receiver's own credentials" in stderr
    web.write_text(
        f"tls_server_config:\n  cert_file: {pki.server.cert}\n  key_file: {pki.server.key}\n"
    )
    proc, _ = _receiver(
        processes,
        lab,
        tmp_path,
        web,
        tls={"cert_file": str(pki.server.cert), "key_file": str(pki.server.key)},
    )
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 1 and "TLS is configured twice" in stderr
    web.write_text("tls_server_config:\n  cert_file: nope.pem\n")
    proc, _ = _receiver(processes, lab, tmp_path, web)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 2 and f"{web}: tls_server_config.key_file: required" in stderr
