"""WS-Management / WinRS on the wire: SOAP 1.2 requests in, Windows-shaped responses out.

Only the cmd shell (``.../windows/shell/cmd``) is served: Create, Command, Receive, Signal and
Delete, which is everything pywinrm uses. The shapes (namespaces, both ShellId forms,
``RelatesTo``, streams, faults and their codes) follow what real Windows sends, because the
exporter's error classification is tested against them.
"""

from __future__ import annotations

import base64
import binascii
import re
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field
from xml.sax.saxutils import escape, quoteattr

from vmm_cert_lab.fleet.interfaces import Execution, FleetModel
from vmm_cert_lab.fleet.latency import NONE, Latency

NS = {
    "s": "http://www.w3.org/2003/05/soap-envelope",
    "a": "http://schemas.xmlsoap.org/ws/2004/08/addressing",
    "x": "http://schemas.xmlsoap.org/ws/2004/09/transfer",
    "w": "http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd",
    "p": "http://schemas.microsoft.com/wbem/wsman/1/wsman.xsd",
    "rsp": "http://schemas.microsoft.com/wbem/wsman/1/windows/shell",
    "f": "http://schemas.microsoft.com/wbem/wsman/1/wsmanfault",
}
SHELL_URI = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell"
CMD_RESOURCE = SHELL_URI + "/cmd"
ACTION_CREATE = "http://schemas.xmlsoap.org/ws/2004/09/transfer/Create"
ACTION_DELETE = "http://schemas.xmlsoap.org/ws/2004/09/transfer/Delete"
ACTION_COMMAND = SHELL_URI + "/Command"
ACTION_RECEIVE = SHELL_URI + "/Receive"
ACTION_SIGNAL = SHELL_URI + "/Signal"
ACTION_FAULT = "http://schemas.dmtf.org/wbem/wsman/1/wsman/fault"
STATE_DONE = SHELL_URI + "/CommandState/Done"
STATE_RUNNING = SHELL_URI + "/CommandState/Running"
SIGNAL_TERMINATE = SHELL_URI + "/signal/terminate"
SIGNAL_CTRL_C = SHELL_URI + "/signal/ctrl_c"

# WSManFault codes as Windows reports them (pywinrm maps 2150858793 to
# WinRMOperationTimeoutError and retries the Receive).
CODE_TIMED_OUT = 2150858793
CODE_SHELL_NOT_FOUND = 2150858843
CODE_ACCESS_DENIED = 5

# cmd.exe refuses longer command lines (WINRS_SKIP_CMD_SHELL false, pywinrm's default).
CMD_LINE_LIMIT = 8191
# Windows' default MaxEnvelopeSizekb (500 KB on current versions); larger requests are refused.
MAX_ENVELOPE = 512 * 1024
# Windows' default shell IdleTimeout (PT7200S): a shell nobody touches is reclaimed.
DEFAULT_IDLE_TIMEOUT = 7200.0
# What a ReceiveResponse spends besides its streams' base64 (envelope, headers, end markers).
RECEIVE_OVERHEAD = 4096

_ENVELOPE_OPEN = (
    '<s:Envelope xml:lang="en-US"'
    f' xmlns:s="{NS["s"]}" xmlns:a="{NS["a"]}" xmlns:x="{NS["x"]}"'
    f' xmlns:w="{NS["w"]}" xmlns:rsp="{NS["rsp"]}" xmlns:p="{NS["p"]}">'
)
_ANONYMOUS = "http://schemas.xmlsoap.org/ws/2004/08/addressing/role/anonymous"
_FORBIDDEN_XML = re.compile(rb"<!(DOCTYPE|ENTITY)", re.IGNORECASE)
_DECLARED_ENCODING = re.compile(
    rb"\s*<\?xml[^>]*?encoding\s*=\s*[\"']([^\"']*)[\"']", re.IGNORECASE
)
_DURATION = re.compile(r"^P(?:T(?:(\d+(?:\.\d*)?)H)?(?:(\d+(?:\.\d*)?)M)?(?:(\d+(?:\.\d*)?)S)?)?$")
_POWERSHELL = {"powershell", "powershell.exe", "pwsh", "pwsh.exe"}


