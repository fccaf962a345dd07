"""The lab's side of the script contract, and what Windows PowerShell / cmd.exe print.

The lab cannot run PowerShell. It recognises the product's scripts by their contract header
(``# vmm-cert-exporter:<operation>/1`` on the first line, ``$Params = '<base64 JSON>'`` on the
second), decodes the parameters itself, and lets the model answer. Everything else gets what
real Windows PowerShell 5.1 prints for a script it cannot run: exit code 1 and an error record
serialised as CLIXML on stderr, in the exact shape pywinrm's ``run_ps`` decodes.

This module parses the contract independently of the collector's implementation on purpose:
if both sides shared the code, they would share its bugs.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from typing import Any
from xml.sax.saxutils import escape as xml_escape

from vmm_cert_lab.fleet.interfaces import Execution

SCHEMA = 1
OPERATIONS = frozenset(
    {
        "collect-certificates",
        "find-run-as-account",
        "list-managed-computers",
        "list-trusted-certificates",
        "remove-certificates",
        "register-managed-computer",
        "update-vmm-certificate",
    }
)
# operations whose script needs the VMM cmdlets, and the cmdlet real Windows fails to find
VMM_CMDLET = {
    "find-run-as-account": "Get-SCRunAsAccount",
    "list-managed-computers": "Get-SCVMMManagedComputer",
    "list-trusted-certificates": "Get-SCVMMManagedComputer",
    "register-managed-computer": "Get-SCVMMManagedComputer",
    "update-vmm-certificate": "Update-SCVMMCertificate",
}
# the VMM cmdlet each script calls first, the one that fails when the VMM service is down
VMM_CONNECT_CMDLET = {op: "Get-SCVMMServer" for op in VMM_CMDLET} | {
    "update-vmm-certificate": "Update-SCVMMCertificate"
}
# every contract script refuses to run in any other language mode
FULL_LANGUAGE = "FullLanguage"
LANGUAGE_MODE_EXIT = 3

_HEADER_RE = re.compile(r"# vmm-cert-exporter:(?P<op>[a-z0-9-]+)/(?P<schema>[0-9]+)")
_PARAMS_RE = re.compile(r"\$Params = '(?P<b64>[^']*)'")
_COMMAND_RE = re.compile(r"[A-Za-z][A-Za-z0-9_.-]*")
_CLIXML_NS = "http://schemas.microsoft.com/powershell/2004/04"
_CONTROL_RE = re.compile(r"[\x00-\x1f]")  # PowerShell encodes every C0 control
_AMBIGUOUS_UNDERSCORE_RE = re.compile(r"_(?=x[0-9A-Fa-f]{4}_)")


class ScriptFailure(Exception):
    """The script cannot run as sent; ``execution`` is what Windows would have returned."""

    def __init__(self, execution: Execution) -> None:
        super().__init__(execution.stderr.decode("utf-8", "replace"))
        self.execution = execution


@dataclass(frozen=True)
class ContractCall:
    operation: str
    schema: int
    params: dict[str, Any]
    script: str


# --- CLIXML -------------------------------------------------------------------------------


def _clixml_text(text: str) -> str:
    """Escape a string as PowerShell's serializer does inside ``<S>``."""
    # a literal "_x0041_" would be decoded as an escape, so PowerShell escapes its underscore
    text = _AMBIGUOUS_UNDERSCORE_RE.sub("_x005F_", text)
    text = xml_escape(text)
    text = text.replace("\r", "_x000D_").replace("\n", "_x000A_")
    return _CONTROL_RE.sub(lambda m: f"_x{ord(m.group()):04X}_", text)


def clixml_errors(lines: list[str]) -> bytes:
    """An error record as ``powershell -EncodedCommand`` writes it on stderr: one ``<S
    S="Error">`` per console line, each ending in CRLF (``_x000D__x000A_``)."""
    body = "".join(f'<S S="Error">{_clixml_text(line + chr(13) + chr(10))}</S>' for line in lines)
    doc = f'#< CLIXML\r\n<Objs Version="1.1.0.1" xmlns="{_CLIXML_NS}">{body}</Objs>'
    return doc.encode("utf-8")


