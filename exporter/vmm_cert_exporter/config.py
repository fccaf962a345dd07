"""The YAML configuration, validated strictly: one clear error or a frozen ``Config``.

Strict means: ``yaml.safe_load`` semantics plus refused duplicate keys, unknown keys refused
everywhere (with the allowed ones listed), no type coercion (``"16"`` is not a number, ``60``
is not a duration), and every cross-field rule checked before anything starts. Every failure
is ONE ``ConfigError`` naming the file, the field path (``winrm.timeout``, ``hosts[3].host``)
and what was expected versus found. Secrets are read here (file or environment) and kept in
``Secret`` objects that never print their value; no error message ever contains one.

Extending: each top-level section is one entry of ``_SECTIONS`` (name -> parser) and one
field of ``Config`` with the same name; rules that span sections are in ``_CROSS_CHECKS``.
A new section (the renewal receiver's ``receiver:``) is one parser, one table entry and one
field; unknown sections stay errors because only table entries are accepted.
"""

from __future__ import annotations

import argparse
import difflib
import ipaddress
import os
import re
import sys
import zoneinfo
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any, Final, NoReturn, cast
from urllib.parse import urlsplit

import yaml
from yaml.constructor import ConstructorError
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from vmm_cert_exporter.durations import EXAMPLES as DURATION_EXAMPLES
from vmm_cert_exporter.durations import format_duration, parse_duration
from vmm_cert_exporter.powershell import validate_params
from vmm_cert_exporter.rules import TRIGGER_ALERTS as DEFAULT_TRIGGER_ALERTS
from vmm_cert_exporter.secrets import (
    Secret,
    SecretError,
    is_env_var_name,
    read_secret_env,
    read_secret_file,
    warn_if_readable_by_others,
)

