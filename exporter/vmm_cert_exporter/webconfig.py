"""``--web.config.file``: TLS and basic auth for any of our HTTP servers, exporter-toolkit style.

The file format is the Prometheus exporter-toolkit's (docs/web-configuration.md there), so a
Prometheus administrator can reuse what they already know::

    tls_server_config:
      cert_file: server.crt            # PEM; relative paths are relative to this file
      key_file: server.key
      client_ca_file: clients-ca.pem   # needed by the two Verify* client_auth_types
      client_auth_type: RequireAndVerifyClientCert
      min_version: TLS12               # TLS12 | TLS13
      max_version: TLS13
    http_server_config:
      headers: {X-Content-Type-Options: nosniff}
    basic_auth_users:
      prometheus: $2y$10$...           # bcrypt hash, never the password
    rate_limit: {interval: 1s, burst: 20}

The file is validated strictly, like the main configuration: one ``WebConfigError`` (a
``ConfigError``) naming the file, the field and what was expected, before anything listens.
Certificates and keys are loaded into an ``ssl.SSLContext`` at load time, so a wrong key, an
encrypted key or a certificate that does not match its key also fails before listening.

Where we differ from the toolkit, on purpose (docs/security.md):

- The file is read once at start (the toolkit re-reads it on every request): restart the
  process to pick up a new certificate or user.
- ``RequestClientCert`` and ``RequireAnyClientCert`` ask for a client certificate without
  verifying it. Python's ``ssl`` cannot accept an unverified client certificate, and such a
  certificate authenticates nobody, so both are refused with an error saying what to use.
- Inline ``cert``/``key``/``client_ca`` (a private key inside a config file), ``cipher_suites``
  and ``curve_preferences`` (Go names; OpenSSL's defaults apply), ``client_allowed_sans`` and
  ``http2: true`` are refused by name rather than silently ignored.

The file is parsed here, once; the HTTP layer (``vmm_cert_exporter.http``) applies it to
the exporter's and the receiver's servers: TLS on the listener, and the Basic users, rate
limit and headers in front of every handler (``http/gate.py``, ``http/credentials.py``).
"""

from __future__ import annotations

import datetime
import difflib
import logging
import os
import re
import ssl
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, NoReturn

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from vmm_cert_exporter.config_file import (
    ConfigError,
    YamlMapping,
    config_dir,
    parse_yaml,
    read_config_text,
)
from vmm_cert_exporter.config_schema import Document, Located, Section
from vmm_cert_exporter.config_values import read_existing_path, read_string
from vmm_cert_exporter.documents import describe, short
from vmm_cert_exporter.durations import EXAMPLES as DURATION_EXAMPLES
from vmm_cert_exporter.durations import parse_duration
from vmm_cert_exporter.http.tls_context import TLS_VERSIONS, TLSSetupError, server_context
from vmm_cert_exporter.secrets import Secret, warn_if_readable_by_others

__all__ = [
    "CLIENT_AUTH_TYPES",
    "RateLimit",
    "TLSServerConfig",
    "WebConfigError",
    "WebConfigFile",
    "load_web_config",
    "loads_web_config",
]

log = logging.getLogger(__name__)

