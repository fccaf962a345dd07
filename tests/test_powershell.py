"""The shipped PowerShell and its renderer: the script contract, checked with a real grammar.

The grammar check runs ``tests/powershell/parse.mjs`` (tree-sitter-powershell under
web-tree-sitter, installed by ``npm ci`` from package-lock.json) once for the whole module.
"""

from __future__ import annotations

import argparse
import base64
import json
import re
import shutil
import subprocess
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vmm_cert_exporter import cli, powershell
from vmm_cert_exporter.powershell import (
    EXAMPLE_PARAMS,
    MAX_COMMAND_LINE,
    OPERATIONS,
    command_line,
    command_line_length,
    decode_script,
    encode_command,
    render_script,
    script_source,
)
from vmm_cert_lab.processes import ExporterCommand

REPO = Path(__file__).resolve().parents[1]
PARSE_MJS = REPO / "tests" / "powershell" / "parse.mjs"
SCRIPTS = resources.files("vmm_cert_exporter").joinpath("scripts")

PARAMS_LINE = re.compile(r"\$Params = '([A-Za-z0-9+/]*={0,2})'")
HOSTILE = "'; Remove-Item C:\\ -Recurse #"
# PowerShell also closes single-quoted strings with typographic quotes (U+2018/U+2019/...).
HOSTILE_VARIANTS = (
    HOSTILE,
    "\u2019; Remove-Item C:\\ -Recurse #",
    '"; $(Remove-Item C:\\ -Recurse) #',
    "@' \u201c $env:USERNAME ` ${x} %s {0}",
)

LONGEST_FQDN = ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 61])  # 253 characters
# The longest thumbprint list the renderer accepts, and the longest Run As account name in
# 4-byte UTF-8 characters: the largest $Params each operation can carry.
WORST_PARAMS: dict[str, dict[str, object]] = {
    "collect-certificates": {},
    "list-managed-computers": {"computer": LONGEST_FQDN},
    "list-trusted-certificates": {"computer": LONGEST_FQDN},
    "find-run-as-account": {"run_as_account": "\U0001f512" * powershell.MAX_RUN_AS_ACCOUNT},
    "remove-certificates": {
        "thumbprints": [f"{i:040X}" for i in range(powershell.MAX_THUMBPRINTS)]
    },
    "register-managed-computer": {
        "computer": LONGEST_FQDN,
        "run_as_account": "\U0001f512" * powershell.MAX_RUN_AS_ACCOUNT,
    },
    "update-vmm-certificate": {"vmm_server": LONGEST_FQDN},
}
# The parameter each operation's hostile render puts the hostile text in (only free text is
# accepted at all: FQDNs and thumbprints are validated).
HOSTILE_PARAMS: dict[int, dict[str, object]] = {
    index: {"computer": "hv01.corp.example", "run_as_account": text}
    for index, text in enumerate(HOSTILE_VARIANTS)
}


# -- the grammar ------------------------------------------------------------------------


