"""The exporter's HTTP surface as a WSGI app: /metrics, /-/healthy, /-/ready and the pages
(/, /computer/<fqdn> and their /static/ files, rendered by ``vmm_cert_exporter.pages``).

Served by the HTTP layer (``vmm_cert_exporter.http``). Every handler only reads the current
snapshot, so a scrape is answered at once even while a refresh is running.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable
from typing import Any, Final

from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from vmm_cert_exporter.http.limits import Limits
from vmm_cert_exporter.http.server import HTTPServer
from vmm_cert_exporter.http.wsgi import StartResponse, WSGIApp
from vmm_cert_exporter.metrics import Exposition
from vmm_cert_exporter.pages import computer, landing
from vmm_cert_exporter.pages.assets import TYPES, asset
from vmm_cert_exporter.pages.prepared import Fleet, FleetCache
from vmm_cert_exporter.snapshot import Snapshot
from vmm_cert_exporter.webconfig import WebConfigFile

_COMPUTER: Final = "/computer/"
_STATIC: Final = "/static/"
# the pages load only their own stylesheet and script; inline SVG needs nothing more
_PAGE_HEADERS: Final = (
    (
        "Content-Security-Policy",
        "default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self'; "
        "form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
    ),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "same-origin"),
)


def _plain(start_response: StartResponse, status: str, body: str) -> list[bytes]:
    data = body.encode()
    start_response(
        status,
        [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(data)))],
    )
    return [data]


def _send(
    environ: dict[str, Any],
    start_response: StartResponse,
    status: str,
    content_type: str,
    body: bytes,
    *extra: tuple[str, str],
) -> list[bytes]:
    start_response(
        status,
        [
            ("Content-Type", content_type),
            ("Content-Length", str(len(body))),
            *_PAGE_HEADERS,
            *extra,
        ],
    )
    return [] if environ.get("REQUEST_METHOD") == "HEAD" else [body]


def _html(
    environ: dict[str, Any], start_response: StartResponse, status: str, text: str
) -> list[bytes]:
    # a page is the snapshot of its moment: going back to it asks for the current one
    fresh = ("Cache-Control", "no-cache")
    return _send(environ, start_response, status, "text/html; charset=utf-8", text.encode(), fresh)


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


def _computer(
    environ: dict[str, Any],
    start_response: StartResponse,
    path: str,
    fleet: Fleet,
    now: float,
) -> list[bytes]:
    # PATH_INFO holds the request's bytes as latin-1 (PEP 3333); names are UTF-8
    name = path[len(_COMPUTER) :].encode("latin-1").decode("utf-8", "replace")
    prefix = "../" * path.count("/", 1)
    host = fleet.find(name) if "/" not in name else None
    if host is None:
        return _html(environ, start_response, "404 Not Found", computer.not_found(name, prefix))
    return _html(environ, start_response, "200 OK", computer.render(host, now))


def make_app(
    exposition: Exposition,
    snapshot: Callable[[], Snapshot],
    *,
    clock: Callable[[], float] = time.time,
    fleets: FleetCache | None = None,
    ready: Callable[[], bool] | None = None,
) -> WSGIApp:
    """``fleets``: the pages' view of the latest snapshot, prepared once per snapshot (the
    caller may warm it after each refresh, as it warms ``exposition``); ``ready``: whether the
    first refresh is served (default: the snapshot says so)."""
    fleets = fleets or FleetCache()
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
            fleet = fleets.get(snapshot())
            page = landing.render(fleet, clock(), environ.get("QUERY_STRING", ""))
            return _html(environ, start_response, "200 OK", page)
        if path.startswith(_COMPUTER):
            return _computer(environ, start_response, path, fleets.get(snapshot()), clock())
        if path.startswith(_STATIC):
            name = path[len(_STATIC) :]
            data = asset(name)
            if data is not None:
                cache = ("Cache-Control", "max-age=300")
                return _send(environ, start_response, "200 OK", TYPES[name], data, cache)
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
