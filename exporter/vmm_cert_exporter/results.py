"""Strict parsers of what the contract's scripts print on stdout.

Each parser takes the text a script printed and returns a frozen dataclass, or raises
``ScriptOutputError`` saying which field was wrong and what was expected. Nothing else
escapes, whatever the input: the collector maps ``ScriptOutputError`` to the ``parse``
failure reason, and garbage from one computer must never take the exporter down.

Tolerated: a UTF-8 byte order mark and whitespace around the document, and fields the
contract does not name (a later script may add some). Refused: anything but exactly one
JSON object, another schema, wrong types, bad base64, thumbprints that are not 40
hexadecimal characters (accepted ones are upper-cased), and inputs over ``MAX_OUTPUT``.
The contract is in ``docs/powershell-contract.md``.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from typing import Final, NoReturn

from vmm_cert_exporter.documents import STRICT_JSON as _DECODER
from vmm_cert_exporter.documents import json_type as _type_name
from vmm_cert_exporter.documents import short as _short

# A computer holds a handful of certificates of ~1 KB; TrustedPeople on a VMM server one per
# managed computer. 16 MiB is thousands of times the realistic size and still cheap to hold.
MAX_OUTPUT: Final = 16 * 1024 * 1024

SCHEMA: Final = 1
SCVMM_PREFIX: Final = "SCVMM_CERTIFICATE_KEY_CONTAINER"
JOB_STATUSES: tuple[str, ...] = ("Completed", "Failed")
# A script that finds itself outside FullLanguage prints this status and exits with this code.
LANGUAGE_MODE_STATUS: Final = "LanguageMode"
LANGUAGE_MODE_EXIT: Final = 3

_THUMBPRINT = re.compile(r"[0-9A-Fa-f]{40}")
_BASE64 = re.compile(r"[A-Za-z0-9+/]*={0,2}")
# Names of computers: printable, no whitespace (hostname + DNS suffix from Windows).
_NAME = re.compile(r"[^\s\x00-\x1f\x7f]{1,255}")


class ScriptOutputError(ValueError):
    """Script output that does not follow the contract; the message says where and why."""

    def __init__(self, operation: str, path: str, reason: str) -> None:
        self.operation = operation
        self.path = path
        self.reason = reason
        where = f"{operation} output" + (f", {path}" if path else "")
        super().__init__(f"{where}: {reason}")


@dataclass(frozen=True)
class CertificateRecord:
    """One certificate as a script reported it; ``der`` is the raw X.509 DER."""

    store: str
    thumbprint: str
    friendly_name: str
    has_private_key: bool
    der: bytes
    dns_names: tuple[str, ...] = ()


@dataclass(frozen=True)
class CertificatesResult:
    """collect-certificates (``computer``) or list-trusted-certificates (the VMM server)."""

    computer: str
    certificates: tuple[CertificateRecord, ...]


@dataclass(frozen=True)
class ManagedComputer:
    """One of VMM's managed computers. ``role`` and ``state`` are the invariant enum names
    (``Library, VMMServerRole``, ``NotResponding``) that decisions use; the ``*_display``
    texts are VMM's translated strings, for people only."""

    fqdn: str
    role: str
    state: str
    agent_version: str
    role_display: str = ""
    state_display: str = ""


@dataclass(frozen=True)
class ManagedComputersResult:
    vmm_server: str
    vmm_version: str
    high_availability: bool
    # None when the script did not say (the field is an addition to the contract).
    supports_update_certificate: bool | None
    managed_computers: tuple[ManagedComputer, ...]
    # The cluster nodes of a highly available VMM server (active first); empty otherwise.
    ha_nodes: tuple[str, ...] = ()


@dataclass(frozen=True)
class RunAsAccountMatches:
    """find-run-as-account: how many Run As accounts carry exactly ``run_as_account``."""

    run_as_account: str
    matches: int


@dataclass(frozen=True)
class RemoveResult:
    computer: str
    removed: tuple[str, ...]


