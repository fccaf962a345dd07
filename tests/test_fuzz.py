"""Property-based fuzzing of every parser of untrusted input not fuzzed elsewhere.

Already fuzzed in their own files: the configuration (test_config.py), DER certificates
(test_certificate.py), script output JSON (test_results.py), script parameters
(test_powershell.py). Here:

- CLIXML error streams (``clixml.decode_stderr``): whatever a computer writes to stderr;
- the lab's WS-Management request parsing and handling (``lab.wsman``), seeded with the
  envelopes real pywinrm sends, and its control API (``lab.control.handle_control``);
- the web config file (``webconfig``) and ``Authorization: Basic`` headers;
- Alertmanager webhook bodies (``receiver.webhook.parse_webhook``).

The promise each test holds: every input gets either a result or the parser's own specific
error, never another exception, and within a deadline (no hang).
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from winrm.protocol import Protocol

from vmm_cert_exporter.clixml import decode_stderr
from vmm_cert_exporter.http.credentials import BcryptUsers, parse_basic_auth
from vmm_cert_exporter.powershell import command_line, render_script
from vmm_cert_exporter.receiver.webhook import PayloadError, WebhookPayload, parse_webhook
from vmm_cert_exporter.webconfig import (
    WebConfigError,
    WebConfigFile,
    loads_web_config,
)
from vmm_cert_lab.fleet.control import ControlError, handle_control
from vmm_cert_lab.fleet.interfaces import FleetModel
from vmm_cert_lab.fleet.runner import RunningLab
from vmm_cert_lab.fleet.scenario import load_fleet
from vmm_cert_lab.fleet.wsman import (
    ACTION_CREATE,
    MAX_ENVELOPE,
    ShellTable,
    WSManFault,
    WSManService,
    parse_request,
)

# Each example must finish well within this (ms): a parser that hangs fails the test.
DEADLINE = 2000
FAST = settings(max_examples=300, deadline=DEADLINE, suppress_health_check=[HealthCheck.too_slow])


def _utf8_clean(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


# --------------------------------------------------------------------------------------------
# CLIXML

CLIXML_NS = "http://schemas.microsoft.com/powershell/2004/04"
# PowerShell escapes control characters (and each UTF-16 unit of anything it must) as _xHHHH_
escapes = st.integers(min_value=0, max_value=0xFFFF).map(lambda n: f"_x{n:04X}_")
# raw text holds only characters XML allows; PowerShell writes the others as escapes
xml_chars = st.characters(
    blacklist_categories=["Cs"],  # XML 1.0 has no \r either: it reads it as \n
    blacklist_characters=[chr(c) for c in range(0x20) if c not in (9, 10)] + ["\ufffe", "\uffff"],
)
clixml_text = st.lists(st.one_of(st.text(xml_chars, max_size=20), escapes), max_size=8).map("".join)


@st.composite
def clixml_documents(draw: st.DrawFn) -> tuple[str, list[str]]:
    """A CLIXML stream and the raw texts of its Error records, in order."""
    records: list[str] = []
    parts: list[str] = []
    for _ in range(draw(st.integers(0, 6))):
        kind = draw(st.sampled_from(["Error", "progress", "Warning", "Verbose", "Obj"]))
        if kind == "Obj":  # a progress record, as PowerShell writes them
            parts.append(
                '<Obj S="progress" RefId="0"><TN RefId="0"><T>System.Management.Automation.'
                'PSCustomObject</T></TN><MS><I64 N="SourceId">1</I64><PR N="Record">'
                f"<AV>{escape(draw(st.text(xml_chars, max_size=30)))}</AV></PR></MS></Obj>"
            )
            continue
        text = draw(clixml_text)
        if kind == "Error":
            records.append(text)
        parts.append(f'<S S="{kind}">{escape(text)}</S>')
    return (
        f'#< CLIXML\r\n<Objs Version="1.1.0.1" xmlns="{CLIXML_NS}">{"".join(parts)}</Objs>',
        records,
    )


@FAST
@given(st.text(max_size=3000))
def test_clixml_any_text(text: str) -> None:
    out = decode_stderr(text)
    assert isinstance(out, str) and _utf8_clean(out)
    assert len(out) <= len(text)


@FAST
@given(st.text(max_size=500))
def test_clixml_any_text_after_the_header(text: str) -> None:
    out = decode_stderr("#< CLIXML\r\n" + text)
    assert isinstance(out, str) and _utf8_clean(out)


@FAST
@given(clixml_documents())
def test_clixml_documents_give_their_error_text(doc: tuple[str, list[str]]) -> None:
    text, records = doc
    out = decode_stderr(text)
    assert _utf8_clean(out)
    if not any(re.search(r"_x[dD][89a-fA-F][0-9a-fA-F]{2}_", r) for r in records):
        expected = "".join(
            re.sub(r"_x([0-9A-Fa-f]{4})_", lambda m: chr(int(m.group(1), 16)), r) for r in records
        )
        assert out == expected.strip()


@FAST
@given(clixml_documents(), st.data())
def test_clixml_truncated_or_corrupted(doc: tuple[str, list[str]], data: st.DataObject) -> None:
    text, _ = doc
    cut = data.draw(st.integers(0, len(text)))
    junk = data.draw(st.text(max_size=20))
    out = decode_stderr(text[:cut] + junk + text[cut:][: data.draw(st.integers(0, 50))])
    assert isinstance(out, str) and _utf8_clean(out)


def test_clixml_surrogate_escapes_pair_up_or_are_replaced() -> None:
    pair = decode_stderr(
        f'#< CLIXML\n<Objs xmlns="{CLIXML_NS}"><S S="Error">_xD83D__xDE00_</S></Objs>'
    )
    assert pair == "\U0001f600"
    lone = decode_stderr(f'#< CLIXML\n<Objs xmlns="{CLIXML_NS}"><S S="Error">a_xD800_b</S></Objs>')
    assert lone == "a\ufffdb"


def test_clixml_hostile_documents_are_bounded() -> None:
    laughs = (
        '#< CLIXML\n<!DOCTYPE Objs [<!ENTITY a "aaaaaaaaaa">'
        + "".join(f'<!ENTITY {chr(98 + i)} "{("&" + chr(97 + i) + ";") * 10}">' for i in range(8))
        + f']><Objs xmlns="{CLIXML_NS}"><S S="Error">&i;</S></Objs>'
    )
    deep = "#< CLIXML\n" + "<a>" * 50_000 + "</a>" * 50_000
    huge = f'#< CLIXML\n<Objs xmlns="{CLIXML_NS}"><S S="Error">' + "x" * (8 << 20) + "</S></Objs>"
    for text in (laughs, deep, huge):
        began = time.monotonic()
        out = decode_stderr(text)
        assert time.monotonic() - began < 2.0
        assert len(out) <= 1 << 20  # the input is cut at 1 MiB
    assert "aaaaaaaaaa" * 10 not in decode_stderr(laughs)  # no entity was expanded


# --------------------------------------------------------------------------------------------
# The lab's WS-Management requests


class RecordingProtocol(Protocol):
    """pywinrm's own Protocol, keeping a copy of every envelope it sends."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sent: list[bytes] = []

    def send_message(self, message: str) -> bytes:
        self.sent.append(message.encode())
        return super().send_message(message)


