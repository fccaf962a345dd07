"""The pages' stylesheet and script: package resources, read once, served as they are."""

from __future__ import annotations

from functools import cache
from importlib import resources
from typing import Final

# name -> content type; nothing else under static/ is served
TYPES: Final = {
    "pages.css": "text/css; charset=utf-8",
    "pages.js": "text/javascript; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}


@cache
def asset(name: str) -> bytes | None:
    """The bytes of ``static/<name>``, or None for a name that is not one of ``TYPES``."""
    if name not in TYPES:
        return None
    return resources.files("vmm_cert_exporter.pages").joinpath("static", name).read_bytes()