class WSManFault(Exception):
    """A SOAP fault as Windows sends it, answered with HTTP 500."""

    def __init__(
        self,
        subcode: str,
        reason: str,
        *,
        sender: bool = True,
        wsman_code: int | None = None,
        message: str | None = None,
        detail: str | None = None,
    ) -> None:
        super().__init__(reason)
        self.code = "s:Sender" if sender else "s:Receiver"
        self.subcode = subcode
        self.reason = reason
        self.wsman_code = wsman_code
        self.message = message or reason
        self.detail = detail


class LabStopping(Exception):
    """The server stopped while a request waited out its latency: it is dropped unanswered."""


def shell_not_found(shell_id: str) -> WSManFault:
    return WSManFault(
        "w:InvalidSelectors",
        "The WS-Management service cannot process the request because the request contained "
        "invalid selectors for the resource. ",
        wsman_code=CODE_SHELL_NOT_FOUND,
        message=(
            f"The request for the Windows Remote Shell with ShellId {shell_id} failed because "
            "the shell was not found on the server. Possible causes are: the specified ShellId "
            "is incorrect or the shell no longer exists on the server. Provide the correct "
            "ShellId or create a new shell and retry the operation. "
        ),
        detail="http://schemas.dmtf.org/wbem/wsman/1/wsman/faultDetail/UnexpectedSelectors",
    )


def access_denied() -> WSManFault:
    return WSManFault("w:AccessDenied", "Access is denied. ", wsman_code=CODE_ACCESS_DENIED)


def timed_out() -> WSManFault:
    text = (
        "The WS-Management service cannot complete the operation within the time specified "
        "in OperationTimeout.  "
    )
    return WSManFault("w:TimedOut", text, sender=False, wsman_code=CODE_TIMED_OUT)


@dataclass
class Request:
    """The parts of a WS-Management request the lab acts on."""

    action: str
    message_id: str
    resource_uri: str
    shell_id: str | None
    operation_timeout: float | None
    options: dict[str, str]
    body: ET.Element | None
    max_envelope: int | None = None  # w:MaxEnvelopeSize: the largest answer the client takes


def _text(el: ET.Element | None) -> str:
    return (el.text or "").strip() if el is not None else ""


def parse_duration(value: str) -> float | None:
    """xs:duration limited to what WS-Man uses (``PT20S``, ``PT1M30.5S``); None if unparsable."""
    m = _DURATION.match(value.strip())
    if not m:
        return None
    hours, minutes, seconds = (float(g) if g else 0.0 for g in m.groups())
    return hours * 3600 + minutes * 60 + seconds


