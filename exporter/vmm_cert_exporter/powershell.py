"""The Python side of the script contract: render the shipped PowerShell and encode it.

Every script the product sends is one of the ``scripts/*.ps1`` files of this package, with
exactly one change: line 2, ``$Params = ''`` in the file, carries the operation's parameters
as base64 of UTF-8 JSON. The base64 alphabet has no quote, so no parameter can ever close
the single-quoted string and become PowerShell; the script decodes it itself. The contract
is written down in ``docs/powershell-contract.md``.

Rendering also drops full-line comments (after the header) and indentation: the script
travels inside ``powershell -EncodedCommand``, whose command line cmd.exe limits to 8,191
characters, and the comments are for reviewers of the files, not for the wire. What is sent
is exactly what ``vmm-cert-exporter print-script`` prints.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import functools
import importlib.resources
import json
import re
import sys
from collections.abc import Mapping
from typing import Final

SCHEMA: Final = 1

OPERATIONS: tuple[str, ...] = (
    "collect-certificates",
    "list-managed-computers",
    "list-trusted-certificates",
    "find-run-as-account",
    "remove-certificates",
    "register-managed-computer",
    "update-vmm-certificate",
)

# cmd.exe refuses longer command lines ("The command line is too long."); WinRS starts
# powershell.exe through it, so the whole line must stay below this.
MAX_COMMAND_LINE: Final = 8191

# A computer normally holds one SCVMM certificate, two or three when something went wrong;
# the bound keeps the worst-case remove-certificates command line provably under the limit.
MAX_THUMBPRINTS: Final = 20

# Longest accepted Run As account name. VMM's own limit is not documented; real names are
# short, and the bound keeps the worst case (4-byte UTF-8 characters) under the limit.
MAX_RUN_AS_ACCOUNT: Final = 128

HEADER_PREFIX: Final = "# vmm-cert-exporter:"
PARAMS_PLACEHOLDER: Final = "$Params = ''"

POWERSHELL: Final = "powershell"
POWERSHELL_ARGS: tuple[str, ...] = (
    "-NoProfile",
    "-NonInteractive",
    "-ExecutionPolicy",
    "Bypass",
    "-EncodedCommand",
)

# What each operation takes: parameter name -> kind. Kinds are checked by _validate.
_PARAMS: Final[dict[str, dict[str, str]]] = {
    "collect-certificates": {},
    "list-managed-computers": {},
    "list-trusted-certificates": {},
    "find-run-as-account": {"run_as_account": "run_as_account"},
    "remove-certificates": {"thumbprints": "thumbprints"},
    "register-managed-computer": {"computer": "fqdn", "run_as_account": "run_as_account"},
    "update-vmm-certificate": {"vmm_server": "fqdn"},
}

# Parameters an operation may go without. A renewal reads VMM's view of one computer; the
# exporter's collection needs every computer, so it sends none of these.
_OPTIONAL_PARAMS: Final[dict[str, dict[str, str]]] = {
    "list-managed-computers": {"computer": "fqdn"},
    "list-trusted-certificates": {"computer": "fqdn"},
}

# What print-script embeds when no --params are given: realistic, and clearly examples.
EXAMPLE_PARAMS: Final[Mapping[str, Mapping[str, object]]] = {
    "collect-certificates": {},
    "list-managed-computers": {},
    "list-trusted-certificates": {},
    "find-run-as-account": {"run_as_account": "VMM Host Admin"},
    "remove-certificates": {"thumbprints": ["0123456789ABCDEF0123456789ABCDEF01234567"]},
    "register-managed-computer": {
        "computer": "hv01.corp.example",
        "run_as_account": "VMM Host Admin",
    },
    "update-vmm-certificate": {"vmm_server": "vmm01.corp.example"},
}

_THUMBPRINT = re.compile(r"[0-9A-Fa-f]{40}")
# DNS labels; '_' is tolerated because some Windows computer names carry it.
_LABEL = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")
_PARAMS_LINE = re.compile(r"\$Params = '([A-Za-z0-9+/]*={0,2})'")
_HEADER = re.compile(r"# vmm-cert-exporter:([a-z][a-z-]*)/([0-9]+)")


def header(operation: str) -> str:
    """The exact first line of every script for ``operation``."""
    return f"{HEADER_PREFIX}{operation}/{SCHEMA}"


def _check_operation(operation: object) -> str:
    if not isinstance(operation, str) or operation not in OPERATIONS:
        raise ValueError(
            f"unknown operation {operation!r}; expected one of: {', '.join(OPERATIONS)}"
        )
    return operation


@functools.cache
def script_source(operation: str) -> str:
    """The ``.ps1`` file for ``operation`` as shipped in the package (with the placeholder)."""
    _check_operation(operation)
    resource = importlib.resources.files("vmm_cert_exporter").joinpath(
        "scripts", f"{operation}.ps1"
    )
    text = resource.read_text(encoding="utf-8")
    lines = text.split("\n")
    # A shipped file that breaks the contract is a packaging bug, not bad input.
    if len(lines) < 3 or lines[0] != header(operation) or lines[1] != PARAMS_PLACEHOLDER:
        raise RuntimeError(
            f"scripts/{operation}.ps1 must start with {header(operation)!r} and "
            f"{PARAMS_PLACEHOLDER!r} on its first two lines"
        )
    return text


def _fqdn(where: str, value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{where} must be a string (an FQDN), got {type(value).__name__}")
    if not value or len(value) > 253:
        raise ValueError(f"{where} must be an FQDN of 1 to 253 characters, got {len(value)}")
    for label in value.split("."):
        if not _LABEL.fullmatch(label):
            raise ValueError(
                f"{where} is not a valid FQDN: {value!r} (dot-separated labels of 1-63 "
                "letters, digits, '-' or '_', not starting or ending with '-')"
            )
    return value


def _run_as_account(where: str, value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{where} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise ValueError(f"{where} must not be empty")
    if len(value) > MAX_RUN_AS_ACCOUNT:
        raise ValueError(
            f"{where} must be at most {MAX_RUN_AS_ACCOUNT} characters, got {len(value)}"
        )
    for ch in value:
        if ord(ch) < 0x20 or ord(ch) == 0x7F:
            raise ValueError(f"{where} must not contain control characters, got {value!r}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"{where} is not valid Unicode text (lone surrogate)") from exc
    return value


def _thumbprints(where: str, value: object) -> list[str]:
    # A str is a sequence too: refuse it explicitly rather than iterate its characters.
    if not isinstance(value, list | tuple):
        raise ValueError(f"{where} must be a list of thumbprints, got {type(value).__name__}")
    if not 1 <= len(value) <= MAX_THUMBPRINTS:
        raise ValueError(f"{where} must hold 1 to {MAX_THUMBPRINTS} thumbprints, got {len(value)}")
    result: list[str] = []
    for index, item in enumerate(value):
        if not isinstance(item, str) or not _THUMBPRINT.fullmatch(item):
            raise ValueError(
                f"{where}[{index}] must be 40 hexadecimal characters (a SHA-1 thumbprint), "
                f"got {item!r}"
            )
        upper = item.upper()
        if upper not in result:
            result.append(upper)
    return result


_KINDS = {"fqdn": _fqdn, "run_as_account": _run_as_account, "thumbprints": _thumbprints}


def validate_params(operation: str, params: Mapping[str, object] | None) -> dict[str, object]:
    """Check ``params`` against what ``operation`` takes; return them normalised.

    Thumbprints come back upper case and de-duplicated. Raises ``ValueError`` naming the
    operation, the parameter and what was expected.
    """
    _check_operation(operation)
    spec = _PARAMS[operation]
    optional = _OPTIONAL_PARAMS.get(operation, {})
    if params is None:
        params = {}
    if not isinstance(params, Mapping):
        raise ValueError(
            f"{operation}: parameters must be a JSON object, got {type(params).__name__}"
        )
    unknown = sorted(str(k) for k in params if k not in spec and k not in optional)
    if unknown:
        expected = ", ".join([*spec, *(f"{k} (optional)" for k in optional)]) or "none"
        raise ValueError(
            f"{operation}: unknown parameter(s) {', '.join(unknown)}; expected: {expected}"
        )
    missing = [k for k in spec if k not in params]
    if missing:
        raise ValueError(f"{operation}: missing parameter(s) {', '.join(missing)}")
    kinds = {**spec, **{key: kind for key, kind in optional.items() if key in params}}
    return {key: _KINDS[kind](f"{operation}: {key}", params[key]) for key, kind in kinds.items()}


def encode_params(params: Mapping[str, object]) -> str:
    """Base64 of the compact UTF-8 JSON of ``params`` (standard alphabet, never a quote)."""
    # ensure_ascii=False: UTF-8 is shorter than \\uXXXX escapes, and the script decodes UTF-8.
    text = json.dumps(params, ensure_ascii=False, separators=(",", ":"), sort_keys=True)
    return base64.b64encode(text.encode("utf-8")).decode("ascii")


def _compact(lines: list[str]) -> list[str]:
    # Only whole-line comments and indentation go: the scripts use no here-strings, block
    # comments or backtick continuations (a test enforces it), so no line's meaning depends
    # on a dropped line or on leading whitespace.
    kept: list[str] = []
    for line in lines:
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            kept.append(stripped)
    return kept


def render_script(operation: str, params: Mapping[str, object] | None = None) -> str:
    """The exact PowerShell sent for ``operation`` with ``params`` (``None`` means none).

    Line 1 is the header, line 2 ``$Params = '<base64 of UTF-8 JSON>'``; the rest is the
    shipped script without full-line comments, blank lines and indentation. Raises
    ``ValueError`` for an unknown operation, bad parameters, or a command line that would
    exceed cmd.exe's limit.
    """
    clean = validate_params(operation, params)
    lines = script_source(operation).split("\n")
    body = _compact(lines[2:])
    script = "\n".join([lines[0], f"$Params = '{encode_params(clean)}'", *body]) + "\n"
    length = command_line_length(script)
    if length >= MAX_COMMAND_LINE:
        raise ValueError(
            f"{operation}: the encoded command line would be {length} characters; cmd.exe "
            f"accepts fewer than {MAX_COMMAND_LINE}"
        )
    return script


def encode_command(script: str) -> str:
    """Base64 of the UTF-16LE script, as ``powershell -EncodedCommand`` expects."""
    return base64.b64encode(script.encode("utf-16-le")).decode("ascii")


def command_line(script: str) -> tuple[str, list[str]]:
    """The program and arguments that run ``script``."""
    return POWERSHELL, [*POWERSHELL_ARGS, encode_command(script)]


def command_line_length(script: str) -> int:
    """Characters of the whole command line (program and arguments joined by spaces)."""
    program, args = command_line(script)
    return len(" ".join([program, *args]))


def decode_script(script: str) -> tuple[str, dict[str, object]]:
    """Read a rendered script's operation and parameters back, checking the contract.

    For whoever receives scripts (the lab, tests): returns ``(operation, params)`` or raises
    ``ValueError`` when line 1 or line 2 does not follow the contract.
    """
    lines = script.split("\n", 2)
    if len(lines) < 2:
        raise ValueError("script must have a header line and a $Params line")
    head = _HEADER.fullmatch(lines[0].rstrip("\r"))
    if head is None:
        raise ValueError(f"line 1 is not a vmm-cert-exporter header: {lines[0][:80]!r}")
    operation, schema = head.group(1), int(head.group(2))
    if schema != SCHEMA:
        raise ValueError(f"unsupported script schema {schema}; this version speaks {SCHEMA}")
    _check_operation(operation)
    match = _PARAMS_LINE.fullmatch(lines[1].rstrip("\r"))
    if match is None:
        raise ValueError(f"line 2 is not $Params = '<base64>': {lines[1][:80]!r}")
    try:
        decoded = json.loads(base64.b64decode(match.group(1), validate=True).decode("utf-8"))
    except (binascii.Error, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"$Params is not base64 of UTF-8 JSON: {exc}") from exc
    if not isinstance(decoded, dict):
        raise ValueError(f"$Params must hold a JSON object, got {type(decoded).__name__}")
    return operation, decoded


def print_script_command(args: argparse.Namespace) -> int:
    """``vmm-cert-exporter print-script OPERATION [--params JSON]``: print what is sent.

    Prints the exact script (with the operation's example parameters when none are given)
    on stdout, so an administrator can review it or run it by hand. Exit 2 for an unknown
    operation, JSON that does not parse, or parameters the operation does not accept.
    """
    operation: str = args.operation
    if operation not in OPERATIONS:
        print(
            f"vmm-cert-exporter print-script: unknown operation {operation!r}; "
            f"expected one of: {', '.join(OPERATIONS)}",
            file=sys.stderr,
        )
        return 2
    params: Mapping[str, object]
    if args.params is None:
        params = EXAMPLE_PARAMS[operation]
    else:
        try:
            loaded = json.loads(args.params)
        except json.JSONDecodeError as exc:
            print(
                f"vmm-cert-exporter print-script: --params is not valid JSON: {exc}",
                file=sys.stderr,
            )
            return 2
        if not isinstance(loaded, dict):
            print(
                "vmm-cert-exporter print-script: --params must be a JSON object, "
                f"got {type(loaded).__name__}",
                file=sys.stderr,
            )
            return 2
        params = loaded
    try:
        script = render_script(operation, params)
    except ValueError as exc:
        print(f"vmm-cert-exporter print-script: {exc}", file=sys.stderr)
        return 2
    sys.stdout.write(script)
    sys.stdout.flush()
    return 0
