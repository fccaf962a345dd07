"""The ``receiver:`` section of the configuration: what the renewal receiver may do, and when.

Each key is declared once, on a field (``config_schema.py``); docs/configuration.md lists
them and docs/renewal.md explains the safety model they configure. The exporter reads the
section too (``serve`` and ``check-config`` validate the whole file) but does not use it.
"""

from __future__ import annotations

import re
import zoneinfo
from dataclasses import dataclass, field
from typing import Final

from vmm_cert_exporter.config_schema import (
    Check,
    Key,
    Located,
    Reader,
    Section,
    Slot,
    read_list,
    read_section,
    sections,
    subsection,
)
from vmm_cert_exporter.config_values import (
    ROLES,
    choice,
    credential_file,
    duration,
    existing_path,
    flag,
    integer,
    listen_address,
    new_file,
    read_choice,
    read_existing_path,
    read_required_secret,
    read_string,
    secret,
    text,
)
from vmm_cert_exporter.documents import short
from vmm_cert_exporter.durations import format_duration
from vmm_cert_exporter.powershell import validate_params
from vmm_cert_exporter.rules import TRIGGER_ALERTS
from vmm_cert_exporter.secrets import Secret

__all__ = [
    "DEFAULT_ALLOW_ROLES",
    "DEFAULT_JOURNAL",
    "DEFAULT_RECEIVER_LISTEN_ADDRESS",
    "DEFAULT_RECEIVER_PORT",
    "NOT_TRIGGERS",
    "RECEIVER_MODES",
    "WEEKDAYS",
    "BasicAuthConfig",
    "DeskUser",
    "MaintenanceWindow",
    "ReceiverConfig",
    "ReceiverTlsConfig",
]

# Its own port, on loopback unless configured otherwise.
DEFAULT_RECEIVER_PORT: Final = 9869
DEFAULT_RECEIVER_LISTEN_ADDRESS: Final = f"127.0.0.1:{DEFAULT_RECEIVER_PORT}"
DEFAULT_JOURNAL: Final = "/var/lib/vmm-cert-exporter/renewals.sqlite"
RECEIVER_MODES: Final = ("dry-run", "execute")
WEEKDAYS: Final = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
# Roles renewed unless allow_roles says otherwise: "other" is a computer VMM reports with a
# role we do not know, and nothing should be changed on it without someone deciding so.
DEFAULT_ALLOW_ROLES: Final = ("vmm_server", "hyperv_host", "library_server")
# Alerts that a renewal cannot fix: acting on them would renew healthy certificates (a
# collection failure is not a certificate problem) or loop on the receiver's own failure.
NOT_TRIGGERS: Final = (
    "VMMCertificateCollectionFailing",
    "VMMCertificateExporterDown",
    "VMMCertificateExporterStale",
    "VMMCertificateRenewalFailed",
    "VMMCertificateCohortAtRisk",
)
_ALERTNAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_GLOB_RE = re.compile(r"[A-Za-z0-9.*?\[\]!-]+")
_CLOCK_RE = re.compile(r"([01][0-9]|2[0-3]):([0-5][0-9])|24:00")
_DAY: Final = 86400.0
_MIDNIGHT_END: Final = 24 * 60
# Opt-in pruning of the journal is also bounded below by cooldown (_retention_covers_cooldown).
JOURNAL_RETENTION_RANGE: Final = (_DAY, 20 * 365 * _DAY)


# --------------------------------------------------------------------------------------------
# Readers of the receiver's own value types


def _alert_names(section: Section, slot: Slot) -> tuple[str, ...]:
    at = section.get(slot.key)
    if at.value is None:
        return tuple(slot.default)
    items = read_list(section.document, at)
    if not items:
        section.document.fail_at(
            at, "expected at least one alert name (leave the key out for the default)"
        )
    names: list[str] = []
    for item in items:
        name = read_string(section.document, item, what="an alert name")
        if _ALERTNAME_RE.fullmatch(name) is None:
            section.document.fail_at(
                item, f"expected an alert name (letters, digits, _), got {short(name)}"
            )
        if name in NOT_TRIGGERS:
            section.document.fail_at(
                item, f"{name} cannot trigger a renewal: a renewal does not fix what it reports"
            )
        if name in names:
            section.document.fail_at(item, f"{name} is listed twice")
        names.append(name)
    return tuple(names)