def clixml_progress() -> bytes:
    """Only progress records, as Windows PowerShell emits when it loads modules: no error."""
    records = []
    for ref, (activity, status) in enumerate(
        [("Preparing modules for first use.", " "), ("Loading VMM module", "Loading")]
    ):
        type_names = (
            '<TN RefId="0"><T>System.Management.Automation.PSCustomObject</T>'
            "<T>System.Object</T></TN>"
            if ref == 0
            else '<TNRef RefId="0" />'
        )
        records.append(
            f'<Obj S="progress" RefId="{ref}">{type_names}<MS><I64 N="SourceId">1</I64>'
            f'<PR N="Record"><AV>{activity}</AV><AI>0</AI><Nil /><PI>-1</PI><PC>-1</PC>'
            f"<T>Completed</T><SR>-1</SR><SD>{status}</SD></PR></MS></Obj>"
        )
    doc = f'#< CLIXML\r\n<Objs Version="1.1.0.1" xmlns="{_CLIXML_NS}">{"".join(records)}</Objs>'
    return doc.encode("utf-8")


def _locate(script: str, needle: str) -> tuple[int, int, str, bool]:
    """1-based line and column of ``needle`` in the script, that line, and whether it was
    found (PowerShell's "At line:N char:M"); the second line (after the header) otherwise."""
    lines = script.splitlines() or [""]
    for number, line in enumerate(lines, start=1):
        column = line.find(needle)
        if needle and column >= 0:
            return number, column + 1, line, True
    number = min(2, len(lines))
    return number, 1, lines[number - 1], False


def _position(script: str, needle: str) -> list[str]:
    line_no, column, line, found = _locate(script, needle)
    marker = "~" * max(1, len(needle) if found else len(line.rstrip()))
    return [f"At line:{line_no} char:{column}", f"+ {line}", "+ " + " " * (column - 1) + marker]


def command_not_found(name: str, script: str) -> Execution:
    """CommandNotFoundException, e.g. a VMM cmdlet on a computer without the VMM console."""
    lines = [
        f"{name} : The term '{name}' is not recognized as the name of a cmdlet, function, "
        "script file, or operable program. Check the spelling of the name, or if a path was "
        "included, verify that the path is correct and try again.",
        *_position(script, name),
        f"    + CategoryInfo          : ObjectNotFound: ({name}:String) [], "
        "CommandNotFoundException",
        "    + FullyQualifiedErrorId : CommandNotFoundException",
        " ",
    ]
    return Execution(stdout=b"", stderr=clixml_errors(lines), exit_code=1)


def vmm_service_not_running(cmdlet: str, script: str) -> Execution:
    """A VMM cmdlet on a computer whose VMM service is stopped, e.g. a passive node of a
    highly available VMM server (wording modelled on VMM's, unverified)."""
    message = (
        f"{cmdlet} : You cannot contact the VMM management server localhost: the Virtual "
        "Machine Manager service (SCVMMService) is not running on this computer. Ensure "
        "that the service is running, and then try the operation again."
    )
    lines = [
        message,
        *_position(script, cmdlet),
        f"    + CategoryInfo          : ReadError: (:) [{cmdlet}], CarmineException",
        "    + FullyQualifiedErrorId : CarmineException,"
        f"Microsoft.SystemCenter.VirtualMachineManager.Cmdlets.{cmdlet.replace('-', '')}Cmdlet",
        " ",
    ]
    return Execution(stdout=b"", stderr=clixml_errors(lines), exit_code=1)


def language_mode_result(mode: str) -> Execution:
    """What every contract script prints when the session is not FullLanguage: its own
    result (``Write-Output`` adds the CRLF), nothing on stderr, exit 3."""
    document = {"schema": SCHEMA, "status": "LanguageMode", "language_mode": mode}
    return Execution(stdout=json_stdout(document), exit_code=LANGUAGE_MODE_EXIT)


def thrown_error(message: str, script: str, at: str = "throw") -> Execution:
    """What ``throw "message"`` in the script prints (RuntimeException)."""
    lines = [
        message,
        *_position(script, at),
        f"    + CategoryInfo          : OperationStopped: ({message}:String) [], RuntimeException",
        f"    + FullyQualifiedErrorId : {message}",
        " ",
    ]
    return Execution(stdout=b"", stderr=clixml_errors(lines), exit_code=1)


