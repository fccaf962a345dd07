"""The YAML configuration, validated strictly: one clear error or a frozen ``Config``.

Strict means: ``yaml.safe_load`` semantics plus refused duplicate keys, unknown keys refused
everywhere (with the allowed ones listed), no type coercion (``"16"`` is not a number, ``60``
is not a duration), and every cross-field rule checked before anything starts. Every failure
is ONE ``ConfigError`` naming the file, the field path (``winrm.timeout``, ``hosts[3].host``)
and what was expected versus found. Secrets are read here (file or environment) and kept in
``Secret`` objects that never print their value; no error message ever contains one.

Each section is a dataclass whose fields declare its keys (``config_schema.py``); ``Config``
declares the sections. A new key is one field; the receiver's section is declared in
``receiver/config.py``. Rules that span sections are in ``_CROSS_CHECKS``.
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, cast
from urllib.parse import urlsplit

from vmm_cert_exporter.config_file import (
    FIELD_FILE,
    FIELD_ROOT,
    FIELD_SYNTAX,
    MAX_CONFIG_BYTES,
    ConfigError,
    DuplicateKeyError,
    StrictSafeLoader,
    YamlMapping,
    config_dir,
    parse_yaml,
    read_config_text,
)
from vmm_cert_exporter.config_schema import (
    KEY,
    Document,
    Key,
    Located,
    Section,
    Slot,
    read_list,
    sections,
    subsection,
)
from vmm_cert_exporter.config_values import (
    HOSTNAME_RE,
    ROLES,
    choice,
    credential_file,
    duration,
    flag,
    fqdn,
    integer,
    listen_address,
    parse_listen_address,
    read_existing_path,
    read_optional_string,
    read_required_secret,
    read_secret,
    read_string,
    secret,
    validate_fqdn,
)
from vmm_cert_exporter.documents import describe, short
from vmm_cert_exporter.durations import format_duration
from vmm_cert_exporter.receiver.config import (
    DEFAULT_RECEIVER_LISTEN_ADDRESS,
    RECEIVER_MODES,
    WEEKDAYS,
    MaintenanceWindow,
    ReceiverConfig,
)
from vmm_cert_exporter.secrets import Secret

__all__ = [
    "DEFAULT_ENDPOINT",
    "DEFAULT_LISTEN_ADDRESS",
    "DEFAULT_PORT",
    "DEFAULT_RECEIVER_LISTEN_ADDRESS",
    "DEFAULT_TLS_PORT",
    "FIELD_FILE",
    "FIELD_ROOT",
    "FIELD_SYNTAX",
    "MAX_CONFIG_BYTES",
    "METHODS",
    "RECEIVER_MODES",
    "ROLES",
    "TRANSPORTS",
    "WEEKDAYS",
    "CollectionConfig",
    "Config",
    "ConfigError",
    "DuplicateKeyError",
    "HostConfig",
    "MaintenanceWindow",
    "ReceiverConfig",
    "StrictSafeLoader",
    "TlsConfig",
    "VmmServerConfig",
    "WebConfig",
    "WinRMConfig",
    "YamlMapping",
    "check_config_command",
    "load_config",
    "loads_config",
    "parse_listen_address",
    "validate_fqdn",
]

DEFAULT_PORT: Final = 9868
DEFAULT_LISTEN_ADDRESS: Final = f":{DEFAULT_PORT}"
DEFAULT_ENDPOINT: Final = "https://{host}:5986/wsman"
TRANSPORTS: Final = ("ntlm", "kerberos", "basic", "certificate", "credssp")
SERVER_CERT_VALIDATION: Final = ("validate", "ignore")
# Transports that authenticate with username + password (kerberos may, or uses a keytab or a
# ticket cache; certificate a TLS client certificate).
PASSWORD_TRANSPORTS: Final = frozenset({"ntlm", "basic", "credssp"})
# The service class of the computers' SPNs: HTTP/<fqdn> (WinRM's own), WSMAN/<fqdn>.
KERBEROS_SERVICES: Final = ("HTTP", "WSMAN")
TIMEOUT_RANGE: Final = (1.0, 3600.0)
# How a computer is read: its store over WinRM, or the certificate its TLS listener presents
# (sources/tls_probe.py). The TLS probe's own deadline defaults to less than WinRM's.
METHODS: Final = ("winrm", "tls")
DEFAULT_TLS_PORT: Final = 443
DEFAULT_TLS_ADDRESS: Final = "{host}"


# --------------------------------------------------------------------------------------------
# winrm: how every computer is reached


def _read_endpoint(section: Section, slot: Slot) -> str:
    document, at = section.document, section.get(slot.key)
    text = read_string(document, at, slot.default, what="a URL template")
    sample = text.replace("{host}", "host.invalid")
    try:
        parts = urlsplit(sample)
    except ValueError as exc:
        document.fail_at(at, f"expected a URL template such as {DEFAULT_ENDPOINT}: {exc}")
    if parts.username is not None or parts.password is not None:
        # Not echoing the URL: it holds a credential.
        document.fail_at(
            at, "credentials must not be written in the URL; use username and password_file"
        )
    count = text.count("{host}")
    if count != 1:
        document.fail_at(
            at,
            f"expected a URL template containing {{host}} exactly once, such as "
            f"{DEFAULT_ENDPOINT}; got {short(text)} ({count} times)",
        )
    if "{" in sample or "}" in sample:
        document.fail_at(at, f"only {{host}} may appear in braces, got {short(text)}")
    if " " in text:
        document.fail_at(at, f"a URL cannot contain spaces, got {short(text)}")
    if parts.scheme.lower() not in ("http", "https"):
        document.fail_at(at, f"expected an http:// or https:// URL, got {short(text)}")
    if not parts.hostname:
        document.fail_at(at, f"the URL has no host part, got {short(text)}")
    try:
        port = parts.port
    except ValueError as exc:
        document.fail_at(at, f"{exc}, got {short(text)}")
    if port == 0:
        document.fail_at(at, f"port 0 is not a port to connect to, got {short(text)}")
    if parts.fragment or sample.endswith("#"):
        document.fail_at(at, f"a WinRM endpoint has no #fragment, got {short(text)}")
    return text


def _transport_fits_endpoint(section: Section, at: Located, transport: str) -> None:
    scheme = section.value("endpoint").split(":", 1)[0].lower()
    if transport == "basic" and scheme == "http" and not section.value("allow_unencrypted_basic"):
        section.document.fail_at(
            at,
            "basic over a plain http endpoint would send the password to every computer "
            "only base64-encoded, readable by anyone on the network; use an https endpoint, "
            "or ntlm/kerberos (which encrypt the messages), or set "
            "winrm.allow_unencrypted_basic: true to accept that risk",
        )
    if transport == "certificate" and scheme != "https":
        section.document.fail_at(
            at,
            "certificate authentication is a TLS client certificate: it needs an https endpoint",
        )


def _read_username(section: Section, slot: Slot) -> str | None:
    at, transport = section.get(slot.key), section.value("transport")
    if transport == "certificate" and section.has(slot.key):
        section.document.fail_at(
            at, "not used by transport certificate (the certificate is the id)"
        )
    if transport in PASSWORD_TRANSPORTS and not section.has(slot.key):
        section.document.fail_at(
            at, f"required for transport {transport}: expected an account name"
        )
    # kerberos: optional principal; without it the ticket cache's default principal is used.
    return read_optional_string(section.document, at, what="an account name")


def _read_password(section: Section, slot: Slot) -> Secret | None:
    transport = section.value("transport")
    if transport == "kerberos":
        # kinit with the principal's password; otherwise a keytab or a ticket cache
        value = read_secret(section, *slot.keys, what="password")
        if value is not None and not section.has("username"):
            section.fail(
                "username",
                "transport kerberos with a password needs the principal: expected user@REALM",
            )
        return value
    if transport not in PASSWORD_TRANSPORTS:
        given = [section.get(key) for key in slot.keys if section.has(key)]
        if given:
            section.document.fail_at(given[0], f"not used: transport {transport} has no password")
        return None
    return read_required_secret(section, slot, who=f"transport {transport}", what="password")


def _kerberos_only(section: Section, key: str) -> None:
    if section.has(key) and section.value("transport") != "kerberos":
        section.fail(
            key, f"only used by transport kerberos (transport is {section.value('transport')})"
        )


def _read_keytab(section: Section, slot: Slot) -> str | None:
    _kerberos_only(section, slot.key)
    at = section.get(slot.key)
    if at.value is None:
        return None
    if not section.has("username"):
        section.fail("username", "a keytab needs the principal to log on as: expected user@REALM")
    if section.value("password") is not None:
        section.document.fail_at(at, "give the keytab or a password, not both")
    return read_existing_path(section.document, at, what="keytab")


def _read_ccache(section: Section, slot: Slot) -> str | None:
    _kerberos_only(section, slot.key)
    at = section.get(slot.key)
    if at.value is None:
        return None
    if section.value("password") is not None or section.value("keytab_file") is not None:
        section.document.fail_at(
            at,
            "an existing ticket cache is a third way to log on: give only one of "
            "keytab_file, password_file/password_env and kerberos_ccache",
        )
    text = read_string(section.document, at, None, what="a credential cache name")
    # FILE:/path, DIR:/path, KEYRING:..., or a bare path (a FILE cache)
    return text


def _read_hostname_override(section: Section, slot: Slot) -> str | None:
    _kerberos_only(section, slot.key)
    at = section.get(slot.key)
    if at.value is None:
        return None
    text = read_string(section.document, at, None, what="a host name or {host} template")
    sample = text.replace("{host}", "hv01.corp.example")
    if text.count("{host}") > 1 or HOSTNAME_RE.fullmatch(sample) is None:
        section.document.fail_at(
            at,
            "expected the host name of the computers' SPN, optionally with {host} (the "
            f"computer's FQDN) once, e.g. {{host}}.corp.example; got {short(text)}",
        )
    return text


def _read_kerberos_service(section: Section, slot: Slot) -> str:
    _kerberos_only(section, slot.key)
    at = section.get(slot.key)
    text = read_string(section.document, at, slot.default, what="HTTP or WSMAN")
    if text not in KERBEROS_SERVICES:
        section.document.fail_at(
            at, f"expected one of {', '.join(KERBEROS_SERVICES)}; got {short(text)}"
        )
    return text


def _client_certificate(what: str) -> Callable[[Section, Slot], str | None]:
    def read(section: Section, slot: Slot) -> str | None:
        transport = section.value("transport")
        for key in ("cert_pem", "cert_key_pem"):  # both are checked before either is read
            if transport == "certificate" and not section.has(key):
                section.fail(key, "required for transport certificate: expected a PEM file path")
            if transport != "certificate" and section.has(key):
                section.fail(key, f"only used by transport certificate (transport is {transport})")
        if transport != "certificate":
            return None
        return read_existing_path(section.document, section.get(slot.key), what=what)

    return read


def _read_ca_trust_path(section: Section, slot: Slot) -> str | None:
    at = section.get(slot.key)
    if at.value is None:
        return None
    if section.value("server_cert_validation") == "ignore":
        section.document.fail_at(
            at, "server_cert_validation is ignore, so the CA would never be used; remove one"
        )
    return read_existing_path(section.document, at, what="CA bundle", directory_ok=True)


@dataclass(frozen=True)
class WinRMConfig:
    """The ``winrm:`` section: one account and one way to reach every computer."""

    endpoint: str = field(
        default=DEFAULT_ENDPOINT,
        metadata=Key(
            _read_endpoint, "URL template; {host} exactly once is the computer's FQDN", "string"
        ).metadata(),
    )
    transport: str = field(
        default="ntlm",
        metadata=choice(
            "how the account authenticates", TRANSPORTS, checks=(_transport_fits_endpoint,)
        ),
    )
    username: str | None = field(
        default=None,
        metadata=Key(
            _read_username, "the account; required for ntlm, basic, credssp", "string"
        ).metadata(),
    )
    password: Secret | None = field(
        default=None,
        metadata=secret(
            "the account's password, for ntlm, basic, credssp; kerberos: kinit with it",
            what="password",
            read=_read_password,
        ),
    )
    keytab_file: str | None = field(
        default=None,
        metadata=Key(
            _read_keytab,
            "kerberos: the principal's keytab (the recommended way for a service)",
            "path",
            checks=(credential_file,),
        ).metadata(),
    )
    kerberos_ccache: str | None = field(
        default=None,
        metadata=Key(
            _read_ccache, "kerberos: an existing credential cache kept fresh by others", "string"
        ).metadata(),
    )
    kerberos_hostname_override: str | None = field(
        default=None,
        metadata=Key(
            _read_hostname_override,
            "kerberos: the SPN's host name instead of the FQDN ({host} allowed)",
            "string",
        ).metadata(),
    )
    kerberos_service: str = field(
        default="HTTP",
        metadata=Key(
            _read_kerberos_service, "kerberos: the SPN's service class, HTTP or WSMAN", "string"
        ).metadata(),
    )
    cert_pem: str | None = field(
        default=None,
        metadata=Key(
            _client_certificate("client certificate"),
            "client certificate (PEM), transport certificate only",
            "path",
        ).metadata(),
    )
    cert_key_pem: str | None = field(
        default=None,
        metadata=Key(
            _client_certificate("client certificate key"),
            "its private key (PEM), transport certificate only",
            "path",
            checks=(credential_file,),
        ).metadata(),
    )
    server_cert_validation: str = field(
        default="validate",
        metadata=choice("whether the computers' certificates are checked", SERVER_CERT_VALIDATION),
    )
    ca_trust_path: str | None = field(
        default=None,
        metadata=Key(
            _read_ca_trust_path, "CA bundle file or hashed directory to check them with", "path"
        ).metadata(),
    )
    allow_unencrypted_basic: bool = field(
        default=False, metadata=flag("accept transport basic over a plain http endpoint")
    )
    timeout: float = field(
        default=60.0,
        metadata=duration("hard deadline of each WinRM call", *TIMEOUT_RANGE),
    )

    def endpoint_for(self, host: str) -> str:
        """The WinRM URL for ``host`` (plain substitution: the template has ``{host}`` once)."""
        return self.endpoint.replace("{host}", host)

    def kerberos_host(self, host: str) -> str:
        """The host name of ``host``'s SPN: its FQDN unless overridden."""
        override = self.kerberos_hostname_override
        return host if override is None else override.replace("{host}", host)

    @property
    def uses_tls(self) -> bool:
        return self.endpoint.lower().startswith("https:")