__all__ = [
    "DEFAULT_ENDPOINT",
    "DEFAULT_LISTEN_ADDRESS",
    "DEFAULT_PORT",
    "DEFAULT_RECEIVER_LISTEN_ADDRESS",
    "DEFAULT_TLS_PORT",
    "METHODS",
    "RECEIVER_MODES",
    "ROLES",
    "TRANSPORTS",
    "CollectionConfig",
    "Config",
    "ConfigError",
    "HostConfig",
    "MaintenanceWindow",
    "ReceiverConfig",
    "StrictSafeLoader",
    "TlsConfig",
    "VmmServerConfig",
    "WebConfig",
    "WinRMConfig",
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
ROLES: Final = ("vmm_server", "hyperv_host", "library_server", "other")
SERVER_CERT_VALIDATION: Final = ("validate", "ignore")
# Transports that authenticate with username + password (kerberos uses the ticket cache,
# certificate a TLS client certificate).
PASSWORD_TRANSPORTS: Final = frozenset({"ntlm", "basic", "credssp"})

# Pseudo field paths for errors that are not about one key.
FIELD_FILE: Final = "(file)"  # the file cannot be read
FIELD_SYNTAX: Final = "(syntax)"  # not YAML
FIELD_ROOT: Final = "(root)"  # the document as a whole

# A configuration file is a few KiB; a huge one is a wrong path (or an attack on the parser).
MAX_CONFIG_BYTES: Final = 1024 * 1024

# The renewal receiver (issue 5): its own port, on loopback unless configured otherwise.
DEFAULT_RECEIVER_PORT: Final = 9869
DEFAULT_RECEIVER_LISTEN_ADDRESS: Final = f"127.0.0.1:{DEFAULT_RECEIVER_PORT}"
DEFAULT_JOURNAL: Final = "/var/lib/vmm-cert-exporter/renewals.sqlite"
RECEIVER_MODES: Final = ("dry-run", "execute")
WEEKDAYS: Final = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
# Roles renewed unless allow_roles says otherwise: "other" is a computer VMM reports with a
# role we do not know, and nothing should be changed on it without someone deciding so.
DEFAULT_ALLOW_ROLES: Final = ("vmm_server", "hyperv_host", "library_server")
# Alerts that a renewal cannot fix: acting on them would renew healthy certificates (a
# collection failure is not a certificate problem) or loop on the receiver's own failure.
NOT_TRIGGERS: Final = (
    "VMMCertificateCollectionFailing",
    "VMMCertificateExporterDown",
    "VMMCertificateExporterStale",
    "VMMCertificateRenewalFailed",
)
_ALERTNAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_GLOB_RE = re.compile(r"[A-Za-z0-9.*?\[\]!-]+")
_CLOCK_RE = re.compile(r"([01][0-9]|2[0-3]):([0-5][0-9])|24:00")
MAX_BODY_RANGE: Final = (1024, 64 * 1024 * 1024)
STEP_TIMEOUT_RANGE: Final = (10.0, 6 * 3600.0)
BACKOFF_RANGE: Final = (1.0, 30 * 86400.0)
COOLDOWN_RANGE: Final = (0.0, 30 * 86400.0)
MIN_VALIDITY_RANGE: Final = (86400.0, 20 * 365 * 86400.0)
# Opt-in pruning of the renewal journal (unset: kept for ever). Also at least ``cooldown``,
# the one guard that reads finished jobs back (checked in _parse_receiver).
JOURNAL_RETENTION_RANGE: Final = (86400.0, 20 * 365 * 86400.0)

TIMEOUT_RANGE: Final = (1.0, 3600.0)
# How a computer is read (issue 6): its store over WinRM, or the certificate its TLS listener
# presents (sources/tls.py). The TLS probe's own deadline defaults to less than WinRM's.
METHODS: Final = ("winrm", "tls")
DEFAULT_TLS_PORT: Final = 443
DEFAULT_TLS_ADDRESS: Final = "{host}"
DEFAULT_TLS_TIMEOUT: Final = 10.0
INTERVAL_RANGE: Final = (10.0, 86400.0)
CONCURRENCY_RANGE: Final = (1, 1024)


# --------------------------------------------------------------------------------------------
# Result


@dataclass(frozen=True)
class WinRMConfig:
    endpoint: str
    transport: str
    username: str | None
    password: Secret | None
    cert_pem: str | None
    cert_key_pem: str | None
    server_cert_validation: str
    ca_trust_path: str | None
    allow_unencrypted_basic: bool
    timeout: float

    def endpoint_for(self, host: str) -> str:
        """The WinRM URL for ``host`` (plain substitution: the template has ``{host}`` once)."""
        return self.endpoint.replace("{host}", host)

    @property
    def uses_tls(self) -> bool:
        return self.endpoint.lower().startswith("https:")


@dataclass(frozen=True)
class VmmServerConfig:
    host: str
    discover: bool = True
    discovered_method: str = "winrm"  # how the computers it reports are read


@dataclass(frozen=True)
class HostConfig:
    host: str
    role: str = "hyperv_host"
    method: str = "winrm"


@dataclass(frozen=True)
class CollectionConfig:
    interval: float = 900.0
    concurrency: int = 16


@dataclass(frozen=True)
class WebConfig:
    listen_address: str = DEFAULT_LISTEN_ADDRESS


@dataclass(frozen=True)
class TlsConfig:
    """The ``tls:`` section: how ``method: tls`` computers are read (sources/tls.py)."""

    address: str = DEFAULT_TLS_ADDRESS  # where to connect; {host} is the FQDN (also the SNI)
    port: int = DEFAULT_TLS_PORT
    timeout: float = DEFAULT_TLS_TIMEOUT  # hard deadline per computer: connect + handshake

    def address_for(self, host: str) -> str:
        return self.address.replace("{host}", host)


@dataclass(frozen=True)
class MaintenanceWindow:
    """Renewals may start on ``weekdays`` between ``start`` and ``end`` (minutes after local
    midnight in ``timezone``). ``end <= start`` wraps past midnight: the window belongs to the
    day it starts on. Weekdays are 0 (Monday) to 6 (Sunday), as ``datetime.weekday()``."""

    weekdays: tuple[int, ...]
    start: int
    end: int
    timezone: str = "UTC"


@dataclass(frozen=True)
class ReceiverConfig:
    """The ``receiver:`` section: the renewal receiver (docs/renewal.md)."""

    run_as_account: str
    listen_address: str = DEFAULT_RECEIVER_LISTEN_ADDRESS
    bearer_token: Secret | None = None
    basic_auth_username: str | None = None
    basic_auth_password: Secret | None = None
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    tls_client_ca_file: str | None = None
    max_request_bytes: int = 1024 * 1024
    mode: str = "dry-run"
    trigger_alerts: tuple[str, ...] = ()
    allow_hosts: tuple[str, ...] = ("*",)
    deny_hosts: tuple[str, ...] = ()
    allow_roles: tuple[str, ...] = DEFAULT_ALLOW_ROLES
    max_concurrent: int = 1
    max_concurrent_per_vmm_server: int = 1
    min_validity: float = 365 * 86400.0
    cooldown: float = 6 * 3600.0
    backoff_initial: float = 3600.0
    backoff_max: float = 32 * 3600.0
    max_attempts: int = 8
    require_approval: bool = False
    maintenance_windows: tuple[MaintenanceWindow, ...] = ()
    pause_file: str | None = None
    journal: str = DEFAULT_JOURNAL
    # None: the journal is never pruned (the default); else finished jobs older than this go
    journal_retention: float | None = None
    step_timeout: float = 600.0

    @property
    def execute(self) -> bool:
        return self.mode == "execute"


@dataclass(frozen=True)
class Config:
    path: str
    winrm: WinRMConfig
    vmm_servers: tuple[VmmServerConfig, ...]
    hosts: tuple[HostConfig, ...]
    collection: CollectionConfig
    web: WebConfig
    receiver: ReceiverConfig | None = None
    tls: TlsConfig = TlsConfig()

    def summary(self) -> str:
        text = (
            f"{len(self.hosts)} static hosts, {len(self.vmm_servers)} VMM servers, "
            f"interval {format_duration(self.collection.interval)}, "
            f"concurrency {self.collection.concurrency}"
        )
        if self.receiver is not None:
            text += f", receiver in {self.receiver.mode} mode"
        return text


class ConfigError(Exception):
    """The one error for a bad configuration: ``str()`` is ``"<file>: <field>: <message>"``.

    ``message`` says what was expected and what was found, and ends with ``(line N)`` when the
    YAML position is known (also in ``line``). It never contains a secret value.
    """

    def __init__(self, file: str, field: str, message: str, line: int | None = None) -> None:
        self.file = file
        self.field = field
        self.line = line
        self.message = message if line is None else f"{message} (line {line})"
        super().__init__(file, field, message, line)

    def __str__(self) -> str:
        return f"{self.file}: {self.field}: {self.message}"


# --------------------------------------------------------------------------------------------
# YAML: safe_load semantics, duplicate keys refused, positions remembered


class YamlMapping(dict[Any, Any]):
    """A YAML mapping that remembers the 1-based line of each key and value."""

    def __init__(self, line: int) -> None:
        super().__init__()
        self.line = line
        self.key_lines: dict[Hashable, int] = {}
        self.value_lines: dict[Hashable, int] = {}


class YamlSequence(list[Any]):
    """A YAML sequence that remembers the 1-based line of each item."""

    def __init__(self, line: int) -> None:
        super().__init__()
        self.line = line
        self.item_lines: list[int] = []


class DuplicateKeyError(ConstructorError):
    def __init__(self, path: str, key: object, first_line: int, node: Node) -> None:
        super().__init__(
            None,
            None,
            f"duplicate key {_short(key)} (first defined on line {first_line})",
            node.start_mark,
        )
        self.path = path
        self.key = key
        self.first_line = first_line
        self.line = node.start_mark.line + 1


class StrictSafeLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that raises ``DuplicateKeyError`` on a repeated mapping key.

    PyYAML silently keeps the last of two equal keys, so a second ``timeout:`` further down
    would win without a word. Construction is depth-first (``deep_construct``) so the loader
    knows the path of the mapping it is building and can name it in the error. Mappings and
    sequences come back as ``YamlMapping``/``YamlSequence`` carrying line numbers. Merge keys
    (``<<: *base``) still work: only keys written explicitly twice are an error.
    """

    def __init__(self, stream: str | bytes) -> None:
        super().__init__(stream)
        self.deep_construct = True
        self._path: list[object] = []

    def construct_object(self, node: Node, deep: bool = False) -> Any:
        if not isinstance(node, ScalarNode):
            return super().construct_object(node, deep)
        try:
            return super().construct_object(node, deep)
        except (ValueError, TypeError, LookupError, AttributeError, ArithmeticError):
            # PyYAML's scalar constructors raise plain Python errors for values that match a
            # type's pattern but are impossible (`2020-13-45`, a 5000-digit integer) or carry
            # an explicit tag they do not fit (`!!int abc`, `!!bool maybe`). Their messages
            # quote the value, so this one does not.
            kind = str(node.tag).rsplit(":", 1)[-1]
            raise ConstructorError(
                None,
                None,
                f"this value cannot be read as {kind} (quote it to make it a string)",
                node.start_mark,
            ) from None

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Hashable, Any]:
        if not isinstance(node, MappingNode):
            raise ConstructorError(
                None, None, f"expected a mapping node, but found {node.id}", node.start_mark
            )
        first_seen: dict[Hashable, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self._construct_key(key_node)
            if key in first_seen:
                raise DuplicateKeyError(
                    _format_path([*self._path, key]), key, first_seen[key], key_node
                )
            first_seen[key] = key_node.start_mark.line + 1
        self.flatten_mapping(node)
        result = YamlMapping(node.start_mark.line + 1)
        for key_node, value_node in node.value:
            key = self._construct_key(key_node)
            self._path.append(key)
            try:
                value = self.construct_object(value_node, deep=True)
            finally:
                self._path.pop()
            result[key] = value
            result.key_lines[key] = key_node.start_mark.line + 1
            result.value_lines[key] = value_node.start_mark.line + 1
        return result

    def construct_sequence(self, node: SequenceNode, deep: bool = False) -> list[Any]:
        if not isinstance(node, SequenceNode):
            raise ConstructorError(
                None, None, f"expected a sequence node, but found {node.id}", node.start_mark
            )
        result = YamlSequence(node.start_mark.line + 1)
        for index, child in enumerate(node.value):
            self._path.append(index)
            try:
                result.append(self.construct_object(child, deep=True))
            finally:
                self._path.pop()
            result.item_lines.append(child.start_mark.line + 1)
        return result

    def _construct_key(self, key_node: Node) -> Hashable:
        key = self.construct_object(key_node, deep=True)
        if not isinstance(key, Hashable) or isinstance(key, list | dict | set):
            raise ConstructorError(
                None, None, "found a mapping key that is not a plain value", key_node.start_mark
            )
        return key


def _construct_map(loader: StrictSafeLoader, node: MappingNode) -> dict[Hashable, Any]:
    return loader.construct_mapping(node)


def _construct_seq(loader: StrictSafeLoader, node: SequenceNode) -> list[Any]:
    return loader.construct_sequence(node)


# The stock constructors are generators that fill the container later, out of path order.
StrictSafeLoader.add_constructor("tag:yaml.org,2002:map", _construct_map)
StrictSafeLoader.add_constructor("tag:yaml.org,2002:seq", _construct_seq)


def _format_path(parts: Iterable[object]) -> str:
    out = ""
    for part in parts:
        if isinstance(part, int) and not isinstance(part, bool):
            out += f"[{part}]"
        else:
            out += f".{_key_text(part)}" if out else _key_text(part)
    return out or FIELD_ROOT


def _key_text(key: object) -> str:
    # Plain keys as they are; anything odd (empty, spaces, not a string) quoted, so that a
    # field path like `collection.'interval '` shows what is wrong with the key.
    if isinstance(key, str) and re.fullmatch(r"[A-Za-z0-9_-]+", key):
        return key
    return _short(key)


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
    display = os.fspath(path)
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(display, FIELD_FILE, "the file does not exist") from None
    except IsADirectoryError:
        raise ConfigError(display, FIELD_FILE, "expected a file, found a directory") from None
    except PermissionError:
        raise ConfigError(display, FIELD_FILE, "permission denied reading the file") from None
    except OSError as exc:
        raise ConfigError(display, FIELD_FILE, f"cannot read the file: {exc.strerror}") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(
            display, FIELD_FILE, f"larger than {MAX_CONFIG_BYTES} bytes: not a configuration file"
        )
    try:
        # utf-8-sig: a byte order mark (Notepad) is harmless; other encodings are refused.
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            display, FIELD_FILE, f"not valid UTF-8 (byte offset {exc.start})"
        ) from None
    base_dir = Path(os.path.abspath(display)).parent
    return loads_config(text, file=display, base_dir=base_dir, environ=environ)


def loads_config(
    text: str,
    *,
    file: str = "<string>",
    base_dir: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Validate configuration ``text`` (as if read from ``file``); raise ``ConfigError``."""
    ctx = _Ctx(
        file=file,
        base_dir=Path(base_dir) if base_dir is not None else Path.cwd(),
        environ=os.environ if environ is None else environ,
    )
    root = _parse_yaml(ctx, text)
    if root is None:
        ctx.fail(FIELD_ROOT, None, "the file is empty: expected a mapping with a winrm section")
    if not isinstance(root, YamlMapping):
        ctx.fail(
            FIELD_ROOT,
            getattr(root, "line", 1),
            f"expected a mapping of sections ({', '.join(_SECTIONS)}), got {_describe(root)}",
        )
    top = _Map(ctx, _At(root, FIELD_ROOT, root.line), allowed=_SECTIONS, what="section")
    values: dict[str, object] = {}
    for name, spec in _SECTIONS.items():
        at = top.get(name)
        if spec.required and at.value is None:
            ctx.fail(name, None, f"required section is missing: {spec.hint}")
        values[name] = spec.parse(ctx, at)
    for check in _CROSS_CHECKS:
        check(ctx, top, values)
    return Config(path=file, **cast(dict[str, Any], values))


def _parse_yaml(ctx: _Ctx, text: str) -> object:
    try:
        loader = StrictSafeLoader(text)
        try:
            return loader.get_single_data()
        finally:
            loader.dispose()
    except DuplicateKeyError as exc:
        ctx.fail(exc.path, exc.line, str(exc.problem))
    except yaml.MarkedYAMLError as exc:
        # Built from problem/context only: str(exc) would quote the offending source line,
        # and a misplaced secret could be on it.
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        what = " ".join(p for p in (exc.context, exc.problem) if p)
        column = f" at column {mark.column + 1}" if mark is not None else ""
        ctx.fail(FIELD_SYNTAX, line, f"not valid YAML: {what or 'syntax error'}{column}".strip())
    except yaml.YAMLError:
        ctx.fail(FIELD_SYNTAX, None, "not valid YAML")
    except RecursionError:
        ctx.fail(FIELD_SYNTAX, None, "not valid YAML: nested too deeply")


# --------------------------------------------------------------------------------------------
# Validation helpers


@dataclass(frozen=True)
class _Ctx:
    file: str
    base_dir: Path
    environ: Mapping[str, str]

    def fail(self, field: str, line: int | None, message: str) -> NoReturn:
        raise ConfigError(self.file, field, message, line)

    def fail_at(self, at: _At, message: str) -> NoReturn:
        raise ConfigError(self.file, at.path, message, at.line)


@dataclass(frozen=True)
class _At:
    """A value and where it is: its field path and YAML line (``None`` value = absent)."""

    value: object
    path: str
    line: int | None


class _Map:
    """One YAML mapping under validation; unknown keys are refused on construction."""

    def __init__(
        self, ctx: _Ctx, at: _At, allowed: Iterable[str], what: str = "key", null_ok: bool = True
    ) -> None:
        self.ctx = ctx
        self.at = at
        allowed = list(allowed)
        if at.value is None and null_ok:
            # `collection:` with nothing under it is YAML null: the same as leaving it out.
            self.data: Mapping[Any, Any] = {}
            return
        if not isinstance(at.value, dict):
            ctx.fail_at(at, f"expected a mapping, got {_describe(at.value)}")
        self.data = at.value
        for key in self.data:
            if not isinstance(key, str) or key not in allowed:
                hint = ""
                if isinstance(key, str):
                    close = difflib.get_close_matches(key, allowed, n=1)
                    hint = f" (did you mean {close[0]!r}?)" if close else ""
                    if key in ("password", "token", "bearer_token"):
                        hint += (
                            f"; secrets are never written in the file: use {key}_file or {key}_env"
                        )
                # The value under an unknown key is never echoed: it may be a pasted secret.
                self.ctx.fail(
                    self.child_path(key),
                    self._key_line(key),
                    f"unknown {what} {_short(key)}{hint}; allowed: {', '.join(allowed)}",
                )

    def child_path(self, key: object) -> str:
        if self.at.path == FIELD_ROOT:
            return _key_text(key)
        return f"{self.at.path}.{_key_text(key)}"

    def _key_line(self, key: object) -> int | None:
        if isinstance(self.data, YamlMapping):
            return self.data.key_lines.get(key)
        return self.at.line

    def get(self, key: str) -> _At:
        line = None
        if isinstance(self.data, YamlMapping):
            line = self.data.value_lines.get(key)
        return _At(self.data.get(key), self.child_path(key), line if line else self.at.line)

    def has(self, key: str) -> bool:
        return self.data.get(key) is not None


def _describe(value: object, *, redact: bool = False) -> str:
    """What was found, in YAML words (never the contents of a mapping or list).

    ``redact`` names only the type, for keys where a pasted secret is a likely mistake.
    """
    if redact and value is not None:
        if isinstance(value, bool):
            return "a boolean"
        if isinstance(value, int | float):
            return "a number"
        if isinstance(value, str):
            return "an empty string" if value.strip() == "" else "a string"
    if value is None:
        return "null (nothing)"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, int):
        return f"the integer {value}"
    if isinstance(value, float):
        return f"the number {value}"
    if isinstance(value, str):
        return f"the string {_short(value)}"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, datetime | date):
        return f"a date/time ({value.isoformat()}); quote it to make it a string"
    if isinstance(value, bytes):
        return "binary data"
    return f"a {type(value).__name__}"


