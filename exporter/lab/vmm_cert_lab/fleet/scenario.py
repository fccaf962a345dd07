"""Lab scenarios: a strictly validated YAML format, the built-in ones, generated fleets.

Every error names the file, the field path and what was expected, e.g.
``demo.yaml: computers[3].expires_in: expected a duration like '20d' or '-3d', got 'soon'``.
The format is documented in docs/lab-scenarios.md.
"""

from __future__ import annotations

import math
import re
from datetime import timedelta
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from vmm_cert_lab.fleet import locales
from vmm_cert_lab.fleet.clock import LabClock
from vmm_cert_lab.fleet.interfaces import (
    AUTH_METHODS,
    CBT_LEVELS,
    LANGUAGE_MODES,
    Account,
    Faults,
)
from vmm_cert_lab.fleet.model import (
    CERT_DUPLICATE,
    CERT_MISSING,
    CERT_PRESENT,
    ROLE_HOST,
    ROLE_LIBRARY,
    ROLE_VMM,
    TRUST_MATCH,
    TRUST_MISMATCH,
    TRUST_MISSING,
    ComputerSpec,
    Fleet,
    VmmSpec,
    VmmVersion,
)

# the lab's documented WinRM account; a lab secret by design, never a real one
DEFAULT_ACCOUNT = Account(domain="LAB", username="svc-vmmcert", password="lab-password")  # noqa: S106
DEFAULT_RUN_AS = "VMM Host Admins"
BUILT_IN = ("demo", "ha")  # scenarios/<name>.yaml, shipped in the package
# generated (generate.big_cohort_scenario): 3,000 computers (or --hosts) expiring together
BIG_COHORT = "big-cohort"
# the DNS domain of every computer in the built-in scenarios and in generated fleets
LAB_DOMAIN = "lab.example"

