"""``capture --redact``: every hostname becomes ``hostNNN.redacted``, consistently, everywhere.

The names come from the capture itself: the inventory, every FQDN-shaped value and friendly
name in the scripts' JSON, every certificate's CN and DNS names, and every name in a known
DNS domain that an error text mentions. They are numbered in sorted order; an FQDN becomes
``hostNNN.redacted``, its first label ``hostNNN`` (as a whole word), its DNS domain
``domainNNN.redacted``. Certificates are re-issued under the new names (``capture_reissue``)
and thumbprints follow them. A bare host name that is also a word the exporter decides on
(``Host``, ``Library``, ...) is left alone as a word: changing it would change verdicts.
IP addresses are not hostnames and are kept.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import replace

from cryptography import x509
from cryptography.x509.oid import NameOID

from vmm_cert_exporter.capture_format import Call, Capture, Member, Skipped
from vmm_cert_exporter.capture_reissue import Reissuer
from vmm_cert_exporter.capture_text import (
    Rewrite,
    decode_base64,
    parse_json,
    rewrite_output,
    strings,
)
from vmm_cert_exporter.config import validate_fqdn

FRIENDLY_PREFIX = "scvmm_certificate_key_container"
# words the exporter or VMM decide on: never replaced as bare words (see the module docstring)
PROTECTED = frozenset(
    {
        "host", "library", "vmmserverrole", "vmm", "server", "responding", "notresponding",
        "accessdenied", "my", "trustedpeople", "completed", "failed", "localhost",
        "vmmwinpeagentosdbootstrap", "languagemode", "fulllanguage", "constrainedlanguage",
        "restrictedlanguage", "nolanguage", "true", "false", "null", "schema", "status",
        "error", "computer", "certificates",
    }
)  # fmt: skip
_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_NOT_NUL = re.compile("[^\0]")
_THUMBPRINT = re.compile(r"(?<![0-9A-Fa-f])[0-9A-Fa-f]{40}(?![0-9A-Fa-f])")


def _is_fqdn(text: str) -> bool:
    try:
        validate_fqdn(text.strip().rstrip("."))
    except ValueError:
        return False
    return True


def _is_bare_name(text: str) -> bool:
    """A host name without a domain (``HV01``), not a number or an IP address."""
    if _LABEL.fullmatch(text) is None or text.isdigit():
        return False
    return text.lower() not in PROTECTED


class _Node(dict[str, "_Node"]):
    """A trie node: the next character -> its node; the key "" marks the end of a word."""


def _trie(words: Iterable[str]) -> str:
    """One regular expression for many words, as a trie: fast however many names there are."""
    root = _Node()
    for word in words:
        node = root
        for ch in word:
            node = node.setdefault(ch, _Node())
        node[""] = _Node()

    def build(node: _Node) -> str:
        branches = [re.escape(ch) + build(child) for ch, child in sorted(node.items()) if ch]
        if not branches:
            return ""
        body = branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"
        if "" in node:
            return f"(?:{body})?" if len(branches) == 1 else body + "?"
        return body

    return build(root)


class NameMap:
    """Original hostnames and their redacted names; implements ``capture_reissue.Names``."""

    def __init__(self, fqdns: Iterable[str], bare: Iterable[str]) -> None:
        fqdn_keys = {f.strip().rstrip(".").lower() for f in fqdns}
        firsts = {f.split(".", 1)[0] for f in fqdn_keys}
        bare_keys = {b.lower() for b in bare} - firsts
        self.fqdns: dict[str, str] = {}
        self.bare: dict[str, str] = {}
        for number, key in enumerate(sorted(fqdn_keys | bare_keys), start=1):
            name = f"host{number:03d}"
            if key in fqdn_keys:
                self.fqdns[key] = f"{name}.redacted"
                first = key.split(".", 1)[0]
                if first not in PROTECTED:
                    self.bare.setdefault(first, name)
            else:
                self.bare[key] = name
        domains = sorted({k.split(".", 1)[1] for k in fqdn_keys if "." in k.split(".", 1)[1]})
        self.domains = {d: f"domain{n:03d}.redacted" for n, d in enumerate(domains, start=1)}
        # the friendly-name prefix is matched first and kept, so that a computer named like
        # one of its words (scvmm.corp.example) cannot break it; an FQDN may follow it directly
        parts = [f"(?P<keep>{FRIENDLY_PREFIX})"]
        if self.fqdns:
            parts.append(f"(?P<f>{_trie(self.fqdns)})(?![A-Za-z0-9-])")
        if self.domains:
            parts.append(f"(?<![A-Za-z0-9-])(?P<d>{_trie(self.domains)})(?![A-Za-z0-9-])")
        if self.bare:
            parts.append(f"(?<![A-Za-z0-9])(?P<s>{_trie(self.bare)})(?![A-Za-z0-9])")
        self._pattern = re.compile("|".join(parts), re.IGNORECASE)
        # the same names as UTF-16, little- or big-endian (BMPString in DER, UTF-16 output)
        wide = [w for w in (*self.fqdns, *self.domains, *self.bare) if len(w) > 1]
        self._wide = re.compile(_trie("\0".join(w) for w in wide) or r"(?!)", re.IGNORECASE)

    def __len__(self) -> int:
        return len(self.fqdns) + len(self.bare)

    def name(self, fqdn: str) -> str:
        """The redacted name of a computer (an FQDN of the capture)."""
        return self.rename(fqdn)

    def rename(self, text: str) -> str:
        return self._pattern.sub(self._replacement, text)

    def _replacement(self, match: re.Match[str]) -> str:
        key = match.group().lower()
        if match.lastgroup == "keep":
            return match.group()
        if match.lastgroup == "f":
            return self.fqdns[key]
        if match.lastgroup == "d":
            return self.domains[key]
        return self.bare[key]

    def contains(self, data: bytes) -> bool:
        text = data.decode("latin-1")
        names = (m for m in self._pattern.finditer(text) if m.lastgroup != "keep")
        return next(names, None) is not None or self._wide.search(text) is not None

    def mask(self, data: bytes) -> bytes:
        """Every name overwritten with ``x`` of the same length (binary stays well-formed)."""
        text = data.decode("latin-1")
        text = self._pattern.sub(
            lambda m: m.group() if m.lastgroup == "keep" else "x" * len(m.group()), text
        )
        return self.mask_wide(text.encode("latin-1"))

    def mask_wide(self, data: bytes) -> bytes:
        """Names written as UTF-16 (not text the other rules can read), overwritten in place."""
        text = self._wide.sub(lambda m: _NOT_NUL.sub("x", m.group()), data.decode("latin-1"))
        return text.encode("latin-1")


# --- finding the names ------------------------------------------------------------------------


def _certificate_names(der: bytes) -> list[str]:
    try:
        cert = x509.load_der_x509_certificate(der)
        names = [
            str(a.value)
            for n in (cert.subject, cert.issuer)
            for a in n.get_attributes_for_oid(NameOID.COMMON_NAME)
        ]
        try:
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            names.extend(san.get_values_for_type(x509.DNSName))
        except x509.ExtensionNotFound:
            pass
        return names
    except (ValueError, TypeError, x509.DuplicateExtension, x509.UnsupportedGeneralNameType):
        return []


class _Finder:
    """Collects the hostnames a capture mentions."""

    def __init__(self) -> None:
        self.fqdns: set[str] = set()
        self.bare: set[str] = set()
        self.texts: list[str] = []  # searched for names in known domains at the end

    def add(self, name: str | None) -> None:
        if not name:
            return
        name = name.strip().rstrip(".")
        if _is_fqdn(name):
            self.fqdns.add(name.lower())
            return
        try:
            ipaddress.ip_address(name)
        except ValueError:
            if _is_bare_name(name):
                self.bare.add(name.lower())

    def output(self, data: bytes) -> None:
        document = parse_json(data)
        if document is None:
            self.texts.append(data.decode("utf-8", "replace"))
            return
        for key, value in strings(document):
            if key == "der_base64":
                der = decode_base64(value)
                for name in _certificate_names(der) if der else []:
                    self.add(name)
            elif key == "dns_names":
                self.add(value)
            elif value.lower().startswith(FRIENDLY_PREFIX):
                self.add(value[len(FRIENDLY_PREFIX) :])
            elif _is_fqdn(value):
                self.add(value)
            else:
                self.texts.append(value)

    def names(self) -> NameMap:
        """The map, after adding every name in a known domain that a text mentions."""
        domains = {f.split(".", 1)[1] for f in self.fqdns if "." in f.split(".", 1)[1]}
        if domains:
            in_domain = re.compile(
                r"(?<![A-Za-z0-9_-])(?:[A-Za-z0-9-]+\.)+(?:"
                + "|".join(re.escape(d) for d in sorted(domains, key=len, reverse=True))
                + r")(?![A-Za-z0-9-])",
                re.IGNORECASE,
            )
            for text in self.texts:
                for match in in_domain.finditer(text):
                    self.add(match.group())
        return NameMap(self.fqdns, self.bare)


def find_names(capture: Capture, extra: Iterable[str] = ()) -> NameMap:
    finder = _Finder()
    for name in extra:
        finder.add(name)
    for host, _ in capture.vmm_servers:
        finder.add(host)
    for host, _ in capture.hosts:
        finder.add(host)
    for member in capture.members:
        finder.add(member.fqdn)
        finder.add(member.vmm_server)
    for call in capture.calls:
        finder.add(call.computer)
        finder.output(call.stdout)
        finder.texts.append(call.stderr.decode("utf-8", "replace"))
        finder.texts.append(call.failure_detail or "")
    return finder.names()


# --- applying them ----------------------------------------------------------------------------


def redact(capture: Capture, extra_names: Iterable[str] = ()) -> Capture:
    """A copy of ``capture`` with every hostname and certificate replaced."""
    names = find_names(capture, extra_names)
    reissuer = Reissuer(names)
    # every certificate first, so that every thumbprint field can follow its certificate
    for call in capture.calls:
        document = parse_json(call.stdout)
        for key, value in strings(document) if document is not None else []:
            der = decode_base64(value) if key == "der_base64" else None
            if der:
                reissuer.reissue(der)
    thumbprints = reissuer.thumbprints()

    def text(value: str) -> str:
        value = _THUMBPRINT.sub(lambda m: thumbprints.get(m.group().upper(), m.group()), value)
        return names.rename(value)

    rewrite = Rewrite(
        text=text,
        der=reissuer.reissue,
        thumbprint=lambda t: thumbprints.get(t.upper(), t),
        binary=names.mask_wide,
    )
    calls = [
        replace(
            call,
            computer=names.name(call.computer),
            stdout=rewrite_output(call.stdout, rewrite),
            stderr=rewrite_output(call.stderr, rewrite),
            failure_detail=None if call.failure_detail is None else text(call.failure_detail),
        )
        for call in capture.calls
    ]
    return replace(
        capture,
        redacted=True,
        vmm_servers=[(names.name(h), d) for h, d in capture.vmm_servers],
        hosts=[(names.name(h), r) for h, r in capture.hosts],
        members=[
            Member(
                fqdn=names.name(m.fqdn),
                role=m.role,
                vmm_server=None if m.vmm_server is None else names.name(m.vmm_server),
                method=m.method,
            )
            for m in capture.members
        ],
        skipped=[
            Skipped(names.name(s.computer), s.operation, names.rename(s.why))
            for s in capture.skipped
        ],
        calls=calls,
    )


def scrub(capture: Capture, *, anywhere: Iterable[str], words: Iterable[str]) -> Capture:
    """Replace the account's password (``anywhere``) and name (``words``, as whole words)
    with ``[redacted]`` in everything the computers answered.

    No answer should ever contain them; this makes sure none is written if one does. Values
    shorter than 6 (password) or 3 (name) characters are too likely to be something else.
    """
    long_enough = [re.escape(s) for s in anywhere if len(s) >= 6]
    bounded = [re.escape(s) for s in words if len(s) >= 3]
    parts = []
    if long_enough:
        parts.append("|".join(sorted(long_enough, key=len, reverse=True)))
    if bounded:
        alternatives = "|".join(sorted(bounded, key=len, reverse=True))
        parts.append(rf"(?<![A-Za-z0-9])(?:{alternatives})(?![A-Za-z0-9])")
    if not parts:
        return capture
    pattern = re.compile("|".join(parts), re.IGNORECASE)

    def text(value: str) -> str:
        return pattern.sub("[redacted]", value)

    rewrite = Rewrite(text=text)
    calls: list[Call] = [
        replace(
            call,
            stdout=rewrite_output(call.stdout, rewrite),
            stderr=rewrite_output(call.stderr, rewrite),
            failure_detail=None if call.failure_detail is None else text(call.failure_detail),
        )
        for call in capture.calls
    ]
    return replace(capture, calls=calls)