def _short(value: object, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 4] + "...'"


def _string(ctx: _Ctx, at: _At, default: str | None = None, *, what: str = "a string") -> str:
    if at.value is None:
        if default is None:
            ctx.fail_at(at, f"required: expected {what}")
        return default
    if not isinstance(at.value, str):
        ctx.fail_at(at, f"expected {what}, got {_describe(at.value)}")
    if at.value.strip() == "":
        ctx.fail_at(at, f"expected {what}, got an empty string")
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in at.value):
        ctx.fail_at(at, f"expected {what}, got a string with control characters")
    return at.value


def _optional_string(ctx: _Ctx, at: _At, *, what: str = "a string") -> str | None:
    return None if at.value is None else _string(ctx, at, what=what)


def _bool(ctx: _Ctx, at: _At, default: bool) -> bool:
    if at.value is None:
        return default
    if not isinstance(at.value, bool):
        ctx.fail_at(at, f"expected true or false, got {_describe(at.value)}")
    return at.value


def _int(ctx: _Ctx, at: _At, default: int, low: int, high: int) -> int:
    if at.value is None:
        return default
    # bool is an int in Python; `concurrency: yes` must not become 1.
    if isinstance(at.value, bool) or not isinstance(at.value, int):
        ctx.fail_at(at, f"expected an integer from {low} to {high}, got {_describe(at.value)}")
    if not low <= at.value <= high:
        ctx.fail_at(at, f"expected an integer from {low} to {high}, got {at.value}")
    return at.value


