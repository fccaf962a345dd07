"""The exporter's HTTP surface as a WSGI app: /metrics, /-/healthy, /-/ready and /.

Served by the HTTP layer (``vmm_cert_exporter.http``). Every handler only reads the current
snapshot, so a scrape is answered at once even while a refresh is running.
"""

from __future__ import annotations

import dataclasses
import html
import time
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from vmm_cert_exporter import __version__
from vmm_cert_exporter.http.limits import Limits
from vmm_cert_exporter.http.server import HTTPServer
from vmm_cert_exporter.http.wsgi import StartResponse, WSGIApp
from vmm_cert_exporter.metrics import Exposition
from vmm_cert_exporter.snapshot import HostSnapshot, Snapshot
from vmm_cert_exporter.webconfig import WebConfigFile

DAY = 86400.0
_HEADINGS = ("computer", "role", "days left", "NotAfter", "VMM state", "problems")
_CSS = """
body { font-family: sans-serif; margin: 1.5em; }
table { border-collapse: collapse; }
td, th { padding: .25em .6em; border-bottom: 1px solid #ddd; text-align: left; }
tr.crit { background: #f8d7da; } tr.warn { background: #fff3cd; } tr.ok { background: #e8f5e9; }
"""


def _plain(start_response: StartResponse, status: str, body: str) -> list[bytes]:
    data = body.encode()
    start_response(
        status,
        [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(data)))],
    )
    return [data]


def _days_left(host: HostSnapshot, now: float) -> float | None:
    current = host.current
    return None if current is None else (current.info.not_after.timestamp() - now) / DAY


def render_overview(
    snapshot: Snapshot, now: float, warn_days: float = 30, crit_days: float = 7
) -> str:
    """A plain page for the person who would rather look than query."""

    def sort_key(h: HostSnapshot) -> tuple[int, float, str]:
        left = _days_left(h, now)
        # missing first, then by days left, never-read last
        if h.present is False:
            return (0, 0.0, h.computer.key)
        if left is None:
            return (2, 0.0, h.computer.key)
        return (1, left, h.computer.key)

    rows = []
    for h in sorted(snapshot.hosts, key=sort_key):
        left = _days_left(h, now)
        marks = []
        if h.present is False:
            marks.append("MISSING")
        if h.certificates and len(h.certificates) > 1:
            marks.append(f"{len(h.certificates)} certificates")
        if h.trusted is False:
            marks.append("NOT TRUSTED by VMM")
        if not h.last_ok:
            marks.append(f"unreachable ({h.last_error_reason or 'not read yet'})")
        if h.present is False or (left is not None and left <= crit_days) or h.trusted is False:
            css = "crit"
        elif (left is not None and left <= warn_days) or not h.last_ok:
            css = "warn"
        else:
            css = "ok"
        current = h.current
        cells = (
            h.computer.fqdn,
            h.computer.role,
            "" if left is None else f"{left:.1f}",
            "" if current is None else current.info.not_after.strftime("%Y-%m-%d"),
            h.computer.vmm_state_text,
            "; ".join(marks),
        )
        tds = "".join(f"<td>{html.escape(c)}</td>" for c in cells)
        rows.append(f"<tr class='{css}'>{tds}</tr>")
    updated = (
        time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(snapshot.completed_at))
        if snapshot.complete
        else "not yet (first refresh running)"
    )
    head = "".join(f"<th>{t}</th>" for t in _HEADINGS)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>vmm-cert-exporter</title>
<style>{_CSS}</style></head><body>
<h1>SCVMM certificates</h1>
<p>{len(snapshot.hosts)} computers &middot; last refresh: {updated} &middot;
red: missing, not trusted or &le; {crit_days:g} days &middot;
yellow: &le; {warn_days:g} days or unreachable &middot; <a href="metrics">/metrics</a> &middot;
vmm-cert-exporter {html.escape(__version__)}</p>
<table><thead><tr>{head}</tr></thead>
<tbody>
{chr(10).join(rows)}
</tbody></table></body></html>
"""


def _metrics(
    exposition: Exposition, environ: dict[str, Any], start_response: StartResponse
) -> Iterable[bytes]:
    gzipped = "gzip" in environ.get("HTTP_ACCEPT_ENCODING", "").lower()
    # cached parts (rendered once per snapshot and per second), sent as they are: the HTTP
    # layer sends each from the cache without a copy
    parts = exposition.render_gzip_parts() if gzipped else exposition.render_parts()
    length = sum(len(part) for part in parts)
    headers = [("Content-Type", CONTENT_TYPE_PLAIN_0_0_4), ("Content-Length", str(length))]
    if gzipped:
        headers.append(("Content-Encoding", "gzip"))
    start_response("200 OK", headers)
    return [] if environ.get("REQUEST_METHOD") == "HEAD" else parts


def make_app(
    exposition: Exposition,
    snapshot: Callable[[], Snapshot],
    *,
    clock: Callable[[], float] = time.time,
    ready: Callable[[], bool] | None = None,
) -> WSGIApp:
    """``ready``: whether the first refresh is served (default: the snapshot says so)."""
    is_ready = ready or (lambda: snapshot().complete)

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "/")
        method = environ.get("REQUEST_METHOD", "GET")
        if method not in ("GET", "HEAD"):
            return _plain(start_response, "405 Method Not Allowed", "only GET and HEAD\n")
        if path == "/metrics":
            return _metrics(exposition, environ, start_response)
        if path == "/-/healthy":
            return _plain(start_response, "200 OK", "Healthy\n")
        if path == "/-/ready":
            if is_ready():
                return _plain(start_response, "200 OK", "Ready\n")
            return _plain(start_response, "503 Service Unavailable", "first refresh running\n")
        if path == "/":
            body = render_overview(snapshot(), clock()).encode()
            start_response(
                "200 OK",
                [("Content-Type", "text/html; charset=utf-8"), ("Content-Length", str(len(body)))],
            )
            return [body]
        return _plain(start_response, "404 Not Found", "not found\n")

    return app


def make_server(
    app: WSGIApp,
    listen_address: str,
    threads: int | None = None,
    web_config: WebConfigFile | None = None,
    limits: Limits | None = None,
) -> HTTPServer:
    """The exporter's server for ``app``; ``web_config`` (--web.config.file) adds TLS and auth."""
    limits = limits or Limits()
    if threads is not None:
        limits = dataclasses.replace(limits, handler_threads=threads)
    return HTTPServer(
        app, listen_address, name="vmm-cert-exporter", web_config=web_config, limits=limits
    )