def _globs(section: Section, slot: Slot) -> tuple[str, ...]:
    at = section.get(slot.key)
    if at.value is None:
        return tuple(slot.default)
    patterns: list[str] = []
    for item in read_list(section.document, at):
        pattern = read_string(section.document, item, what="a host name pattern")
        if _GLOB_RE.fullmatch(pattern) is None:
            section.document.fail_at(
                item,
                "expected a glob pattern on the FQDN (letters, digits, '.', '-', and the "
                f"wildcards * ? [...]), got {short(pattern)}",
            )
        patterns.append(pattern)
    return tuple(patterns)


def _words(choices: tuple[str, ...], *, empty: str = "") -> Reader:
    """A list of distinct words out of ``choices``; ``empty``: the error for an empty list."""

    def read(section: Section, slot: Slot) -> tuple[str, ...]:
        at = section.get(slot.key)
        if at.value is None:
            return tuple(slot.default)
        items = read_list(section.document, at)
        if empty and not items:
            section.document.fail_at(at, empty)
        words: list[str] = []
        for item in items:
            word = read_choice(section.document, item, choices, "")
            if word in words:
                section.document.fail_at(item, f"{word} is listed twice")
            words.append(word)
        return tuple(words)

    return read


def _glob_list(doc: str) -> dict[str, Key]:
    return Key(_globs, doc, "list of globs").metadata()


def _clock_time(section: Section, at: Located) -> int:
    clock = read_string(section.document, at, what='a time of day as "HH:MM" (24-hour, quoted)')
    match = _CLOCK_RE.fullmatch(clock)
    if match is None:
        section.document.fail_at(
            at, f'expected a time of day as "HH:MM" from 00:00 to 24:00, got {short(clock)}'
        )
    if clock == "24:00":
        return _MIDNIGHT_END
    return int(match.group(1)) * 60 + int(match.group(2))


def _window_time(section: Section, slot: Slot) -> int:
    for key in ("start", "end"):  # both are required before either is read
        if not section.has(key):
            section.fail(key, 'required: expected a time of day as "HH:MM"')
    return _clock_time(section, section.get(slot.key))


def _window_not_empty(section: Section, at: Located, end: int) -> None:
    start = section.value("start")
    if start == end:
        section.document.fail_at(at, "start and end are equal: the window would be empty")
    if start == _MIDNIGHT_END:
        section.fail("start", "a window cannot start at 24:00; use 00:00")