def _choice(ctx: _Ctx, at: _At, choices: Sequence[str], default: str) -> str:
    if at.value is None:
        return default
    if not isinstance(at.value, str) or at.value not in choices:
        ctx.fail_at(at, f"expected one of {', '.join(choices)}; got {_describe(at.value)}")
    return at.value


def _duration(ctx: _Ctx, at: _At, default: float, low: float, high: float) -> float:
    if at.value is None:
        return default
    bounds = f"between {format_duration(low)} and {format_duration(high)}"
    if isinstance(at.value, bool) or not isinstance(at.value, str):
        extra = ""
        if isinstance(at.value, int | float) and not isinstance(at.value, bool):
            extra = (
                f"; bare numbers are not durations (as in Prometheus): add a unit, e.g. {at.value}s"
            )
        ctx.fail_at(
            at,
            f"expected a duration {bounds} such as {DURATION_EXAMPLES}, "
            f"got {_describe(at.value)}{extra}",
        )
    try:
        seconds = parse_duration(at.value)
    except ValueError as exc:
        ctx.fail_at(at, f"expected a duration {bounds}: {exc}")
    if not low <= seconds <= high:
        ctx.fail_at(at, f"expected a duration {bounds}, got {at.value}")
    return seconds


def _list(ctx: _Ctx, at: _At) -> list[_At]:
    if at.value is None:
        return []
    if not isinstance(at.value, list):
        ctx.fail_at(at, f"expected a list, got {_describe(at.value)}")
    lines = at.value.item_lines if isinstance(at.value, YamlSequence) else []
    return [
        _At(item, f"{at.path}[{i}]", lines[i] if i < len(lines) else at.line)
        for i, item in enumerate(at.value)
    ]


def _path(ctx: _Ctx, at: _At, *, what: str, directory_ok: bool = False) -> str:
    """A path that must exist now; relative paths are relative to the config file."""
    text = _string(ctx, at, what=f"the path of {what}")
    path = Path(text).expanduser()
    if not path.is_absolute():
        path = ctx.base_dir / path
    try:
        exists = path.exists()
        is_file = path.is_file()
        is_dir = path.is_dir()
    except OSError:
        ctx.fail_at(at, f"{what} {path} cannot be examined")
    if not exists:
        ctx.fail_at(at, f"{what} {path} does not exist")
    if not is_file and not (directory_ok and is_dir):
        kind = "a file or directory" if directory_ok else "a file"
        ctx.fail_at(at, f"{what} {path} is not {kind}")
    if not os.access(path, os.R_OK):
        ctx.fail_at(at, f"{what} {path} is not readable by this process")
    return str(path)


_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_FQDN_RE = re.compile(rf"{_LABEL}(?:\.{_LABEL})+")
_HOSTNAME_RE = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")


def validate_fqdn(name: str) -> str:
    """Return ``name`` (spelled as given) if it is a fully qualified DNS name, else ValueError.

    ASCII letters, digits and hyphens in dot-separated labels of at most 63 characters, at
    least two labels, at most 253 characters, no trailing dot, and a last label that is not
    all digits (an IP address is not an FQDN; VMM names computers by FQDN). These names go
    into URLs and metric labels, so anything else is refused early. The spelling is kept
    (it becomes the ``host`` label); compare names with ``.lower()``.
    """
    if not isinstance(name, str):
        raise ValueError(f"expected a host name, got {_describe(name)}")
    bad = next((ch for ch in name if not (ch.isascii() and (ch.isalnum() or ch in ".-"))), None)
    if bad is not None:
        where = "non-ASCII character" if not bad.isascii() else "character"
        raise ValueError(
            f"expected a fully qualified host name (letters, digits, hyphens and dots), "
            f"got {_short(name)}: {where} {bad!r} is not allowed in a host name"
            + ("; write internationalised names in punycode (xn--...)" if not bad.isascii() else "")
        )
    if len(name) > 253:
        raise ValueError(f"host name is longer than 253 characters ({len(name)})")
    if _FQDN_RE.fullmatch(name) is None:
        if "." not in name.strip("."):
            reason = "it is not fully qualified (expected a name like hv01.corp.example)"
        elif name.endswith("."):
            reason = "drop the trailing dot"
        else:
            reason = (
                "each dot-separated label must be 1-63 letters, digits or hyphens, "
                "not starting or ending with a hyphen"
            )
        raise ValueError(f"{_short(name)} is not a valid FQDN: {reason}")
    if name.rsplit(".", 1)[1].isdigit():
        raise ValueError(
            f"{_short(name)} looks like an IP address: VMM identifies computers by FQDN"
        )
    return name