@dataclass(frozen=True)
class JobResult:
    """register-managed-computer / update-vmm-certificate; ``error`` is None on success."""

    status: str
    error: str | None


class _Reader:
    """Field access on one decoded document, raising errors that name the field."""

    def __init__(self, operation: str) -> None:
        self.operation = operation

    def fail(self, path: str, reason: str) -> NoReturn:
        raise ScriptOutputError(self.operation, path, reason)

    def field(self, obj: dict[str, object], path: str, key: str) -> object:
        if key not in obj:
            self.fail(path, f"missing field {key!r}")
        return obj[key]

    def string(self, obj: dict[str, object], path: str, key: str) -> str:
        value = self.field(obj, path, key)
        if not isinstance(value, str):
            self.fail(_join(path, key), f"expected a string, got {_type_name(value)}")
        return value

    def optional_string(self, obj: dict[str, object], path: str, key: str) -> str:
        """A string field that older scripts did not send: empty when absent."""
        return self.string(obj, path, key) if key in obj else ""

    def name(self, obj: dict[str, object], path: str, key: str) -> str:
        return self.name_value(self.field(obj, path, key), _join(path, key))

    def name_value(self, value: object, path: str) -> str:
        if not isinstance(value, str):
            self.fail(path, f"expected a string, got {_type_name(value)}")
        if not _NAME.fullmatch(value):
            self.fail(
                path,
                f"expected a computer name (1-255 characters, no spaces), got {_short(value)}",
            )
        return value

    def boolean(self, obj: dict[str, object], path: str, key: str) -> bool:
        value = self.field(obj, path, key)
        if not isinstance(value, bool):
            self.fail(_join(path, key), f"expected true or false, got {_type_name(value)}")
        return value

    def array(self, obj: dict[str, object], path: str, key: str) -> list[object]:
        value = self.field(obj, path, key)
        if not isinstance(value, list):
            self.fail(_join(path, key), f"expected an array, got {_type_name(value)}")
        return value

    def obj(self, value: object, path: str) -> dict[str, object]:
        if not isinstance(value, dict):
            self.fail(path, f"expected an object, got {_type_name(value)}")
        return value

    def thumbprint(self, value: object, path: str) -> str:
        if not isinstance(value, str) or not _THUMBPRINT.fullmatch(value):
            self.fail(path, f"expected 40 hexadecimal characters, got {_short(value)}")
        return value.upper()


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _skip_space(text: str, index: int) -> int:
    """The index of the first character at or after ``index`` that ``str.strip`` keeps."""
    while index < len(text) and text[index].isspace():
        index += 1
    return index


def _document(operation: str, stdout: object) -> tuple[_Reader, dict[str, object]]:
    """Decode exactly one JSON object with ``"schema": 1`` from ``stdout``."""
    reader = _Reader(operation)
    if not isinstance(stdout, str):
        reader.fail("", f"expected text, got {type(stdout).__name__}")
    if len(stdout) > MAX_OUTPUT:
        reader.fail("", f"{len(stdout)} characters is more than the {MAX_OUTPUT} accepted")
    # read in place: a VMM server's TrustedPeople is megabytes, a stripped copy as much again
    text = stdout
    start = _skip_space(text, 0)
    # Windows PowerShell may put a BOM in front when the console encoding is UTF-8 with BOM.
    if text.startswith("\ufeff", start):
        start = _skip_space(text, start + 1)
    if start == len(text):
        reader.fail("", "stdout is empty; expected one JSON document")
    try:
        value, end = _DECODER.raw_decode(text, start)
    except json.JSONDecodeError as exc:
        reader.fail("", f"not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}")
    except (ValueError, RecursionError) as exc:
        # Our hooks' errors, integers longer than Python accepts, absurd nesting.
        reader.fail("", f"not acceptable JSON: {_short(str(exc))}")
    if text[end:].strip():
        reader.fail(
            "",
            f"more than one JSON document (further text at character {end}: "
            f"{_short(text[end : end + 40])})",
        )
    doc = reader.obj(value, "")
    schema = reader.field(doc, "", "schema")
    # bool is an int in Python: true must not pass for 1.
    if type(schema) is not int or schema != SCHEMA:
        reader.fail("schema", f"expected {SCHEMA}, got {_short(schema)}")
    return reader, doc