def parser_error(script: str) -> Execution:
    """A ParserError on the first character PowerShell cannot make sense of."""
    lines_of_script = script.splitlines() or [""]
    first = next((line for line in lines_of_script if line.strip()), "")
    token = first.strip().split()[0] if first.strip() else ""
    line_no = lines_of_script.index(first) + 1 if first in lines_of_script else 1
    column = first.find(token) + 1 if token else 1
    lines = [
        f"At line:{line_no} char:{column}",
        f"+ {first}",
        "+ " + " " * (column - 1) + "~" * max(1, len(token)),
        f"Unexpected token '{token}' in expression or statement.",
        "    + CategoryInfo          : ParserError: (:) [], ParentContainsErrorRecordException",
        "    + FullyQualifiedErrorId : UnexpectedToken",
        " ",
    ]
    return Execution(stdout=b"", stderr=clixml_errors(lines), exit_code=1)


def method_exception(
    method: str, inner: str, fq_id: str, script: str, at: str = "FromBase64String"
) -> Execution:
    """A .NET exception surfacing from a method call (MethodInvocationException)."""
    lines = [
        f'Exception calling "{method}" with "1" argument(s): "{inner}"',
        *_position(script, at),
        "    + CategoryInfo          : NotSpecified: (:) [], MethodInvocationException",
        f"    + FullyQualifiedErrorId : {fq_id}",
        " ",
    ]
    return Execution(stdout=b"", stderr=clixml_errors(lines), exit_code=1)


def json_error(detail: str, script: str) -> Execution:
    """ConvertFrom-Json refusing its input (Windows PowerShell 5.1 wording)."""
    lines = [
        f"ConvertFrom-Json : Invalid JSON primitive: {detail}.",
        *_position(script, "ConvertFrom-Json"),
        "    + CategoryInfo          : NotSpecified: (:) [ConvertFrom-Json], ArgumentException",
        "    + FullyQualifiedErrorId : System.ArgumentException,"
        "Microsoft.PowerShell.Commands.ConvertFromJsonCommand",
        " ",
    ]
    return Execution(stdout=b"", stderr=clixml_errors(lines), exit_code=1)


def drive_not_found(script: str) -> Execution:
    """The ``script_error`` fault: the certificate drive is gone (a real, if rare, failure)."""
    lines = [
        "Get-ChildItem : Cannot find drive. A drive with the name 'Cert' does not exist.",
        *_position(script, "Get-ChildItem"),
        "    + CategoryInfo          : ObjectNotFound: (Cert:String) [Get-ChildItem], "
        "DriveNotFoundException",
        "    + FullyQualifiedErrorId : DriveNotFound,"
        "Microsoft.PowerShell.Commands.GetChildItemCommand",
        " ",
    ]
    return Execution(stdout=b"", stderr=clixml_errors(lines), exit_code=1)


# --- the contract -------------------------------------------------------------------------


def _unrunnable(script: str) -> Execution:
    """A script that is not the product's: the lab cannot run it, so it fails as PowerShell
    does on the first thing it cannot resolve — a command name, or a token it cannot parse."""
    for line in script.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        match = _COMMAND_RE.match(stripped)
        if match:
            return command_not_found(match.group(), script)
        if stripped.startswith("$"):
            continue  # an assignment runs fine; look for the first command after it
        return parser_error(script)
    return parser_error(script)


def contract_operation(script: str) -> str | None:
    """The operation of a script with a known contract header (schema 1), else None: what
    runs as far as the scripts' language-mode check, before any parameter is decoded."""
    header = _HEADER_RE.fullmatch(script.split("\n", 1)[0].removesuffix("\r"))
    if header is None or int(header.group("schema")) != SCHEMA:
        return None
    operation = header.group("op")
    return operation if operation in OPERATIONS else None