def parse_request(data: bytes) -> Request:
    """Parse a SOAP envelope; malformed input raises the fault Windows would send."""
    if len(data) > MAX_ENVELOPE:
        raise WSManFault(
            "w:EncodingLimit",
            "The WS-Management service cannot process the request because the envelope size "
            "in the request is too large. ",
            detail="http://schemas.dmtf.org/wbem/wsman/1/wsman/faultDetail/MaxEnvelopeSize",
        )
    # UTF-8 only: in UTF-16 or EBCDIC a DTD would slip past the byte search below
    # (found by tests/test_fuzz.py).
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        raise WSManFault("w:SchemaValidationError", "The message is not UTF-8 encoded. ") from None
    declared = _DECLARED_ENCODING.match(data.removeprefix(b"\xef\xbb\xbf"))
    if declared and declared.group(1).lower() not in (b"utf-8", b"utf8"):
        raise WSManFault("w:SchemaValidationError", "Only UTF-8 envelopes are accepted. ")
    # No DTDs at all: xml.etree would expand internal entities (billion laughs).
    if _FORBIDDEN_XML.search(data):
        raise WSManFault("w:SchemaValidationError", "DTDs are not allowed in WS-Man messages. ")
    try:
        root = ET.fromstring(data)  # noqa: S314 - DTDs rejected above
    except (ET.ParseError, ValueError) as exc:
        raise WSManFault(
            "w:SchemaValidationError",
            f"The SOAP XML in the message is not well formed: {exc}. ",
        ) from exc
    if root.tag != f"{{{NS['s']}}}Envelope":
        raise WSManFault("w:SchemaValidationError", "The message is not a SOAP 1.2 envelope. ")
    header = root.find("s:Header", NS)
    body_el = root.find("s:Body", NS)
    if header is None:
        raise WSManFault("w:SchemaValidationError", "The SOAP envelope has no header. ")
    shell_id = None
    options: dict[str, str] = {}
    for sel in header.iterfind("w:SelectorSet/w:Selector", NS):
        if sel.get("Name") == "ShellId":
            shell_id = _text(sel)
    for opt in header.iterfind("w:OptionSet/w:Option", NS):
        options[opt.get("Name", "")] = _text(opt)
    op_timeout = _text(header.find("w:OperationTimeout", NS))
    envelope_size = _text(header.find("w:MaxEnvelopeSize", NS))
    body = None
    if body_el is not None and len(body_el):
        body = body_el[0]
    return Request(
        action=_text(header.find("a:Action", NS)),
        message_id=_text(header.find("a:MessageID", NS)),
        resource_uri=_text(header.find("w:ResourceURI", NS)),
        shell_id=shell_id,
        operation_timeout=parse_duration(op_timeout) if op_timeout else None,
        options=options,
        body=body,
        max_envelope=int(envelope_size) if envelope_size.isdigit() else None,
    )


def envelope(action: str, relates_to: str, body: str) -> bytes:
    """A response envelope: new MessageID, RelatesTo echoing the request's MessageID."""
    return (
        f"{_ENVELOPE_OPEN}<s:Header><a:Action>{escape(action)}</a:Action>"
        f"<a:MessageID>uuid:{str(uuid.uuid4()).upper()}</a:MessageID>"
        f"<a:To>{_ANONYMOUS}</a:To><a:RelatesTo>{escape(relates_to)}</a:RelatesTo>"
        f"</s:Header><s:Body>{body}</s:Body></s:Envelope>"
    ).encode()


def fault_envelope(fault: WSManFault, relates_to: str, machine: str) -> bytes:
    detail = ""
    if fault.detail:
        detail += f"<w:FaultDetail>{escape(fault.detail)}</w:FaultDetail>"
    code_attr = f' Code="{fault.wsman_code}"' if fault.wsman_code is not None else ""
    detail += (
        f'<f:WSManFault xmlns:f="{NS["f"]}"{code_attr} Machine={quoteattr(machine)}>'
        f"<f:Message>{escape(fault.message)}</f:Message></f:WSManFault>"
    )
    body = (
        f"<s:Fault><s:Code><s:Value>{fault.code}</s:Value>"
        f"<s:Subcode><s:Value>{fault.subcode}</s:Value></s:Subcode></s:Code>"
        f'<s:Reason><s:Text xml:lang="en-US">{escape(fault.reason)}</s:Text></s:Reason>'
        f"<s:Detail>{detail}</s:Detail></s:Fault>"
    )
    return envelope(ACTION_FAULT, relates_to, body)


def decode_encoded_command(command_line: str) -> str | None:
    """The script of ``powershell ... -EncodedCommand <b64>``; None if not such a command line.

    PowerShell accepts any unambiguous prefix of ``-EncodedCommand`` (``-e``, ``-ec``,
    ``-enc``, ...), in any case. A value that is not base64 of UTF-16LE raises ValueError.
    """
    tokens = command_line.split()
    if not tokens or tokens[0].strip('"').lower().rsplit("\\", 1)[-1] not in _POWERSHELL:
        return None
    for i, tok in enumerate(tokens[1:], start=1):
        t = tok.lower()
        if t in ("-e", "-ec") or (len(t) >= 3 and "-encodedcommand".startswith(t)):
            if i + 1 >= len(tokens):
                raise ValueError("-EncodedCommand needs a value")
            try:
                raw = base64.b64decode(tokens[i + 1], validate=True)
                return raw.decode("utf-16-le")
            except (binascii.Error, UnicodeDecodeError) as exc:
                raise ValueError(str(exc)) from exc
    return None


