"""The lab's Windows + VMM model: computers, certificate stores, VMM servers and their views.

One ``threading.RLock`` guards the whole fleet: the WS-Management server calls in from many
threads, and every operation is short. Certificates are signed lazily (see ``certs.py``), and
that cost is paid outside the lock where possible (documents are rendered after release).

A computer's VMM state is never stored: it is derived from the facts (faults, the store, the
TrustedPeople copy, the lab clock) at every read, so changing a fact or the clock changes what
VMM reports, as in a real fleet. See docs/lab-scenarios.md for the rules.

Names are resolved as the fleet's DNS would: a computer's FQDN (any case), a DNS alias, or the
clustered role name of a highly available VMM server, which reaches its active node.
"""

from __future__ import annotations

import copy
import itertools
import re
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from vmm_cert_lab.fleet import locales
from vmm_cert_lab.fleet import powershell as ps
from vmm_cert_lab.fleet.certs import (
    SCVMM_FRIENDLY_PREFIX,
    LabCertificate,
    StoreEntry,
    make_serial,
)
from vmm_cert_lab.fleet.clock import LabClock
from vmm_cert_lab.fleet.interfaces import Account, Execution, Faults

ROLE_VMM = "vmm_server"
ROLE_HOST = "hyperv_host"
ROLE_LIBRARY = "library_server"
ROLES = (ROLE_VMM, ROLE_HOST, ROLE_LIBRARY)

STATE_RESPONDING = locales.STATE_RESPONDING
STATE_NOT_RESPONDING = locales.STATE_NOT_RESPONDING
STATE_ACCESS_DENIED = locales.STATE_ACCESS_DENIED

# transport faults that make a computer unreachable for VMM too (latency and drip only slow it)
_UNREACHABLE_FAULTS = (
    "connection_refused",
    "black_hole",
    "tls_error",
    "http_401",
    "access_denied",
    "receive_timeout",
)

CERT_PRESENT, CERT_MISSING, CERT_DUPLICATE = "present", "missing", "duplicate"
TRUST_MATCH, TRUST_MISMATCH, TRUST_MISSING = "match", "mismatch", "missing"

# --- VMM versions ---------------------------------------------------------------------------

_VERSION_RE = re.compile(r"(?P<release>2016|2019|2022|2025)(?: UR(?P<ur>[1-9][0-9]?))?")
# ProductVersion-like builds: major.minor of each release follow the real scheme (4.0 for
# 2016, 10.<yy> later), the build numbers are lab inventions (base + 100 per Update Rollup)
_BUILD_BASE = {"2016": ("4.0", 1662), "2019": ("10.19", 2391), "2022": ("10.22", 1287),
               "2025": ("10.25", 1030)}  # fmt: skip
# the first Update Rollup that ships Update-SCVMMCertificate (0 = every build of the release)
_UPDATE_CERT_FROM = {"2016": 10, "2019": 2, "2022": 0, "2025": 0}


@dataclass(frozen=True)
class VmmVersion:
    """A VMM release as scenarios name it: ``2016 UR9``, ``2019 UR2``, ``2022``, ``2025``."""

    release: str
    update_rollup: int  # 0 = the release itself

    @classmethod
    def parse(cls, text: str) -> VmmVersion:
        match = _VERSION_RE.fullmatch(text.strip()) if isinstance(text, str) else None
        if match is None:
            raise ValueError(
                f"expected a VMM version like '2016 UR10', '2019 UR2', '2022' or '2025', "
                f"got {text!r}"
            )
        return cls(match.group("release"), int(match.group("ur") or 0))

    @property
    def name(self) -> str:
        return self.release + (f" UR{self.update_rollup}" if self.update_rollup else "")

    @property
    def product_version(self) -> str:
        major_minor, base = _BUILD_BASE[self.release]
        return f"{major_minor}.{base + 100 * self.update_rollup}.0"

    @property
    def supports_update_certificate(self) -> bool:
        return self.update_rollup >= _UPDATE_CERT_FROM[self.release]


# --- certificate placement ------------------------------------------------------------------


@dataclass(frozen=True)
class ComputerSpec:
    """One computer as a scenario (or the control API) describes it, already validated.

    At most one of ``added_year``, ``added_years_ago`` and ``expires_in`` is set; none means
    "added this year" (what VMM does to a computer added today).
    """

    fqdn: str
    role: str
    added_year: int | None = None
    added_years_ago: int | None = None
    expires_in: timedelta | None = None
    certificate: str = CERT_PRESENT
    trusted: str = TRUST_MATCH
    faults: Faults = field(default_factory=Faults)
    state: str | None = None
    agent_version: str | None = None
    noise: bool = True


def _year_start(year: int) -> datetime:
    return datetime(year, 1, 1, tzinfo=UTC)


def _minus_years(moment: datetime, years: int) -> datetime:
    try:
        return moment.replace(year=moment.year - years)
    except ValueError:  # 29 February in a year that has none
        return moment.replace(year=moment.year - years, day=28)