# --------------------------------------------------------------------------------------------
# vmm_servers, hosts: the computers


def _discovery_needed(section: Section, at: Located, method: str) -> None:
    if method != "winrm" and not section.value("discover"):
        section.document.fail_at(at, "only used with discover: true (no computers are reported)")


@dataclass(frozen=True)
class VmmServerConfig:
    host: str = field(metadata=fqdn("the VMM management server"))
    discover: bool = field(default=True, metadata=flag("also watch every computer VMM manages"))
    discovered_method: str = field(
        default="winrm",
        metadata=choice(
            "how the computers it reports are read", METHODS, checks=(_discovery_needed,)
        ),
    )


@dataclass(frozen=True)
class HostConfig:
    host: str = field(metadata=fqdn("a computer to watch"))
    role: str = field(default="hyperv_host", metadata=choice("what the computer is", ROLES))
    method: str = field(default="winrm", metadata=choice("how it is read", METHODS))


# --------------------------------------------------------------------------------------------
# collection, web, tls


@dataclass(frozen=True)
class CollectionConfig:
    interval: float = field(
        default=900.0,
        metadata=duration("time between the starts of two refreshes", 10.0, 86400.0),
    )
    concurrency: int = field(
        default=16, metadata=integer("computers read at the same time", 1, 1024)
    )


