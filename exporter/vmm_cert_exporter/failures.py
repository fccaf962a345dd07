"""Why reading a computer failed, in the few words the metrics and logs use.

The reasons are a contract (the ``reason`` label of ``vmm_cert_collect_errors_total``).
"""

from __future__ import annotations

from typing import Final

CONNECT: Final = "connect"  # refused, reset, unreachable, DNS, connect timeout
TIMEOUT: Final = "timeout"  # no complete answer before the per-computer deadline
AUTH: Final = "auth"  # credentials refused (401) or WS-Man AccessDenied
TLS: Final = "tls"  # handshake or certificate validation failed
WSMAN_FAULT: Final = "wsman_fault"  # any other SOAP fault or unexpected HTTP status
SCRIPT: Final = "script"  # the PowerShell ran and exited non-zero
PARSE: Final = "parse"  # the output broke the script contract
LANGUAGE_MODE: Final = "language_mode"  # PowerShell is not in FullLanguage (AppLocker/WDAC)

REASONS: Final = (CONNECT, TIMEOUT, AUTH, TLS, WSMAN_FAULT, SCRIPT, PARSE, LANGUAGE_MODE)


class CollectError(Exception):
    """One failed call to one computer: a reason from ``REASONS`` and a human detail.

    The detail never contains credentials: it is built from exception texts of requests and
    pywinrm, which do not carry passwords, and from the script's own error output.
    """

    def __init__(self, reason: str, detail: str) -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown failure reason {reason!r}")
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