def _fqdn(ctx: _Ctx, at: _At) -> str:
    text = _string(ctx, at, what="a fully qualified host name")
    try:
        return validate_fqdn(text)
    except ValueError as exc:
        ctx.fail_at(at, str(exc))


def parse_listen_address(text: str) -> tuple[str, int]:
    """Parse ``host:port``, ``:port`` (all interfaces) or ``[ipv6]:port``; raise ValueError.

    Returns ``(host, port)`` with ``host == ""`` for all interfaces and IPv6 without brackets.
    Port 0 is accepted and means "any free port" (useful in tests).
    """
    if not isinstance(text, str) or ":" not in text:
        raise ValueError(
            f"expected host:port or :port (e.g. {DEFAULT_LISTEN_ADDRESS}), got {_short(text)}"
        )
    host, _, port_text = text.rpartition(":")
    if not port_text.isascii() or not port_text.isdigit() or len(port_text) > 5:
        raise ValueError(f"expected a port number from 0 to 65535 after ':', got {port_text!r}")
    port = int(port_text)
    if port > 65535:
        raise ValueError(f"expected a port number from 0 to 65535, got {port}")
    if host.startswith("[") and host.endswith("]"):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise ValueError(f"{host!r} is not an IPv6 address") from None
        return host[1:-1], port
    if ":" in host:
        raise ValueError(f"an IPv6 address must be in brackets, e.g. [::1]:{port}")
    if host and _HOSTNAME_RE.fullmatch(host) is None:
        raise ValueError(f"{_short(host)} is not a host name or IP address")
    return host, port


# --------------------------------------------------------------------------------------------
# Sections


def _parse_winrm(ctx: _Ctx, at: _At) -> WinRMConfig:
    section = _Map(
        ctx,
        at,
        allowed=(
            "endpoint",
            "transport",
            "username",
            "password_file",
            "password_env",
            "cert_pem",
            "cert_key_pem",
            "server_cert_validation",
            "ca_trust_path",
            "allow_unencrypted_basic",
            "timeout",
        ),
        null_ok=False,
    )
    endpoint = _endpoint(ctx, section.get("endpoint"))
    scheme = endpoint.split(":", 1)[0].lower()
    transport_at = section.get("transport")
    transport = _choice(ctx, transport_at, TRANSPORTS, "ntlm")
    allow_basic = _bool(ctx, section.get("allow_unencrypted_basic"), False)
    if transport == "basic" and scheme == "http" and not allow_basic:
        ctx.fail_at(
            transport_at,
            "basic over a plain http endpoint would send the password to every computer "
            "only base64-encoded, readable by anyone on the network; use an https endpoint, "
            "or ntlm/kerberos (which encrypt the messages), or set "
            "winrm.allow_unencrypted_basic: true to accept that risk",
        )
    if transport == "certificate" and scheme != "https":
        ctx.fail_at(
            transport_at,
            "certificate authentication is a TLS client certificate: it needs an https endpoint",
        )

    username_at = section.get("username")
    needs_password = transport in PASSWORD_TRANSPORTS
    if transport == "certificate" and section.has("username"):
        ctx.fail_at(username_at, "not used by transport certificate (the certificate is the id)")
    if needs_password and not section.has("username"):
        ctx.fail_at(username_at, f"required for transport {transport}: expected an account name")
    # kerberos: optional principal; without it the ticket cache's default principal is used.
    username = _optional_string(ctx, username_at, what="an account name")

    password = _password(ctx, section, transport, needs_password)

    cert_pem = cert_key_pem = None
    for key in ("cert_pem", "cert_key_pem"):
        key_at = section.get(key)
        if transport == "certificate":
            if key_at.value is None:
                ctx.fail_at(key_at, "required for transport certificate: expected a PEM file path")
        elif key_at.value is not None:
            ctx.fail_at(key_at, f"only used by transport certificate (transport is {transport})")
    if transport == "certificate":
        cert_pem = _path(ctx, section.get("cert_pem"), what="client certificate")
        cert_key_pem = _path(ctx, section.get("cert_key_pem"), what="client certificate key")
        # The key is a credential: same warning as a password file.
        warn_if_readable_by_others(cert_key_pem)

    validation_at = section.get("server_cert_validation")
    validation = _choice(ctx, validation_at, SERVER_CERT_VALIDATION, "validate")
    ca_at = section.get("ca_trust_path")
    ca_trust_path = None
    if ca_at.value is not None:
        if validation == "ignore":
            ctx.fail_at(
                ca_at,
                "server_cert_validation is ignore, so the CA would never be used; remove one",
            )
        ca_trust_path = _path(ctx, ca_at, what="CA bundle", directory_ok=True)

    timeout = _duration(ctx, section.get("timeout"), 60.0, *TIMEOUT_RANGE)
    return WinRMConfig(
        endpoint=endpoint,
        transport=transport,
        username=username,
        password=password,
        cert_pem=cert_pem,
        cert_key_pem=cert_key_pem,
        server_cert_validation=validation,
        ca_trust_path=ca_trust_path,
        allow_unencrypted_basic=allow_basic,
        timeout=timeout,
    )


def _endpoint(ctx: _Ctx, at: _At) -> str:
    text = _string(ctx, at, DEFAULT_ENDPOINT, what="a URL template")
    sample = text.replace("{host}", "host.invalid")
    try:
        parts = urlsplit(sample)
    except ValueError as exc:
        ctx.fail_at(at, f"expected a URL template such as {DEFAULT_ENDPOINT}: {exc}")
    if parts.username is not None or parts.password is not None:
        # Not echoing the URL: it holds a credential.
        ctx.fail_at(
            at, "credentials must not be written in the URL; use username and password_file"
        )
    count = text.count("{host}")
    if count != 1:
        ctx.fail_at(
            at,
            f"expected a URL template containing {{host}} exactly once, such as "
            f"{DEFAULT_ENDPOINT}; got {_short(text)} ({count} times)",
        )
    if "{" in sample or "}" in sample:
        ctx.fail_at(at, f"only {{host}} may appear in braces, got {_short(text)}")
    if " " in text:
        ctx.fail_at(at, f"a URL cannot contain spaces, got {_short(text)}")
    if parts.scheme.lower() not in ("http", "https"):
        ctx.fail_at(at, f"expected an http:// or https:// URL, got {_short(text)}")
    if not parts.hostname:
        ctx.fail_at(at, f"the URL has no host part, got {_short(text)}")
    try:
        port = parts.port
    except ValueError as exc:
        ctx.fail_at(at, f"{exc}, got {_short(text)}")
    if port == 0:
        ctx.fail_at(at, f"port 0 is not a port to connect to, got {_short(text)}")
    if parts.fragment or sample.endswith("#"):
        ctx.fail_at(at, f"a WinRM endpoint has no #fragment, got {_short(text)}")
    return text