@dataclass(frozen=True)
class WebConfig:
    listen_address: str = field(
        default=DEFAULT_LISTEN_ADDRESS,
        metadata=listen_address("where /metrics listens (host:port, :port, [ipv6]:port)"),
    )


def _read_tls_address(section: Section, slot: Slot) -> str:
    document, at = section.document, section.get(slot.key)
    address = read_string(document, at, slot.default, what="a host name or IP template")
    if address.count("{host}") > 1:
        document.fail_at(at, f"{{host}} may appear at most once, got {short(address)}")
    sample = address.replace("{host}", "hv01.corp.example")
    literal = sample[1:-1] if sample.startswith("[") and sample.endswith("]") else sample
    try:
        ipaddress.ip_address(literal)
    except ValueError:
        if HOSTNAME_RE.fullmatch(sample) is None or len(sample) > 253:
            document.fail_at(
                at,
                "expected a host name or IP address to connect to, optionally with {host} "
                f"(the computer's FQDN), e.g. {{host}} or {{host}}.mgmt.corp.example; got "
                f"{short(address)} (the port is set with tls.port)",
            )
    else:
        address = literal if "{host}" not in address else address
    return address


@dataclass(frozen=True)
class TlsConfig:
    """The ``tls:`` section: how ``method: tls`` computers are read (sources/tls_probe.py)."""

    address: str = field(
        default=DEFAULT_TLS_ADDRESS,
        metadata=Key(
            _read_tls_address, "where to connect; {host} is the FQDN (also the SNI)", "string"
        ).metadata(),
    )
    port: int = field(default=DEFAULT_TLS_PORT, metadata=integer("the TLS port", 1, 65535))
    timeout: float = field(
        default=10.0,
        metadata=duration("hard deadline per computer: connect + handshake", *TIMEOUT_RANGE),
    )

    def address_for(self, host: str) -> str:
        return self.address.replace("{host}", host)