def parse_script(script: str) -> ContractCall:
    """Recognise a contract script and decode its parameters strictly.

    Raises ``ScriptFailure`` carrying what Windows PowerShell would return otherwise.
    """
    lines = script.split("\n")
    first = lines[0].removesuffix("\r")
    header = _HEADER_RE.fullmatch(first)
    if header is None:
        raise ScriptFailure(_unrunnable(script))
    operation, schema = header.group("op"), int(header.group("schema"))
    if operation not in OPERATIONS or schema != SCHEMA:
        # what the product's own guard would throw; real PowerShell knows no such operation
        raise ScriptFailure(
            thrown_error(f"unsupported operation '{operation}/{schema}'", script, first)
        )
    second = lines[1].removesuffix("\r") if len(lines) > 1 else ""
    params_line = _PARAMS_RE.fullmatch(second)
    if params_line is None:
        # $Params is never assigned: [Convert]::FromBase64String($null) throws
        raise ScriptFailure(
            method_exception(
                "FromBase64String",
                "Value cannot be null.\r\nParameter name: s",
                "ArgumentNullException",
                script,
            )
        )
    encoded = params_line.group("b64")
    try:
        raw = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise ScriptFailure(
            method_exception(
                "FromBase64String",
                "The input is not a valid Base-64 string as it contains a non-base 64 "
                "character, more than two padding characters, or an illegal character among "
                "the padding characters. ",
                "FormatException",
                script,
            )
        ) from None
    try:
        text = raw.decode("utf-8")
        params = json.loads(text)
    except (UnicodeDecodeError, ValueError):
        raise ScriptFailure(json_error(repr(raw[:40])[2:-1] or "''", script)) from None
    if not isinstance(params, dict):
        raise ScriptFailure(thrown_error("parameters must be a JSON object", script, "$Params"))
    return ContractCall(operation=operation, schema=schema, params=params, script=script)


def contract_script(operation: str, params: Any = None, schema: int = SCHEMA) -> str:
    """The part of a contract script the lab reads (header, then the base64 JSON parameters):
    enough to talk to the lab by hand or from a test; a real script's body is ignored."""
    encoded = base64.b64encode(json.dumps({} if params is None else params).encode("utf-8"))
    return (
        f"# vmm-cert-exporter:{operation}/{schema}\r\n"
        f"$Params = '{encoded.decode('ascii')}'\r\n"
        "$p = [Text.Encoding]::UTF8.GetString([Convert]::FromBase64String($Params)) | "
        "ConvertFrom-Json\r\n"
    )


def json_stdout(document: dict[str, Any]) -> bytes:
    """Exactly one compact JSON document, UTF-8 without BOM, CRLF-terminated like Windows."""
    return json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\r\n"


def garbage_stdout() -> bytes:
    """The ``garbage_stdout`` fault: a console banner, a truncated document, invalid UTF-8."""
    return (
        b"Windows PowerShell\r\nCopyright (C) Microsoft Corporation. All rights reserved.\r\n"
        b'\r\n{"schema":1,"computer":"\xff\xfe\x00<Objs>\r\n'
    )


# --- cmd.exe ------------------------------------------------------------------------------


def run_cmd(fqdn: str, command: str, arguments: list[str]) -> Execution:
    """A tiny cmd.exe: enough for a smoke test (``hostname``, ``ipconfig``, ``echo``)."""
    name = command.strip().lower().removesuffix(".exe")
    short = fqdn.split(".", 1)[0]
    if name == "hostname":
        return Execution(stdout=f"{short}\r\n".encode())
    if name == "echo":
        return Execution(stdout=(" ".join(arguments) + "\r\n").encode("utf-8"))
    if name == "ipconfig":
        text = (
            "\r\nWindows IP Configuration\r\n\r\n\r\nEthernet adapter Ethernet:\r\n\r\n"
            f"   Connection-specific DNS Suffix  . : {fqdn.partition('.')[2]}\r\n"
            "   IPv4 Address. . . . . . . . . . . : 10.20.0.10\r\n"
            "   Subnet Mask . . . . . . . . . . . : 255.255.255.0\r\n"
            "   Default Gateway . . . . . . . . . : 10.20.0.1\r\n"
        )
        return Execution(stdout=text.encode())
    shown = command.strip()
    message = (
        f"'{shown}' is not recognized as an internal or external command,\r\n"
        "operable program or batch file.\r\n"
    )
    # cmd.exe /c sets ERRORLEVEL 9009 for a command it cannot find
    return Execution(stdout=b"", stderr=message.encode(), exit_code=9009)


def decode_encoded_command(arguments: list[str]) -> str | None:
    """The script of ``powershell ... -EncodedCommand <b64>`` (UTF-16LE), else None."""
    for index, argument in enumerate(arguments[:-1]):
        if argument.lower().lstrip("-/") in {"encodedcommand", "enc", "e", "ec"}:
            try:
                return base64.b64decode(arguments[index + 1], validate=True).decode("utf-16-le")
            except (binascii.Error, ValueError):
                return None
    return None