MAX_WEB_CONFIG_BYTES: Final = 1024 * 1024
CLIENT_AUTH_TYPES: Final = (
    "NoClientCert",
    "RequestClientCert",
    "RequireAnyClientCert",
    "VerifyClientCertIfGiven",
    "RequireAndVerifyClientCert",
)
# Accepted by the toolkit as an old spelling of RequireAnyClientCert.
_LEGACY_CLIENT_AUTH: Final = {"RequireClientCert": "RequireAnyClientCert"}
_UNVERIFIED_CLIENT_AUTH: Final = ("RequestClientCert", "RequireAnyClientCert")
_VERIFY_CLIENT_AUTH: Final = {
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
_OBSOLETE_TLS: Final = ("TLS10", "TLS11")

_TOP_KEYS: Final = ("tls_server_config", "http_server_config", "basic_auth_users", "rate_limit")
_TLS_KEYS: Final = (
    "cert_file",
    "key_file",
    "client_ca_file",
    "client_auth_type",
    "min_version",
    "max_version",
    "prefer_server_cipher_suites",
)
# exporter-toolkit keys we know and refuse, each with the reason and what to do instead.
_TLS_REFUSED: Final = {
    "cert": "inline certificates are not supported: put the PEM in a file and use cert_file",
    "key": "a private key is never written inside a configuration file: put it in a file "
    "readable only by this service (chmod 600) and use key_file",
    "client_ca": "inline CA certificates are not supported: use client_ca_file",
    "cipher_suites": "Go cipher suite names are not supported: OpenSSL's default TLS 1.2 "
    "suites (ECDHE with AES-GCM or ChaCha20) apply; use min_version: TLS13 to restrict further",
    "curve_preferences": "Go curve names are not supported: OpenSSL's default groups apply",
    "client_allowed_sans": "not supported: issue client certificates from a CA used only for "
    "this service (client_ca_file) instead",
}
_HTTP_KEYS: Final = ("http2", "headers")
# The toolkit's allowed response headers, with the values it allows (None: any value).
_HEADERS: Final[dict[str, tuple[str, ...] | None]] = {
    "Content-Security-Policy": None,
    "X-Frame-Options": ("deny", "sameorigin"),
    "X-Content-Type-Options": ("nosniff",),
    "X-XSS-Protection": None,
    "Strict-Transport-Security": None,
}
_RATE_KEYS: Final = ("interval", "burst")
_BCRYPT_RE = re.compile(r"\$2[aby]\$([0-9]{2})\$[./A-Za-z0-9]{53}")
BCRYPT_COSTS: Final = (4, 31)
# Above this cost every uncached login takes seconds of CPU (and bcrypt is serialised).
_SLOW_BCRYPT_COST: Final = 16
_HASH_HELP: Final = (
    "generate one with: htpasswd -nBC 10 '' | tr -d ':\\n'  or  python3 -c "
    "'import bcrypt,getpass; print(bcrypt.hashpw(getpass.getpass().encode(), "
    "bcrypt.gensalt(10)).decode())'"
)


class WebConfigError(ConfigError):
    """A bad web configuration file: ``str()`` is ``"<file>: <field>: <message>"``."""


# --------------------------------------------------------------------------------------------
# The result


@dataclass(frozen=True)
class TLSServerConfig:
    cert_file: str
    key_file: str
    client_ca_file: str | None
    client_auth_type: str
    min_version: str
    max_version: str
    prefer_server_cipher_suites: bool = True


@dataclass(frozen=True)
class RateLimit:
    """A token bucket shared by all requests: one token every ``interval``, ``burst`` at most."""

    interval: float
    burst: int


@dataclass(frozen=True)
class WebConfigFile:
    """A validated web configuration file, with its TLS context already built."""

    path: str
    tls: TLSServerConfig | None = None
    # user name -> bcrypt hash (kept in a Secret: hashes are attackable offline)
    basic_auth_users: Mapping[str, Secret] = field(default_factory=dict)
    headers: tuple[tuple[str, str], ...] = ()
    rate_limit: RateLimit | None = None
    ssl_context: ssl.SSLContext | None = field(default=None, repr=False, compare=False)

    @property
    def scheme(self) -> str:
        return "https" if self.tls is not None else "http"

    def summary(self) -> str:
        parts = []
        if self.tls is not None:
            parts.append(f"TLS {self.tls.min_version}+, client auth {self.tls.client_auth_type}")
        else:
            parts.append("no TLS")
        parts.append(
            f"basic auth for {len(self.basic_auth_users)} users"
            if self.basic_auth_users
            else "no basic auth"
        )
        if self.rate_limit is not None:
            parts.append(f"rate limit burst {self.rate_limit.burst}")
        return ", ".join(parts)


# --------------------------------------------------------------------------------------------
# Loading and validation


def load_web_config(path: str | os.PathLike[str]) -> WebConfigFile:
    """Read and validate the web configuration file at ``path``; raise ``WebConfigError``."""
    text = read_config_text(
        path,
        subject="the web config file",
        kind="a web config file",
        limit=MAX_WEB_CONFIG_BYTES,
        error=WebConfigError,
    )
    return loads_web_config(text, file=os.fspath(path), base_dir=config_dir(path))


def loads_web_config(
    text: str, *, file: str = "<string>", base_dir: str | os.PathLike[str] | None = None
) -> WebConfigFile:
    """Validate web configuration ``text`` (as if read from ``file``); raise ``WebConfigError``."""
    v = _Validator(file, Path(base_dir) if base_dir is not None else Path.cwd())
    root = parse_yaml(text, file=file, error=WebConfigError)
    if root is None:
        # The toolkit accepts an empty file: no TLS, no authentication.
        log.warning("web config file has no settings: serving plain HTTP without auth")
        return WebConfigFile(path=file)
    top = v.mapping(root, "(root)", 1, _TOP_KEYS, what="section")
    tls = v.tls(top.get("tls_server_config"), "tls_server_config", v.at("tls_server_config"))
    headers = v.http(
        top.get("http_server_config"), "http_server_config", v.at("http_server_config")
    )
    users = v.users(top.get("basic_auth_users"), "basic_auth_users", v.at("basic_auth_users"))
    rate = v.rate(top.get("rate_limit"), "rate_limit", v.at("rate_limit"))
    context = None if tls is None else v.ssl_context(tls)
    if users and tls is None:
        log.warning(
            "basic auth without TLS: passwords cross the network base64-encoded; "
            "set tls_server_config in the web config file",
            extra={"file": file},
        )
    return WebConfigFile(
        path=file,
        tls=tls,
        basic_auth_users=users,
        headers=headers,
        rate_limit=rate,
        ssl_context=context,
    )


class _Validator:
    def __init__(self, file: str, base_dir: Path) -> None:
        self.file = file
        self.document = Document(
            file,
            base_dir,
            directory_name="the web config file's directory",
            error=WebConfigError,
        )
        self._lines: dict[str, int] = {}

    # ---- errors and positions --------------------------------------------------------------
    def fail(self, field_path: str, message: str, line: int | None = None) -> NoReturn:
        raise WebConfigError(self.file, field_path, message, line)

    def mapping(
        self,
        value: object,
        path: str,
        line: int | None,
        allowed: Iterable[str],
        *,
        what: str = "key",
        refused: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        section = Section(
            self.document,
            Located(value, path, line),
            allowed,
            what=what,
            null_ok=False,
            refused=refused,
        )
        for key in section.data:
            # where each value is, for errors about it found later (certificates, keys)
            self._lines[section.child_path(key)] = section.get(key).line or 0
        return dict(section.data)

    def at(self, path: str) -> int | None:
        return self._lines.get(path) or None

    def string(self, value: object, path: str, what: str) -> str:
        return read_string(self.document, Located(value, path, self.at(path)), what=what)

    def file_path(self, value: object, path: str, what: str) -> str:
        located = Located(value, path, self.at(path))
        return read_existing_path(self.document, located, what=what)

    # ---- sections ----------------------------------------------------------------------------
    def tls(self, value: object, path: str, line: int | None) -> TLSServerConfig | None:
        if value is None:
            return None
        section = self.mapping(value, path, line, _TLS_KEYS, refused=_TLS_REFUSED)
        for key in ("cert_file", "key_file"):
            if section.get(key) is None:
                self.fail(
                    f"{path}.{key}",
                    f"required when tls_server_config is set: expected the path of the "
                    f"server's {'certificate' if key == 'cert_file' else 'private key'} (PEM)",
                    self.at(f"{path}.{key}") or line,
                )
        cert = self.file_path(section["cert_file"], f"{path}.cert_file", "the certificate file")
        key = self.file_path(section["key_file"], f"{path}.key_file", "the private key file")
        auth_path = f"{path}.client_auth_type"
        auth = section.get("client_auth_type")
        if auth is None:
            auth = "NoClientCert"
        if not isinstance(auth, str):
            self.fail(
                auth_path,
                f"expected one of {', '.join(CLIENT_AUTH_TYPES)}, got {describe(auth)}",
                self.at(auth_path),
            )
        auth = _LEGACY_CLIENT_AUTH.get(auth, auth)
        if auth not in CLIENT_AUTH_TYPES:
            close = difflib.get_close_matches(auth, CLIENT_AUTH_TYPES, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            self.fail(
                auth_path,
                f"expected one of {', '.join(CLIENT_AUTH_TYPES)}, got {short(auth)}{hint}",
                self.at(auth_path),
            )
        if auth in _UNVERIFIED_CLIENT_AUTH:
            self.fail(
                auth_path,
                f"{auth} asks for a client certificate without verifying it: such a certificate "
                "proves nothing, and Python's ssl module cannot accept one unverified; use "
                "RequireAndVerifyClientCert (or VerifyClientCertIfGiven) with client_ca_file",
                self.at(auth_path),
            )
        ca_path = f"{path}.client_ca_file"
        ca = None
        if section.get("client_ca_file") is not None:
            ca = self.file_path(section["client_ca_file"], ca_path, "the client CA file")
            if auth == "NoClientCert":
                self.fail(
                    auth_path,
                    "client_ca_file is set but client_auth_type is NoClientCert (the default), so "
                    "client certificates would never be checked; set client_auth_type: "
                    "RequireAndVerifyClientCert",
                    self.at(auth_path) or self.at(ca_path),
                )
        elif auth in _VERIFY_CLIENT_AUTH:
            self.fail(
                ca_path,
                f"client_auth_type {auth} needs client_ca_file: the CA certificates (PEM) that "
                "issue the client certificates to accept",
                self.at(auth_path) or line,
            )
        low = self.version(section.get("min_version"), f"{path}.min_version", "TLS12")
        high = self.version(section.get("max_version"), f"{path}.max_version", "TLS13")
        if TLS_VERSIONS[high] < TLS_VERSIONS[low]:
            self.fail(
                f"{path}.max_version",
                f"max_version {high} is lower than min_version {low}: no version would remain",
                self.at(f"{path}.max_version"),
            )
        prefer_path = f"{path}.prefer_server_cipher_suites"
        prefer = section.get("prefer_server_cipher_suites")
        if prefer is None:
            prefer = True
        if not isinstance(prefer, bool):
            self.fail(
                prefer_path,
                f"expected true or false, got {describe(prefer)}",
                self.at(prefer_path),
            )
        return TLSServerConfig(cert, key, ca, auth, low, high, prefer)

    def version(self, value: object, path: str, default: str) -> str:
        if value is None:
            return default
        if isinstance(value, str) and value in _OBSOLETE_TLS:
            self.fail(
                path,
                f"{value} is obsolete and refused (RFC 8996); expected TLS12 or TLS13",
                self.at(path),
            )
        if not isinstance(value, str) or value not in TLS_VERSIONS:
            self.fail(path, f"expected TLS12 or TLS13, got {describe(value)}", self.at(path))
        return value

    def http(self, value: object, path: str, line: int | None) -> tuple[tuple[str, str], ...]:
        if value is None:
            return ()
        section = self.mapping(value, path, self.at(path) or line, _HTTP_KEYS)
        http2 = section.get("http2")
        if http2 is not None and not isinstance(http2, bool):
            self.fail(
                f"{path}.http2", f"expected true or false, got {describe(http2)}", self.at(path)
            )
        if http2 is True:
            self.fail(
                f"{path}.http2",
                "HTTP/2 is not supported (this server speaks HTTP/1.1, which every Prometheus "
                "scrapes); remove the key or set it to false",
                self.at(f"{path}.http2"),
            )
        headers_value = section.get("headers")
        if headers_value is None:
            return ()
        hpath = f"{path}.headers"
        headers = self.mapping(headers_value, hpath, self.at(hpath), _HEADERS, what="header")
        out: list[tuple[str, str]] = []
        for name, raw in headers.items():
            hp = f"{hpath}.{name}"
            if raw is None or raw == "":
                continue  # "unset if blank", as in the toolkit
            text = self.string(raw, hp, "a header value")
            allowed = _HEADERS[name]
            if allowed is not None and text.lower() not in allowed:
                self.fail(
                    hp, f"expected one of {', '.join(allowed)}, got {short(text)}", self.at(hp)
                )
            if not text.isascii():
                self.fail(hp, "expected an ASCII header value", self.at(hp))
            out.append((name, text))
        return tuple(out)

    def users(self, value: object, path: str, line: int | None) -> dict[str, Secret]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.fail(
                path,
                f"expected a mapping of user names to bcrypt hashes, got {describe(value)}",
                self.at(path) or line,
            )
        out: dict[str, Secret] = {}
        for user, hashed in value.items():
            key_line = value.key_lines.get(user) if isinstance(value, YamlMapping) else line
            if not isinstance(user, str) or user == "":
                self.fail(path, f"expected user names (strings), got {describe(user)}", key_line)
            upath = f"{path}.{user}" if re.fullmatch(r"[A-Za-z0-9_.@-]+", user) else path
            if ":" in user:
                self.fail(upath, "a basic auth user name cannot contain ':'", key_line)
            if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in user):
                self.fail(upath, "a user name cannot contain control characters", key_line)
            # The value is never echoed: it is a hash, or a password pasted by mistake.
            if not isinstance(hashed, str):
                self.fail(
                    upath,
                    f"expected a bcrypt hash (a string), got {describe(hashed, redact=True)}; "
                    f"{_HASH_HELP}",
                    key_line,
                )
            match = _BCRYPT_RE.fullmatch(hashed)
            if match is None:
                self.fail(
                    upath,
                    "expected a bcrypt hash ($2a$, $2b$ or $2y$, a two-digit cost, 53 more "
                    f"characters: 60 in all), got a string of {len(hashed)} characters that is "
                    f"not one (passwords are never written here); {_HASH_HELP}",
                    key_line,
                )
            cost = int(match.group(1))
            if not BCRYPT_COSTS[0] <= cost <= BCRYPT_COSTS[1]:
                self.fail(
                    upath,
                    f"bcrypt cost {cost} is out of range {BCRYPT_COSTS[0]}-{BCRYPT_COSTS[1]}",
                    key_line,
                )
            if cost > _SLOW_BCRYPT_COST:
                log.warning(
                    "bcrypt cost above %d: every new login costs seconds of CPU",
                    _SLOW_BCRYPT_COST,
                    extra={"file": self.file, "user": user, "cost": cost},
                )
            out[user] = Secret(hashed, source=f"web config {self.file}")
        return out

    def rate(self, value: object, path: str, line: int | None) -> RateLimit | None:
        if value is None:
            return None
        section = self.mapping(value, path, self.at(path) or line, _RATE_KEYS)
        ipath, bpath = f"{path}.interval", f"{path}.burst"
        interval_value = section.get("interval")
        if not isinstance(interval_value, str):
            self.fail(
                ipath,
                f"expected a duration such as {DURATION_EXAMPLES} (0s disables the limit), "
                f"got {describe(interval_value)}",
                self.at(ipath) or line,
            )
        try:
            interval = parse_duration(interval_value)
        except ValueError as exc:
            self.fail(ipath, f"expected a duration: {exc}", self.at(ipath))
        if interval == 0:
            return None
        burst = section.get("burst")
        if isinstance(burst, bool) or not isinstance(burst, int) or not 1 <= burst <= 1_000_000:
            self.fail(
                bpath,
                f"expected an integer from 1 to 1000000, got {describe(burst)}",
                self.at(bpath) or line,
            )
        return RateLimit(interval, burst)

    # ---- certificates ------------------------------------------------------------------------
    def ssl_context(self, tls: TLSServerConfig) -> ssl.SSLContext:
        base = "tls_server_config"
        certs = self._certificates(tls.cert_file, f"{base}.cert_file", "the certificate file")
        key_path = f"{base}.key_file"
        try:
            key_pem = Path(tls.key_file).read_bytes()
        except OSError as exc:
            self.fail(
                key_path, f"cannot read the private key file: {exc.strerror}", self.at(key_path)
            )
        try:
            key = serialization.load_pem_private_key(key_pem, password=None)
        except TypeError:
            self.fail(
                key_path,
                "the private key is encrypted: a service cannot type its passphrase; store it "
                "unencrypted in a file readable only by this service (chmod 600)",
                self.at(key_path),
            )
        except (ValueError, ImportError) as exc:
            del exc  # its text may quote the key material
            self.fail(
                key_path,
                "expected a PEM private key (-----BEGIN PRIVATE KEY----- or a PKCS#1/SEC1 "
                "equivalent); this file is not one",
                self.at(key_path),
            )
        warn_if_readable_by_others(tls.key_file)
        leaf = certs[0]
        if leaf.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        ) != key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        ):
            self.fail(
                key_path,
                f"the private key does not belong to the certificate in {tls.cert_file} (the "
                "first certificate of the file must be the server's own)",
                self.at(key_path),
            )
        now = datetime.datetime.now(datetime.UTC)
        if leaf.not_valid_after_utc < now:
            log.warning(
                "the server certificate has expired: clients will refuse it",
                extra={"file": tls.cert_file, "not_after": leaf.not_valid_after_utc.isoformat()},
            )
        ca_path = f"{base}.client_ca_file"
        verify_mode = _VERIFY_CLIENT_AUTH.get(tls.client_auth_type, ssl.CERT_NONE)
        if tls.client_ca_file is not None and verify_mode != ssl.CERT_NONE:
            self._certificates(tls.client_ca_file, ca_path, "the client CA file")
        try:
            return server_context(
                tls.cert_file,
                tls.key_file,
                client_ca_file=tls.client_ca_file,
                verify_mode=verify_mode,
                min_version=TLS_VERSIONS[tls.min_version],
                max_version=TLS_VERSIONS[tls.max_version],
                prefer_server_ciphers=tls.prefer_server_cipher_suites,
            )
        except TLSSetupError as exc:
            where = key_path if exc.part == "key" else ca_path
            self.fail(where, exc.message, self.at(where))

    def _certificates(self, path: str, field_path: str, what: str) -> list[x509.Certificate]:
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            self.fail(field_path, f"cannot read {what}: {exc.strerror}", self.at(field_path))
        if b"PRIVATE KEY-----" in data and field_path.endswith("client_ca_file"):
            self.fail(field_path, f"{what} contains a private key: it must hold only certificates")
        try:
            certs = x509.load_pem_x509_certificates(data)
        except ValueError:
            self.fail(
                field_path,
                f"expected PEM certificates (-----BEGIN CERTIFICATE-----) in {what} {path}",
                self.at(field_path),
            )
        return certs