def _der(reader: _Reader, value: object, path: str) -> bytes:
    if not isinstance(value, str) or not value:
        reader.fail(path, f"expected non-empty base64 text, got {_type_name(value)}")
    # The regex pins alphabet and padding position whatever the Python release's b64decode
    # tolerates (data after '=' was silently accepted by older releases).
    if len(value) % 4 or not _BASE64.fullmatch(value):
        reader.fail(path, "expected standard base64 (A-Z a-z 0-9 + /, '=' padding)")
    try:
        der = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        reader.fail(path, f"bad base64: {exc}")
    # Every X.509 certificate is a DER SEQUENCE; anything else is not a certificate.
    if not der or der[0] != 0x30:
        reader.fail(path, "decoded bytes are not a DER SEQUENCE (not an X.509 certificate)")
    return der


def _certificates(
    reader: _Reader, doc: dict[str, object], store: str, with_dns_names: bool
) -> tuple[CertificateRecord, ...]:
    records: list[CertificateRecord] = []
    items = reader.array(doc, "", "certificates")
    for index in range(len(items)):
        # each entry let go once read: TrustedPeople holds one per managed computer, and
        # the records must not sit beside the whole parsed document
        item, items[index] = items[index], None
        path = f"certificates[{index}]"
        cert = reader.obj(item, path)
        got_store = reader.string(cert, path, "store")
        if got_store != store:
            reader.fail(f"{path}.store", f"expected {store!r}, got {_short(got_store)}")
        friendly_name = reader.string(cert, path, "friendly_name")
        # collect-certificates selects SCVMM certificates only (PowerShell's -like ignores
        # case); TrustedPeople entries are all sent and filtered by the exporter.
        if store == "My" and not friendly_name.upper().startswith(SCVMM_PREFIX):
            reader.fail(
                f"{path}.friendly_name",
                f"expected a name starting with {SCVMM_PREFIX}, got {_short(friendly_name)}",
            )
        dns_names: tuple[str, ...] = ()
        if with_dns_names:
            names: list[str] = []
            for n, name in enumerate(reader.array(cert, path, "dns_names")):
                if not isinstance(name, str):
                    reader.fail(
                        f"{path}.dns_names[{n}]", f"expected a string, got {_type_name(name)}"
                    )
                names.append(name)
            dns_names = tuple(names)
        records.append(
            CertificateRecord(
                store=got_store,
                thumbprint=reader.thumbprint(
                    reader.field(cert, path, "thumbprint"), f"{path}.thumbprint"
                ),
                friendly_name=friendly_name,
                has_private_key=reader.boolean(cert, path, "has_private_key"),
                der=_der(reader, reader.field(cert, path, "der_base64"), f"{path}.der_base64"),
                dns_names=dns_names,
            )
        )
    return tuple(records)


def parse_collect_certificates(stdout: str) -> CertificatesResult:
    """Output of collect-certificates: the computer's SCVMM certificates in ``My``."""
    reader, doc = _document("collect-certificates", stdout)
    computer = reader.name(doc, "", "computer")
    return CertificatesResult(computer, _certificates(reader, doc, "My", with_dns_names=False))


def parse_trusted_certificates(stdout: str) -> CertificatesResult:
    """Output of list-trusted-certificates: every ``TrustedPeople`` entry of the VMM server.

    The result's ``computer`` is the document's ``vmm_server``.
    """
    reader, doc = _document("list-trusted-certificates", stdout)
    server = reader.name(doc, "", "vmm_server")
    return CertificatesResult(
        server, _certificates(reader, doc, "TrustedPeople", with_dns_names=True)
    )