# --------------------------------------------------------------------------------------------
# The file


@dataclass(frozen=True)
class Config:
    """The whole file. ``path`` is where it was read from; every other field is a section."""

    path: str
    winrm: WinRMConfig = field(
        metadata=subsection(
            WinRMConfig,
            "how every computer is reached",
            required="how to connect to the computers (transport, username, password_file, ...)",
        )
    )
    vmm_servers: tuple[VmmServerConfig, ...] = field(
        default=(), metadata=sections(VmmServerConfig, "VMM management servers")
    )
    hosts: tuple[HostConfig, ...] = field(
        default=(), metadata=sections(HostConfig, "computers watched besides what VMM reports")
    )
    collection: CollectionConfig = field(
        default=CollectionConfig(), metadata=subsection(CollectionConfig, "the refresh loop")
    )
    web: WebConfig = field(default=WebConfig(), metadata=subsection(WebConfig, "HTTP"))
    receiver: ReceiverConfig | None = field(
        default=None, metadata=subsection(ReceiverConfig, "the renewal receiver")
    )
    tls: TlsConfig = field(
        default=TlsConfig(), metadata=subsection(TlsConfig, "the agentless TLS source")
    )

    def summary(self) -> str:
        text = (
            f"{len(self.hosts)} static hosts, {len(self.vmm_servers)} VMM servers, "
            f"interval {format_duration(self.collection.interval)}, "
            f"concurrency {self.collection.concurrency}"
        )
        if self.receiver is not None:
            text += f", receiver in {self.receiver.mode} mode"
        return text


