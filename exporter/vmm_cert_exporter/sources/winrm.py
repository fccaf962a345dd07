"""The WinRM source: the script contract, run over WinRM, read into certificates and views.

Each call renders one contract script, runs it within its deadline (``remoting.py``), turns a
non-zero exit into its failure reason (``ScriptOutput.failure``) and parses the output
strictly (``results.py``). A computer is read with ``collect-certificates``; a VMM server is
also asked what it manages (``list-managed-computers``) and what its TrustedPeople holds
(``list-trusted-certificates``), which only this source can tell.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final, TypeVar

from vmm_cert_exporter import failures
from vmm_cert_exporter.certificate import CertificateError, parse_certificate
from vmm_cert_exporter.config import WinRMConfig
from vmm_cert_exporter.failures import CollectError
from vmm_cert_exporter.inventory import VmmView, view_from_result
from vmm_cert_exporter.powershell import render_script
from vmm_cert_exporter.remoting import WinRMRunner
from vmm_cert_exporter.results import (
    CertificatesResult,
    ScriptOutputError,
    parse_collect_certificates,
    parse_managed_computers,
    parse_trusted_certificates,
)
from vmm_cert_exporter.snapshot import StoredCertificate, scvmm_friendly_host
from vmm_cert_exporter.trust import TrustedCopies

COLLECT: Final = "collect-certificates"
LIST_MANAGED: Final = "list-managed-computers"
LIST_TRUSTED: Final = "list-trusted-certificates"

T = TypeVar("T")


def stored_certificates(result: CertificatesResult) -> tuple[StoredCertificate, ...]:
    """Parse each SCVMM certificate; an unparsable one is a contract break of the reader."""
    out: list[StoredCertificate] = []
    for record in result.certificates:
        if scvmm_friendly_host(record.friendly_name) is None:
            continue
        try:
            info = parse_certificate(record.der)
        except CertificateError as exc:
            raise CollectError(failures.PARSE, f"certificate {record.thumbprint}: {exc}") from exc
        out.append(
            StoredCertificate(
                info=info,
                friendly_name=record.friendly_name,
                has_private_key=record.has_private_key,
            )
        )
    return tuple(out)


class WinRMSource:
    """Reads computers' stores and VMM servers over WinRM; thread-safe (a session per call).

    Every method raises ``CollectError`` with the failure reason when it cannot answer.
    """

    operation: Final = COLLECT

    def __init__(self, config: WinRMConfig) -> None:
        self._runner = WinRMRunner(config)

    def read(self, fqdn: str) -> tuple[StoredCertificate, ...]:
        """The SCVMM certificates in the computer's ``LocalMachine\\My`` store."""
        return stored_certificates(self._run(fqdn, COLLECT, parse_collect_certificates))

    def discover(self, vmm_server: str) -> VmmView:
        """What the VMM server manages, as it reports it."""
        return view_from_result(
            vmm_server, self._run(vmm_server, LIST_MANAGED, parse_managed_computers)
        )

    def trusted_copies(self, vmm_server: str) -> TrustedCopies:
        """The copies of its computers' certificates the VMM server keeps in TrustedPeople."""
        return TrustedCopies.from_result(
            self._run(vmm_server, LIST_TRUSTED, parse_trusted_certificates)
        )

    @property
    def max_call_seconds(self) -> float:
        """The longest one call can take: its deadline, then Signal + Delete."""
        return self._runner.max_call_seconds

    def abort(self) -> None:
        """End every call in flight now (each still sends Signal + Delete); later ones fail."""
        self._runner.abort()

    def _run(self, host: str, operation: str, parse: Callable[[str], T]) -> T:
        output = self._runner.run(host, render_script(operation))
        failure = output.failure()
        if failure is not None:
            raise failure
        try:
            return parse(output.stdout)
        except ScriptOutputError as exc:
            raise CollectError(failures.PARSE, str(exc)) from exc