@pytest.fixture(scope="module")
def envelopes(demo_lab: RunningLab) -> list[bytes]:
    """Create, Command (a real contract script), Receive, Signal and Delete, from pywinrm."""
    protocol = RecordingProtocol(
        endpoint=demo_lab.endpoint("hv01.lab.example"),
        transport="basic",
        username=demo_lab.username,
        password=demo_lab.account.password,
        server_cert_validation="ignore",
    )
    shell = protocol.open_shell(codepage=65001)
    command, arguments = command_line(render_script("collect-certificates"))
    cid = protocol.run_command(shell, command, arguments)
    done = False
    while not done:
        _, _, _, done = protocol.get_command_output_raw(shell, cid)
    protocol.cleanup_command(shell, cid)
    protocol.close_shell(shell)
    assert len(protocol.sent) >= 5
    return protocol.sent


@pytest.fixture(scope="module")
def service() -> WSManService:
    model: FleetModel = load_fleet("demo")
    return WSManService(model, ShellTable(), lambda seconds: False, max_operation_wait=0.0)


WSMAN_FAULTS = {
    "w:EncodingLimit",
    "w:SchemaValidationError",
    "w:InvalidSelectors",
    "w:InvalidParameter",
    "w:DestinationUnreachable",
    "a:ActionNotSupported",
    "w:TimedOut",
}