# The top-level sections, in the order they are read: every declared field of Config.
_SECTIONS: Final[dict[str, Key]] = {
    f.name: f.metadata[KEY] for f in dataclasses.fields(Config) if KEY in f.metadata
}


def _check_unique_hosts(document: Document, top: Section, values: Mapping[str, object]) -> None:
    # One computer listed twice would be collected twice and published as duplicate series.
    seen: dict[str, str] = {}
    for name in ("vmm_servers", "hosts"):
        entries = cast(Sequence[VmmServerConfig | HostConfig], values[name])
        items = read_list(document, top.get(name))
        for item, entry in zip(items, entries, strict=True):
            host_at = Section(document, item, cls=type(entry)).get("host")
            first = seen.get(entry.host.lower())
            if first is not None:
                document.fail_at(
                    host_at,
                    f"{entry.host} is listed twice (also at {first}; host names are compared "
                    "case-insensitively)",
                )
            seen[entry.host.lower()] = host_at.path


def _check_some_computers(document: Document, top: Section, values: Mapping[str, object]) -> None:
    if not values["vmm_servers"] and not values["hosts"]:
        document.fail(
            FIELD_ROOT,
            None,
            "no computers to watch: list at least one VMM server under vmm_servers "
            "or one computer under hosts",
        )


_CROSS_CHECKS: Final[tuple[Callable[[Document, Section, Mapping[str, object]], None], ...]] = (
    _check_unique_hosts,
    _check_some_computers,
)


# --------------------------------------------------------------------------------------------
# Loading


def load_config(
    path: str | os.PathLike[str], *, environ: Mapping[str, str] | None = None
) -> Config:
    """Read and validate the configuration file at ``path``; raise ``ConfigError``.

    Relative paths inside the file (``password_file``, ``ca_trust_path``, ...) are resolved
    against the directory of the configuration file. ``environ`` (default ``os.environ``) is
    where ``password_env`` is looked up.
    """
    text = read_config_text(path)
    return loads_config(text, file=os.fspath(path), base_dir=config_dir(path), environ=environ)


def loads_config(
    text: str,
    *,
    file: str = "<string>",
    base_dir: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Validate configuration ``text`` (as if read from ``file``); raise ``ConfigError``."""
    document = Document(
        file=file,
        base_dir=Path(base_dir) if base_dir is not None else Path.cwd(),
        environ=os.environ if environ is None else environ,
    )
    root = parse_yaml(text, file=file)
    if root is None:
        document.fail(
            FIELD_ROOT, None, "the file is empty: expected a mapping with a winrm section"
        )
    if not isinstance(root, YamlMapping):
        document.fail(
            FIELD_ROOT,
            getattr(root, "line", 1),
            f"expected a mapping of sections ({', '.join(_SECTIONS)}), got {describe(root)}",
        )
    top = Section(document, Located(root, FIELD_ROOT, root.line), cls=Config, what="section")
    values: dict[str, Any] = top.values()
    for check in _CROSS_CHECKS:
        check(document, top, values)
    return Config(path=file, **values)


# --------------------------------------------------------------------------------------------
# CLI


def check_config_command(args: argparse.Namespace) -> int:
    """``vmm-cert-exporter check-config --config FILE``: validate, print one line, exit 0/1."""
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    print(f"{config.path}: OK ({config.summary()})")
    return 0