@dataclass
class Command:
    command_id: str
    stdout: bytes
    stderr: bytes
    exit_code: int
    out_pos: int = 0
    err_pos: int = 0


@dataclass
class Shell:
    shell_id: str
    fqdn: str
    created: float
    last_used: float
    commands: dict[str, Command] = field(default_factory=dict)


class ShellTable:
    """Open shells of every computer. A shell lives from Create until Delete (or idle expiry)."""

    def __init__(self, idle_timeout: float = DEFAULT_IDLE_TIMEOUT) -> None:
        self._lock = threading.Lock()
        self._shells: dict[str, Shell] = {}
        self.idle_timeout = idle_timeout

    def create(self, fqdn: str) -> Shell:
        now = time.monotonic()
        shell = Shell(str(uuid.uuid4()).upper(), fqdn.lower(), now, now)
        with self._lock:
            self._expire(now)
            self._shells[shell.shell_id] = shell
        return shell

    def get(self, fqdn: str, shell_id: str | None) -> Shell:
        """The shell, if it belongs to ``fqdn``; else the fault Windows sends for it."""
        with self._lock:
            shell = self._shells.get((shell_id or "").upper())
            if shell is None or shell.fqdn != fqdn.lower():
                raise shell_not_found(shell_id or "")
            shell.last_used = time.monotonic()
            return shell

    def delete(self, fqdn: str, shell_id: str | None) -> None:
        with self._lock:
            shell = self._shells.get((shell_id or "").upper())
            if shell is None or shell.fqdn != fqdn.lower():
                raise shell_not_found(shell_id or "")
            del self._shells[shell.shell_id]

    def _expire(self, now: float) -> None:
        dead = [k for k, s in self._shells.items() if now - s.last_used > self.idle_timeout]
        for key in dead:
            del self._shells[key]

    def counts(self) -> dict[str, int]:
        """Open shells per computer (only computers that have one)."""
        with self._lock:
            self._expire(time.monotonic())
            out: dict[str, int] = {}
            for shell in self._shells.values():
                out[shell.fqdn] = out.get(shell.fqdn, 0) + 1
            return out