def _password(ctx: _Ctx, section: _Map, transport: str, needed: bool) -> Secret | None:
    file_at, env_at = section.get("password_file"), section.get("password_env")
    given = [a for a in (file_at, env_at) if a.value is not None]
    if not needed:
        if given:
            why = "uses the Kerberos ticket cache" if transport == "kerberos" else "has no password"
            ctx.fail_at(given[0], f"not used: transport {transport} {why}")
        return None
    if len(given) == 2:
        ctx.fail_at(env_at, "give exactly one of password_file and password_env, not both")
    if not given:
        ctx.fail(
            f"{section.at.path}.password_file",
            section.at.line,
            f"transport {transport} needs a password: set password_file (a file holding only "
            "the password) or password_env (the name of an environment variable)",
        )
    # Values under these two keys are never echoed (type errors included): the commonest
    # mistake is pasting the password itself where its file or variable name belongs.
    if file_at.value is not None:
        raw = file_at.value
        if not isinstance(raw, str) or raw.strip() == "":
            ctx.fail_at(
                file_at,
                "expected the path of a file holding only the password, "
                f"got {_describe(raw, redact=True)}",
            )
        path = Path(raw).expanduser()
        note = ""
        if not path.is_absolute():
            path = ctx.base_dir / path
            note = (
                f" (relative paths are resolved from the configuration's directory {ctx.base_dir})"
            )
        try:
            return read_secret_file(path)
        except SecretError as exc:
            ctx.fail_at(file_at, f"the password file {exc}{note}")
    name = env_at.value
    if not isinstance(name, str) or not is_env_var_name(name):
        ctx.fail_at(
            env_at,
            "expected the NAME of an environment variable holding the password (letters, "
            f"digits, underscores; not the password itself), got {_describe(name, redact=True)}",
        )
    try:
        return read_secret_env(name, ctx.environ)
    except SecretError as exc:
        ctx.fail_at(env_at, f"the environment variable named here {exc}")


def _parse_server_list(ctx: _Ctx, at: _At) -> tuple[VmmServerConfig, ...]:
    servers = []
    for item in _list(ctx, at):
        entry = _Map(ctx, item, allowed=("host", "discover", "discovered_method"), null_ok=False)
        discover = _bool(ctx, entry.get("discover"), True)
        method_at = entry.get("discovered_method")
        method = _choice(ctx, method_at, METHODS, "winrm")
        if method != "winrm" and not discover:
            ctx.fail_at(method_at, "only used with discover: true (no computers are reported)")
        servers.append(
            VmmServerConfig(
                host=_fqdn(ctx, entry.get("host")),
                discover=discover,
                discovered_method=method,
            )
        )
    return tuple(servers)


def _parse_hosts(ctx: _Ctx, at: _At) -> tuple[HostConfig, ...]:
    hosts = []
    for item in _list(ctx, at):
        entry = _Map(ctx, item, allowed=("host", "role", "method"), null_ok=False)
        hosts.append(
            HostConfig(
                host=_fqdn(ctx, entry.get("host")),
                role=_choice(ctx, entry.get("role"), ROLES, "hyperv_host"),
                method=_choice(ctx, entry.get("method"), METHODS, "winrm"),
            )
        )
    return tuple(hosts)


def _parse_collection(ctx: _Ctx, at: _At) -> CollectionConfig:
    section = _Map(ctx, at, allowed=("interval", "concurrency"))
    return CollectionConfig(
        interval=_duration(ctx, section.get("interval"), 900.0, *INTERVAL_RANGE),
        concurrency=_int(ctx, section.get("concurrency"), 16, *CONCURRENCY_RANGE),
    )


def _parse_web(ctx: _Ctx, at: _At) -> WebConfig:
    section = _Map(ctx, at, allowed=("listen_address",))
    address_at = section.get("listen_address")
    address = _string(ctx, address_at, DEFAULT_LISTEN_ADDRESS, what="host:port")
    try:
        parse_listen_address(address)
    except ValueError as exc:
        ctx.fail_at(address_at, str(exc))
    return WebConfig(listen_address=address)


def _parse_tls(ctx: _Ctx, at: _At) -> TlsConfig:
    # the agentless TLS source (issue 6): used by computers with method: tls
    section = _Map(ctx, at, allowed=("address", "port", "timeout"))
    address_at = section.get("address")
    address = _string(ctx, address_at, DEFAULT_TLS_ADDRESS, what="a host name or IP template")
    if address.count("{host}") > 1:
        ctx.fail_at(address_at, f"{{host}} may appear at most once, got {_short(address)}")
    sample = address.replace("{host}", "hv01.corp.example")
    literal = sample[1:-1] if sample.startswith("[") and sample.endswith("]") else sample
    try:
        ipaddress.ip_address(literal)
    except ValueError:
        if _HOSTNAME_RE.fullmatch(sample) is None or len(sample) > 253:
            ctx.fail_at(
                address_at,
                "expected a host name or IP address to connect to, optionally with {host} "
                f"(the computer's FQDN), e.g. {{host}} or {{host}}.mgmt.corp.example; got "
                f"{_short(address)} (the port is set with tls.port)",
            )
    else:
        address = literal if "{host}" not in address else address
    return TlsConfig(
        address=address,
        port=_int(ctx, section.get("port"), DEFAULT_TLS_PORT, 1, 65535),
        timeout=_duration(ctx, section.get("timeout"), DEFAULT_TLS_TIMEOUT, *TIMEOUT_RANGE),
    )


# --------------------------------------------------------------------------------------------
# receiver: the renewal receiver (issue 5, docs/renewal.md)

_RECEIVER_KEYS: Final = (
    "listen_address",
    "bearer_token_file",
    "bearer_token_env",
    "basic_auth",
    "tls",
    "max_request_bytes",
    "mode",
    "run_as_account",
    "trigger_alerts",
    "allow_hosts",
    "deny_hosts",
    "allow_roles",
    "max_concurrent",
    "max_concurrent_per_vmm_server",
    "min_validity",
    "cooldown",
    "backoff_initial",
    "backoff_max",
    "max_attempts",
    "require_approval",
    "maintenance_windows",
    "pause_file",
    "journal",
    "journal_retention",
    "step_timeout",
)


