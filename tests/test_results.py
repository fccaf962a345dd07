"""The strict parsers of script output: what is accepted, and the exact reason for each refusal.

Fuzzing (hypothesis) holds the one promise the collector relies on: whatever a computer
prints, a parser returns a result or raises ScriptOutputError, never anything else.
"""

from __future__ import annotations

import base64
import copy
import datetime as dt
import json
from collections.abc import Callable
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vmm_cert_exporter.results import (
    MAX_OUTPUT,
    CertificateRecord,
    CertificatesResult,
    JobResult,
    ManagedComputer,
    ManagedComputersResult,
    RemoveResult,
    RunAsAccountMatches,
    ScriptOutputError,
    parse_collect_certificates,
    parse_job_result,
    parse_language_mode,
    parse_managed_computers,
    parse_remove_result,
    parse_run_as_matches,
    parse_trusted_certificates,
)


def _make_der(fqdn: str) -> bytes:
    """A real self-signed certificate, shaped like VMM's (CN = FQDN, from 1 January)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, fqdn)])
    start = dt.datetime(2021, 1, 1, tzinfo=dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start.replace(year=2026))
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.DER)


DER = _make_der("hv01.corp.example")
DER_B64 = base64.b64encode(DER).decode("ascii")
THUMB = "A1B2C3D4E5F60718293A4B5C6D7E8F9001122334"
THUMB2 = "00112233445566778899AABBCCDDEEFF00112233"

Parser = Callable[[str], object]


def collect_doc() -> dict[str, Any]:
    return {
        "schema": 1,
        "computer": "hv01.corp.example",
        "certificates": [
            {
                "store": "My",
                "thumbprint": THUMB,
                "friendly_name": "SCVMM_CERTIFICATE_KEY_CONTAINERhv01.corp.example",
                "has_private_key": True,
                "der_base64": DER_B64,
            }
        ],
    }


def trusted_doc() -> dict[str, Any]:
    return {
        "schema": 1,
        "vmm_server": "vmm01.corp.example",
        "certificates": [
            {
                "store": "TrustedPeople",
                "thumbprint": THUMB,
                "friendly_name": "",
                "has_private_key": False,
                "der_base64": DER_B64,
                "dns_names": ["hv01.corp.example"],
            },
            {
                "store": "TrustedPeople",
                "thumbprint": THUMB2,
                "friendly_name": "VMMWinPEAgentOSDBootstrap",
                "has_private_key": False,
                "der_base64": DER_B64,
                "dns_names": [],
            },
        ],
    }


def managed_doc() -> dict[str, Any]:
    return {
        "schema": 1,
        "vmm_server": "vmm01.corp.example",
        "vmm_version": "10.22.1287.0",
        "high_availability": False,
        "supports_update_certificate": True,
        "ha_nodes": [],
        "managed_computers": [
            {
                "fqdn": "hv01.corp.example",
                "role": "Host",
                "state": "Responding",
                "role_display": "ホスト",
                "state_display": "稼働中",
                "agent_version": "10.22.1287.0",
            },
            {
                "fqdn": "lib01.corp.example",
                "role": "Library",
                "state": "Responding",
                "role_display": "ライブラリ",
                "state_display": "稼働中",
                "agent_version": "",
            },
        ],
    }


def run_as_doc() -> dict[str, Any]:
    return {"schema": 1, "run_as_account": "VMM Host Admins", "matches": 1}


def remove_doc() -> dict[str, Any]:
    return {"schema": 1, "computer": "hv01.corp.example", "removed": [THUMB, THUMB2]}


def job_doc() -> dict[str, Any]:
    return {"schema": 1, "status": "Completed", "error": None}


PARSERS: dict[str, tuple[Parser, Callable[[], dict[str, Any]]]] = {
    "collect": (parse_collect_certificates, collect_doc),
    "trusted": (parse_trusted_certificates, trusted_doc),
    "managed": (parse_managed_computers, managed_doc),
    "remove": (parse_remove_result, remove_doc),
    "job": (parse_job_result, job_doc),
    "run_as": (parse_run_as_matches, run_as_doc),
}


def dump(doc: object) -> str:
    return json.dumps(doc, separators=(",", ":"))


# -- accepted ---------------------------------------------------------------------------


def test_collect_certificates() -> None:
    result = parse_collect_certificates(dump(collect_doc()))
    assert result == CertificatesResult(
        computer="hv01.corp.example",
        certificates=(
            CertificateRecord(
                store="My",
                thumbprint=THUMB,
                friendly_name="SCVMM_CERTIFICATE_KEY_CONTAINERhv01.corp.example",
                has_private_key=True,
                der=DER,
                dns_names=(),
            ),
        ),
    )
    # The DER is the real certificate, dates and all.
    cert = x509.load_der_x509_certificate(result.certificates[0].der)
    assert cert.not_valid_after_utc == dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def test_collect_with_no_certificates() -> None:
    doc = collect_doc()
    doc["certificates"] = []
    assert parse_collect_certificates(dump(doc)) == CertificatesResult("hv01.corp.example", ())


def test_trusted_certificates() -> None:
    result = parse_trusted_certificates(dump(trusted_doc()))
    assert result.computer == "vmm01.corp.example"
    assert [c.store for c in result.certificates] == ["TrustedPeople", "TrustedPeople"]
    assert result.certificates[0].dns_names == ("hv01.corp.example",)
    assert result.certificates[1].dns_names == ()
    assert result.certificates[1].friendly_name == "VMMWinPEAgentOSDBootstrap"


def test_managed_computers() -> None:
    result = parse_managed_computers(dump(managed_doc()))
    assert result == ManagedComputersResult(
        vmm_server="vmm01.corp.example",
        vmm_version="10.22.1287.0",
        high_availability=False,
        supports_update_certificate=True,
        managed_computers=(
            ManagedComputer(
                "hv01.corp.example", "Host", "Responding", "10.22.1287.0", "ホスト", "稼働中"
            ),
            ManagedComputer(
                "lib01.corp.example", "Library", "Responding", "", "ライブラリ", "稼働中"
            ),
        ),
    )


def test_managed_computers_without_the_update_flag() -> None:
    doc = managed_doc()
    del doc["supports_update_certificate"]
    assert parse_managed_computers(dump(doc)).supports_update_certificate is None


def test_managed_computers_of_a_highly_available_vmm_server() -> None:
    doc = managed_doc()
    doc.update(
        vmm_server="vmm-ha.corp.example",
        high_availability=True,
        ha_nodes=["vmmnode01.corp.example", "vmmnode02.corp.example"],
    )
    doc["managed_computers"][1]["role"] = "Library, VMMServerRole"
    result = parse_managed_computers(dump(doc))
    assert result.ha_nodes == ("vmmnode01.corp.example", "vmmnode02.corp.example")
    assert result.managed_computers[1].role == "Library, VMMServerRole"


def test_display_fields_and_nodes_are_optional() -> None:
    doc = managed_doc()
    del doc["ha_nodes"]
    for computer in doc["managed_computers"]:
        del computer["role_display"], computer["state_display"]
    result = parse_managed_computers(dump(doc))
    assert result.ha_nodes == ()
    assert {(c.role_display, c.state_display) for c in result.managed_computers} == {("", "")}


def test_run_as_matches() -> None:
    assert parse_run_as_matches(dump(run_as_doc())) == RunAsAccountMatches("VMM Host Admins", 1)
    for count in (0, 3):
        assert parse_run_as_matches(dump(run_as_doc() | {"matches": count})).matches == count


@pytest.mark.parametrize(
    ("stdout", "mode"),
    [
        (
            '{"schema":1,"status":"LanguageMode","language_mode":"ConstrainedLanguage"}\r\n',
            "ConstrainedLanguage",
        ),
        (
            '{"schema":1,"status":"LanguageMode","language_mode":"RestrictedLanguage"}',
            "RestrictedLanguage",
        ),
        # anything else is not that result, and recognising it never raises
        ('{"schema":1,"status":"Failed","error":"x"}', None),
        ('{"schema":1,"status":"LanguageMode","language_mode":5}', None),
        ('{"schema":1,"status":"LanguageMode","language_mode":"a b"}', None),
        ('{"schema":2,"status":"LanguageMode","language_mode":"ConstrainedLanguage"}', None),
        ("", None),
        ("ConstrainedLanguage", None),
    ],
)
def test_the_language_mode_result_is_recognised(stdout: str, mode: str | None) -> None:
    assert parse_language_mode(stdout) == mode


def test_remove_result() -> None:
    doc = remove_doc()
    doc["removed"] = [THUMB.lower()]
    assert parse_remove_result(dump(doc)) == RemoveResult("hv01.corp.example", (THUMB,))
    doc["removed"] = []
    assert parse_remove_result(dump(doc)).removed == ()


def test_job_results() -> None:
    assert parse_job_result(dump(job_doc())) == JobResult("Completed", None)
    failed = {"schema": 1, "status": "Failed", "error": "Run As account not found: x"}
    assert parse_job_result(dump(failed)) == JobResult("Failed", "Run As account not found: x")


def test_thumbprints_are_upper_cased() -> None:
    doc = collect_doc()
    doc["certificates"][0]["thumbprint"] = THUMB.lower()
    assert parse_collect_certificates(dump(doc)).certificates[0].thumbprint == THUMB


@pytest.mark.parametrize(
    "wrap",
    [
        lambda s: "\ufeff" + s,
        lambda s: "\ufeff\r\n" + s + "\r\n",
        lambda s: "  \n\t" + s + "\n\n  ",
        lambda s: "\r\n\ufeff" + s,
        # What Windows PowerShell 5.1 really prints: not compressed, with \u0027 escapes.
        lambda s: json.dumps(json.loads(s), indent=4).replace("'", "\\u0027"),
    ],
)
@pytest.mark.parametrize("kind", list(PARSERS))
def test_bom_whitespace_and_layout_are_tolerated(kind: str, wrap: Callable[[str], str]) -> None:
    parse, make = PARSERS[kind]
    assert parse(wrap(dump(make()))) == parse(dump(make()))


@pytest.mark.parametrize("kind", list(PARSERS))
def test_extra_fields_are_allowed(kind: str) -> None:
    parse, make = PARSERS[kind]
    doc = make()
    doc["computer_extra"] = {"nested": [1, 2, 3]}
    for value in doc.values():
        if isinstance(value, list):
            for item in value:
                if isinstance(item, dict):
                    item["not_after"] = "\\/Date(1574202819000)\\/"
    assert parse(dump(doc)) == parse(dump(make()))


def test_ps51_output_of_a_real_shape() -> None:
    # As ConvertTo-Json -Compress on Windows PowerShell 5.1 writes it (ordered keys, escapes).
    text = (
        '{"schema":1,"computer":"HV01.corp.example","certificates":[{"store":"My",'
        f'"thumbprint":"{THUMB}","friendly_name":"SCVMM_CERTIFICATE_KEY_CONTAINERHV01.corp'
        f'.example","has_private_key":true,"der_base64":"{DER_B64}"}}]}}'
    )
    result = parse_collect_certificates(text)
    assert result.computer == "HV01.corp.example"
    assert result.certificates[0].der == DER


# -- refused ----------------------------------------------------------------------------


def _set(path: list[Any], value: object) -> Callable[[dict[str, Any]], None]:
    def mutate(doc: dict[str, Any]) -> None:
        target: Any = doc
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return mutate


def _del(path: list[Any]) -> Callable[[dict[str, Any]], None]:
    def mutate(doc: dict[str, Any]) -> None:
        target: Any = doc
        for key in path[:-1]:
            target = target[key]
        del target[path[-1]]

    return mutate


C0 = ["certificates", 0]
MC0 = ["managed_computers", 0]

# (parser, mutation of its valid document, expected path, words of the reason)
MUTATIONS: list[tuple[str, Callable[[dict[str, Any]], None], str, str]] = [
    ("collect", _set(["schema"], 2), "schema", "expected 1, got 2"),
    ("collect", _set(["schema"], True), "schema", "expected 1, got True"),
    ("collect", _set(["schema"], "1"), "schema", "expected 1, got '1'"),
    ("collect", _set(["schema"], 1.0), "schema", "expected 1, got 1.0"),
    ("collect", _del(["schema"]), "", "missing field 'schema'"),
    ("collect", _del(["computer"]), "", "missing field 'computer'"),
    ("collect", _set(["computer"], ""), "computer", "expected a computer name"),
    ("collect", _set(["computer"], "hv 01"), "computer", "no spaces"),
    ("collect", _set(["computer"], None), "computer", "expected a string, got null"),
    ("collect", _set(["certificates"], {}), "certificates", "expected an array, got object"),
    ("collect", _set(["certificates"], None), "certificates", "expected an array, got null"),
    ("collect", _set(C0, "x"), "certificates[0]", "expected an object, got string"),
    ("collect", _set([*C0, "store"], "TrustedPeople"), "certificates[0].store", "'My'"),
    ("collect", _del([*C0, "store"]), "certificates[0]", "missing field 'store'"),
    ("collect", _set([*C0, "thumbprint"], THUMB[:-1]), "certificates[0].thumbprint", "40 hex"),
    ("collect", _set([*C0, "thumbprint"], THUMB + "0"), "certificates[0].thumbprint", "40 hex"),
    ("collect", _set([*C0, "thumbprint"], "Z" * 40), "certificates[0].thumbprint", "40 hex"),
    ("collect", _set([*C0, "thumbprint"], 12), "certificates[0].thumbprint", "got 12"),
    (
        "collect",
        _set([*C0, "thumbprint"], THUMB[:20] + " " + THUMB[21:]),
        "certificates[0].thumbprint",
        "40 hexadecimal",
    ),
    ("collect", _set([*C0, "friendly_name"], "Other"), "certificates[0].friendly_name", "SCVMM"),
    ("collect", _set([*C0, "friendly_name"], None), "certificates[0].friendly_name", "string"),
    ("collect", _set([*C0, "has_private_key"], 1), "certificates[0].has_private_key", "true or"),
    ("collect", _set([*C0, "has_private_key"], "True"), "certificates[0].has_private_key", "true"),
    ("collect", _del([*C0, "der_base64"]), "certificates[0]", "missing field 'der_base64'"),
    ("collect", _set([*C0, "der_base64"], ""), "certificates[0].der_base64", "non-empty base64"),
    ("collect", _set([*C0, "der_base64"], None), "certificates[0].der_base64", "got null"),
    ("collect", _set([*C0, "der_base64"], "MIIB!"), "certificates[0].der_base64", "base64"),
    ("collect", _set([*C0, "der_base64"], DER_B64[:-1]), "certificates[0].der_base64", "base64"),
    (
        "collect",
        _set([*C0, "der_base64"], DER_B64.replace("+", "-").replace("/", "_") + "-_"),
        "certificates[0].der_base64",
        "standard base64",
    ),
    ("collect", _set([*C0, "der_base64"], "QUJD"), "certificates[0].der_base64", "DER SEQUENCE"),
    ("collect", _set([*C0, "der_base64"], "MA==MA=="), "certificates[0].der_base64", "base64"),
    ("collect", _set([*C0, "der_base64"], "MA==\n"), "certificates[0].der_base64", "base64"),
    ("collect", _set([*C0, "der_base64"], "éé=="), "certificates[0].der_base64", "base64"),
    ("trusted", _del(["vmm_server"]), "", "missing field 'vmm_server'"),
    ("trusted", _set([*C0, "store"], "My"), "certificates[0].store", "'TrustedPeople'"),
    ("trusted", _del([*C0, "dns_names"]), "certificates[0]", "missing field 'dns_names'"),
    ("trusted", _set([*C0, "dns_names"], "hv01"), "certificates[0].dns_names", "an array"),
    ("trusted", _set([*C0, "dns_names"], [None]), "certificates[0].dns_names[0]", "a string"),
    ("trusted", _set(["certificates", 1, "thumbprint"], ""), "certificates[1].thumbprint", "40"),
    ("managed", _set(["schema"], 0), "schema", "expected 1"),
    ("managed", _del(["vmm_version"]), "", "missing field 'vmm_version'"),
    ("managed", _set(["vmm_version"], 10), "vmm_version", "expected a string, got number"),
    ("managed", _set(["high_availability"], "false"), "high_availability", "true or false"),
    ("managed", _set(["supports_update_certificate"], None), "supports_update_certificate", "true"),
    ("managed", _set(["managed_computers"], None), "managed_computers", "an array, got null"),
    ("managed", _set(MC0, []), "managed_computers[0]", "an object, got array"),
    ("managed", _del([*MC0, "fqdn"]), "managed_computers[0]", "missing field 'fqdn'"),
    ("managed", _set([*MC0, "fqdn"], ""), "managed_computers[0].fqdn", "computer name"),
    ("managed", _set([*MC0, "role"], 1), "managed_computers[0].role", "a string, got number"),
    ("managed", _set([*MC0, "state"], None), "managed_computers[0].state", "a string, got null"),
    ("managed", _del([*MC0, "agent_version"]), "managed_computers[0]", "'agent_version'"),
    ("managed", _set(["ha_nodes"], "vmmnode01"), "ha_nodes", "an array, got string"),
    ("managed", _set(["ha_nodes"], [None]), "ha_nodes[0]", "a string, got null"),
    ("managed", _set([*MC0, "role_display"], None), "managed_computers[0].role_display", "null"),
    ("managed", _set([*MC0, "state_display"], 1), "managed_computers[0].state_display", "number"),
    ("run_as", _set(["matches"], -1), "matches", "a count"),
    ("run_as", _set(["matches"], True), "matches", "a count"),
    ("run_as", _set(["matches"], "1"), "matches", "a count"),
    ("run_as", _del(["run_as_account"]), "", "missing field 'run_as_account'"),
    ("remove", _set(["removed"], THUMB), "removed", "expected an array, got string"),
    ("remove", _set(["removed", 1], "xyz"), "removed[1]", "40 hexadecimal characters"),
    ("remove", _del(["computer"]), "", "missing field 'computer'"),
    ("job", _set(["status"], "Running"), "status", "one of Completed, Failed, got 'Running'"),
    ("job", _set(["status"], None), "status", "expected a string, got null"),
    ("job", _del(["error"]), "", "missing field 'error'"),
    ("job", _set(["error"], "boom"), "error", "null when status is Completed"),
    ("job", _set(["status"], "Failed"), "error", "the error message when status is Failed"),
    (
        "job",
        lambda d: d.update(status="Failed", error=""),
        "error",
        "the error message when status is Failed",
    ),
    ("job", _set(["schema"], None), "schema", "expected 1, got None"),
]


@pytest.mark.parametrize(
    ("kind", "mutate", "path", "reason"),
    MUTATIONS,
    ids=[f"{m[0]}-{i}-{m[2] or 'top'}" for i, m in enumerate(MUTATIONS)],
)
def test_contract_violations_name_the_field(
    kind: str, mutate: Callable[[dict[str, Any]], None], path: str, reason: str
) -> None:
    parse, make = PARSERS[kind]
    doc = make()
    mutate(doc)
    with pytest.raises(ScriptOutputError) as info:
        parse(dump(doc))
    assert info.value.path == path
    assert reason in info.value.reason, info.value.reason
    assert str(info.value).startswith(info.value.operation + " output")
    assert isinstance(info.value, ValueError)


def test_second_certificate_is_named_in_the_error() -> None:
    doc = collect_doc()
    doc["certificates"].append(copy.deepcopy(doc["certificates"][0]))
    doc["certificates"][1]["thumbprint"] = "nope"
    with pytest.raises(ScriptOutputError, match=r"certificates\[1\]\.thumbprint: expected 40"):
        parse_collect_certificates(dump(doc))


GOOD = dump(collect_doc())

# (text, words of the reason) for collect-certificates: the framing rules shared by all.
FRAMING: list[tuple[str, str]] = [
    ("", "stdout is empty"),
    ("   \r\n\t ", "stdout is empty"),
    ("\ufeff", "stdout is empty"),
    ("\ufeff\ufeff" + GOOD, "not JSON"),
    ("WARNING: module loaded\n" + GOOD, "not JSON"),
    (GOOD + GOOD, "more than one JSON document"),
    (GOOD + "\n" + GOOD, "more than one JSON document"),
    (GOOD + "\nWARNING: x", "more than one JSON document"),
    (GOOD + " 1", "more than one JSON document"),
    (GOOD[:-1], "not JSON"),
    ("[" + GOOD + "]", "expected an object, got array"),
    ('"text"', "expected an object, got string"),
    ("null", "expected an object, got null"),
    ("1", "expected an object, got number"),
    ('{"schema":NaN}', "NaN is not valid JSON"),
    ('{"schema":1,"schema":1}', "duplicate key 'schema'"),
    ('{"schema":' + "1" * 5000 + "}", "not acceptable JSON"),
    ("[" * 200_000 + "]" * 200_000, "not acceptable JSON"),
    ("{'schema': 1}", "not JSON"),
    ("#< CLIXML\n<Objs/>", "not JSON"),
]


@pytest.mark.parametrize(("text", "reason"), FRAMING, ids=range(len(FRAMING)))
def test_framing(text: str, reason: str) -> None:
    with pytest.raises(ScriptOutputError) as info:
        parse_collect_certificates(text)
    assert reason in info.value.reason, info.value.reason


def test_huge_output_is_refused_before_parsing() -> None:
    huge = GOOD + " " * (MAX_OUTPUT - len(GOOD) + 1)
    with pytest.raises(ScriptOutputError, match="more than the 16777216 accepted"):
        parse_collect_certificates(huge)
    # Exactly at the cap still parses.
    assert parse_collect_certificates(huge[:-1]).computer == "hv01.corp.example"


@pytest.mark.parametrize("kind", list(PARSERS))
def test_non_text_is_refused(kind: str) -> None:
    parse, make = PARSERS[kind]
    for value in (dump(make()).encode(), None, 1, ["{}"]):
        with pytest.raises(ScriptOutputError, match="expected text"):
            parse(value)  # type: ignore[arg-type]


def test_job_parser_names_the_operation() -> None:
    with pytest.raises(ScriptOutputError, match=r"^update-vmm-certificate output"):
        parse_job_result("{}", operation="update-vmm-certificate")


# -- fuzzing ----------------------------------------------------------------------------

ALL_PARSERS = [p for p, _ in PARSERS.values()]


def _only_contract_errors(parse: Parser, text: str) -> None:
    try:
        parse(text)
    except ScriptOutputError:
        pass


@given(st.text(max_size=2000))
@settings(max_examples=300, deadline=None)
def test_fuzz_any_text(text: str) -> None:
    for parse in ALL_PARSERS:
        _only_contract_errors(parse, text)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=50),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=20), children, max_size=6)
    ),
    max_leaves=30,
)


@given(json_values, st.sampled_from(["", "\ufeff", " \n"]))
@settings(max_examples=300, deadline=None)
def test_fuzz_any_json(value: object, prefix: str) -> None:
    text = prefix + json.dumps(value)
    for parse in ALL_PARSERS:
        _only_contract_errors(parse, text)


def _paths(value: object, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    paths = [prefix]
    if isinstance(value, dict):
        for key, child in value.items():
            paths.extend(_paths(child, (*prefix, key)))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            paths.extend(_paths(child, (*prefix, index)))
    return paths


@given(st.sampled_from(list(PARSERS)), st.data(), json_values)
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_fuzz_mutated_valid_documents(kind: str, data: st.DataObject, value: object) -> None:
    # Valid documents with one node replaced: the contract's near misses, the likeliest
    # garbage from a half-broken script.
    parse, make = PARSERS[kind]
    doc = make()
    path = data.draw(st.sampled_from(_paths(doc)[1:]))
    target: Any = doc
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    _only_contract_errors(parse, dump(doc))


@given(st.sampled_from(list(PARSERS)), st.data())
@settings(max_examples=200, deadline=None)
def test_fuzz_truncated_and_spliced_output(kind: str, data: st.DataObject) -> None:
    # Output cut short (a dropped connection) or with bytes spliced in (a dripping host).
    parse, make = PARSERS[kind]
    text = dump(make())
    cut = data.draw(st.integers(0, len(text)))
    junk = data.draw(st.text(max_size=20))
    _only_contract_errors(parse, text[:cut] + junk + text[cut:])
    _only_contract_errors(parse, text[:cut])


hex_thumbprints = st.text(alphabet="0123456789abcdefABCDEF", min_size=40, max_size=40)
names = st.from_regex(r"[a-z][a-z0-9-]{0,20}(\.[a-z][a-z0-9-]{0,20}){0,3}", fullmatch=True)


@given(
    names,
    st.lists(
        st.tuples(hex_thumbprints, st.text(max_size=30), st.booleans(), st.binary(max_size=64)),
        max_size=5,
    ),
)
@settings(max_examples=200, deadline=None)
def test_round_trip_collect(computer: str, certs: list[tuple[str, str, bool, bytes]]) -> None:
    doc = {
        "schema": 1,
        "computer": computer,
        "certificates": [
            {
                "store": "My",
                "thumbprint": thumb,
                "friendly_name": "SCVMM_CERTIFICATE_KEY_CONTAINER" + suffix,
                "has_private_key": has_key,
                "der_base64": base64.b64encode(b"\x30" + body).decode(),
            }
            for thumb, suffix, has_key, body in certs
        ],
    }
    result = parse_collect_certificates(json.dumps(doc, ensure_ascii=False))
    assert result.computer == computer
    assert [c.thumbprint for c in result.certificates] == [t.upper() for t, *_ in certs]
    assert [c.der for c in result.certificates] == [b"\x30" + body for *_, body in certs]
    assert [c.has_private_key for c in result.certificates] == [h for _, _, h, _ in certs]


@given(st.lists(st.text(max_size=40), max_size=4), st.text(max_size=40))
@settings(max_examples=100, deadline=None)
def test_round_trip_trusted_dns_names(dns_names: list[str], friendly: str) -> None:
    doc = trusted_doc()
    doc["certificates"][0]["dns_names"] = dns_names
    doc["certificates"][0]["friendly_name"] = friendly
    cert = parse_trusted_certificates(json.dumps(doc)).certificates[0]
    assert cert.dns_names == tuple(dns_names)
    assert cert.friendly_name == friendly