def _known_zone(section: Section, at: Located, zone: str) -> None:
    try:
        zoneinfo.ZoneInfo(zone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        section.document.fail_at(
            at, f"expected an IANA time zone such as Europe/Berlin or UTC, got {short(zone)}"
        )


_weekday_names = _words(
    WEEKDAYS, empty="expected at least one weekday (leave it out for every day)"
)


def _some_weekdays(section: Section, slot: Slot) -> tuple[int, ...]:
    # Written as names, kept as datetime.weekday() numbers.
    return tuple(sorted(WEEKDAYS.index(day) for day in _weekday_names(section, slot)))


@dataclass(frozen=True)
class MaintenanceWindow:
    """Renewals may start on ``weekdays`` between ``start`` and ``end`` (minutes after local
    midnight in ``timezone``). ``end <= start`` wraps past midnight: the window belongs to the
    day it starts on. Weekdays are 0 (Monday) to 6 (Sunday), as ``datetime.weekday()``."""

    weekdays: tuple[int, ...] = field(
        metadata=Key(
            _some_weekdays,
            "the days a window may start on",
            "list of weekdays",
            bounds=tuple(f"`{day}`" for day in WEEKDAYS),
            default=WEEKDAYS,
        ).metadata()
    )
    start: int = field(
        metadata=Key(_window_time, 'quoted "HH:MM", local time of the zone', "time").metadata()
    )
    end: int = field(
        metadata=Key(
            _window_time,
            'quoted "HH:MM"; end <= start wraps past midnight',
            "time",
            checks=(_window_not_empty,),
        ).metadata()
    )
    timezone: str = field(
        default="UTC",
        metadata=text(
            "an IANA time zone name",
            what="an IANA time zone such as Europe/Berlin",
            checks=(_known_zone,),
        ),
    )


# --------------------------------------------------------------------------------------------
# Authentication and TLS of the receiver's own HTTP side


def _no_colon(section: Section, at: Located, username: str) -> None:
    if ":" in username:
        # RFC 7617: the user-id cannot contain a colon (it separates user and password).
        section.document.fail_at(at, "a basic auth user name cannot contain ':'")


def _basic_auth_password(section: Section, slot: Slot) -> Secret:
    return read_required_secret(section, slot, who="basic_auth", what="password")


@dataclass(frozen=True)
class BasicAuthConfig:
    """``receiver.basic_auth``: the credentials Alertmanager's webhook sends."""

    username: str = field(
        metadata=text(
            "the user name Alertmanager sends",
            what="the user name Alertmanager sends",
            checks=(_no_colon,),
        )
    )
    password: Secret = field(
        metadata=secret(
            "the password, from a file or an environment variable",
            what="password",
            read=_basic_auth_password,
        )
    )


_BCRYPT_RE = re.compile(r"\$2[aby]\$(0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{53}")


def _desk_password_hash(section: Section, slot: Slot) -> Secret:
    hashed = read_required_secret(section, slot, who="a desk user", what="bcrypt hash")
    if _BCRYPT_RE.fullmatch(hashed.reveal().strip()) is None:
        file_key, env_key = slot.keys
        key = file_key if section.has(file_key) else env_key
        # never echoed: a password pasted where its hash belongs must not reach a log
        section.fail(
            key,
            "expected a bcrypt hash ($2a$, $2b$ or $2y$, e.g. the part after ':' of "
            "`htpasswd -nB USER`), not a password",
        )
    return Secret(hashed.reveal().strip())


def _not_the_token(section: Section, at: Located, username: str) -> None:
    if username == "bearer":
        # the journal records the token's holder as "bearer": a person of that name would
        # be indistinguishable from it in the audit trail
        section.document.fail_at(at, "bearer is the identity of the token; choose another name")


@dataclass(frozen=True)
class DeskUser:
    """One person who may use the receiver desk (``/`` in a browser), by Basic auth."""

    username: str = field(
        metadata=text(
            "the user name; approvals and pauses are journaled under it",
            what="a user name",
            checks=(_no_colon, _not_the_token),
        )
    )
    password_hash: Secret = field(
        metadata=secret(
            "the bcrypt hash of the password (never the password)",
            what="bcrypt hash",
            read=_desk_password_hash,
        )
    )


def _desk_users(section: Section, slot: Slot) -> tuple[DeskUser, ...]:
    users: list[DeskUser] = []
    for item in read_list(section.document, section.get(slot.key)):
        user = read_section(section.document, item, DeskUser, null_ok=False)
        if any(u.username == user.username for u in users):
            section.document.fail_at(item, f"desk user {short(user.username)} is listed twice")
        users.append(user)
    return tuple(users)


def _pem_file(what: str, *, checks: tuple[Check, ...] = ()) -> dict[str, Key]:
    def read(section: Section, slot: Slot) -> str:
        for key in ("cert_file", "key_file"):  # both are required before either is read
            if not section.has(key):
                section.fail(key, "required when tls is set: expected a PEM file path")
        return read_existing_path(section.document, section.get(slot.key), what=what)

    return Key(read, f"the {what} (PEM)", "path", checks=checks).metadata()


@dataclass(frozen=True)
class ReceiverTlsConfig:
    """``receiver.tls``: HTTPS for the receiver, optionally requiring client certificates."""

    cert_file: str = field(metadata=_pem_file("TLS certificate"))
    key_file: str = field(metadata=_pem_file("TLS private key", checks=(credential_file,)))
    client_ca_file: str | None = field(
        default=None,
        metadata=existing_path(
            "the CAs of the client certificates to require", what="client CA bundle"
        ),
    )


# --------------------------------------------------------------------------------------------
# Rules that span keys, each reported on the key that breaks it


def _authenticated(section: Section, at: Located, basic_auth: BasicAuthConfig | None) -> None:
    if basic_auth is None and section.value("bearer_token") is None:
        section.document.fail(
            section.child_path("bearer_token_file"),
            section.at.line,
            "the receiver changes production hosts and never runs without authentication: "
            "set bearer_token_file (or bearer_token_env) and/or basic_auth, and give "
            "Alertmanager's webhook http_config the same credentials",
        )


def _runbook_accepts(section: Section, at: Located, run_as: str) -> None:
    try:
        validate_params(
            "register-managed-computer", {"computer": "host.invalid", "run_as_account": run_as}
        )
    except ValueError as exc:
        section.document.fail_at(at, str(exc).split(": ", 2)[-1])


def _within_max_concurrent(section: Section, at: Located, per_server: int) -> None:
    overall = section.value("max_concurrent")
    if per_server > overall:
        section.document.fail_at(
            at, f"cannot exceed max_concurrent ({overall}), the limit over all VMM servers"
        )


def _not_below_backoff_initial(section: Section, at: Located, backoff_max: float) -> None:
    initial = section.value("backoff_initial")
    if backoff_max < initial:
        section.document.fail_at(
            at,
            f"must be at least backoff_initial ({format_duration(initial)}): the delay "
            "doubles from backoff_initial up to backoff_max",
        )


def _retention_covers_cooldown(section: Section, at: Located, retention: float | None) -> None:
    cooldown = section.value("cooldown")
    if retention is not None and retention < cooldown:
        section.document.fail_at(
            at,
            f"journal_retention ({format_duration(retention)}) must be at least cooldown "
            f"({format_duration(cooldown)}): the cooldown looks that far back in the journal "
            "for a host's last renewal, so a shorter retention would let a host be renewed "
            "again too soon",
        )


@dataclass(frozen=True, kw_only=True)
class ReceiverConfig:
    """The ``receiver:`` section: the renewal receiver (docs/renewal.md).

    Fields are in the order the keys are documented and read.
    """

    listen_address: str = field(
        default=DEFAULT_RECEIVER_LISTEN_ADDRESS,
        metadata=listen_address("where the webhook and the API listen (host:port)"),
    )
    bearer_token: Secret | None = field(
        default=None,
        metadata=secret("the token Alertmanager sends as Bearer", what="bearer token"),
    )
    basic_auth: BasicAuthConfig | None = field(
        default=None,
        metadata=subsection(
            BasicAuthConfig,
            "basic auth, instead of or besides the token",
            checks=(_authenticated,),
        ),
    )
    tls: ReceiverTlsConfig | None = field(
        default=None, metadata=subsection(ReceiverTlsConfig, "HTTPS")
    )
    desk_users: tuple[DeskUser, ...] = field(
        default=(),
        metadata=Key(
            _desk_users,
            "people who may use the desk in a browser (Basic auth, bcrypt)",
            "list",
            section=DeskUser,
            repeated=True,
        ).metadata(),
    )
    max_request_bytes: int = field(
        default=1024 * 1024,
        metadata=integer("larger request bodies get 413", 1024, 64 * 1024 * 1024),
    )
    mode: str = field(
        default="dry-run",
        metadata=choice("dry-run plans and journals, execute also changes hosts", RECEIVER_MODES),
    )
    run_as_account: str = field(
        metadata=text(
            "the VMM Run As account used to re-register a computer",
            what="the name of a VMM Run As account",
            checks=(_runbook_accepts,),
        )
    )
    trigger_alerts: tuple[str, ...] = field(
        default=TRIGGER_ALERTS,
        metadata=Key(
            _alert_names, "the alerts that start a renewal", "list of alert names"
        ).metadata(),
    )
    allow_hosts: tuple[str, ...] = field(
        default=("*",), metadata=_glob_list("globs on the FQDN of the hosts that may be renewed")
    )
    deny_hosts: tuple[str, ...] = field(
        default=(), metadata=_glob_list("globs on the FQDN; win over allow_hosts")
    )
    allow_roles: tuple[str, ...] = field(
        default=DEFAULT_ALLOW_ROLES,
        metadata=Key(
            _words(ROLES),
            "the roles that may be renewed",
            "list of roles",
            bounds=tuple(f"`{role}`" for role in ROLES),
        ).metadata(),
    )
    max_concurrent: int = field(default=1, metadata=integer("renewals at once", 1, 64))
    max_concurrent_per_vmm_server: int = field(
        default=1,
        metadata=integer(
            "renewals at once per VMM server, at most max_concurrent",
            1,
            64,
            checks=(_within_max_concurrent,),
        ),
    )
    min_validity: float = field(
        default=365 * _DAY,
        metadata=duration("fresh means at least this long left", _DAY, 20 * 365 * _DAY),
    )
    cooldown: float = field(
        default=6 * 3600.0,
        metadata=duration(
            "no new job for a host renewed or found fresh this recently", 0.0, 30 * _DAY
        ),
    )
    backoff_initial: float = field(
        default=3600.0, metadata=duration("first retry delay, doubling", 1.0, 30 * _DAY)
    )
    backoff_max: float = field(
        default=32 * 3600.0,
        metadata=duration(
            "longest retry delay, at least backoff_initial",
            1.0,
            30 * _DAY,
            checks=(_not_below_backoff_initial,),
        ),
    )
    max_attempts: int = field(default=8, metadata=integer("then the job gives up", 1, 100))
    require_approval: bool = field(
        default=False, metadata=flag("jobs wait for POST /api/jobs/ID/approve")
    )
    maintenance_windows: tuple[MaintenanceWindow, ...] = field(
        default=(),
        metadata=sections(MaintenanceWindow, "when renewals may start (none: any time)"),
    )
    pause_file: str | None = field(
        default=None, metadata=new_file("paused while this file exists", what="pause file")
    )
    journal: str = field(
        default=DEFAULT_JOURNAL,
        metadata=new_file("the SQLite journal; its directory must exist", what="journal"),
    )
    # None: the journal is never pruned (the default); else finished jobs older than this go
    journal_retention: float | None = field(
        default=None,
        metadata=duration(
            "prune finished jobs older than this, at least cooldown",
            *JOURNAL_RETENTION_RANGE,
            checks=(_retention_covers_cooldown,),
        ),
    )
    step_timeout: float = field(
        default=600.0,
        metadata=duration("deadline of one change step", 10.0, 6 * 3600.0),
    )
    # Capacity planning (docs/renewal.md#cohorts): the duration a renewal is assumed to take
    # until the journal has measured one, and how early a cohort should be finished.
    assumed_renewal_duration: float = field(
        default=300.0,
        metadata=duration("one renewal's duration until one is measured", 10.0, 6 * 3600.0),
    )
    cohort_margin: float = field(
        default=7 * _DAY,
        metadata=duration("finish a cohort at least this long before its day", 0.0, 180 * _DAY),
    )
    renew_ahead: bool = field(
        default=False,
        metadata=flag("plan a cohort's renewals from its must-start-by, not its alerts"),
    )

    @property
    def execute(self) -> bool:
        return self.mode == "execute"

    @property
    def basic_auth_username(self) -> str | None:
        return None if self.basic_auth is None else self.basic_auth.username

    @property
    def basic_auth_password(self) -> Secret | None:
        return None if self.basic_auth is None else self.basic_auth.password

    @property
    def tls_cert_file(self) -> str | None:
        return None if self.tls is None else self.tls.cert_file

    @property
    def tls_key_file(self) -> str | None:
        return None if self.tls is None else self.tls.key_file

    @property
    def tls_client_ca_file(self) -> str | None:
        return None if self.tls is None else self.tls.client_ca_file