def run_grammar(items: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Parse every item with the real PowerShell grammar; return the report by name."""
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not on PATH: the PowerShell grammar check needs Node.js (make node)")
    for package in ("web-tree-sitter", "tree-sitter-powershell"):
        if not (REPO / "node_modules" / package / "package.json").is_file():
            pytest.fail(f"node_modules/{package} is missing: run `npm ci` (make node) first")
    proc = subprocess.run(
        [node, str(PARSE_MJS)],
        input=json.dumps(items),
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        check=False,
    )
    assert proc.returncode == 0, f"parse.mjs failed ({proc.returncode}): {proc.stderr}"
    report = json.loads(proc.stdout)
    assert [r["name"] for r in report] == [i["name"] for i in items]
    return {r["name"]: r for r in report}


def grammar_failures(report: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """One line per syntax problem, naming the script, the row and the column."""
    failures: list[str] = []
    for name, entry in report.items():
        if entry["ok"]:
            continue
        problems = entry["problems"] or [{"kind": "ERROR", "row": 0, "column": 0, "text": ""}]
        failures.extend(
            f"{name}:{p['row']}:{p['column']}: {p['kind']} {p['text']!r}" for p in problems
        )
    return failures


def assert_grammar_ok(report: Mapping[str, Mapping[str, Any]]) -> None:
    failures = grammar_failures(report)
    assert not failures, "PowerShell syntax errors:\n" + "\n".join(failures)


def source_with_params(operation: str, rendered: str) -> str:
    """The shipped file with the rendered $Params line: differs from ``rendered`` only in
    comments and layout, if the renderer is right."""
    lines = script_source(operation).split("\n")
    lines[1] = rendered.split("\n")[1]
    return "\n".join(lines)


def _renders() -> dict[str, str]:
    out: dict[str, str] = {}
    for op in OPERATIONS:
        out[f"example:{op}"] = render_script(op, EXAMPLE_PARAMS[op])
        out[f"worst:{op}"] = render_script(op, WORST_PARAMS[op])
    for index, params in HOSTILE_PARAMS.items():
        out[f"hostile{index}:register-managed-computer"] = render_script(
            "register-managed-computer", params
        )
    return out


@pytest.fixture(scope="module")
def grammar() -> dict[str, dict[str, Any]]:
    items: list[dict[str, Any]] = [
        {"name": f"file:{op}", "source": script_source(op)} for op in OPERATIONS
    ]
    for name, script in _renders().items():
        items.append({"name": f"rendered:{name}", "source": script, "tokens": True})
        op = name.split(":", 1)[1]
        items.append(
            {"name": f"source:{name}", "source": source_with_params(op, script), "tokens": True}
        )
    return run_grammar(items)


def test_every_shipped_script_parses(grammar: dict[str, dict[str, Any]]) -> None:
    files = {k: v for k, v in grammar.items() if k.startswith("file:")}
    assert len(files) == len(OPERATIONS)
    assert_grammar_ok(files)
    assert all(entry["root"] == "program" for entry in files.values())


def test_every_rendered_script_parses(grammar: dict[str, dict[str, Any]]) -> None:
    rendered = {k: v for k, v in grammar.items() if k.startswith("rendered:")}
    assert len(rendered) == 2 * len(OPERATIONS) + len(HOSTILE_PARAMS)
    assert_grammar_ok(rendered)


def test_rendering_changes_only_comments_and_layout(grammar: dict[str, dict[str, Any]]) -> None:
    for name in _renders():
        rendered = grammar[f"rendered:{name}"]["tokens"]
        original = grammar[f"source:{name}"]["tokens"]
        assert rendered == original, f"{name}: rendering changed the script's tokens"
        assert len(rendered) > 50  # a real script, not an empty parse


def test_grammar_check_fails_for_broken_scripts() -> None:
    good = render_script("remove-certificates", EXAMPLE_PARAMS["remove-certificates"])
    lines = good.split("\n")
    last_brace = max(i for i, line in enumerate(lines) if line == "}")
    broken = {
        "missing-brace": "\n".join(lines[:last_brace] + lines[last_brace + 1 :]),
        "unclosed-string": good.replace(
            "'SCVMM_CERTIFICATE_KEY_CONTAINER*'", "'SCVMM_CERTIFICATE_KEY_CONTAINER*", 1
        ),
        "powershell7-null-coalescing": good.replace(
            "$fqdn = [System.Net.Dns]", "$fqdn = $null ?? [System.Net.Dns]", 1
        ),
        "unclosed-subexpression": good.replace("$removed = @()", "$removed = @(", 1),
        "catch-without-try": good.replace("try {\n", "", 1),
        "params-quote-closed": good.replace(
            lines[1], "$Params = ''; Remove-Item C:\\ -Recurse '", 1
        ).replace("exit 0", "exit 0 }", 1),
    }
    assert all(script != good for script in broken.values())
    report = run_grammar(
        [{"name": "good", "source": good}] + [{"name": n, "source": s} for n, s in broken.items()]
    )
    assert report["good"]["ok"]
    for name in broken:
        assert not report[name]["ok"], f"the grammar accepted the broken script {name}"
        assert report[name]["problems"], name
    # The helper every shipped-script test relies on fails, and says where.
    with pytest.raises(AssertionError, match=r"missing-brace:\d+:\d+: (MISSING|ERROR)"):
        assert_grammar_ok(report)


# -- the shipped files ------------------------------------------------------------------


def test_one_script_per_operation() -> None:
    shipped = sorted(p.name for p in SCRIPTS.iterdir() if p.name.endswith(".ps1"))
    assert shipped == sorted(f"{op}.ps1" for op in OPERATIONS)
    assert len(set(OPERATIONS)) == len(OPERATIONS) == 7


@pytest.mark.parametrize("operation", OPERATIONS)
def test_shipped_file_layout(operation: str) -> None:
    raw = SCRIPTS.joinpath(f"{operation}.ps1").read_bytes()
    assert not raw.startswith(b"\xef\xbb\xbf"), "no BOM: line 1 must be exactly the header"
    assert b"\r" not in raw
    # ASCII: Windows PowerShell 5.1 reads a BOM-less .ps1 run by hand as ANSI.
    text = raw.decode("ascii")
    lines = text.split("\n")
    assert lines[0] == f"# vmm-cert-exporter:{operation}/1"
    assert lines[1] == "$Params = ''"
    assert text.endswith("}\n")
    # Rendering drops whole-line comments and indentation: nothing may depend on them.
    assert "<#" not in text and "#>" not in text, "no block comments"
    assert "@'" not in text and '@"' not in text, "no here-strings"
    assert "`" not in text, "no backticks (line continuations would break when compacted)"
    assert "\t" not in text


# Under ConstrainedLanguage only core types may be used: the guard reads the mode, prints the
# contract's language-mode result with a cmdlet and exits 3 (docs/powershell-contract.md).
LANGUAGE_MODE_GUARD = """$lm = [string]$ExecutionContext.SessionState.LanguageMode
if ($lm -ne 'FullLanguage') {
    Write-Output ('{"schema":1,"status":"LanguageMode","language_mode":"' + $lm + '"}')
    exit 3
}
"""

# Constructs Windows PowerShell 5.1 does not have (the grammar accepts some of them).
PS7_ONLY = {
    "null-coalescing ??": re.compile(r"\?\?"),
    "null-conditional ?.": re.compile(r"\?\.|\?\["),
    "pipeline chain &&": re.compile(r"&&"),
    "pipeline chain ||": re.compile(r"\|\|"),
    "ConvertFrom-Json -AsHashtable": re.compile(r"-AsHashtable", re.I),
    "ForEach-Object -Parallel": re.compile(r"-Parallel", re.I),
    "ternary": re.compile(r"\s\?\s[^:]*\s:\s"),
    "clean block": re.compile(r"^\s*clean\s*\{", re.I | re.M),
}


@pytest.mark.parametrize("operation", OPERATIONS)
def test_windows_powershell_51_rules(operation: str) -> None:
    text = script_source(operation)
    code = "\n".join(line for line in text.split("\n") if not line.strip().startswith("#"))
    for what, pattern in PS7_ONLY.items():
        assert not pattern.search(code), f"{operation}: uses {what}"
    assert "$ErrorActionPreference = 'Stop'" in code
    assert "$ProgressPreference = 'SilentlyContinue'" in code
    assert "[Console]::OutputEncoding = New-Object System.Text.UTF8Encoding $false" in code
    assert (
        "[Text.Encoding]::UTF8.GetString([Convert]::FromBase64String($Params)) | ConvertFrom-Json"
        in code
    )
    # Every JSON document is written once, compressed, with an explicit depth.
    for call in re.findall(r"ConvertTo-Json[^\n]*", code):
        assert re.search(r"-Depth \d+", call) and "-Compress" in call, call
    assert code.count("[Console]::Out.Write(") == 1
    assert "exit 1" in code and "exit 0" in code
    assert re.search(r"\}\s*catch\s*\{", code)
    # The language-mode guard is the only other writer, and it comes before any method call.
    guard = code.index(LANGUAGE_MODE_GUARD)
    assert guard < code.index("::"), f"{operation}: a method call before the language check"
    rest = code.replace(LANGUAGE_MODE_GUARD, "")
    for printer in ("Write-Output", "Write-Host", "echo ", "Out-Host", "Format-"):
        assert printer not in rest, f"{operation}: {printer} would print to stdout"
    # Dates travel only as DER.
    for date in ("NotAfter", "NotBefore", "Get-Date", "[datetime]", "ToString('"):
        assert date not in code, f"{operation}: reads {date}"
    # Parameters are never pasted: $Params appears only in its line and in the decode.
    assert code.count("$Params") == 2


@pytest.mark.parametrize(
    ("operation", "needles"),
    [
        (
            "collect-certificates",
            ["Cert:\\LocalMachine\\My", "'SCVMM_CERTIFICATE_KEY_CONTAINER*'", "RawData"],
        ),
        (
            "list-trusted-certificates",
            [
                "Cert:\\LocalMachine\\TrustedPeople",
                "try { $dns = @($_.DnsNameList | ForEach-Object { [string]$_.Unicode }) }"
                " catch { }",
                "$_.Oid.Value -eq '2.5.29.17'",
                "(@([string]$cert.FriendlyName, [string]$cert.Subject) + $san + $dns) -join ' '",
                "if (-not $text.ToLowerInvariant().Contains($want)) { return }",
            ],
        ),
        (
            "list-managed-computers",
            [
                "Import-Module virtualmachinemanager",
                "Get-SCVMMServer -ComputerName localhost",
                "Get-SCVMMManagedComputer",
                "Get-Command Update-SCVMMCertificate -ErrorAction SilentlyContinue",
                "role = [string]$_.Role",
                "state = [string]$_.State",
                "role_display = [string]$_.RoleString",
                "state_display = [string]$_.StateString",
                "@($vmm.ActiveVMMNode) + @($vmm.FailoverVMMNodes)",
                "ha_nodes = $nodes",
                "if ($p.computer) { $want = ([string]$p.computer).Trim().TrimEnd('.') }",
                "$name.Trim().TrimEnd('.') -ne $want -and $role -notlike '*VMMServerRole*'",
            ],
        ),
        (
            "find-run-as-account",
            [
                "@(Get-SCRunAsAccount | Where-Object { $_.Name -eq $p.run_as_account })",
                "matches = $found.Count",
            ],
        ),
        (
            "remove-certificates",
            ["'SCVMM_CERTIFICATE_KEY_CONTAINER*'", "$want -contains", "Remove-Item"],
        ),
        (
            "register-managed-computer",
            [
                "@(Get-SCRunAsAccount | Where-Object { $_.Name -eq $p.run_as_account })",
                "if ($runAs.Count -ne 1) {",
                "Get-SCVMMManagedComputer -ComputerName $p.computer",
                "Register-SCVMMManagedComputer -Credential $runAs[0]",
                "Write-Result 'Failed'",
            ],
        ),
        (
            "update-vmm-certificate",
            ["Update-SCVMMCertificate -VMMServer $p.vmm_server", "Write-Result 'Failed'"],
        ),
    ],
)
def test_scripts_use_the_documented_cmdlets(operation: str, needles: list[str]) -> None:
    code = render_script(operation, EXAMPLE_PARAMS[operation])
    for needle in needles:
        assert needle in code, f"{operation} lacks {needle}"


def test_remove_script_touches_only_scvmm_certificates_in_my() -> None:
    code = render_script("remove-certificates", EXAMPLE_PARAMS["remove-certificates"])
    removals = [line for line in code.split("\n") if "Remove-Item" in line]
    assert removals == ["Remove-Item -LiteralPath ('Cert:\\LocalMachine\\My\\' + $c.Thumbprint)"]
    assert "-DeleteKey" not in code and "-Recurse" not in code
    # No other script removes anything.
    for op in OPERATIONS:
        if op != "remove-certificates":
            assert "Remove-" not in render_script(op, EXAMPLE_PARAMS[op]), op


# -- rendering --------------------------------------------------------------------------


@pytest.mark.parametrize("operation", OPERATIONS)
def test_rendered_header_and_params_line(operation: str) -> None:
    for params in (EXAMPLE_PARAMS[operation], WORST_PARAMS[operation]):
        script = render_script(operation, params)
        lines = script.split("\n")
        assert lines[0] == f"# vmm-cert-exporter:{operation}/1"
        match = PARAMS_LINE.fullmatch(lines[1])
        assert match, lines[1]
        assert script.endswith("\n") and "\r" not in script
        decoded = json.loads(base64.b64decode(match.group(1), validate=True).decode("utf-8"))
        assert decoded == json.loads(json.dumps(params))
        assert decode_script(script) == (operation, decoded)
        # Nothing after line 2 but code: comments and indentation are dropped.
        for line in lines[2:-1]:
            assert line and line == line.strip() and not line.startswith("#"), line


def test_operations_without_parameters_get_an_empty_object() -> None:
    for op in ("collect-certificates", "list-managed-computers", "list-trusted-certificates"):
        assert render_script(op) == render_script(op, {})
        assert render_script(op).split("\n")[1] == "$Params = 'e30='"  # base64 of {}


@pytest.mark.parametrize("variant", range(len(HOSTILE_VARIANTS)))
def test_hostile_parameters_never_reach_the_code(variant: int) -> None:
    hostile = HOSTILE_VARIANTS[variant]
    script = render_script("register-managed-computer", HOSTILE_PARAMS[variant])
    benign = render_script("register-managed-computer", EXAMPLE_PARAMS["register-managed-computer"])
    lines, benign_lines = script.split("\n"), benign.split("\n")
    # Parameters change line 2 and nothing else.
    assert lines[:1] + lines[2:] == benign_lines[:1] + benign_lines[2:]
    assert PARAMS_LINE.fullmatch(lines[1])
    assert hostile not in script
    for fragment in ("Remove-Item C:", "$(Remove-Item", "$env:USERNAME", "\u2019;", "\u201c"):
        assert fragment not in script
    _, params = decode_script(script)
    assert params["run_as_account"] == hostile


@pytest.mark.parametrize(
    ("operation", "params"),
    [
        ("register-managed-computer", {"computer": HOSTILE, "run_as_account": "x"}),
        ("update-vmm-certificate", {"vmm_server": HOSTILE}),
        ("remove-certificates", {"thumbprints": [HOSTILE]}),
        ("remove-certificates", {"thumbprints": ["A" * 39 + "'"]}),
    ],
)
def test_hostile_names_and_thumbprints_are_refused(
    operation: str, params: dict[str, object]
) -> None:
    with pytest.raises(ValueError, match=re.escape(operation)):
        render_script(operation, params)


@given(st.text(max_size=200))
@settings(max_examples=300, deadline=None)
def test_any_run_as_account_text_is_refused_or_carried_verbatim(text: str) -> None:
    params = {"computer": "hv01.corp.example", "run_as_account": text}
    try:
        script = render_script("register-managed-computer", params)
    except ValueError as exc:
        assert "register-managed-computer: run_as_account" in str(exc)
        return
    lines = script.split("\n")
    assert PARAMS_LINE.fullmatch(lines[1])
    benign = render_script("register-managed-computer", EXAMPLE_PARAMS["register-managed-computer"])
    assert lines[2:] == benign.split("\n")[2:]
    assert decode_script(script)[1]["run_as_account"] == text


@pytest.mark.parametrize("operation", OPERATIONS)
def test_worst_case_command_line_fits_cmd_exe(operation: str) -> None:
    script = render_script(operation, WORST_PARAMS[operation])
    length = command_line_length(script)
    assert length < MAX_COMMAND_LINE
    # Keep room to grow: a script change that eats the margin should be a conscious one.
    assert length < MAX_COMMAND_LINE - 1000, f"{operation}: {length} characters"
    program, args = command_line(script)
    assert len(" ".join([program, *args])) == length


def test_worst_case_really_is_the_worst() -> None:
    # One more thumbprint, or one more character of account name, is refused.
    too_many = {"thumbprints": [f"{i:040X}" for i in range(powershell.MAX_THUMBPRINTS + 1)]}
    with pytest.raises(ValueError, match="1 to 20 thumbprints"):
        render_script("remove-certificates", too_many)
    too_long = {"computer": "hv01", "run_as_account": "\U0001f512" * 129}
    with pytest.raises(ValueError, match="at most 128 characters"):
        render_script("register-managed-computer", too_long)
    with pytest.raises(ValueError, match="1 to 253 characters"):
        render_script("update-vmm-certificate", {"vmm_server": LONGEST_FQDN + "e"})


def test_render_refuses_a_command_line_over_the_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    script = render_script("collect-certificates")
    monkeypatch.setattr(powershell, "MAX_COMMAND_LINE", command_line_length(script))
    with pytest.raises(ValueError, match=r"collect-certificates: the encoded command line"):
        render_script("collect-certificates")


def test_uncompacted_scripts_would_be_much_longer() -> None:
    # Why the renderer compacts: the commented files cost far more of the 8,191 characters.
    for op in OPERATIONS:
        rendered = render_script(op, WORST_PARAMS[op])
        full = source_with_params(op, rendered)
        assert command_line_length(full) > command_line_length(rendered) + 1000, op


def test_encode_command_and_command_line() -> None:
    script = "# vmm-cert-exporter:x/1\n$a = 'é\U0001f512'\n"
    encoded = encode_command(script)
    assert base64.b64decode(encoded, validate=True).decode("utf-16-le") == script
    assert command_line(script) == (
        "powershell",
        ["-NoProfile", "-NonInteractive", "-ExecutionPolicy", "Bypass", "-EncodedCommand", encoded],
    )


THUMB = "0123456789abcdef0123456789ABCDEF01234567"


@pytest.mark.parametrize(
    ("operation", "params", "message"),
    [
        ("no-such-operation", None, "unknown operation 'no-such-operation'; expected one of"),
        ("Collect-Certificates", None, "unknown operation"),
        ("collect-certificates", {"x": 1}, "collect-certificates: unknown parameter(s) x"),
        ("collect-certificates", [], "parameters must be a JSON object, got list"),
        ("remove-certificates", None, "remove-certificates: missing parameter(s) thumbprints"),
        ("remove-certificates", {}, "missing parameter(s) thumbprints"),
        ("remove-certificates", {"thumbprints": THUMB}, "must be a list of thumbprints, got str"),
        ("remove-certificates", {"thumbprints": []}, "must hold 1 to 20 thumbprints, got 0"),
        ("remove-certificates", {"thumbprints": [THUMB[:-1]]}, "thumbprints[0] must be 40 hex"),
        ("remove-certificates", {"thumbprints": [THUMB, THUMB + "0"]}, "thumbprints[1] must be"),
        ("remove-certificates", {"thumbprints": ["G" * 40]}, "must be 40 hexadecimal"),
        ("remove-certificates", {"thumbprints": [" " + THUMB[1:]]}, "must be 40 hexadecimal"),
        ("remove-certificates", {"thumbprints": [40]}, "must be 40 hexadecimal"),
        (
            "remove-certificates",
            {"thumbprints": [THUMB], "extra": True},
            "unknown parameter(s) extra; expected: thumbprints",
        ),
        ("register-managed-computer", {"computer": "hv01"}, "missing parameter(s) run_as_account"),
        (
            "register-managed-computer",
            {"computer": "hv01", "run_as_account": ""},
            "run_as_account must not be empty",
        ),
        (
            "register-managed-computer",
            {"computer": "hv01", "run_as_account": "a\nb"},
            "must not contain control characters",
        ),
        (
            "register-managed-computer",
            {"computer": "hv01", "run_as_account": "\ud800"},
            "lone surrogate",
        ),
        (
            "register-managed-computer",
            {"computer": "hv01", "run_as_account": 7},
            "run_as_account must be a string, got int",
        ),
        (
            "register-managed-computer",
            {"computer": "hv 01.corp", "run_as_account": "a"},
            "computer is not a valid FQDN",
        ),
        (
            "register-managed-computer",
            {"computer": "hv01..corp", "run_as_account": "a"},
            "not a valid FQDN",
        ),
        (
            "register-managed-computer",
            {"computer": "-hv01.corp", "run_as_account": "a"},
            "not a valid FQDN",
        ),
        (
            "register-managed-computer",
            {"computer": "hv01.corp.", "run_as_account": "a"},
            "not a valid FQDN",
        ),
        (
            "register-managed-computer",
            {"computer": "a" * 64 + ".corp", "run_as_account": "a"},
            "not a valid FQDN",
        ),
        ("list-managed-computers", {"computer": "hv 01"}, "computer is not a valid FQDN"),
        ("list-trusted-certificates", {"computer": 7}, "computer must be a string"),
        (
            "list-trusted-certificates",
            {"computers": ["hv01"]},
            "unknown parameter(s) computers; expected: computer (optional)",
        ),
        ("update-vmm-certificate", {"vmm_server": ""}, "vmm_server must be an FQDN of 1 to 253"),
        ("update-vmm-certificate", {"vmm_server": None}, "vmm_server must be a string"),
        ("update-vmm-certificate", {"vmm_server": "vmm01.corp", "computer": "x"}, "unknown"),
    ],
)
def test_bad_parameters_get_a_specific_error(operation: str, params: Any, message: str) -> None:
    with pytest.raises(ValueError) as info:
        render_script(operation, params)
    assert message in str(info.value)


def test_thumbprints_are_normalised() -> None:
    script = render_script("remove-certificates", {"thumbprints": [THUMB, THUMB.upper()]})
    assert decode_script(script)[1] == {"thumbprints": [THUMB.upper()]}


@pytest.mark.parametrize(
    ("script", "message"),
    [
        ("", "header line and a $Params line"),
        ("# something else\n$Params = 'e30='\n", "line 1 is not a vmm-cert-exporter header"),
        ("# vmm-cert-exporter:collect-certificates/2\n$Params = 'e30='\n", "schema 2"),
        ("# vmm-cert-exporter:format-disk/1\n$Params = 'e30='\n", "unknown operation"),
        ("# vmm-cert-exporter:collect-certificates/1\n$Params = '{}'\n", "line 2 is not"),
        ("# vmm-cert-exporter:collect-certificates/1\n$Params = 'e30'\n", "not base64"),
        ("# vmm-cert-exporter:collect-certificates/1\n$Params = 'W10='\n", "JSON object"),
    ],
)
def test_decode_script_refuses_what_breaks_the_contract(script: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        decode_script(script)


# -- print-script -----------------------------------------------------------------------


@pytest.mark.parametrize("operation", OPERATIONS)
def test_print_script_prints_exactly_what_is_sent(
    operation: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["print-script", operation]) == 0
    out, err = capsys.readouterr()
    assert out == render_script(operation, EXAMPLE_PARAMS[operation])
    assert err == ""


def test_print_script_with_params(capsys: pytest.CaptureFixture[str]) -> None:
    params = {"computer": "hv42.corp.example", "run_as_account": HOSTILE}
    code = cli.main(["print-script", "register-managed-computer", "--params", json.dumps(params)])
    assert code == 0
    assert capsys.readouterr().out == render_script("register-managed-computer", params)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["print-script", "format-c"], "unknown operation 'format-c'; expected one of: collect"),
        (["print-script", "collect-certificates", "--params", "{"], "--params is not valid JSON"),
        (["print-script", "collect-certificates", "--params", "[1]"], "must be a JSON object"),
        (
            ["print-script", "remove-certificates", "--params", '{"thumbprints":["x"]}'],
            "remove-certificates: thumbprints[0] must be 40 hexadecimal characters",
        ),
        (
            ["print-script", "update-vmm-certificate", "--params", "{}"],
            "missing parameter(s) vmm_server",
        ),
    ],
)
def test_print_script_errors_exit_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(argv) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert message in err


def test_print_script_command_takes_the_parsed_namespace(
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = argparse.Namespace(operation="update-vmm-certificate", params=None)
    assert powershell.print_script_command(args) == 0
    assert capsys.readouterr().out.startswith("# vmm-cert-exporter:update-vmm-certificate/1\n")


@pytest.mark.e2e
def test_print_script_through_the_installed_command(exporter_command: ExporterCommand) -> None:
    exe = Path(exporter_command.path)
    assert exe.is_file(), f"{exe} missing: the project is not installed in this venv"
    proc = subprocess.run(
        [str(exe), "print-script", "list-managed-computers"],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.decode("utf-8") == render_script("list-managed-computers")
    bad = subprocess.run(
        [str(exe), "print-script", "nope"], capture_output=True, timeout=60, check=False
    )
    assert bad.returncode == 2 and b"unknown operation" in bad.stderr
