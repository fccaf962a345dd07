"""The frame every page shares: head, stylesheet, script, header links; escaping and times.

Every string that reaches a page through ``esc`` or ``attr``: computer names, error texts,
issuers and states come from the hosts and VMM, and are untrusted.
"""

from __future__ import annotations

import html
import time
from typing import Final
from urllib.parse import quote

from vmm_cert_exporter import __version__

DOCS_URL: Final = "https://github.com/vmm-cert-exporter/vmm-cert-exporter/blob/main/docs/pages.md"


def esc(text: object) -> str:
    """Text content, escaped (quotes too, so that it is safe in an attribute as well)."""
    return html.escape(str(text), quote=True)


def computer_href(fqdn: str, prefix: str = "") -> str:
    """The relative link to a computer's page, escaped for an attribute."""
    return esc(f"{prefix}computer/{quote(fqdn, safe='')}")


def utc(ts: float | None) -> str:
    """A Unix time as the pages show it, to the minute, UTC."""
    if ts is None:
        return ""
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(ts))


def age(seconds: float) -> str:
    """How long ago, roughly, in the largest sensible unit."""
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.0f} h"
    return f"{seconds / 86400:.0f} days"


def page(title: str, body: str, prefix: str = "") -> str:
    """A whole HTML document; ``prefix`` leads relative links back to the exporter's root
    (``""`` on ``/``, ``"../"`` on ``/computer/<fqdn>``), so that a reverse proxy's path
    prefix keeps working."""
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title>"
        f'<link rel="icon" href="{prefix}static/favicon.svg">'
        f'<link rel="stylesheet" href="{prefix}static/pages.css">'
        f'<script src="{prefix}static/pages.js" defer></script>'
        "</head><body>\n"
        f'<nav><a href="{prefix or "./"}">SCVMM certificates</a> '
        f'<a href="{prefix}metrics">/metrics</a> '
        f'<a href="{DOCS_URL}">docs</a> '
        f'<span class="version">vmm-cert-exporter {esc(__version__)}</span></nav>\n'
        f"{body}\n</body></html>\n"
    )