def _parse_receiver(ctx: _Ctx, at: _At) -> ReceiverConfig | None:
    # `receiver:` with nothing under it is YAML null: no receiver, like a missing section
    # (the receiver command then says the section is needed).
    if at.value is None:
        return None
    section = _Map(ctx, at, allowed=_RECEIVER_KEYS, null_ok=False)

    address_at = section.get("listen_address")
    address = _string(ctx, address_at, DEFAULT_RECEIVER_LISTEN_ADDRESS, what="host:port")
    try:
        parse_listen_address(address)
    except ValueError as exc:
        ctx.fail_at(address_at, str(exc))

    bearer = _secret(ctx, section, "bearer_token_file", "bearer_token_env", what="bearer token")
    basic_user, basic_password = _basic_auth(ctx, section.get("basic_auth"))
    if bearer is None and basic_user is None:
        ctx.fail(
            f"{at.path}.bearer_token_file",
            section.at.line,
            "the receiver changes production hosts and never runs without authentication: "
            "set bearer_token_file (or bearer_token_env) and/or basic_auth, and give "
            "Alertmanager's webhook http_config the same credentials",
        )
    tls_cert, tls_key, tls_ca = _receiver_tls(ctx, section.get("tls"))

    run_as_at = section.get("run_as_account")
    run_as = _string(ctx, run_as_at, what="the name of a VMM Run As account")
    try:
        validate_params(
            "register-managed-computer",
            {"computer": "host.invalid", "run_as_account": run_as},
        )
    except ValueError as exc:
        ctx.fail_at(run_as_at, str(exc).split(": ", 2)[-1])

    mode = _choice(ctx, section.get("mode"), RECEIVER_MODES, "dry-run")
    triggers = _alert_names(ctx, section.get("trigger_alerts"))
    allow_hosts = _globs(ctx, section.get("allow_hosts"), ("*",))
    deny_hosts = _globs(ctx, section.get("deny_hosts"), ())
    allow_roles = _roles(ctx, section.get("allow_roles"))

    max_concurrent = _int(ctx, section.get("max_concurrent"), 1, 1, 64)
    per_server_at = section.get("max_concurrent_per_vmm_server")
    per_server = _int(ctx, per_server_at, min(max_concurrent, 1), 1, 64)
    if per_server > max_concurrent:
        ctx.fail_at(
            per_server_at,
            f"cannot exceed max_concurrent ({max_concurrent}), the limit over all VMM servers",
        )
    backoff_initial = _duration(ctx, section.get("backoff_initial"), 3600.0, *BACKOFF_RANGE)
    backoff_max_at = section.get("backoff_max")
    backoff_max = _duration(ctx, backoff_max_at, 32 * 3600.0, *BACKOFF_RANGE)
    if backoff_max < backoff_initial:
        ctx.fail_at(
            backoff_max_at,
            f"must be at least backoff_initial ({format_duration(backoff_initial)}): the delay "
            "doubles from backoff_initial up to backoff_max",
        )
    min_validity = _duration(ctx, section.get("min_validity"), 365 * 86400.0, *MIN_VALIDITY_RANGE)
    cooldown = _duration(ctx, section.get("cooldown"), 6 * 3600.0, *COOLDOWN_RANGE)
    retention_at = section.get("journal_retention")
    retention = (
        None
        if retention_at.value is None
        else _duration(ctx, retention_at, 0.0, *JOURNAL_RETENTION_RANGE)
    )
    if retention is not None and retention < cooldown:
        ctx.fail_at(
            retention_at,
            f"journal_retention ({format_duration(retention)}) must be at least cooldown "
            f"({format_duration(cooldown)}): the cooldown looks that far back in the journal "
            "for a host's last renewal, so a shorter retention would let a host be renewed "
            "again too soon",
        )
    journal_at = section.get("journal")
    return ReceiverConfig(
        run_as_account=run_as,
        listen_address=address,
        bearer_token=bearer,
        basic_auth_username=basic_user,
        basic_auth_password=basic_password,
        tls_cert_file=tls_cert,
        tls_key_file=tls_key,
        tls_client_ca_file=tls_ca,
        max_request_bytes=_int(ctx, section.get("max_request_bytes"), 1024 * 1024, *MAX_BODY_RANGE),
        mode=mode,
        trigger_alerts=triggers,
        allow_hosts=allow_hosts,
        deny_hosts=deny_hosts,
        allow_roles=allow_roles,
        max_concurrent=max_concurrent,
        max_concurrent_per_vmm_server=per_server,
        min_validity=min_validity,
        cooldown=cooldown,
        backoff_initial=backoff_initial,
        backoff_max=backoff_max,
        max_attempts=_int(ctx, section.get("max_attempts"), 8, 1, 100),
        require_approval=_bool(ctx, section.get("require_approval"), False),
        maintenance_windows=_windows(ctx, section.get("maintenance_windows")),
        pause_file=_optional_new_file(ctx, section.get("pause_file"), what="pause file"),
        journal=_new_file(ctx, journal_at, DEFAULT_JOURNAL, what="journal"),
        journal_retention=retention,
        step_timeout=_duration(ctx, section.get("step_timeout"), 600.0, *STEP_TIMEOUT_RANGE),
    )


def _secret(ctx: _Ctx, section: _Map, file_key: str, env_key: str, *, what: str) -> Secret | None:
    """An optional secret from ``file_key`` (a path) or ``env_key`` (a variable name).

    Like the WinRM password: values under these keys are never echoed in errors.
    """
    file_at, env_at = section.get(file_key), section.get(env_key)
    if file_at.value is not None and env_at.value is not None:
        ctx.fail_at(env_at, f"give exactly one of {file_key} and {env_key}, not both")
    if file_at.value is not None:
        raw = file_at.value
        if not isinstance(raw, str) or raw.strip() == "":
            ctx.fail_at(
                file_at,
                f"expected the path of a file holding only the {what}, "
                f"got {_describe(raw, redact=True)}",
            )
        path = Path(raw).expanduser()
        note = ""
        if not path.is_absolute():
            path = ctx.base_dir / path
            note = (
                f" (relative paths are resolved from the configuration's directory {ctx.base_dir})"
            )
        try:
            return read_secret_file(path)
        except SecretError as exc:
            ctx.fail_at(file_at, f"the {what} file {exc}{note}")
    if env_at.value is not None:
        name = env_at.value
        if not isinstance(name, str) or not is_env_var_name(name):
            ctx.fail_at(
                env_at,
                f"expected the NAME of an environment variable holding the {what} (letters, "
                f"digits, underscores; not the {what} itself), got {_describe(name, redact=True)}",
            )
        try:
            return read_secret_env(name, ctx.environ)
        except SecretError as exc:
            ctx.fail_at(env_at, f"the environment variable named here {exc}")
    return None


def _basic_auth(ctx: _Ctx, at: _At) -> tuple[str | None, Secret | None]:
    if at.value is None:
        return None, None
    section = _Map(ctx, at, allowed=("username", "password_file", "password_env"), null_ok=False)
    username_at = section.get("username")
    username = _string(ctx, username_at, what="the user name Alertmanager sends")
    if ":" in username:
        # RFC 7617: the user-id cannot contain a colon (it separates user and password).
        ctx.fail_at(username_at, "a basic auth user name cannot contain ':'")
    password = _secret(ctx, section, "password_file", "password_env", what="password")
    if password is None:
        ctx.fail(
            f"{at.path}.password_file",
            at.line,
            "basic_auth needs a password: set password_file (a file holding only the "
            "password) or password_env (the name of an environment variable)",
        )
    return username, password


def _receiver_tls(ctx: _Ctx, at: _At) -> tuple[str | None, str | None, str | None]:
    if at.value is None:
        return None, None, None
    section = _Map(ctx, at, allowed=("cert_file", "key_file", "client_ca_file"), null_ok=False)
    for key in ("cert_file", "key_file"):
        if not section.has(key):
            ctx.fail_at(section.get(key), "required when tls is set: expected a PEM file path")
    cert = _path(ctx, section.get("cert_file"), what="TLS certificate")
    key = _path(ctx, section.get("key_file"), what="TLS private key")
    warn_if_readable_by_others(key)
    ca_at = section.get("client_ca_file")
    ca = None if ca_at.value is None else _path(ctx, ca_at, what="client CA bundle")
    return cert, key, ca


