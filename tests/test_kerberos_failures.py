"""What a Kerberos failure is called, and when a ticket is renewed: the parts of
``kerberos.py`` that need no KDC (tests/test_kerberos.py runs the rest against a real one)."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from vmm_cert_exporter import kerberos
from vmm_cert_exporter.config import WinRMConfig

SPN = "HTTP/hv01.corp.example"
GSS = (
    "KerberosExchangeError: authGSSClientStep() failed: "
    "(('Unspecified GSS failure.', 851968), ({}, -1))"
)


@pytest.mark.parametrize(
    ("minor", "expected"),
    [
        ("Server HTTP/hv01.corp.example@CORP.EXAMPLE not found in Kerberos database",
         "Kerberos: unknown SPN HTTP/hv01.corp.example: no account holds it; register it"),
        ("Cannot contact any KDC for realm 'CORP.EXAMPLE'", "Kerberos: no KDC reachable"),
        ("Clock skew too great", "Kerberos: clock skew"),
        ("Ticket expired", "Kerberos: the ticket has expired"),
        ("Client's credentials have been revoked",
         "Kerberos: the account's credentials were revoked"),
        ("No Kerberos credentials available", "Kerberos: no ticket in the credential cache"),
    ],
)  # fmt: skip
def test_gssapi_words_become_what_failed(minor: str, expected: str) -> None:
    text = GSS.format(repr(minor))
    message = kerberos.describe_failure(
        text, spn=SPN, principal="svc@CORP.EXAMPLE", refused=False, skew=None
    )
    assert message is not None and message.startswith(expected), message


def test_a_refused_ticket_with_a_skewed_computer_says_clock_skew() -> None:
    message = kerberos.describe_failure(
        "InvalidCredentialsError: the specified credentials were rejected by the server",
        spn=SPN,
        principal=None,
        refused=True,
        skew=-601.0,
    )
    assert message is not None
    assert "clock skew" in message and "10 minutes behind" in message


def test_a_refused_ticket_within_five_minutes_names_the_other_causes() -> None:
    message = kerberos.describe_failure(
        "InvalidCredentialsError: rejected", spn=SPN, principal=None, refused=True, skew=120.0
    )
    assert message is not None and "clock" not in message and "SPN or keytab" in message


def test_a_missing_kerberos_extra_says_what_to_install() -> None:
    text = "WinRMError: requested auth method is kerberos, but pykerberos is not installed"
    message = kerberos.describe_failure(text, spn=SPN, principal=None, refused=False, skew=None)
    assert message is not None and "vmm-cert-exporter[kerberos]" in message


def test_a_connection_failure_is_not_kerberos() -> None:
    text = "ConnectionError: [Errno 111] Connection refused"
    assert (
        kerberos.describe_failure(text, spn=SPN, principal=None, refused=False, skew=None) is None
    )


def test_renewal_two_thirds_into_the_lifetime_and_retries_back_off() -> None:
    from vmm_cert_exporter.config import WinRMConfig

    login = kerberos.KerberosLogin(WinRMConfig(transport="kerberos"))
    now = time.time()
    login.obtained, login.expires = now, now + 3000
    assert 1990 < login.next_wait(0) <= 2000
    assert [login.next_wait(n) for n in (1, 2, 3, 8)] == [1.0, 2.0, 4.0, 60.0]


def test_kinit_errors() -> None:
    assert kerberos._kinit_error(b"Password expired.  You must change it now.\n", b"") == (
        "Password has expired: set a new one for the account"
    )
    stderr = (
        b"kinit: Cannot contact any KDC for realm 'LAB.EXAMPLE' while getting initial credentials\n"
    )
    assert kerberos._kinit_error(b"", stderr).startswith("Cannot contact any KDC")


@pytest.fixture
def no_writable_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No usable temporary directory, as under a read-only root without a tmpfs at /tmp."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "missing"))
    for name in ("KRB5CCNAME", kerberos.MANAGED_ENV):
        monkeypatch.delenv(name, raising=False)
    yield
    kerberos.stop_all()


def test_no_writable_tmp_is_said_on_every_failure(no_writable_tmp: None, tmp_path: Path) -> None:
    keytab = tmp_path / "svc.keytab"
    keytab.write_bytes(b"")
    principal = "svc@CORP.EXAMPLE"
    config = WinRMConfig(transport="kerberos", username=principal, keytab_file=str(keytab))
    login = kerberos.login(config)  # no traceback: the process keeps running
    assert login is not None and login.renewals == 0
    failure = kerberos.last_failure(principal)
    assert failure is not None and "no writable directory for the ticket caches" in failure
    assert "mount a tmpfs at /tmp" in failure
    message = kerberos.describe_failure(
        GSS.format(repr("No Kerberos credentials available")),
        spn=SPN,
        principal=principal,
        refused=False,
        skew=None,
    )
    assert message is not None and message.startswith("Kerberos: no ticket in the credential")
    assert "mount a tmpfs at /tmp" in message
    kerberos.stop_all()
    assert kerberos.last_failure(principal) is None