@dataclass(frozen=True)
class VmmSpec:
    """One VMM management server as a scenario describes it, already validated.

    ``nodes`` are the computers that run it, the active one first: one computer named
    ``fqdn`` for a plain server; for a highly available one, the cluster nodes, and ``fqdn``
    is the clustered role's name. ``aliases`` are DNS names that reach ``fqdn``;
    ``config_name`` is the name an exporter configuration uses for it.
    """

    fqdn: str
    version: VmmVersion
    nodes: tuple[ComputerSpec, ...]
    high_availability: bool = False
    trusted_self_copy: bool = False
    trusted_noise: bool = True
    aliases: tuple[str, ...] = ()
    config_name: str | None = None


@dataclass
class VmmServer:
    """What only a VMM management server has; on a highly available one, shared by its nodes."""

    fqdn: str  # Get-SCVMMServer's FQDN: the clustered role's name when highly available
    version: VmmVersion
    high_availability: bool
    trusted_self_copy: bool  # does TrustedPeople hold copies of its own nodes'? unverified
    validity_years: int
    nodes: list[str]  # keys of the computers that run it, in ActiveVMMNode/FailoverVMMNodes order
    active: str  # key of the node whose VMM service runs; the others refuse VMM cmdlets
    config_name: str
    aliases: list[str] = field(default_factory=list)
    managed: list[str] = field(default_factory=list)  # keys, in the order VMM lists them
    trusted: dict[str, StoreEntry] = field(default_factory=dict)  # key -> copy in TrustedPeople
    trusted_noise: list[StoreEntry] = field(default_factory=list)  # IP-named, WinPE bootstrap

    @property
    def key(self) -> str:
        return self.fqdn.lower()


@dataclass
class Computer:
    fqdn: str  # as registered; identity is fqdn.lower()
    role: str
    my: list[StoreEntry]
    faults: Faults
    managed_by: VmmServer  # a VMM server's nodes are managed by that server
    state_override: str | None = None
    agent_version: str | None = None
    vmm: VmmServer | None = None  # the VMM server this computer is a node of

    @property
    def key(self) -> str:
        return self.fqdn.lower()

    def scvmm_entries(self) -> list[StoreEntry]:
        return [entry for entry in self.my if entry.is_scvmm]

    def current(self) -> StoreEntry | None:
        """The certificate that counts: the SCVMM one with the latest NotAfter."""
        entries = self.scvmm_entries()
        return max(entries, key=lambda e: e.cert.not_after) if entries else None

    def role_flags(self) -> tuple[str, ...]:
        """The flags of VMM's ``Role``. A VMM server holds the library role VMM sets up by
        default; a highly available one has none (no library share on the cluster; unverified)."""
        if self.role == ROLE_HOST:
            return (locales.ROLE_HOST,)
        if self.role == ROLE_LIBRARY:
            return (locales.ROLE_LIBRARY,)
        if self.vmm is not None and self.vmm.high_availability:
            return (locales.ROLE_VMM_SERVER,)
        return (locales.ROLE_LIBRARY, locales.ROLE_VMM_SERVER)


def _unreachable(faults: Faults) -> bool:
    return any(getattr(faults, name) for name in _UNREACHABLE_FAULTS)


def _trusted_copy(cert: LabCertificate, fqdn: str) -> StoreEntry:
    """VMM's copy in TrustedPeople: public only, with the friendly name of the original."""
    return StoreEntry(cert, friendly_name=SCVMM_FRIENDLY_PREFIX + fqdn)


@dataclass
class _Result:
    """An operation's answer, rendered to bytes after the fleet lock is released."""

    document: dict[str, Any]
    exit_code: int = 0