def _check_parse(data: bytes) -> None:
    try:
        parse_request(data)
    except WSManFault as fault:
        assert fault.subcode in {"w:EncodingLimit", "w:SchemaValidationError"}, fault.subcode
        assert fault.reason


def _check_handle(service: WSManService, data: bytes) -> None:
    try:
        answer = service.handle("hv01.lab.example", data)
    except WSManFault as fault:
        assert fault.subcode in WSMAN_FAULTS, (fault.subcode, fault.reason)
    else:
        assert answer.startswith(b"<s:Envelope")


@st.composite
def mutated(draw: st.DrawFn, seeds: list[bytes]) -> bytes:
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["replace", "insert", "delete", "truncate", "text"]))
        at = draw(st.integers(0, len(data)))
        if op == "replace":
            chunk = draw(st.binary(min_size=1, max_size=16))
            data[at : at + len(chunk)] = chunk
        elif op == "insert":
            data[at:at] = draw(st.binary(max_size=32))
        elif op == "delete":
            del data[at : at + draw(st.integers(1, 64))]
        elif op == "truncate":
            del data[at:]
        else:  # swap the text of some element for something hostile
            start = data.find(b">", at)
            end = data.find(b"<", start + 1) if start >= 0 else -1
            if start >= 0 and end > start:
                text = draw(
                    st.sampled_from(["", "PT99999999999999999999S", "-1", "\x00", "&amp;&lt;"])
                    | st.text(max_size=40).map(escape)
                )
                data[start + 1 : end] = text.encode("utf-8", "surrogatepass")
    return bytes(data)


@settings(max_examples=400, deadline=DEADLINE, suppress_health_check=list(HealthCheck))
@given(st.data())
def test_lab_parses_mutated_pywinrm_envelopes(envelopes: list[bytes], data: st.DataObject) -> None:
    _check_parse(data.draw(mutated(envelopes)))


@FAST
@given(st.binary(max_size=4096))
def test_lab_parses_any_bytes(data: bytes) -> None:
    _check_parse(data)


@settings(max_examples=300, deadline=DEADLINE, suppress_health_check=list(HealthCheck))
@given(st.data())
def test_lab_handles_mutated_requests_on_a_live_shell(
    envelopes: list[bytes], service: WSManService, data: st.DataObject
) -> None:
    # a live shell, so that mutated Command/Receive/Signal/Delete reach the model
    create = next(e for e in envelopes if ACTION_CREATE.encode() in e)
    answer = service.handle("hv01.lab.example", create)
    shell_id = re.search(rb'Name="ShellId">([0-9A-F-]+)<', answer)
    assert shell_id is not None
    seeds = [
        re.sub(rb'(Name="ShellId">)[0-9A-Fa-f-]+(<)', rb"\g<1>" + shell_id.group(1) + rb"\g<2>", e)
        for e in envelopes
    ]
    _check_handle(service, data.draw(mutated(seeds)))


@pytest.mark.parametrize(
    "encoding", ["utf-8", "utf-16", "utf-16-le", "utf-16-be", "utf-32", "cp037", "utf-7"]
)
def test_lab_refuses_dtds_in_every_encoding(encoding: str) -> None:
    doc = (
        f'<?xml version="1.0" encoding="{encoding.upper()}"?>'
        '<!DOCTYPE s:Envelope [<!ENTITY a "aaaaaaaaaa">]>'
        '<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope"><s:Header>&a;</s:Header>'
        "</s:Envelope>"
    )
    with pytest.raises(WSManFault) as info:
        parse_request(doc.encode(encoding))
    assert info.value.subcode in ("w:SchemaValidationError", "w:EncodingLimit")


def test_lab_refuses_oversized_envelopes_before_parsing() -> None:
    began = time.monotonic()
    with pytest.raises(WSManFault) as info:
        parse_request(b"<" * (MAX_ENVELOPE + 1))
    assert info.value.subcode == "w:EncodingLimit"
    assert time.monotonic() - began < 0.5