class WSManService:
    """Answers authenticated WS-Management requests for one computer at a time."""

    def __init__(
        self,
        model: FleetModel,
        shells: ShellTable,
        wait: Callable[[float], bool],
        *,
        chunk_size: int = 8192,
        max_operation_wait: float = 60.0,
        latency: Latency = NONE,
    ) -> None:
        """``wait(seconds)`` sleeps and returns True when the server is stopping; ``latency``
        is slept before each request is acted on."""
        if chunk_size < 1:
            raise ValueError("chunk_size must be >= 1")
        self.model = model
        self.shells = shells
        self.wait = wait
        self.chunk_size = chunk_size
        self.max_operation_wait = max_operation_wait
        self.latency = latency

    def handle(self, fqdn: str, data: bytes, *, receive_timeout: bool = False) -> bytes:
        """Answer one request; raises WSManFault (with ``relates_to`` attached by the caller),
        or LabStopping when the server stops during the request's latency."""
        req = parse_request(data)
        # Before acting, as on Windows: the shell exists once its wsmprovhost has started.
        delay = self.latency.shell_create if req.action == ACTION_CREATE else self.latency.request
        if delay and self.wait(delay):
            raise LabStopping
        if req.action == ACTION_CREATE:
            return self._create(fqdn, req)
        if req.action == ACTION_COMMAND:
            return self._command(fqdn, req)
        if req.action == ACTION_RECEIVE:
            return self._receive(fqdn, req, receive_timeout)
        if req.action == ACTION_SIGNAL:
            return self._signal(fqdn, req)
        if req.action == ACTION_DELETE:
            self.shells.delete(fqdn, req.shell_id)
            return envelope(
                "http://schemas.xmlsoap.org/ws/2004/09/transfer/DeleteResponse", req.message_id, ""
            )
        raise WSManFault(
            "a:ActionNotSupported",
            f"The action {req.action!r} is not supported by this lab's WinRS service. ",
        )

    def _create(self, fqdn: str, req: Request) -> bytes:
        if req.resource_uri and req.resource_uri.lower() != CMD_RESOURCE:
            # pypsrp's PowerShell remoting plugin is not simulated; Windows answers an unknown
            # resource URI with this fault.
            raise WSManFault(
                "w:DestinationUnreachable",
                "The WS-Management service cannot process the request. The resource URI "
                f"{req.resource_uri} was not found in the WS-Management catalog. ",
            )
        shell = self.shells.create(fqdn)
        sid = shell.shell_id
        body = (
            f"<x:ResourceCreated><a:Address>http://{escape(fqdn)}:5985/wsman</a:Address>"
            f"<a:ReferenceParameters><w:ResourceURI>{CMD_RESOURCE}</w:ResourceURI>"
            f'<w:SelectorSet><w:Selector Name="ShellId">{sid}</w:Selector></w:SelectorSet>'
            f"</a:ReferenceParameters></x:ResourceCreated>"
            f'<rsp:Shell xmlns:rsp="{NS["rsp"]}"><rsp:ShellId>{sid}</rsp:ShellId>'
            f"<rsp:ResourceUri>{CMD_RESOURCE}</rsp:ResourceUri>"
            f"<rsp:IdleTimeOut>PT{self.shells.idle_timeout:.3f}S</rsp:IdleTimeOut>"
            "<rsp:InputStreams>stdin</rsp:InputStreams>"
            "<rsp:OutputStreams>stdout stderr</rsp:OutputStreams>"
            "<rsp:ShellRunTime>P0DT0H0M0S</rsp:ShellRunTime>"
            "<rsp:ShellInactivity>P0DT0H0M0S</rsp:ShellInactivity></rsp:Shell>"
        )
        return envelope(
            "http://schemas.xmlsoap.org/ws/2004/09/transfer/CreateResponse", req.message_id, body
        )

    def _run(self, fqdn: str, req: Request) -> Execution:
        body = req.body
        if body is None or body.tag != f"{{{NS['rsp']}}}CommandLine":
            raise WSManFault("w:SchemaValidationError", "The Command request has no CommandLine. ")
        command = _text(body.find("rsp:Command", NS))
        arguments = [_text(a) for a in body.iterfind("rsp:Arguments", NS)]
        line = " ".join([command, *arguments])
        skip_cmd = req.options.get("WINRS_SKIP_CMD_SHELL", "FALSE").upper() == "TRUE"
        if not skip_cmd and len(line) > CMD_LINE_LIMIT:
            # What cmd.exe prints (on stderr) for a command line over 8191 characters.
            return Execution(b"", b"The command line is too long.\r\n", 1)
        try:
            script = decode_encoded_command(line)
        except ValueError:
            return Execution(
                b"",
                b"Cannot process the command because the value specified with -EncodedCommand "
                b"is not properly encoded. The value must be Base64 encoded.\r\n",
                1,
            )
        if script is not None:
            return self.model.run_powershell(fqdn, script)
        return self.model.run_command(fqdn, command, arguments)

    def _command(self, fqdn: str, req: Request) -> bytes:
        shell = self.shells.get(fqdn, req.shell_id)
        result = self._run(fqdn, req)
        cid = str(uuid.uuid4()).upper()
        shell.commands[cid] = Command(cid, result.stdout, result.stderr, result.exit_code)
        body = f"<rsp:CommandResponse><rsp:CommandId>{cid}</rsp:CommandId></rsp:CommandResponse>"
        return envelope(SHELL_URI + "/CommandResponse", req.message_id, body)

    def _receive(self, fqdn: str, req: Request, receive_timeout: bool) -> bytes:
        shell = self.shells.get(fqdn, req.shell_id)
        stream = req.body.find("rsp:DesiredStream", NS) if req.body is not None else None
        cid = (stream.get("CommandId", "") if stream is not None else "").upper()
        if receive_timeout:
            # As a hung command would: hold the Receive for its OperationTimeout, then fault.
            wait = req.operation_timeout if req.operation_timeout is not None else 20.0
            self.wait(min(wait, self.max_operation_wait))
            raise timed_out()
        cmd = shell.commands.get(cid)
        if cmd is None:
            raise WSManFault(
                "w:InvalidParameter",
                f"The WinRS command with CommandId {cid} was not found in shell {shell.shell_id}. ",
            )
        budget = self._receive_budget(req)
        out = cmd.stdout[cmd.out_pos : cmd.out_pos + budget]
        cmd.out_pos += len(out)
        budget -= len(out)
        err = b""
        if cmd.out_pos >= len(cmd.stdout) and budget > 0:
            err = cmd.stderr[cmd.err_pos : cmd.err_pos + budget]
            cmd.err_pos += len(err)
        done = cmd.out_pos >= len(cmd.stdout) and cmd.err_pos >= len(cmd.stderr)
        parts = []
        cid_attr = f'CommandId="{cid}"'
        if out:
            parts.append(f'<rsp:Stream Name="stdout" {cid_attr}>{_b64(out)}</rsp:Stream>')
        if err:
            parts.append(f'<rsp:Stream Name="stderr" {cid_attr}>{_b64(err)}</rsp:Stream>')
        if done:
            # Windows closes both streams with an empty End="true" element.
            parts.append(f'<rsp:Stream Name="stdout" {cid_attr} End="true"></rsp:Stream>')
            parts.append(f'<rsp:Stream Name="stderr" {cid_attr} End="true"></rsp:Stream>')
            parts.append(
                f'<rsp:CommandState {cid_attr} State="{STATE_DONE}">'
                f"<rsp:ExitCode>{cmd.exit_code}</rsp:ExitCode></rsp:CommandState>"
            )
        else:
            parts.append(f'<rsp:CommandState {cid_attr} State="{STATE_RUNNING}"/>')
        body = "<rsp:ReceiveResponse>" + "".join(parts) + "</rsp:ReceiveResponse>"
        return envelope(SHELL_URI + "/ReceiveResponse", req.message_id, body)

    def _receive_budget(self, req: Request) -> int:
        """Bytes of output one Receive may carry: the lab's chunk, or with ``fill_envelope``
        whatever fits the client's MaxEnvelopeSize once base64-encoded."""
        if not self.latency.fill_envelope or req.max_envelope is None:
            return self.chunk_size
        return max(self.chunk_size, (req.max_envelope - RECEIVE_OVERHEAD) * 3 // 4)

    def _signal(self, fqdn: str, req: Request) -> bytes:
        shell = self.shells.get(fqdn, req.shell_id)
        if req.body is not None:
            cid = req.body.get("CommandId", "").upper()
            code = _text(req.body.find("rsp:Code", NS))
            if code == SIGNAL_TERMINATE:
                shell.commands.pop(cid, None)
            elif code == SIGNAL_CTRL_C and cid in shell.commands:
                # The command is interrupted: whatever it had not yet sent is lost.
                cmd = shell.commands[cid]
                cmd.out_pos, cmd.err_pos = len(cmd.stdout), len(cmd.stderr)
        return envelope(SHELL_URI + "/SignalResponse", req.message_id, "<rsp:SignalResponse/>")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def relates_to_of(data: bytes) -> str:
    """Best-effort MessageID of a request that failed to parse, for the fault's RelatesTo."""
    m = re.search(rb"<[\w]*:?MessageID[^>]*>([^<]+)<", data)
    return m.group(1).decode("ascii", "replace").strip() if m else ""