class Fleet:
    """The whole lab fleet; implements ``interfaces.FleetModel``. Thread-safe."""

    def __init__(
        self,
        *,
        accounts: list[Account],
        clock: LabClock | None = None,
        validity_years: int = 5,
        validity_by_version: dict[str, int] | None = None,
        run_as_accounts: list[str] | None = None,
        locale: str = locales.EN_US,
    ) -> None:
        self._lock = threading.RLock()
        self._accounts = list(accounts)
        self._clock = clock or LabClock()
        self._validity_years = validity_years
        self._validity_by_version = dict(validity_by_version or {})
        self._run_as_accounts = list(run_as_accounts or ["VMM Host Admins"])
        self._locale = locales.parse_locale(locale)
        self._computers: dict[str, Computer] = {}
        self._servers: dict[str, VmmServer] = {}  # by VMM FQDN (role name), in insertion order
        self._aliases: dict[str, str] = {}  # DNS alias -> the name it reaches
        self._serials = itertools.count(1)

    # --- building ---------------------------------------------------------------------------

    def validity_for(self, version: VmmVersion) -> int:
        """Validity years of the certificates a VMM of this version creates: an override for
        the exact name ("2019 UR2"), else for the release ("2019"), else the default."""
        for key in (version.name, version.release):
            if key in self._validity_by_version:
                return self._validity_by_version[key]
        return self._validity_years

    def _new_cert(self, fqdn: str, not_before: datetime, not_after: datetime) -> LabCertificate:
        number = next(self._serials)
        serial = make_serial(fqdn.lower(), not_before.isoformat(), str(number))
        return LabCertificate(
            subject_cn=fqdn,
            not_before=not_before,
            not_after=not_after,
            serial=serial,
            key_index=serial,  # spreads certificates over the key pool
        )

    def _scvmm_entry(self, fqdn: str, not_before: datetime, not_after: datetime) -> StoreEntry:
        return StoreEntry(
            self._new_cert(fqdn, not_before, not_after),
            friendly_name=SCVMM_FRIENDLY_PREFIX + fqdn,
            has_private_key=True,
        )

    def _noise_entries(self, fqdn: str, now: datetime) -> list[StoreEntry]:
        """Certificates a Windows server keeps in My besides VMM's: a WinRM HTTPS listener
        certificate with the same CN and no friendly name (the trap: filter on the friendly
        name, not the subject), and IIS Web Management Service's ``WMSvc-SHA2-<NAME>``."""
        short = fqdn.split(".", 1)[0].upper()
        start = _year_start(now.year - 1)
        listener = self._new_cert(fqdn, start, _year_start(now.year + 1))
        listener.scvmm_profile = False
        wmsvc = self._new_cert(f"WMSvc-SHA2-{short}", start, _year_start(now.year + 9))
        wmsvc.scvmm_profile = False
        return [
            StoreEntry(listener, friendly_name="", has_private_key=True),
            StoreEntry(wmsvc, friendly_name=f"WMSvc-SHA2-{short}", has_private_key=True),
        ]

    def _trusted_noise(self, now: datetime, count: int = 2) -> list[StoreEntry]:
        """TrustedPeople entries that are not copies of a managed computer's certificate."""
        entries = []
        start, end = _year_start(now.year - 2), _year_start(now.year + 3)
        for index in range(count):
            ip = f"10.20.0.{101 + index}"
            cert = LabCertificate(
                subject_cn=ip, not_before=start, not_after=end,
                serial=make_serial(ip, str(next(self._serials))), san=False, scvmm_profile=False,
            )  # fmt: skip
            entries.append(StoreEntry(cert))
        bootstrap = LabCertificate(
            subject_cn="VMMWinPEAgentOSDBootstrap", not_before=start, not_after=end,
            serial=make_serial("bootstrap", str(next(self._serials))), san=False,
            scvmm_profile=False,
        )  # fmt: skip
        entries.append(StoreEntry(bootstrap))
        return entries

    def _dates(self, spec: ComputerSpec, validity: int, now: datetime) -> tuple[datetime, datetime]:
        if spec.expires_in is not None:
            # 00:00 UTC of the day ``expires_in`` after now; NotBefore validity years earlier
            day = (now + spec.expires_in).date()
            not_after = datetime(day.year, day.month, day.day, tzinfo=UTC)
            return _minus_years(not_after, validity), not_after
        if spec.added_year is not None:
            year = spec.added_year
        else:
            year = now.year - (spec.added_years_ago or 0)
        return _year_start(year), _year_start(year + validity)

    def _name_taken(self, name: str) -> bool:
        key = name.lower()
        return key in self._computers or key in self._servers or key in self._aliases

    def _claim(self, name: str) -> None:
        if self._name_taken(name):
            raise ValueError(f"duplicate name {name!r} (DNS names are case-insensitive)")

    def add_vmm(self, spec: VmmSpec) -> None:
        """Add a VMM management server with its node(s), which it manages itself."""
        node_keys = [node.fqdn.lower() for node in spec.nodes]
        if not spec.nodes:
            raise ValueError(f"VMM server {spec.fqdn!r} needs at least one computer")
        if any(node.role != ROLE_VMM for node in spec.nodes):
            raise ValueError(f"the nodes of a VMM server have role {ROLE_VMM!r}")
        if node_keys != [spec.fqdn.lower()] and not spec.high_availability:
            raise ValueError(
                f"VMM server {spec.fqdn!r}: several nodes, or a name that is not its "
                "computer's, make a highly available VMM server"
            )
        names = [spec.fqdn, *spec.aliases]
        names += [node.fqdn for node in spec.nodes if node.fqdn.lower() != spec.fqdn.lower()]
        config_name = spec.config_name or spec.fqdn
        if config_name.lower() not in {name.lower() for name in names}:
            raise ValueError(f"config_name {config_name!r} is not a name of {spec.fqdn!r}")
        with self._lock:
            seen: set[str] = set()
            for name in names:
                if name.lower() in seen or self._name_taken(name):
                    raise ValueError(f"duplicate name {name!r} (DNS names are case-insensitive)")
                seen.add(name.lower())
            now = self._clock.now()
            server = VmmServer(
                fqdn=spec.fqdn,
                version=spec.version,
                high_availability=spec.high_availability,
                trusted_self_copy=spec.trusted_self_copy,
                validity_years=self.validity_for(spec.version),
                nodes=node_keys,
                active=node_keys[0],
                config_name=config_name,
                aliases=list(spec.aliases),
                trusted_noise=self._trusted_noise(now) if spec.trusted_noise else [],
            )
            for node in spec.nodes:
                self._place(node, server, node=True, now=now)
            self._servers[server.key] = server
            for alias in spec.aliases:
                self._aliases[alias.lower()] = server.key

    def add_vmm_server(
        self,
        spec: ComputerSpec,
        *,
        version: VmmVersion,
        high_availability: bool = False,
        trusted_self_copy: bool = False,
        trusted_noise: bool = True,
    ) -> None:
        """Add a VMM management server that is one computer (it manages itself)."""
        if spec.role != ROLE_VMM:
            raise ValueError(f"a VMM server has role {ROLE_VMM!r}, got {spec.role!r}")
        self.add_vmm(
            VmmSpec(
                fqdn=spec.fqdn,
                version=version,
                nodes=(spec,),
                high_availability=high_availability,
                trusted_self_copy=trusted_self_copy,
                trusted_noise=trusted_noise,
            )
        )

    def add_managed(self, spec: ComputerSpec, vmm_server: str | None = None) -> None:
        """Add a computer managed by ``vmm_server`` (any of its names; default: the first)."""
        with self._lock:
            if spec.role == ROLE_VMM:
                raise ValueError("use add_vmm for a VMM server")
            server = self._vmm_named(vmm_server)
            self._place(spec, server, node=False, now=self._clock.now())

    def _vmm_named(self, name: str | None) -> VmmServer:
        if not self._servers:
            raise ValueError("the fleet has no VMM server yet")
        if name is None:
            return next(iter(self._servers.values()))
        server = self._server_by_name(name)
        if server is None:
            raise ValueError(f"{name!r} is not a VMM server of this lab")
        return server

    def _server_by_name(self, name: str) -> VmmServer | None:
        """The VMM server a name designates: its FQDN (role name), an alias, or a node."""
        key = name.lower()
        key = self._aliases.get(key, key)
        if key in self._servers:
            return self._servers[key]
        computer = self._computers.get(key)
        return computer.vmm if computer is not None else None

    def _place(self, spec: ComputerSpec, server: VmmServer, *, node: bool, now: datetime) -> None:
        self._claim(spec.fqdn)
        if spec.state is not None and spec.state not in locales.STATES:
            raise ValueError(f"state: expected one of {', '.join(locales.STATES)}")
        not_before, not_after = self._dates(spec, server.validity_years, now)
        main = self._scvmm_entry(spec.fqdn, not_before, not_after)
        my: list[StoreEntry] = []
        if spec.noise:
            my.extend(self._noise_entries(spec.fqdn, now))
        if spec.certificate == CERT_DUPLICATE:
            # a leftover from an earlier registration, one year older than the current one
            my.append(
                self._scvmm_entry(
                    spec.fqdn, _minus_years(not_before, 1), _minus_years(not_after, 1)
                )
            )
        if spec.certificate != CERT_MISSING:
            my.append(main)
        computer = Computer(
            fqdn=spec.fqdn,
            role=spec.role,
            my=my,
            faults=copy.deepcopy(spec.faults),
            managed_by=server,
            state_override=spec.state,
            agent_version=spec.agent_version,
            vmm=server if node else None,
        )
        self._computers[computer.key] = computer
        server.managed.append(computer.key)
        # VMM's copy is of the certificate the computer had when it was registered: for a
        # "missing" computer that is the deleted one, which is why access breaks
        if spec.trusted == TRUST_MATCH and (not node or server.trusted_self_copy):
            server.trusted[computer.key] = _trusted_copy(main.cert, spec.fqdn)
        elif spec.trusted == TRUST_MISMATCH:
            other = self._new_cert(
                spec.fqdn, _minus_years(not_before, 1), _minus_years(not_after, 1)
            )
            server.trusted[computer.key] = _trusted_copy(other, spec.fqdn)

    # --- FleetModel: identity, accounts, faults ---------------------------------------------

    def accounts(self) -> list[Account]:
        with self._lock:
            return list(self._accounts)

    def run_as_accounts(self) -> list[str]:
        with self._lock:
            return list(self._run_as_accounts)

    def vmm_server_fqdns(self) -> list[str]:
        """Each VMM server's FQDN as Get-SCVMMServer reports it (an HA one's role name)."""
        with self._lock:
            return [server.fqdn for server in self._servers.values()]

    def vmm_config_names(self) -> list[str]:
        """The name an exporter configuration uses for each VMM server (``config_name``)."""
        with self._lock:
            return [server.config_name for server in self._servers.values()]

    @property
    def locale(self) -> str:
        return self._locale

    def set_locale(self, locale: str) -> None:
        """The VMM servers' display language (``en-US``, ``ja-JP``); ValueError otherwise."""
        with self._lock:
            self._locale = locales.parse_locale(locale)

    def now(self) -> datetime:
        return self._clock.now()

    def _lookup(self, name: str) -> Computer | None:
        """The computer a DNS name reaches: an FQDN, an alias, or a clustered role's name
        (its active node)."""
        key = name.lower()
        key = self._aliases.get(key, key)
        computer = self._computers.get(key)
        if computer is not None:
            return computer
        server = self._servers.get(key)
        return self._computers.get(server.active) if server is not None else None

    def has_computer(self, fqdn: str) -> bool:
        with self._lock:
            return self._lookup(fqdn) is not None

    def presented(self, fqdn: str) -> tuple[str, StoreEntry | None, dict[str, Any]] | None:
        """What a TLS listener needs of one computer, read under the model's lock.

        ``(fqdn, current SCVMM store entry or None, faults as a dict)``, or None when the fleet
        does not know the name. One consistent view: a renewal cannot land half-way through.
        """
        with self._lock:
            computer = self._lookup(fqdn)
            if computer is None:
                return None
            return computer.fqdn, computer.current(), computer.faults.to_dict()

    def _get(self, fqdn: str) -> Computer:
        computer = self._lookup(fqdn)
        if computer is None:
            raise KeyError(f"unknown computer {fqdn!r}")
        return computer

    def faults(self, fqdn: str) -> Faults:
        with self._lock:
            return copy.deepcopy(self._get(fqdn).faults)

    def set_faults(self, fqdn: str, faults: Faults) -> None:
        with self._lock:
            self._get(fqdn).faults = copy.deepcopy(faults)

    # --- VMM state --------------------------------------------------------------------------

    def _state(self, computer: Computer, now: datetime) -> str:
        """VMM's view of a managed computer, derived from the facts now (see the docs)."""
        if computer.state_override:
            return computer.state_override
        faults = computer.faults
        if faults.http_401 or faults.access_denied:
            return STATE_ACCESS_DENIED
        if _unreachable(faults):
            return STATE_NOT_RESPONDING
        current = computer.current()
        if current is None:
            return STATE_ACCESS_DENIED  # the agent has no certificate to authenticate with
        if now >= current.cert.not_after:
            return STATE_NOT_RESPONDING  # the TLS channel to the agent fails on the expiry
        copy_entry = computer.managed_by.trusted.get(computer.key)
        if computer.vmm is not None and copy_entry is None:
            return STATE_RESPONDING  # no self-copy is normal (whether VMM keeps one: unverified)
        if copy_entry is None or copy_entry.cert is not current.cert:
            return STATE_ACCESS_DENIED  # VMM no longer trusts what the agent presents
        return STATE_RESPONDING

    # --- the script contract ----------------------------------------------------------------

    def run_powershell(self, fqdn: str, script: str) -> Execution:
        with self._lock:
            mode = self._get(fqdn).faults.language_mode  # an unknown name is a KeyError
        if mode != ps.FULL_LANGUAGE and ps.contract_operation(script) is not None:
            # the scripts check the language mode before anything else, parameters included
            return ps.language_mode_result(mode)
        try:
            call = ps.parse_script(script)
        except ps.ScriptFailure as failure:
            return failure.execution
        with self._lock:
            computer = self._get(fqdn)
            faults = copy.deepcopy(computer.faults)
            if faults.script_error:
                return ps.drive_not_found(script)
            outcome = self._dispatch(computer, call)
        if isinstance(outcome, Execution):
            return outcome
        # rendering touches lazy DER (signing): done outside the lock so threads overlap
        document = _render(outcome.document)
        stdout = ps.garbage_stdout() if faults.garbage_stdout else ps.json_stdout(document)
        stderr = ps.clixml_progress() if faults.progress_only_stderr else b""
        return Execution(stdout=stdout, stderr=stderr, exit_code=outcome.exit_code)

    def run_command(self, fqdn: str, command: str, arguments: list[str]) -> Execution:
        with self._lock:
            real_fqdn = self._get(fqdn).fqdn
        if command.strip().lower().removesuffix(".exe") == "powershell":
            script = ps.decode_encoded_command(arguments)
            if script is not None:
                return self.run_powershell(fqdn, script)
        return ps.run_cmd(real_fqdn, command, arguments)

    def _dispatch(self, computer: Computer, call: ps.ContractCall) -> _Result | Execution:
        op = call.operation
        if op in ps.VMM_CMDLET:
            if computer.vmm is None or (
                op == "update-vmm-certificate"
                and not computer.vmm.version.supports_update_certificate
            ):
                return ps.command_not_found(ps.VMM_CMDLET[op], call.script)
            if computer.key != computer.vmm.active:
                # the VMM service of a highly available server runs on the active node only
                return ps.vmm_service_not_running(ps.VMM_CONNECT_CMDLET[op], call.script)
        if op == "collect-certificates":
            return _Result(
                {
                    "schema": 1,
                    "computer": computer.fqdn,
                    "certificates": [_entry_doc("My", e) for e in computer.scvmm_entries()],
                }
            )
        if op == "remove-certificates":
            return self._op_remove(computer, call)
        server = computer.vmm
        assert server is not None  # every remaining operation is a VMM one
        if op == "list-managed-computers":
            return self._op_list_managed(computer, server, _wanted(call))
        if op == "list-trusted-certificates":
            wanted = _wanted(call)
            return _Result(
                {
                    "schema": 1,
                    "vmm_server": computer.fqdn,  # the script prints the local FQDN
                    "certificates": [
                        _entry_doc("TrustedPeople", e, dns=True)
                        for e in self._trusted_entries(server)
                        if wanted is None or _names_in(e, wanted)
                    ],
                }
            )
        if op == "find-run-as-account":
            return self._op_find_run_as(call)
        if op == "register-managed-computer":
            return self._op_register(server, call)
        return self._op_update(server, call)

    def _trusted_entries(self, vmm: VmmServer) -> list[StoreEntry]:
        copies = [vmm.trusted[key] for key in vmm.managed if key in vmm.trusted]
        return copies + vmm.trusted_noise

    def _managed_doc(self, member: Computer, now: datetime) -> dict[str, Any]:
        flags = member.role_flags()
        state = self._state(member, now)
        return {
            "fqdn": member.fqdn,
            "role": locales.role_text(flags),
            "state": state,
            "role_display": locales.role_display(flags, self._locale),
            "state_display": locales.state_display(state, self._locale),
            "agent_version": member.agent_version or member.managed_by.version.product_version,
        }

    def _op_list_managed(self, computer: Computer, vmm: VmmServer, wanted: str | None) -> _Result:
        now = self._clock.now()
        members = [self._computers[key] for key in vmm.managed]
        if wanted is not None:
            # that computer, and every entry of a VMM server (role VMMServerRole)
            members = [
                m
                for m in members
                if m.fqdn.strip().rstrip(".").lower() == wanted
                or locales.ROLE_VMM_SERVER in m.role_flags()
            ]
        managed = [self._managed_doc(member, now) for member in members]
        # ActiveVMMNode, then FailoverVMMNodes; both null (so []) unless highly available
        nodes = [vmm.active] + [key for key in vmm.nodes if key != vmm.active]
        ha_nodes = [self._computers[key].fqdn for key in nodes] if vmm.high_availability else []
        return _Result(
            {
                "schema": 1,
                "vmm_server": vmm.fqdn,
                "vmm_version": vmm.version.product_version,
                "vmm_release": vmm.version.name,
                "high_availability": vmm.high_availability,
                "supports_update_certificate": vmm.version.supports_update_certificate,
                "ha_nodes": ha_nodes,
                "managed_computers": managed,
                "computer": computer.fqdn,
            }
        )

    @staticmethod
    def _param(call: ps.ContractCall, name: str) -> str:
        value = call.params.get(name)
        if not isinstance(value, str) or not value:
            raise ps.ScriptFailure(
                ps.thrown_error(f"parameter '{name}' must be a non-empty string", call.script)
            )
        return value

    def _op_remove(self, computer: Computer, call: ps.ContractCall) -> _Result | Execution:
        wanted = call.params.get("thumbprints")
        if not isinstance(wanted, list) or not all(isinstance(t, str) for t in wanted):
            return ps.thrown_error("parameter 'thumbprints' must be a list of strings", call.script)
        removed = self.remove_from_my(computer, {t.upper() for t in wanted})
        return _Result({"schema": 1, "computer": computer.fqdn, "removed": removed})

    @staticmethod
    def remove_from_my(computer: Computer, thumbprints: set[str]) -> list[str]:
        keep, removed = [], []
        for entry in computer.my:
            if entry.cert.thumbprint in thumbprints:
                removed.append(entry.cert.thumbprint)
            else:
                keep.append(entry)
        computer.my = keep
        return removed

    def count_run_as(self, name: str) -> int:
        """Run As accounts whose name equals ``name`` as PowerShell's ``-eq`` compares
        (case-insensitive, no wildcards)."""
        with self._lock:
            return sum(1 for account in self._run_as_accounts if account.lower() == name.lower())

    def _op_find_run_as(self, call: ps.ContractCall) -> _Result | Execution:
        try:
            name = self._param(call, "run_as_account")
        except ps.ScriptFailure as failure:
            return failure.execution
        return _Result({"schema": 1, "run_as_account": name, "matches": self.count_run_as(name)})

    def _op_register(self, vmm: VmmServer, call: ps.ContractCall) -> _Result | Execution:
        try:
            target_name = self._param(call, "computer")
            run_as = self._param(call, "run_as_account")
        except ps.ScriptFailure as failure:
            return failure.execution
        return _status(self.register(vmm, target_name, run_as))

    def register(self, vmm: VmmServer, target_name: str, run_as: str) -> str | None:
        """Register-SCVMMManagedComputer; the error message, or None on success."""
        matches = self.count_run_as(run_as)
        if matches != 1:
            return f"expected exactly one Run As account named '{run_as}', found {matches}"
        key = target_name.lower()
        if key not in vmm.managed:
            # VMM knows its managed computers by FQDN only: an alias or a role name is unknown
            return (
                f"Unable to find the managed computer {target_name} on the VMM management "
                f"server {vmm.fqdn}. Ensure the computer is managed by VMM."
            )
        target = self._computers[key]
        if target.vmm is vmm and vmm.high_availability:
            return (
                f"Cannot re-register {target.fqdn}: it is a node of the highly available VMM "
                f"management server {vmm.fqdn}. Use Update-SCVMMCertificate to renew its "
                "certificate."
            )
        if _unreachable(target.faults):
            return (
                f"VMM cannot contact the computer {target.fqdn}. Ensure that the computer is "
                "reachable over the network and that WinRM is running on it."
            )
        now = self._clock.now()
        current = target.current()
        if current is None or now >= current.cert.not_after:
            # no valid certificate left: the agent makes a new one from 1 January this year;
            # expired ones stay in the store (removing them is the runbook's job)
            current = self._scvmm_entry(
                target.fqdn, _year_start(now.year), _year_start(now.year + vmm.validity_years)
            )
            target.my.append(current)
        if target.vmm is not vmm or vmm.trusted_self_copy:
            vmm.trusted[key] = _trusted_copy(current.cert, target.fqdn)
        return None

    def _is_name_of(self, name: str, vmm: VmmServer) -> bool:
        """Whether ``-VMMServer name`` reaches this VMM server: any of its names, or localhost
        (whether a WinRM session needs one or the other is unverified; both work here)."""
        return name.lower() == "localhost" or self._server_by_name(name) is vmm

    def _op_update(self, vmm: VmmServer, call: ps.ContractCall) -> _Result | Execution:
        try:
            name = self._param(call, "vmm_server")
        except ps.ScriptFailure as failure:
            return failure.execution
        if not self._is_name_of(name, vmm):
            return _status(
                f"Unable to connect to the VMM management server {name}. The server is not "
                "this VMM management server."
            )
        self.update_certificate(vmm)
        return _status(None)

    def update_certificate(self, vmm: VmmServer) -> dict[str, StoreEntry]:
        """Update-SCVMMCertificate: on every node (a lab assumption for a highly available
        server, unverified), a new certificate replaces the old one(s) in My, and the
        TrustedPeople copy follows where there is one. Returns the new entries by node key."""
        now = self._clock.now()
        fresh: dict[str, StoreEntry] = {}
        for key in vmm.nodes:
            node = self._computers[key]
            entry = self._scvmm_entry(
                node.fqdn, _year_start(now.year), _year_start(now.year + vmm.validity_years)
            )
            node.my = [e for e in node.my if not e.is_scvmm] + [entry]
            if key in vmm.trusted or vmm.trusted_self_copy:
                vmm.trusted[key] = _trusted_copy(entry.cert, node.fqdn)
            fresh[key] = entry
        return fresh

    # --- control API ------------------------------------------------------------------------

    def clock_info(self) -> dict[str, Any]:
        return self._clock.info()

    def set_clock(self, *, offset_seconds: float | None, advance_seconds: float | None) -> None:
        self._clock.set(offset_seconds=offset_seconds, advance_seconds=advance_seconds)

    def list_computers(self) -> list[dict[str, Any]]:
        with self._lock:
            now = self._clock.now()
            return [self._summary(c, now) for c in self._computers.values()]

    def _summary(self, computer: Computer, now: datetime) -> dict[str, Any]:
        current = computer.current()
        vmm_view = self._managed_doc(computer, now)
        return {
            "fqdn": computer.fqdn,
            "role": computer.role,
            "vmm_role": vmm_view["role"],
            "role_display": vmm_view["role_display"],
            "managed_by": computer.managed_by.fqdn,
            "state": vmm_view["state"],
            "state_display": vmm_view["state_display"],
            "scvmm_certificates": len(computer.scvmm_entries()),
            "not_after": _iso(current.cert.not_after) if current else None,
        }

    def describe(self, fqdn: str) -> dict[str, Any]:
        with self._lock:
            computer = self._get(fqdn)
            now = self._clock.now()
            result = self._summary(computer, now)
            result["faults"] = computer.faults.to_dict()
            result["state_override"] = computer.state_override
            result["certificates"] = [_describe_entry("My", e) for e in computer.my]
            copy_entry = computer.managed_by.trusted.get(computer.key)
            current = computer.current()
            result["trusted"] = (
                None
                if copy_entry is None
                else {
                    **_describe_entry("TrustedPeople", copy_entry),
                    "matches": current is not None and copy_entry.cert is current.cert,
                }
            )
            if computer.vmm is not None:
                result["vmm"] = self._describe_vmm(computer.vmm)
            return result

    def _describe_vmm(self, vmm: VmmServer) -> dict[str, Any]:
        return {
            "fqdn": vmm.fqdn,
            "release": vmm.version.name,
            "vmm_version": vmm.version.product_version,
            "high_availability": vmm.high_availability,
            "nodes": [self._computers[key].fqdn for key in vmm.nodes],
            "active_node": self._computers[vmm.active].fqdn,
            "aliases": list(vmm.aliases),
            "config_name": vmm.config_name,
            "supports_update_certificate": vmm.version.supports_update_certificate,
            "trusted_self_copy": vmm.trusted_self_copy,
            "validity_years": vmm.validity_years,
            "locale": self._locale,
            "run_as_accounts": list(self._run_as_accounts),
            "managed_computers": [self._computers[k].fqdn for k in vmm.managed],
            "trusted_people": [
                _describe_entry("TrustedPeople", e) for e in self._trusted_entries(vmm)
            ],
        }

    def add_computer(self, spec: dict[str, Any]) -> dict[str, Any]:
        """Add a managed computer described as a scenario computer entry (plus an optional
        ``vmm_server``); ValueError with the field path on bad input."""
        from vmm_cert_lab.fleet.scenario import parse_computer  # scenario imports model

        if not isinstance(spec, dict):
            raise ValueError("expected a JSON object describing the computer")
        data = dict(spec)
        vmm_server = data.pop("vmm_server", None)
        if vmm_server is not None and not isinstance(vmm_server, str):
            raise ValueError("vmm_server: expected the FQDN of a VMM server of the lab")
        parsed = parse_computer(data, where="add_computer", path="computer")
        self.add_managed(parsed, vmm_server)
        return self.describe(parsed.fqdn)

    def remove_computer(self, fqdn: str) -> None:
        with self._lock:
            computer = self._get(fqdn)
            if computer.vmm is not None:
                raise ValueError(f"{computer.fqdn} is a VMM server: it cannot be removed")
            server = computer.managed_by
            server.managed.remove(computer.key)
            server.trusted.pop(computer.key, None)
            del self._computers[computer.key]

    def delete_certificates(self, fqdn: str) -> list[str]:
        with self._lock:
            computer = self._get(fqdn)
            doomed = {e.cert.thumbprint for e in computer.scvmm_entries()}
            return self.remove_from_my(computer, doomed)

    def renew(self, fqdn: str) -> dict[str, Any]:
        """The product's runbook: procedure 2 for a VMM server whose version has it (every
        node of a highly available one), otherwise procedure 1 (remove, then register with
        the lab's first Run As account), which VMM refuses for a highly available server."""
        with self._lock:
            computer = self._get(fqdn)
            server = computer.managed_by
            if computer.vmm is not None and computer.vmm.version.supports_update_certificate:
                fresh = self.update_certificate(computer.vmm)[computer.key]
                return {
                    "procedure": 2,
                    "status": "Completed",
                    "error": None,
                    "removed": [],
                    "thumbprint": fresh.cert.thumbprint,
                }
            removed: list[str] = []
            if not (computer.vmm is not None and server.high_availability):
                removed = self.delete_certificates(computer.fqdn)
            error = self.register(server, computer.fqdn, self._run_as_accounts[0])
            current = computer.current()
            return {
                "procedure": 1,
                "status": "Failed" if error else "Completed",
                "error": error,
                "removed": removed,
                "thumbprint": current.cert.thumbprint if current else None,
            }

    def set_trusted_mismatch(self, fqdn: str) -> None:
        with self._lock:
            computer = self._get(fqdn)
            now = self._clock.now()
            other = self._new_cert(
                computer.fqdn, _year_start(now.year - 1), _year_start(now.year - 1 + 5)
            )
            computer.managed_by.trusted[computer.key] = _trusted_copy(other, computer.fqdn)