# --------------------------------------------------------------------------------------------
# The lab's control API

FQDNS = ["hv01.lab.example", "hv40.lab.example", "nope.lab.example", "HV02.LAB.EXAMPLE", ""]
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda kids: (
        st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=12), kids, max_size=4)
    ),
    max_leaves=12,
)
FAULT_KEYS = ["latency", "drip", "http_401", "black_hole", "receive_timeout", "bogus"]
bodies = st.one_of(
    st.binary(max_size=200),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.dictionaries(
        st.sampled_from([*FAULT_KEYS, "offset_seconds", "advance_seconds", "fqdn"]),
        json_values,
        max_size=4,
    ).map(lambda v: json.dumps(v).encode()),
)


@st.composite
def control_paths(draw: st.DrawFn) -> str:
    fqdn = draw(st.sampled_from(FQDNS) | st.text(max_size=20))
    tail = draw(
        st.sampled_from(["", "/faults", "/certificates", "/renew", "/trusted-mismatch", "/x"])
    )
    return draw(
        st.sampled_from(
            [
                "/lab/health",
                "/lab/stats",
                "/lab/clock",
                "/lab/computers",
                "/lab",
                "/other",
                f"/lab/computers/{fqdn}{tail}",
                f"/lab/computers/{fqdn}{tail}?q=1",
            ]
        )
    )


@settings(max_examples=400, deadline=DEADLINE, suppress_health_check=list(HealthCheck))
@given(st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"]), control_paths(), bodies)
def test_lab_control_api(method: str, path: str, body: bytes) -> None:
    model = _control_model()
    try:
        status, answer = handle_control(model, lambda: {}, method, path, body)
    except ControlError as exc:
        assert exc.status in (400, 404, 405), (exc.status, exc.message)
        assert exc.message
    else:
        assert status in (200, 201)
        json.dumps(answer)


_MODEL: list[FleetModel] = []


def _control_model() -> FleetModel:
    # one model for every example: changes accumulate, as they do in a long-running lab
    if not _MODEL:
        _MODEL.append(load_fleet("demo"))
    return _MODEL[0]


# --------------------------------------------------------------------------------------------
# The web config file and Basic credentials

WEB_KEYS = [
    "tls_server_config",
    "http_server_config",
    "basic_auth_users",
    "rate_limit",
    "cert_file",
    "key_file",
    "client_ca_file",
    "client_auth_type",
    "min_version",
    "max_version",
    "headers",
    "http2",
    "interval",
    "burst",
    "X-Frame-Options",
    "prometheus",
    "key",
    "cipher_suites",
]
yaml_like = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.text(max_size=30)
    | st.sampled_from(["TLS12", "TLS13", "TLS10", "1s", "0s", "NoClientCert", "$2y$10$x"]),
    lambda kids: (
        st.lists(kids, max_size=3)
        | st.dictionaries(st.sampled_from(WEB_KEYS) | st.text(max_size=8), kids, max_size=4)
    ),
    max_leaves=15,
)


def _check_web_config(text: str, tmp: Path) -> None:
    try:
        cfg = loads_web_config(text, file="web.yml", base_dir=tmp)
    except WebConfigError as exc:
        assert str(exc).startswith("web.yml: ")
        assert exc.field and exc.message
    else:
        assert isinstance(cfg, WebConfigFile)


@FAST
@given(yaml_like)
def test_web_config_structures(tmp_path_factory: pytest.TempPathFactory, value: object) -> None:
    _check_web_config(json.dumps(value), tmp_path_factory.getbasetemp())


@FAST
@given(st.text(max_size=400))
def test_web_config_any_text(tmp_path_factory: pytest.TempPathFactory, text: str) -> None:
    _check_web_config(text, tmp_path_factory.getbasetemp())


_AUTH = BcryptUsers({})