def _alert_names(ctx: _Ctx, at: _At) -> tuple[str, ...]:
    if at.value is None:
        return tuple(DEFAULT_TRIGGER_ALERTS)
    items = _list(ctx, at)
    if not items:
        ctx.fail_at(at, "expected at least one alert name (leave the key out for the default)")
    names: list[str] = []
    for item in items:
        name = _string(ctx, item, what="an alert name")
        if _ALERTNAME_RE.fullmatch(name) is None:
            ctx.fail_at(item, f"expected an alert name (letters, digits, _), got {_short(name)}")
        if name in NOT_TRIGGERS:
            ctx.fail_at(
                item,
                f"{name} cannot trigger a renewal: a renewal does not fix what it reports",
            )
        if name in names:
            ctx.fail_at(item, f"{name} is listed twice")
        names.append(name)
    return tuple(names)


def _globs(ctx: _Ctx, at: _At, default: tuple[str, ...]) -> tuple[str, ...]:
    if at.value is None:
        return default
    patterns: list[str] = []
    for item in _list(ctx, at):
        pattern = _string(ctx, item, what="a host name pattern")
        if _GLOB_RE.fullmatch(pattern) is None:
            ctx.fail_at(
                item,
                "expected a glob pattern on the FQDN (letters, digits, '.', '-', and the "
                f"wildcards * ? [...]), got {_short(pattern)}",
            )
        patterns.append(pattern)
    return tuple(patterns)


def _roles(ctx: _Ctx, at: _At) -> tuple[str, ...]:
    if at.value is None:
        return DEFAULT_ALLOW_ROLES
    roles: list[str] = []
    for item in _list(ctx, at):
        role = _choice(ctx, item, ROLES, "")
        if role in roles:
            ctx.fail_at(item, f"{role} is listed twice")
        roles.append(role)
    return tuple(roles)


def _clock_time(ctx: _Ctx, at: _At) -> int:
    text = _string(ctx, at, what='a time of day as "HH:MM" (24-hour, quoted)')
    match = _CLOCK_RE.fullmatch(text)
    if match is None:
        ctx.fail_at(
            at, f'expected a time of day as "HH:MM" from 00:00 to 24:00, got {_short(text)}'
        )
    if text == "24:00":
        return 24 * 60
    return int(match.group(1)) * 60 + int(match.group(2))


def _windows(ctx: _Ctx, at: _At) -> tuple[MaintenanceWindow, ...]:
    windows: list[MaintenanceWindow] = []
    for item in _list(ctx, at):
        entry = _Map(ctx, item, allowed=("weekdays", "start", "end", "timezone"), null_ok=False)
        days_at = entry.get("weekdays")
        days: list[int] = []
        if days_at.value is None:
            days = list(range(7))
        else:
            day_items = _list(ctx, days_at)
            if not day_items:
                ctx.fail_at(days_at, "expected at least one weekday (leave it out for every day)")
            for day_at in day_items:
                day = _choice(ctx, day_at, WEEKDAYS, "")
                if WEEKDAYS.index(day) in days:
                    ctx.fail_at(day_at, f"{day} is listed twice")
                days.append(WEEKDAYS.index(day))
        for key in ("start", "end"):
            if not entry.has(key):
                ctx.fail_at(entry.get(key), 'required: expected a time of day as "HH:MM"')
        start = _clock_time(ctx, entry.get("start"))
        end_at = entry.get("end")
        end = _clock_time(ctx, end_at)
        if start == end:
            ctx.fail_at(end_at, "start and end are equal: the window would be empty")
        if start == 24 * 60:
            ctx.fail_at(entry.get("start"), "a window cannot start at 24:00; use 00:00")
        zone_at = entry.get("timezone")
        zone = _string(ctx, zone_at, "UTC", what="an IANA time zone such as Europe/Berlin")
        try:
            zoneinfo.ZoneInfo(zone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            ctx.fail_at(
                zone_at,
                f"expected an IANA time zone such as Europe/Berlin or UTC, got {_short(zone)}",
            )
        windows.append(MaintenanceWindow(tuple(sorted(days)), start, end, zone))
    return tuple(windows)


def _optional_new_file(ctx: _Ctx, at: _At, *, what: str) -> str | None:
    return None if at.value is None else _new_file(ctx, at, None, what=what)


def _new_file(ctx: _Ctx, at: _At, default: str | None, *, what: str) -> str:
    """A file the receiver creates: its directory must exist (the file need not)."""
    text = _string(ctx, at, default, what=f"the path of the {what}")
    path = Path(text).expanduser()
    if not path.is_absolute():
        path = ctx.base_dir / path
    if path.is_dir():
        ctx.fail_at(at, f"the {what} {path} is a directory; expected a file path")
    if not path.parent.is_dir():
        ctx.fail_at(
            at,
            f"the directory of the {what} ({path.parent}) does not exist; create it "
            "(writable by the receiver) or set another path",
        )
    return str(path)


def _check_unique_hosts(ctx: _Ctx, top: _Map, values: Mapping[str, object]) -> None:
    # One computer listed twice would be collected twice and published as duplicate series.
    seen: dict[str, str] = {}
    for section in ("vmm_servers", "hosts"):
        entries = cast(Sequence[VmmServerConfig | HostConfig], values[section])
        items = _list(ctx, top.get(section))
        for index, entry in enumerate(entries):
            host_at = _Map(
                ctx,
                items[index],
                allowed=("host", "discover", "discovered_method", "role", "method"),
            ).get("host")
            first = seen.get(entry.host.lower())
            if first is not None:
                ctx.fail_at(
                    host_at,
                    f"{entry.host} is listed twice (also at {first}; host names are compared "
                    "case-insensitively)",
                )
            seen[entry.host.lower()] = host_at.path


def _check_some_computers(ctx: _Ctx, top: _Map, values: Mapping[str, object]) -> None:
    if not values["vmm_servers"] and not values["hosts"]:
        ctx.fail(
            FIELD_ROOT,
            None,
            "no computers to watch: list at least one VMM server under vmm_servers "
            "or one computer under hosts",
        )


@dataclass(frozen=True)
class _SectionSpec:
    parse: Callable[[_Ctx, _At], object]
    required: bool = False
    hint: str = ""


# Top-level sections, in the order they are validated. Each name is also a Config field.
_SECTIONS: Final[dict[str, _SectionSpec]] = {
    "winrm": _SectionSpec(
        _parse_winrm,
        required=True,
        hint="how to connect to the computers (transport, username, password_file, ...)",
    ),
    "vmm_servers": _SectionSpec(_parse_server_list),
    "hosts": _SectionSpec(_parse_hosts),
    "collection": _SectionSpec(_parse_collection),
    "web": _SectionSpec(_parse_web),
    "receiver": _SectionSpec(_parse_receiver),
    "tls": _SectionSpec(_parse_tls),
}

_CROSS_CHECKS: Final[tuple[Callable[[_Ctx, _Map, Mapping[str, object]], None], ...]] = (
    _check_unique_hosts,
    _check_some_computers,
)


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
