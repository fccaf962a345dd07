"""The seam between the lab's transport (WS-Management over HTTP) and its Windows/VMM model.

The transport (``server.py``, ``wsman.py``) knows HTTP, SOAP, auth and faults on the wire;
the model (``model.py``) knows computers, certificate stores and VMM. They meet only here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Protocol

# PowerShell's PSLanguageMode names (the ``language_mode`` fault)
LANGUAGE_MODES = ("FullLanguage", "ConstrainedLanguage", "RestrictedLanguage", "NoLanguage")
# What a WinRM listener may accept (winrm/config/service/auth): the Basic, Negotiate and
# Kerberos HTTP schemes, and the NTLM and Kerberos mechanisms inside Negotiate. A hardened
# estate that restricts NTLM keeps negotiate + kerberos.
AUTH_METHODS = ("basic", "ntlm", "kerberos", "negotiate")
# WinRM's CbtHardeningLevel (HTTPS only): strict refuses a Kerberos or NTLM logon that does
# not carry the TLS channel's binding; relaxed checks one that does.
CBT_LEVELS = ("none", "relaxed", "strict")
_CHOICES = {"language_mode": LANGUAGE_MODES, "cbt_hardening": CBT_LEVELS}


@dataclass
class Faults:
    """Faults injected for one computer; every field off means a healthy computer.

    Transport faults are applied by the WS-Management server, command faults by the model.
    """

    # transport
    connection_refused: bool = False  # the connection is reset as soon as the request arrives
    black_hole: bool = False  # the request is read and never answered
    latency: float = 0.0  # seconds added before every response
    drip: float = 0.0  # seconds between single bytes of every response body (0 = off)
    http_401: bool = False  # every request is refused with 401 (wrong credentials)
    access_denied: bool = False  # authenticated, then a WS-Man w:AccessDenied SOAP fault
    tls_error: bool = False  # the TLS stream is broken with non-TLS bytes
    receive_timeout: bool = False  # every Receive answers the w:TimedOut fault, for ever
    # command
    garbage_stdout: bool = False  # stdout is not JSON
    progress_only_stderr: bool = False  # stderr carries only CLIXML progress records, exit 0
    script_error: bool = False  # the script writes a CLIXML error record and exits 1
    # the session's language mode (AppLocker/WDAC hardening): anything but FullLanguage makes
    # every contract script answer its language-mode result
    language_mode: str = "FullLanguage"
    # listener hardening (applied by the server like the transport faults)
    auth: list[str] = field(default_factory=lambda: list(AUTH_METHODS))
    cbt_hardening: str = "relaxed"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def accepts(self, method: str) -> bool:
        return method in self.auth

    @classmethod
    def from_dict(cls, data: dict[str, Any], base: Faults | None = None) -> Faults:
        """Build from JSON/YAML, merging onto ``base``; unknown keys raise ``ValueError``."""
        known = {f.name: f for f in dataclasses.fields(cls)}
        values = (base or cls()).to_dict()
        for key, value in data.items():
            if key not in known:
                raise ValueError(f"unknown fault {key!r}; expected one of {sorted(known)}")
            if key == "auth":
                if not isinstance(value, list) or any(v not in AUTH_METHODS for v in value):
                    raise ValueError(
                        f"fault 'auth' must be a list of {', '.join(AUTH_METHODS)}, got {value!r}"
                    )
            elif known[key].type == "bool":
                if not isinstance(value, bool):
                    raise ValueError(f"fault {key!r} must be true or false, got {value!r}")
            elif known[key].type == "str":
                if value not in _CHOICES[key]:
                    raise ValueError(
                        f"fault {key!r} must be one of {', '.join(_CHOICES[key])}, got {value!r}"
                    )
            elif isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise ValueError(f"fault {key!r} must be a number of seconds >= 0, got {value!r}")
            values[key] = value
        return cls(**values)


@dataclass(frozen=True)
class Execution:
    """What a command produced: raw bytes as the computer would stream them."""

    stdout: bytes
    stderr: bytes = b""
    exit_code: int = 0


@dataclass(frozen=True)
class Account:
    """A Windows account the lab's WinRM listeners accept (Basic and NTLM)."""

    domain: str
    username: str
    password: str = field(repr=False)


class FleetModel(Protocol):
    """What the transport and the control API need from the model. Thread-safe."""

    def accounts(self) -> list[Account]: ...

    def has_computer(self, fqdn: str) -> bool:
        """Case-insensitive FQDN lookup."""
        ...

    def faults(self, fqdn: str) -> Faults: ...

    def set_faults(self, fqdn: str, faults: Faults) -> None: ...

    def run_powershell(self, fqdn: str, script: str) -> Execution:
        """Run a decoded PowerShell script (the text of ``-EncodedCommand``) on ``fqdn``."""
        ...

    def run_command(self, fqdn: str, command: str, arguments: list[str]) -> Execution:
        """Run anything that is not ``powershell -EncodedCommand``: as cmd.exe would answer."""
        ...

    # control API (JSON-able answers; KeyError for an unknown computer, ValueError for bad input)
    def clock_info(self) -> dict[str, Any]: ...

    def set_clock(self, *, offset_seconds: float | None, advance_seconds: float | None) -> None: ...

    def list_computers(self) -> list[dict[str, Any]]: ...

    def describe(self, fqdn: str) -> dict[str, Any]: ...

    def add_computer(self, spec: dict[str, Any]) -> dict[str, Any]: ...

    def remove_computer(self, fqdn: str) -> None:
        """Remove from VMM (and from the lab): it is no longer a managed computer."""
        ...

    def delete_certificates(self, fqdn: str) -> list[str]:
        """Delete the computer's SCVMM certificates from My, as an admin would by mistake."""
        ...

    def renew(self, fqdn: str) -> dict[str, Any]:
        """Run the renewal the product would (procedure 1, or 2 for the VMM server)."""
        ...

    def set_trusted_mismatch(self, fqdn: str) -> None:
        """Replace VMM's TrustedPeople copy of ``fqdn`` with a certificate that does not match."""
        ...