def parse_managed_computers(stdout: str) -> ManagedComputersResult:
    """Output of list-managed-computers: VMM's view of the computers it manages.

    ``role_display``, ``state_display`` and ``ha_nodes`` are read when present (empty when
    not): they only add names and display text to what the other fields decide.
    """
    reader, doc = _document("list-managed-computers", stdout)
    supports: bool | None = None
    if "supports_update_certificate" in doc:
        supports = reader.boolean(doc, "", "supports_update_certificate")
    computers: list[ManagedComputer] = []
    for index, item in enumerate(reader.array(doc, "", "managed_computers")):
        path = f"managed_computers[{index}]"
        mc = reader.obj(item, path)
        computers.append(
            ManagedComputer(
                fqdn=reader.name(mc, path, "fqdn"),
                role=reader.string(mc, path, "role"),
                state=reader.string(mc, path, "state"),
                agent_version=reader.string(mc, path, "agent_version"),
                role_display=reader.optional_string(mc, path, "role_display"),
                state_display=reader.optional_string(mc, path, "state_display"),
            )
        )
    nodes: tuple[str, ...] = ()
    if "ha_nodes" in doc:
        nodes = tuple(
            reader.name_value(node, f"ha_nodes[{index}]")
            for index, node in enumerate(reader.array(doc, "", "ha_nodes"))
        )
    return ManagedComputersResult(
        vmm_server=reader.name(doc, "", "vmm_server"),
        vmm_version=reader.string(doc, "", "vmm_version"),
        high_availability=reader.boolean(doc, "", "high_availability"),
        supports_update_certificate=supports,
        managed_computers=tuple(computers),
        ha_nodes=nodes,
    )


def parse_run_as_matches(stdout: str) -> RunAsAccountMatches:
    """Output of find-run-as-account: the exact-name match count (0, 1 or more)."""
    reader, doc = _document("find-run-as-account", stdout)
    count = reader.field(doc, "", "matches")
    if type(count) is not int or count < 0:
        reader.fail("matches", f"expected a count (0 or more), got {_short(count)}")
    return RunAsAccountMatches(reader.string(doc, "", "run_as_account"), count)


def parse_language_mode(stdout: str) -> str | None:
    """The language mode a script refused to run in (its exit-3 result), or None when
    ``stdout`` is not that result. Never raises: it only recognises."""
    try:
        reader, doc = _document("language check", stdout)
        if doc.get("status") != LANGUAGE_MODE_STATUS:
            return None
        mode = reader.string(doc, "", "language_mode")
    except ScriptOutputError:
        return None
    return mode if _NAME.fullmatch(mode) else None


def parse_remove_result(stdout: str) -> RemoveResult:
    """Output of remove-certificates: the thumbprints actually removed (upper case)."""
    reader, doc = _document("remove-certificates", stdout)
    computer = reader.name(doc, "", "computer")
    removed = tuple(
        reader.thumbprint(item, f"removed[{index}]")
        for index, item in enumerate(reader.array(doc, "", "removed"))
    )
    return RemoveResult(computer, removed)


def _job(operation: str, stdout: str) -> JobResult:
    reader, doc = _document(operation, stdout)
    status = reader.string(doc, "", "status")
    if status not in JOB_STATUSES:
        reader.fail("status", f"expected one of {', '.join(JOB_STATUSES)}, got {_short(status)}")
    error = reader.field(doc, "", "error")
    if status == "Completed" and error is not None:
        reader.fail("error", f"expected null when status is Completed, got {_short(error)}")
    if status == "Failed" and (not isinstance(error, str) or not error):
        reader.fail(
            "error", f"expected the error message when status is Failed, got {_short(error)}"
        )
    return JobResult(status, error if isinstance(error, str) else None)


def parse_job_result(stdout: str, operation: str = "register-managed-computer") -> JobResult:
    """Output of register-managed-computer or update-vmm-certificate.

    These scripts print ``{"status":"Failed",...}`` *and* exit 1 on failure: parse stdout
    whatever the exit code. ``operation`` only names the script in error messages.
    """
    return _job(operation, stdout)