@FAST
@given(
    st.one_of(
        st.none(),
        st.text(max_size=300),
        st.binary(max_size=200).map(
            lambda b: "Basic " + __import__("base64").b64encode(b).decode()
        ),
    )
)
def test_basic_auth_headers(header: str | None) -> None:
    parsed = parse_basic_auth(header)
    assert parsed is None or (isinstance(parsed[0], bytes) and isinstance(parsed[1], bytes))
    assert _AUTH.check(header) is False  # no users: nothing ever passes


# --------------------------------------------------------------------------------------------
# Alertmanager webhook bodies

label_names = st.from_regex(r"[a-zA-Z_][a-zA-Z0-9_]{0,15}", fullmatch=True)
labels = st.dictionaries(label_names, st.text(max_size=30), max_size=5)
times = st.sampled_from(
    [
        "2026-01-02T03:04:05Z",
        "2026-01-02T03:04:05.123456789+02:00",
        "0001-01-01T00:00:00Z",
        "2026-13-45T99:99:99Z",
        "yesterday",
        "",
    ]
)


@st.composite
def alerts(draw: st.DrawFn) -> dict[str, Any]:
    return {
        "status": draw(st.sampled_from(["firing", "resolved", "pending"])),
        "labels": {
            "alertname": draw(
                st.sampled_from(["VMMCertificateExpired", "VMMCertificateMissing", "Other"])
            ),
            "host": draw(
                st.sampled_from(
                    [
                        "hv01.lab.example",
                        "hv01.lab.example; rm -rf /",
                        "hv0１.lab.example",
                        "$(Get-Item)",
                    ]
                )
            ),
            **draw(labels),
        },
        "annotations": draw(labels),
        "startsAt": draw(times),
        "endsAt": draw(times),
        "generatorURL": draw(st.text(max_size=20)),
        "fingerprint": draw(st.from_regex(r"[0-9a-f]{16}", fullmatch=True) | st.text(max_size=20)),
    }


@st.composite
def webhook_documents(draw: st.DrawFn) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "version": draw(st.sampled_from(["4", "3", 4])),
        "groupKey": draw(st.text(max_size=30)),
        "truncatedAlerts": draw(st.integers(-1, 3)),
        "status": draw(st.sampled_from(["firing", "resolved"])),
        "receiver": "vmm-renewal",
        "groupLabels": draw(labels),
        "commonLabels": draw(labels),
        "commonAnnotations": draw(labels),
        "externalURL": "http://alertmanager:9093",
        "alerts": draw(st.lists(alerts(), max_size=4)),
    }
    # then break it a little: drop, retype or add fields
    for _ in range(draw(st.integers(0, 3))):
        key = draw(st.sampled_from([*doc, "extra"]))
        action = draw(st.sampled_from(["drop", "retype", "set"]))
        if action == "drop":
            doc.pop(key, None)
        else:
            doc[key] = draw(json_values)
    return doc


def _check_webhook(body: bytes) -> None:
    try:
        payload = parse_webhook(body)
    except PayloadError as exc:
        message = str(exc)
        assert message and len(message) < 2000
    else:
        assert isinstance(payload, WebhookPayload)


@settings(max_examples=400, deadline=DEADLINE, suppress_health_check=list(HealthCheck))
@given(webhook_documents())
def test_webhook_documents(doc: dict[str, Any]) -> None:
    _check_webhook(json.dumps(doc).encode())


@FAST
@given(st.binary(max_size=2000))
def test_webhook_any_bytes(body: bytes) -> None:
    _check_webhook(body)


@FAST
@given(webhook_documents(), st.data())
def test_webhook_truncated_and_corrupted(doc: dict[str, Any], data: st.DataObject) -> None:
    body = json.dumps(doc).encode()
    cut = data.draw(st.integers(0, len(body)))
    _check_webhook(body[:cut] + data.draw(st.binary(max_size=8)))


def test_webhook_hostile_shapes_are_bounded() -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    wide = json.dumps({"alerts": [{}] * 200_000}).encode()
    big_number = b'{"truncatedAlerts": 1' + b"0" * 100_000 + b"}"
    for body in (deep, wide, big_number, b'{"a": NaN}', b'{"a":1,"a":2}', b"\xff\xfe{}"):
        began = time.monotonic()
        with pytest.raises(PayloadError):
            parse_webhook(body)
        assert time.monotonic() - began < 2.0