_FQDN_RE = re.compile(
    r"(?=.{3,253}$)(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+"
    r"[A-Za-z](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
)
_DURATION_RE = re.compile(r"(?P<n>-?[0-9]+)(?P<unit>[smhdw])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}

_TOP_KEYS = {
    "name", "description", "clock_offset", "validity_years", "validity_years_by_version",
    "accounts", "run_as_accounts", "locale", "vmm_server", "vmm_servers", "computers",
}  # fmt: skip
_COMPUTER_KEYS = {
    "fqdn", "role", "added_year", "added_years_ago", "expires_in", "certificate", "trusted",
    "faults", "state", "agent_version", "noise",
}  # fmt: skip
_VMM_ONLY_KEYS = {
    "version", "high_availability", "trusted_self_copy", "trusted_noise", "nodes", "aliases",
    "config_name",
}  # fmt: skip
_VMM_KEYS = (_COMPUTER_KEYS - {"role"}) | _VMM_ONLY_KEYS


class ScenarioError(ValueError):
    """A scenario that does not validate: ``<where>: <path>: expected ..., got ...``."""


def lab_host(name: str) -> str:
    """A computer's FQDN in the lab's domain: ``lab_host("hv01")`` is ``hv01.lab.example``."""
    return f"{name}.{LAB_DOMAIN}"


def _fail(where: str, path: str, expected: str, got: Any = ...) -> ScenarioError:
    detail = "" if got is ... else f", got {got!r}"
    return ScenarioError(f"{where}: {path}: expected {expected}{detail}")


def _check_keys(data: dict[str, Any], allowed: set[str], where: str, path: str) -> None:
    for key in data:
        if key not in allowed:
            raise _fail(where, f"{path}.{key}" if path else str(key),
                        f"one of the known fields {sorted(allowed)}; unknown field")  # fmt: skip


def _mapping(value: Any, where: str, path: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _fail(where, path or "(top level)", "a mapping", value)
    return value


def _str(value: Any, where: str, path: str, expected: str = "a non-empty string") -> str:
    if not isinstance(value, str) or not value.strip():
        raise _fail(where, path, expected, value)
    return value


def _bool(value: Any, where: str, path: str) -> bool:
    if not isinstance(value, bool):
        raise _fail(where, path, "true or false", value)
    return value


def _int(value: Any, where: str, path: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise _fail(where, path, f"an integer from {low} to {high}", value)
    return value


def parse_duration(value: Any, where: str, path: str) -> timedelta:
    """``20d``, ``-3d``, ``12h``, ``2w``, ``90m``, ``30s``."""
    match = _DURATION_RE.fullmatch(value.strip()) if isinstance(value, str) else None
    if match is None:
        raise _fail(where, path, "a duration like '20d' or '-3d' (units s, m, h, d, w)", value)
    return timedelta(seconds=int(match.group("n")) * _UNIT_SECONDS[match.group("unit")])


def _fqdn(value: Any, where: str, path: str) -> str:
    if not isinstance(value, str) or not _FQDN_RE.fullmatch(value):
        raise _fail(where, path, "a fully qualified domain name like 'hv01.lab.example'", value)
    return value


def _choice(value: Any, choices: tuple[str, ...], where: str, path: str) -> str:
    if value not in choices:
        raise _fail(where, path, "one of " + ", ".join(choices), value)
    return str(value)


def _version(value: Any, where: str, path: str) -> VmmVersion:
    # YAML reads an unquoted 2022 as an integer; it means the release all the same
    text = str(value) if isinstance(value, int) and not isinstance(value, bool) else value
    try:
        return VmmVersion.parse(text)
    except ValueError:
        raise _fail(
            where, path, "a VMM version like '2016 UR10', '2019 UR2', '2022' or '2025'", value
        ) from None


def parse_computer(
    data: Any, *, where: str, path: str, role: str | None = None, extra: set[str] | None = None
) -> ComputerSpec:
    """Validate one computer entry. ``role`` fixes the role (the VMM server's entry)."""
    entry = _mapping(data, where, path)
    allowed = (_COMPUTER_KEYS - {"role"} if role else _COMPUTER_KEYS) | (extra or set())
    _check_keys(entry, allowed, where, path)
    if "fqdn" not in entry:
        raise _fail(where, f"{path}.fqdn", "the computer's FQDN (required)")
    fqdn = _fqdn(entry["fqdn"], where, f"{path}.fqdn")
    if role is None:
        if "role" not in entry:
            raise _fail(where, f"{path}.role", f"{ROLE_HOST} or {ROLE_LIBRARY} (required)")
        role = _choice(entry["role"], (ROLE_HOST, ROLE_LIBRARY), where, f"{path}.role")
    placements = [k for k in ("added_year", "added_years_ago", "expires_in") if k in entry]
    if len(placements) > 1:
        raise _fail(where, f"{path}.{placements[1]}",
                    f"only one of added_year, added_years_ago, expires_in; {placements[0]} "
                    "is already set")  # fmt: skip
    added_year = (
        _int(entry["added_year"], where, f"{path}.added_year", 1990, 2200)
        if "added_year" in entry
        else None
    )
    added_years_ago = (
        _int(entry["added_years_ago"], where, f"{path}.added_years_ago", 0, 100)
        if "added_years_ago" in entry
        else None
    )
    expires_in = (
        parse_duration(entry["expires_in"], where, f"{path}.expires_in")
        if "expires_in" in entry
        else None
    )
    certificate = _choice(entry.get("certificate", CERT_PRESENT),
                          (CERT_PRESENT, CERT_MISSING, CERT_DUPLICATE), where,
                          f"{path}.certificate")  # fmt: skip
    trusted = _choice(entry.get("trusted", TRUST_MATCH),
                      (TRUST_MATCH, TRUST_MISMATCH, TRUST_MISSING), where,
                      f"{path}.trusted")  # fmt: skip
    faults = Faults()
    if "faults" in entry:
        raw_faults = _mapping(entry["faults"], where, f"{path}.faults")
        known = Faults().to_dict()
        for key, value in raw_faults.items():
            fault_path = f"{path}.faults.{key}"
            if key not in known:
                raise _fail(
                    where, fault_path, f"a fault name, one of {sorted(known)}; unknown fault"
                )
            if isinstance(known[key], bool):
                _bool(value, where, fault_path)
            elif isinstance(known[key], list):
                if not isinstance(value, list) or any(v not in AUTH_METHODS for v in value):
                    raise _fail(where, fault_path, f"a list of {', '.join(AUTH_METHODS)}", value)
            elif isinstance(known[key], str):
                choices = CBT_LEVELS if key == "cbt_hardening" else LANGUAGE_MODES
                _choice(value, choices, where, fault_path)
            elif isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise _fail(where, fault_path, "a number of seconds >= 0", value)
        faults = Faults.from_dict(raw_faults)  # checked above, so it cannot raise
    state = (
        _choice(entry["state"], locales.STATES, where, f"{path}.state")
        if "state" in entry
        else None
    )
    agent_version = (
        _str(entry["agent_version"], where, f"{path}.agent_version")
        if "agent_version" in entry
        else None
    )
    noise = _bool(entry["noise"], where, f"{path}.noise") if "noise" in entry else True
    return ComputerSpec(
        fqdn=fqdn,
        role=role,
        added_year=added_year,
        added_years_ago=added_years_ago,
        expires_in=expires_in,
        certificate=certificate,
        trusted=trusted,
        faults=faults,
        state=state,
        agent_version=agent_version,
        noise=noise,
    )


def _accounts(value: Any, where: str) -> list[Account]:
    if not isinstance(value, list) or not value:
        raise _fail(where, "accounts", "a non-empty list of {domain, username, password}", value)
    accounts = []
    for index, item in enumerate(value):
        path = f"accounts[{index}]"
        entry = _mapping(item, where, path)
        _check_keys(entry, {"domain", "username", "password"}, where, path)
        for key in ("domain", "username", "password"):
            if key not in entry:
                raise _fail(where, f"{path}.{key}", "a non-empty string (required)")
        accounts.append(
            Account(
                domain=_str(entry["domain"], where, f"{path}.domain"),
                username=_str(entry["username"], where, f"{path}.username"),
                password=_str(entry["password"], where, f"{path}.password"),
            )
        )
    return accounts


def _vmm_entry(
    data: Any, where: str, path: str, computers: Any, computers_path: str
) -> tuple[VmmSpec, list[ComputerSpec]]:
    """One VMM server entry (``vmm_server`` or ``vmm_servers[i]``) and its managed computers."""
    entry = _mapping(data, where, path)
    allowed = _VMM_KEYS | ({"computers"} if computers is None else set())
    _check_keys(entry, allowed, where, path)
    if "version" not in entry:
        raise _fail(where, f"{path}.version", "a VMM version like '2019 UR2' (required)")
    version = _version(entry["version"], where, f"{path}.version")
    flags = {
        key: _bool(entry[key], where, f"{path}.{key}")
        for key in ("high_availability", "trusted_self_copy", "trusted_noise")
        if key in entry
    }
    if "fqdn" not in entry:
        raise _fail(where, f"{path}.fqdn", "the VMM server's FQDN (required)")
    fqdn = _fqdn(entry["fqdn"], where, f"{path}.fqdn")
    if "nodes" in entry:
        # a clustered role: the name is no computer, so certificate fields belong to nodes
        misplaced = sorted(set(entry) & (_COMPUTER_KEYS - {"fqdn"}))
        if misplaced:
            raise _fail(
                where,
                f"{path}.{misplaced[0]}",
                "this field on a node: a VMM server with nodes is a clustered role, which has "
                "no certificate of its own",
            )
        if flags.get("high_availability") is False:
            raise _fail(
                where,
                f"{path}.high_availability",
                "true (or nothing): nodes make a highly available VMM server",
                False,
            )
        raw_nodes = entry["nodes"]
        if not isinstance(raw_nodes, list) or len(raw_nodes) < 2:
            raise _fail(
                where,
                f"{path}.nodes",
                "a list of at least two cluster nodes, the active one first",
                raw_nodes,
            )
        nodes = tuple(
            parse_computer(item, where=where, path=f"{path}.nodes[{index}]", role=ROLE_VMM)
            for index, item in enumerate(raw_nodes)
        )
        high_availability = True
    else:
        nodes = (
            parse_computer(
                {k: v for k, v in entry.items() if k in _COMPUTER_KEYS},
                where=where, path=path, role=ROLE_VMM,
            ),
        )  # fmt: skip
        high_availability = flags.get("high_availability", False)
    aliases: list[str] = []
    if "aliases" in entry:
        raw_aliases = entry["aliases"]
        if not isinstance(raw_aliases, list):
            raise _fail(where, f"{path}.aliases", "a list of DNS names", raw_aliases)
        aliases = [_fqdn(v, where, f"{path}.aliases[{i}]") for i, v in enumerate(raw_aliases)]
    names = [fqdn, *aliases, *(node.fqdn for node in nodes if node.fqdn != fqdn)]
    config_name = None
    if "config_name" in entry:
        config_name = _fqdn(entry["config_name"], where, f"{path}.config_name")
        if config_name.lower() not in {name.lower() for name in names}:
            raise _fail(where, f"{path}.config_name",
                        f"one of the server's names {names}", config_name)  # fmt: skip
    raw_computers = entry.get("computers", []) if computers is None else computers
    if not isinstance(raw_computers, list):
        raise _fail(where, computers_path, "a list of computers", raw_computers)
    managed = [
        parse_computer(item, where=where, path=f"{computers_path}[{index}]")
        for index, item in enumerate(raw_computers)
    ]
    spec = VmmSpec(
        fqdn=fqdn,
        version=version,
        nodes=nodes,
        high_availability=high_availability,
        trusted_self_copy=flags.get("trusted_self_copy", False),
        trusted_noise=flags.get("trusted_noise", True),
        aliases=tuple(aliases),
        config_name=config_name,
    )
    return spec, managed


def _unique_names(servers: list[tuple[str, VmmSpec, list[ComputerSpec]]], where: str) -> None:
    """Every DNS name of the fleet once (case-insensitive): FQDNs, role names, aliases."""
    seen: dict[str, str] = {}

    def claim(name: str, path: str) -> None:
        if name.lower() in seen:
            raise _fail(where, path, "a unique FQDN, role name or alias (case-insensitive); "
                        f"{seen[name.lower()]} has it already", name)  # fmt: skip
        seen[name.lower()] = path

    for path, spec, managed in servers:
        if len(spec.nodes) > 1:
            claim(spec.fqdn, f"{path}.fqdn")
            for index, node in enumerate(spec.nodes):
                claim(node.fqdn, f"{path}.nodes[{index}].fqdn")
        else:
            claim(spec.fqdn, f"{path}.fqdn")
        for index, alias in enumerate(spec.aliases):
            claim(alias, f"{path}.aliases[{index}]")
        computers_path = "computers" if path == "vmm_server" else f"{path}.computers"
        for index, computer in enumerate(managed):
            claim(computer.fqdn, f"{computers_path}[{index}].fqdn")


def build_fleet(data: Any, where: str = "scenario", locale: str | None = None) -> Fleet:
    """Validate a parsed scenario document and build its fleet; ``locale`` (``en-US``,
    ``ja-JP``) overrides the scenario's own."""
    top = _mapping(data, where, "")
    _check_keys(top, _TOP_KEYS, where, "")
    for key in ("name", "description"):
        if key in top:
            _str(top[key], where, key)
    offset = 0.0
    if "clock_offset" in top:
        raw = top["clock_offset"]
        if isinstance(raw, int | float) and not isinstance(raw, bool) and math.isfinite(raw):
            offset = float(raw)
        else:
            offset = parse_duration(raw, where, "clock_offset").total_seconds()
    validity = (
        _int(top["validity_years"], where, "validity_years", 1, 100)
        if "validity_years" in top
        else 5
    )
    by_version: dict[str, int] = {}
    if "validity_years_by_version" in top:
        overrides = _mapping(top["validity_years_by_version"], where, "validity_years_by_version")
        for key, years in overrides.items():
            path = f"validity_years_by_version.{key}"
            version = _version(key, where, path)
            # a bare release ("2025") covers every Update Rollup of it; "2019 UR2" only that one
            name = version.release if str(key).strip() == version.release else version.name
            by_version[name] = _int(years, where, path, 1, 100)
    accounts = _accounts(top["accounts"], where) if "accounts" in top else [DEFAULT_ACCOUNT]
    run_as = [DEFAULT_RUN_AS]
    if "run_as_accounts" in top:
        raw_run_as = top["run_as_accounts"]
        if not isinstance(raw_run_as, list) or not raw_run_as:
            raise _fail(where, "run_as_accounts", "a non-empty list of Run As account names",
                        raw_run_as)  # fmt: skip
        run_as = [_str(v, where, f"run_as_accounts[{i}]") for i, v in enumerate(raw_run_as)]
    if locale is None and "locale" in top:
        locale = _choice(top["locale"], locales.LOCALES, where, "locale")
    servers = _vmm_servers(top, where)
    _unique_names(servers, where)

    fleet = Fleet(
        accounts=accounts,
        clock=LabClock(offset),
        validity_years=validity,
        validity_by_version=by_version,
        run_as_accounts=run_as,
        locale=locales.parse_locale(locale or locales.EN_US),
    )
    for _path, spec, managed in servers:
        fleet.add_vmm(spec)
        for computer in managed:
            fleet.add_managed(computer, spec.fqdn)
    return fleet


def _vmm_servers(top: dict[str, Any], where: str) -> list[tuple[str, VmmSpec, list[ComputerSpec]]]:
    """``vmm_server`` (one, with the top-level ``computers``) or ``vmm_servers`` (each with
    its own ``computers``): exactly one of the two."""
    if "vmm_server" in top and "vmm_servers" in top:
        raise _fail(where, "vmm_servers", "either vmm_server or vmm_servers, not both")
    if "vmm_servers" in top:
        if "computers" in top:
            raise _fail(where, "computers",
                        "each VMM server's computers under vmm_servers[i].computers")  # fmt: skip
        raw = top["vmm_servers"]
        if not isinstance(raw, list) or not raw:
            raise _fail(where, "vmm_servers", "a non-empty list of VMM servers", raw)
        servers = []
        for index, item in enumerate(raw):
            path = f"vmm_servers[{index}]"
            spec, managed = _vmm_entry(item, where, path, None, f"{path}.computers")
            servers.append((path, spec, managed))
        return servers
    if "vmm_server" not in top:
        raise _fail(where, "vmm_server", "the VMM management server (required)")
    spec, managed = _vmm_entry(
        top["vmm_server"], where, "vmm_server", top.get("computers", []), "computers"
    )
    return [("vmm_server", spec, managed)]


def load_scenario_file(path: str | Path, locale: str | None = None) -> Fleet:
    """Read, validate and build a scenario YAML file."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as error:
        raise ScenarioError(f"{file}: cannot read the scenario: {error.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ScenarioError(f"{file}: not valid YAML: {error}") from None
    return build_fleet(data, where=str(file), locale=locale)


def built_in_scenario_text(name: str) -> str:
    return (
        resources.files("vmm_cert_lab.fleet")
        .joinpath(f"scenarios/{name}.yaml")
        .read_text(encoding="utf-8")
    )


def demo_scenario_text() -> str:
    return built_in_scenario_text("demo")


def load_fleet(
    scenario: str = "demo", hosts: int | None = None, seed: int = 1, locale: str | None = None
) -> Fleet:
    """A built-in scenario (``demo``, ``ha``, ``big-cohort``: 3,000 computers or ``hosts``
    expiring on the next 1 January), a YAML file path, or ``hosts=N``: a generated fleet of
    N managed computers (plus one VMM server), deterministic for ``seed``.
    ``locale`` (``en-US``, ``ja-JP``) sets the VMM servers' display language, overriding the
    scenario's ``locale``; ScenarioError (a ValueError) for anything else."""
    if locale is not None:
        try:
            locale = locales.parse_locale(locale)
        except ValueError as error:
            raise ScenarioError(f"--locale: {error}") from None
    if scenario == BIG_COHORT:
        from vmm_cert_lab.fleet.generate import BIG_COHORT_HOSTS, big_cohort_scenario

        count = BIG_COHORT_HOSTS if hosts is None else hosts
        return build_fleet(
            big_cohort_scenario(count, LAB_DOMAIN), where=f"{BIG_COHORT}({count})", locale=locale
        )
    if hosts is not None:
        if scenario != "demo":
            raise ScenarioError(
                "--hosts generates a fleet: it goes with no --scenario, or big-cohort"
            )
        from vmm_cert_lab.fleet.generate import generated_scenario

        return build_fleet(
            generated_scenario(hosts, seed, LAB_DOMAIN),
            where=f"generated(hosts={hosts})",
            locale=locale,
        )
    if scenario in BUILT_IN:
        data = yaml.safe_load(built_in_scenario_text(scenario))
        return build_fleet(data, where=f"{scenario}.yaml", locale=locale)
    return load_scenario_file(scenario, locale=locale)
