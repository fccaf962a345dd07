"""A computer's page (``/computer/<fqdn>``): every SCVMM certificate in its store, VMM's
TrustedPeople verdict, VMM's state, the last error and when it was last read."""

from __future__ import annotations

from vmm_cert_exporter.pages.layout import age, esc, page, utc
from vmm_cert_exporter.pages.prepared import entry_of
from vmm_cert_exporter.pages.status import DEFAULT_LIMITS, Assessment, Thresholds, assess
from vmm_cert_exporter.snapshot import HostSnapshot

PREFIX = "../"  # from /computer/<fqdn> back to the exporter's root


def _dl(items: list[tuple[str, str]]) -> str:
    return "<dl>" + "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in items) + "</dl>"


def _certificates(host: HostSnapshot) -> str:
    if host.certificates is None:
        return "<p>Its store has not been read yet: nothing is known of its certificates.</p>"
    if not host.certificates:
        return (
            '<p class="critical">Missing: its LocalMachine\\My store holds no SCVMM '
            "certificate. VMM cannot manage it until it has one again.</p>"
        )
    current = host.current
    ordered = sorted(host.certificates, key=lambda c: c.info.not_after, reverse=True)
    tables = []
    for number, cert in enumerate(ordered, 1):
        info = cert.info
        used = "in use (the latest NotAfter)" if cert is current else "not in use"
        fields = (
            ("Thumbprint", f"<code>{esc(info.thumbprint)}</code>"),
            ("NotBefore", utc(info.not_before.timestamp())),
            ("NotAfter", utc(info.not_after.timestamp())),
            ("Issuer", esc(info.issuer)),
            ("Subject", esc(info.subject)),
            ("Serial", f"<code>{esc(info.serial)}</code>"),
            ("Friendly name", esc(cert.friendly_name)),
            ("Private key", "yes" if cert.has_private_key else "no"),
        )
        rows = "".join(f"<tr><th>{k}<td>{v}</tr>" for k, v in fields)
        tables.append(
            f'<table class="certificate"><caption>Certificate {number} of {len(ordered)}: '
            f"{used}</caption><tbody>{rows}</tbody></table>"
        )
    note = ""
    if len(ordered) > 1:
        note = (
            f'<p class="warning">Duplicates: {len(ordered)} SCVMM certificates. '
            "VMM uses the one with the latest NotAfter; a leftover may be picked by other "
            "software (the Network Controller host agent on SDN hosts).</p>"
        )
    if host.method == "tls":
        note += "<p>Read over TLS: the certificate it presents, not its whole store.</p>"
    return note + "\n".join(tables)


def _trust(host: HostSnapshot) -> str:
    current = host.current
    vmm = host.computer.vmm_server
    if host.trusted is True and current is not None:
        return (
            f'<p class="ok">Matches: the TrustedPeople store of VMM server {esc(vmm)} holds '
            f"a copy with thumbprint <code>{esc(current.info.thumbprint)}</code>, the "
            "certificate in use.</p>"
        )
    if host.trusted is False:
        return (
            f'<p class="critical">Not trusted: the TrustedPeople store of VMM server '
            f"{esc(vmm)} holds no copy of the certificate in use; VMM's copy is another "
            "certificate, so VMM cannot talk to it although nothing has expired.</p>"
        )
    if host.method == "tls":
        why = "read over TLS, which tells nothing of VMM's store"
    elif vmm is None:
        why = "no VMM server lists it, so there is no TrustedPeople store to compare with"
    elif current is None:
        why = "it has no certificate to compare"
    else:
        why = "VMM's TrustedPeople was not read, or holds no copy of a VMM server's own"
    return f"<p>Not known: {why}.</p>"


def _state(host: HostSnapshot) -> str:
    computer = host.computer
    if computer.vmm_state is None and computer.vmm_state_display is None:
        return "<p>Not known: no VMM server reported this computer.</p>"
    return _dl(
        [
            ("State (invariant, what alerts use)", esc(computer.vmm_state or "")),
            ("As VMM displays it", esc(computer.vmm_state_display or computer.vmm_state or "")),
            ("Managed by", esc(computer.vmm_server or "")),
        ]
    )


def _reads(host: HostSnapshot, now: float) -> str:
    last = (
        f"{utc(host.last_success)} ({age(now - host.last_success)} ago)"
        if host.last_success is not None
        else "never"
    )
    items = [
        ("Last read successfully", last),
        ("Last refresh", "succeeded" if host.last_ok else "failed"),
        ("Read by", "WinRM (its certificate store)" if host.method == "winrm" else "TLS"),
    ]
    if host.last_duration is not None:
        items.append(("Took", f"{host.last_duration:.2f} s"))
    if not host.last_ok:
        items.append(("Reason", esc(host.last_error_reason or "not read yet")))
        items.append(("Error", f"<code>{esc(host.last_error or '')}</code>"))
    if host.errors_total:
        counted = ", ".join(f"{esc(r)} {n}" for r, n in sorted(host.errors_total.items()))
        items.append(("Failed calls since start, by reason", counted))
    return _dl(items)


def _summary(a: Assessment) -> str:
    words = "".join(f"<li>{esc(p)}</li>" for p in a.problems) or "<li>no problem</li>"
    left = "" if a.days_left is None else f"; {a.days_left:.1f} days left"
    return (
        f'<p class="status {a.status}"><b>{a.status.upper()}</b>{left}</p>'
        f'<ul class="problems">{words}</ul>'
    )


def render(host: HostSnapshot, now: float, limits: Thresholds = DEFAULT_LIMITS) -> str:
    computer = host.computer
    body = (
        f"<header><h1>{esc(computer.fqdn)}</h1><p>{esc(computer.role)}</p></header>"
        + _summary(assess(entry_of(host), now, limits))
        + "<section><h2>Certificates</h2>"
        + _certificates(host)
        + "</section><section><h2>TrustedPeople on the VMM server</h2>"
        + _trust(host)
        + "</section><section><h2>VMM's state</h2>"
        + _state(host)
        + "</section><section><h2>Reading it</h2>"
        + _reads(host, now)
        + "</section>"
    )
    return page(f"{computer.fqdn} - vmm-cert-exporter", body, PREFIX)


def not_found(fqdn: str, prefix: str = PREFIX) -> str:
    body = (
        f"<header><h1>No such computer</h1></header><p>The last refresh knows no computer "
        f'named <code>{esc(fqdn)}</code>. <a href="{prefix or "./"}">Every computer</a>.</p>'
    )
    return page("not found - vmm-cert-exporter", body, prefix)
