"""TrustedPeople matching: which entries are copies, of which computer, and the verdict."""

from __future__ import annotations

import datetime as dt

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from vmm_cert_exporter.certificate import parse_certificate
from vmm_cert_exporter.inventory import Computer
from vmm_cert_exporter.results import CertificateRecord, CertificatesResult
from vmm_cert_exporter.snapshot import StoredCertificate
from vmm_cert_exporter.trust import TrustedCopies, is_copy_candidate, trust_of, trusted_names

KEY = ec.generate_private_key(ec.SECP256R1())
PREFIX = "SCVMM_CERTIFICATE_KEY_CONTAINER"
VMM = "vmm01.corp.example"


def self_signed(cn: str, *san: str) -> bytes:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(KEY.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(dt.datetime(2024, 1, 1, tzinfo=dt.UTC))
        .not_valid_after(dt.datetime(2029, 1, 1, tzinfo=dt.UTC))
    )
    if san:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(n) for n in san]), critical=False
        )
    return builder.sign(KEY, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


def entry(
    der: bytes, friendly_name: str = "", dns_names: tuple[str, ...] = ()
) -> CertificateRecord:
    thumbprint = parse_certificate(der).thumbprint if der else "00" * 20
    return CertificateRecord(
        "TrustedPeople", thumbprint.lower(), friendly_name, False, der, dns_names
    )


def stored(der: bytes) -> StoredCertificate:
    return StoredCertificate(parse_certificate(der), PREFIX + "x", True)


def test_entries_named_by_address_or_for_winpe_are_not_copies() -> None:
    by_address = entry(b"", dns_names=("10.0.0.5", "fe80::1"))
    assert not is_copy_candidate(by_address, None)
    assert not is_copy_candidate(entry(b"", "VMMWinPEAgentOSDBootstrap", ("hv01.x",)), None)
    assert not is_copy_candidate(entry(b"", dns_names=("vmmwinpeagentosdbootstrap-1",)), None)
    assert not is_copy_candidate(entry(b""), None)  # no name at all: nothing to match
    # one name that is not an address is enough, from the DnsNameList or the subject CN
    assert is_copy_candidate(entry(b"", dns_names=("10.0.0.5", "hv01.corp.example")), None)
    der = self_signed("hv01.corp.example")
    assert is_copy_candidate(entry(der), parse_certificate(der))


def test_an_entry_stands_for_every_name_it_carries() -> None:
    der = self_signed("HV01.corp.example", "hv01-alias.corp.example")
    record = entry(der, PREFIX + "hv01-old.Corp.Example.", ("hv01-dns.corp.example",))
    assert trusted_names(record, parse_certificate(der)) == {
        "hv01.corp.example",
        "hv01-alias.corp.example",
        "hv01-old.corp.example",
        "hv01-dns.corp.example",
    }
    # the friendly-name prefix is matched ignoring case; another friendly name names nothing
    assert trusted_names(entry(b"", PREFIX.lower() + "hv02.corp.example"), None) == {
        "hv02.corp.example"
    }
    assert trusted_names(entry(b"", "hv03.corp.example"), None) == set()


def test_copies_are_indexed_by_name_with_upper_case_thumbprints() -> None:
    first, second = self_signed("hv01.corp.example"), self_signed("hv01.corp.example")
    winpe = self_signed("VMMWinPEAgentOSDBootstrap")
    unparsable = CertificateRecord(
        "TrustedPeople",
        "ab" * 20,
        PREFIX + "hv02.corp.example",
        False,
        b"x",
        ("hv02-dns.corp.example",),
    )
    result = CertificatesResult(VMM, (entry(first), entry(second), entry(winpe), unparsable))
    copies = TrustedCopies.from_result(result)
    assert copies.by_name == {
        "hv01.corp.example": {
            parse_certificate(first).thumbprint,
            parse_certificate(second).thumbprint,
        },
        # DER that cannot be read still counts, by its DnsNameList and friendly name
        "hv02.corp.example": {"AB" * 20},
        "hv02-dns.corp.example": {"AB" * 20},
    }


def test_the_verdict() -> None:
    current, old = self_signed("hv01.corp.example"), self_signed("hv01.corp.example")
    host = Computer("HV01.corp.example", "hyperv_host", vmm_server=VMM)
    copies = TrustedCopies.from_result(CertificatesResult(VMM, (entry(current),)))
    stale = TrustedCopies.from_result(CertificatesResult(VMM, (entry(old),)))
    empty = TrustedCopies({})
    assert trust_of(host, stored(current), copies) is True
    assert trust_of(host, stored(current), stale) is False
    assert trust_of(host, stored(current), empty) is False  # VMM keeps no copy of it
    # nothing to compare: no certificate, no TrustedPeople read, or not managed by VMM
    assert trust_of(host, None, copies) is None
    assert trust_of(host, stored(current), None) is None
    static = Computer("hv01.corp.example", "hyperv_host")
    assert trust_of(static, stored(current), copies) is None


def test_the_vmm_server_is_judged_only_when_it_keeps_a_self_copy() -> None:
    current, old = self_signed(VMM), self_signed(VMM)
    server = Computer(VMM, "vmm_server", vmm_server=VMM, is_vmm_server=True)
    assert trust_of(server, stored(current), TrustedCopies({})) is None
    with_copy = TrustedCopies.from_result(CertificatesResult(VMM, (entry(current),)))
    assert trust_of(server, stored(current), with_copy) is True
    stale = TrustedCopies.from_result(CertificatesResult(VMM, (entry(old),)))
    assert trust_of(server, stored(current), stale) is False
