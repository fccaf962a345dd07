"""The value types configuration keys are made of: each as a reader and as a declaration.

A reader (``read_duration(document, at, default, low, high)``) turns one located YAML value
into a Python value or one ``ConfigError``; a declaration (``duration(low, high, doc)``) is
the ``field(metadata=...)`` of a key of that type (``config_schema.py``). Nothing is coerced:
``"16"`` is not a number and ``60`` is not a duration. Secrets are read from a file or the
environment into ``Secret`` objects, and no error here echoes what was written where a
secret's file or variable name belongs.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Sequence
from typing import Any, Final

from vmm_cert_exporter.config_schema import (
    Check,
    Document,
    Key,
    Located,
    Reader,
    Section,
    Slot,
)
from vmm_cert_exporter.documents import describe, short
from vmm_cert_exporter.durations import EXAMPLES as DURATION_EXAMPLES
from vmm_cert_exporter.durations import format_duration, parse_duration
from vmm_cert_exporter.secrets import (
    Secret,
    SecretError,
    is_env_var_name,
    read_secret_env,
    read_secret_file,
    warn_if_readable_by_others,
)

__all__ = [
    "ROLES",
    "choice",
    "credential_file",
    "duration",
    "existing_path",
    "flag",
    "fqdn",
    "integer",
    "listen_address",
    "new_file",
    "parse_listen_address",
    "read_bool",
    "read_choice",
    "read_duration",
    "read_existing_path",
    "read_fqdn",
    "read_int",
    "read_new_file",
    "read_optional_string",
    "read_required_secret",
    "read_secret",
    "read_string",
    "secret",
    "text",
    "validate_fqdn",
]

# What a computer is to VMM, as inventory, hosts[].role and receiver.allow_roles name it.
ROLES: Final = ("vmm_server", "hyperv_host", "library_server", "other")


# --------------------------------------------------------------------------------------------
# Readers


def read_string(
    document: Document, at: Located, default: str | None = None, *, what: str = "a string"
) -> str:
    """A non-empty string without control characters; absent: ``default`` (None: required)."""
    if at.value is None:
        if default is None:
            document.fail_at(at, f"required: expected {what}")
        return default
    if not isinstance(at.value, str):
        document.fail_at(at, f"expected {what}, got {describe(at.value)}")
    if at.value.strip() == "":
        document.fail_at(at, f"expected {what}, got an empty string")
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in at.value):
        document.fail_at(at, f"expected {what}, got a string with control characters")
    return at.value


def read_optional_string(document: Document, at: Located, *, what: str = "a string") -> str | None:
    return None if at.value is None else read_string(document, at, what=what)


def read_bool(document: Document, at: Located, default: bool) -> bool:
    if at.value is None:
        return default
    if not isinstance(at.value, bool):
        document.fail_at(at, f"expected true or false, got {describe(at.value)}")
    return at.value


def read_int(document: Document, at: Located, default: int, low: int, high: int) -> int:
    if at.value is None:
        return default
    # bool is an int in Python; `concurrency: yes` must not become 1.
    if isinstance(at.value, bool) or not isinstance(at.value, int):
        document.fail_at(at, f"expected an integer from {low} to {high}, got {describe(at.value)}")
    if not low <= at.value <= high:
        document.fail_at(at, f"expected an integer from {low} to {high}, got {at.value}")
    return at.value


def read_choice(document: Document, at: Located, choices: Sequence[str], default: str) -> str:
    if at.value is None:
        return default
    if not isinstance(at.value, str) or at.value not in choices:
        document.fail_at(at, f"expected one of {', '.join(choices)}; got {describe(at.value)}")
    return at.value


def read_duration(
    document: Document, at: Located, default: float, low: float, high: float
) -> float:
    if at.value is None:
        return default
    bounds = f"between {format_duration(low)} and {format_duration(high)}"
    if isinstance(at.value, bool) or not isinstance(at.value, str):
        extra = ""
        if isinstance(at.value, int | float) and not isinstance(at.value, bool):
            extra = (
                f"; bare numbers are not durations (as in Prometheus): add a unit, e.g. {at.value}s"
            )
        document.fail_at(
            at,
            f"expected a duration {bounds} such as {DURATION_EXAMPLES}, "
            f"got {describe(at.value)}{extra}",
        )
    try:
        seconds = parse_duration(at.value)
    except ValueError as exc:
        document.fail_at(at, f"expected a duration {bounds}: {exc}")
    if not low <= seconds <= high:
        document.fail_at(at, f"expected a duration {bounds}, got {at.value}")
    return seconds


def read_existing_path(
    document: Document, at: Located, *, what: str, directory_ok: bool = False
) -> str:
    """A path that must exist now; relative paths are relative to the configuration file."""
    path, note = document.resolve(read_string(document, at, what=f"the path of {what}"))
    try:
        exists = path.exists()
        is_file = path.is_file()
        is_dir = path.is_dir()
    except OSError:
        document.fail_at(at, f"{what} {path} cannot be examined")
    if not exists:
        document.fail_at(at, f"{what} {path} does not exist{note}")
    if not is_file and not (directory_ok and is_dir):
        kind = "a file or directory" if directory_ok else "a file"
        document.fail_at(at, f"{what} {path} is not {kind}")
    if not os.access(path, os.R_OK):
        document.fail_at(at, f"{what} {path} is not readable by this process")
    return str(path)


def read_new_file(document: Document, at: Located, default: str | None, *, what: str) -> str:
    """A file the program creates: its directory must exist (the file need not)."""
    path, _ = document.resolve(read_string(document, at, default, what=f"the path of the {what}"))
    if path.is_dir():
        document.fail_at(at, f"the {what} {path} is a directory; expected a file path")
    if not path.parent.is_dir():
        document.fail_at(
            at,
            f"the directory of the {what} ({path.parent}) does not exist; create it "
            "(writable by the receiver) or set another path",
        )
    return str(path)


def read_secret(section: Section, file_key: str, env_key: str, *, what: str) -> Secret | None:
    """An optional secret from ``file_key`` (a path) or ``env_key`` (a variable name).

    Values under these keys are never echoed, type errors included: the commonest mistake
    is pasting the secret itself where its file or variable name belongs.
    """
    document = section.document
    file_at, env_at = section.get(file_key), section.get(env_key)
    if file_at.value is not None and env_at.value is not None:
        document.fail_at(env_at, f"give exactly one of {file_key} and {env_key}, not both")
    if file_at.value is not None:
        raw = file_at.value
        if not isinstance(raw, str) or raw.strip() == "":
            document.fail_at(
                file_at,
                f"expected the path of a file holding only the {what}, "
                f"got {describe(raw, redact=True)}",
            )
        path, note = document.resolve(raw)
        try:
            return read_secret_file(path)
        except SecretError as exc:
            document.fail_at(file_at, f"the {what} file {exc}{note}")
    if env_at.value is not None:
        name = env_at.value
        if not isinstance(name, str) or not is_env_var_name(name):
            document.fail_at(
                env_at,
                f"expected the NAME of an environment variable holding the {what} (letters, "
                f"digits, underscores; not the {what} itself), got {describe(name, redact=True)}",
            )
        try:
            return read_secret_env(name, document.environ)
        except SecretError as exc:
            document.fail_at(env_at, f"the environment variable named here {exc}")
    return None


def read_required_secret(section: Section, slot: Slot, *, who: str, what: str) -> Secret:
    """The secret of ``slot`` (a ``secret`` declaration), which ``who`` cannot do without."""
    file_key, env_key = slot.keys
    value = read_secret(section, file_key, env_key, what=what)
    if value is None:
        section.document.fail(
            section.child_path(file_key),
            section.at.line,
            f"{who} needs a {what}: set {file_key} (a file holding only the {what}) or "
            f"{env_key} (the name of an environment variable)",
        )
    return value


_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_FQDN_RE = re.compile(rf"{_LABEL}(?:\.{_LABEL})+")
HOSTNAME_RE: Final = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")


def validate_fqdn(name: str) -> str:
    """Return ``name`` (spelled as given) if it is a fully qualified DNS name, else ValueError.

    ASCII letters, digits and hyphens in dot-separated labels of at most 63 characters, at
    least two labels, at most 253 characters, no trailing dot, and a last label that is not
    all digits (an IP address is not an FQDN; VMM names computers by FQDN). These names go
    into URLs and metric labels, so anything else is refused early. The spelling is kept
    (it becomes the ``host`` label); compare names with ``.lower()``.
    """
    if not isinstance(name, str):
        raise ValueError(f"expected a host name, got {describe(name)}")
    bad = next((ch for ch in name if not (ch.isascii() and (ch.isalnum() or ch in ".-"))), None)
    if bad is not None:
        where = "non-ASCII character" if not bad.isascii() else "character"
        raise ValueError(
            f"expected a fully qualified host name (letters, digits, hyphens and dots), "
            f"got {short(name)}: {where} {bad!r} is not allowed in a host name"
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
        raise ValueError(f"{short(name)} is not a valid FQDN: {reason}")
    if name.rsplit(".", 1)[1].isdigit():
        raise ValueError(
            f"{short(name)} looks like an IP address: VMM identifies computers by FQDN"
        )
    return name


def read_fqdn(document: Document, at: Located) -> str:
    text = read_string(document, at, what="a fully qualified host name")
    try:
        return validate_fqdn(text)
    except ValueError as exc:
        document.fail_at(at, str(exc))


def parse_listen_address(text: str) -> tuple[str, int]:
    """Parse ``host:port``, ``:port`` (all interfaces) or ``[ipv6]:port``; raise ValueError.

    Returns ``(host, port)`` with ``host == ""`` for all interfaces and IPv6 without brackets.
    Port 0 is accepted and means "any free port" (useful in tests).
    """
    if not isinstance(text, str) or ":" not in text:
        raise ValueError(
            f"expected host:port or :port (e.g. :9868 or 127.0.0.1:9869), got {short(text)}"
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
    if host and HOSTNAME_RE.fullmatch(host) is None:
        raise ValueError(f"{short(host)} is not a host name or IP address")
    return host, port


# --------------------------------------------------------------------------------------------
# Declarations: field(default=..., metadata=duration(...)) and the like


def _absent(section: Section, slot: Slot, at: Located, what: str) -> Any:
    # A key left out (or null) is its default; a required one is an error.
    if slot.required:
        section.document.fail_at(at, f"required: expected {what}")
    return slot.default


def text(doc: str, *, what: str = "a string", checks: tuple[Check, ...] = ()) -> dict[str, Key]:
    """A string (see ``read_string``)."""

    def read(section: Section, slot: Slot) -> str | None:
        at = section.get(slot.key)
        if at.value is None:
            default: str | None = _absent(section, slot, at, what)
            return default
        return read_string(section.document, at, what=what)

    return Key(read, doc, "string", checks=checks).metadata()


def flag(doc: str) -> dict[str, Key]:
    """``true`` or ``false`` (not ``"yes"``)."""

    def read(section: Section, slot: Slot) -> bool:
        return read_bool(section.document, section.get(slot.key), slot.default)

    return Key(read, doc, "boolean").metadata()


def integer(doc: str, low: int, high: int, *, checks: tuple[Check, ...] = ()) -> dict[str, Key]:
    """An integer from ``low`` to ``high``."""

    def read(section: Section, slot: Slot) -> int:
        return read_int(section.document, section.get(slot.key), slot.default, low, high)

    return Key(read, doc, "integer", bounds=(f"{low} to {high}",), checks=checks).metadata()


def duration(
    doc: str, low: float, high: float, *, checks: tuple[Check, ...] = ()
) -> dict[str, Key]:
    """A duration from ``low`` to ``high`` seconds; a default of None leaves it unset."""

    def read(section: Section, slot: Slot) -> float | None:
        at = section.get(slot.key)
        if at.value is None and slot.default is None:
            return None
        return read_duration(section.document, at, slot.default, low, high)

    bounds = f"{format_duration(low)} to {format_duration(high)}"
    return Key(read, doc, "duration", bounds=(bounds,), checks=checks).metadata()


def choice(doc: str, choices: Sequence[str], *, checks: tuple[Check, ...] = ()) -> dict[str, Key]:
    """One of ``choices``."""

    def read(section: Section, slot: Slot) -> str:
        return read_choice(section.document, section.get(slot.key), choices, slot.default)

    words = tuple(f"`{c}`" for c in choices)
    return Key(read, doc, "string", bounds=words, checks=checks).metadata()


def existing_path(doc: str, *, what: str) -> dict[str, Key]:
    """A file that exists now."""

    def read(section: Section, slot: Slot) -> str | None:
        at = section.get(slot.key)
        if at.value is None:
            default: str | None = _absent(section, slot, at, f"the path of {what}")
            return default
        return read_existing_path(section.document, at, what=what)

    return Key(read, doc, "path").metadata()


def credential_file(section: Section, at: Located, path: str | None) -> None:
    """A check for a key naming a private key: warned about like a password file."""
    if path is not None:
        warn_if_readable_by_others(path)


def new_file(doc: str, *, what: str) -> dict[str, Key]:
    """A file the program creates; a default of None leaves it unset."""

    def read(section: Section, slot: Slot) -> str | None:
        at = section.get(slot.key)
        if at.value is None and slot.default is None:
            return None
        return read_new_file(section.document, at, slot.default, what=what)

    return Key(read, doc, "path").metadata()


def secret(doc: str, *, what: str, read: Reader | None = None) -> dict[str, Key]:
    """A secret, from ``<name>_file`` or ``<name>_env`` (at most one); optional unless
    ``read`` (built on ``read_secret`` or ``read_required_secret``) says otherwise."""

    def optional(section: Section, slot: Slot) -> Secret | None:
        return read_secret(section, *slot.keys, what=what)

    return Key(read or optional, doc, "secret", names=("{}_file", "{}_env"), secret=True).metadata()


def fqdn(doc: str) -> dict[str, Key]:
    """A fully qualified host name (see ``validate_fqdn``)."""

    def read(section: Section, slot: Slot) -> str:
        return read_fqdn(section.document, section.get(slot.key))

    return Key(read, doc, "FQDN").metadata()


def listen_address(doc: str) -> dict[str, Key]:
    """Where a server listens: ``host:port``, ``:port`` or ``[ipv6]:port``."""

    def read(section: Section, slot: Slot) -> str:
        at = section.get(slot.key)
        address = read_string(section.document, at, slot.default, what="host:port")
        try:
            parse_listen_address(address)
        except ValueError as exc:
            section.document.fail_at(at, str(exc))
        return address

    return Key(read, doc, "string").metadata()