def _status(error: str | None) -> _Result:
    return _Result(
        {"schema": 1, "status": "Failed" if error else "Completed", "error": error},
        exit_code=1 if error else 0,
    )


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


class _EntryDoc:
    """A certificate placeholder in a result document, rendered after the lock is released."""

    __slots__ = ("dns", "entry", "store")

    def __init__(self, store: str, entry: StoreEntry, dns: bool) -> None:
        self.store, self.entry, self.dns = store, entry, dns

    def render(self) -> dict[str, Any]:
        cert = self.entry.cert
        doc: dict[str, Any] = {
            "store": self.store,
            "thumbprint": cert.thumbprint,
            "friendly_name": self.entry.friendly_name,
            "has_private_key": self.entry.has_private_key,
            "der_base64": cert.der_base64,
        }
        if self.dns:
            doc["dns_names"] = list(cert.dns_names)
        return doc


def _wanted(call: ps.ContractCall) -> str | None:
    """The optional ``computer`` of the VMM server's list operations, as the scripts compare
    it (trimmed, without a final dot, ignoring case); None when absent or empty."""
    value = call.params.get("computer")
    if not isinstance(value, str) or not value:
        return None
    return value.strip().rstrip(".").lower()


def _names_in(entry: StoreEntry, wanted: str) -> bool:
    """Whether the name appears in the entry's friendly name, subject, SAN or DnsNameList,
    ignoring case: what the list-trusted-certificates filter keeps."""
    cert = entry.cert
    text = " ".join([entry.friendly_name, cert.subject, *cert.dns_names]).lower()
    return wanted in text


def _entry_doc(store: str, entry: StoreEntry, dns: bool = False) -> Any:
    # snapshot the store properties now (under the lock); the DER is immutable
    return _EntryDoc(store, StoreEntry(entry.cert, entry.friendly_name, entry.has_private_key), dns)


def _render(value: Any) -> Any:
    if isinstance(value, _EntryDoc):
        return value.render()
    if isinstance(value, dict):
        return {k: _render(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_render(v) for v in value]
    return value


def _describe_entry(store: str, entry: StoreEntry) -> dict[str, Any]:
    cert = entry.cert
    return {
        "store": store,
        "thumbprint": cert.thumbprint,
        "friendly_name": entry.friendly_name,
        "subject": cert.subject,
        "dns_names": list(cert.dns_names),
        "not_before": _iso(cert.not_before),
        "not_after": _iso(cert.not_after),
        "has_private_key": entry.has_private_key,
        "scvmm": entry.is_scvmm,
    }
