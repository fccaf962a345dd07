"""The handlers' side: a WSGI environ from a parsed request, and a handler's answer collected.

Handlers are WSGI applications (PEP 3333) run in the server's handler threads. The body is
read by the server before the handler runs (``wsgi.input`` is in memory, at most the
server's ``max_body_bytes`` plus one byte), and the answer is collected whole: a list of
byte strings that the event loop then sends from where they are, without copying them.
"""

from __future__ import annotations

import io
import logging
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import unquote_to_bytes

import h11

log = logging.getLogger(__name__)

StartResponse = Callable[..., Any]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]
Header = tuple[str, str]

_SPECIAL: Final = {b"content-type": "CONTENT_TYPE", b"content-length": "CONTENT_LENGTH"}


@dataclass(frozen=True)
class Peer:
    """Where a connection comes from and how it arrived."""

    address: str
    port: int
    scheme: str  # "http" or "https"
    server_name: str
    server_port: int


@dataclass
class Answer:
    """A handler's response: status, headers and the body's parts, as the handler made them."""

    status: int
    reason: str
    headers: list[Header]
    body: list[bytes]


def split_target(target: bytes) -> tuple[str, str]:
    """``(PATH_INFO, QUERY_STRING)`` of a request target, the path percent-decoded."""
    if target.startswith((b"http://", b"https://")):  # absolute form: keep the path
        rest = target.split(b"//", 1)[1]
        slash = rest.find(b"/")
        target = rest[slash:] if slash >= 0 else b"/"
    path, _, query = target.partition(b"?")
    return unquote_to_bytes(path).decode("latin-1"), query.decode("latin-1")


def environ(request: h11.Request, body: bytes, peer: Peer) -> dict[str, Any]:
    path, query = split_target(request.target)
    env: dict[str, Any] = {
        "REQUEST_METHOD": request.method.decode("ascii", "replace"),
        "SCRIPT_NAME": "",
        "PATH_INFO": path,
        "QUERY_STRING": query,
        "SERVER_NAME": peer.server_name,
        "SERVER_PORT": str(peer.server_port),
        "SERVER_PROTOCOL": f"HTTP/{request.http_version.decode('ascii', 'replace')}",
        "REMOTE_ADDR": peer.address,
        "REMOTE_PORT": str(peer.port),
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": peer.scheme,
        "wsgi.input": io.BytesIO(body),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }
    if peer.scheme == "https":
        env["HTTPS"] = "on"
    for name, value in request.headers:
        text = value.decode("latin-1")
        key = _SPECIAL.get(name) or "HTTP_" + name.decode("latin-1").upper().replace("-", "_")
        env[key] = f"{env[key]},{text}" if key in env else text
    return env


def plain(status: int, reason: str, text: str, extra: Iterable[Header] = ()) -> Answer:
    data = text.encode()
    headers = [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(data)))]
    return Answer(status, reason, [*headers, *extra], [data])


def call(app: WSGIApp, env: dict[str, Any]) -> Answer:
    """Run ``app`` for ``env`` (in a handler thread); a failure becomes a 500."""
    started: list[tuple[str, list[Header]]] = []

    def start_response(status: str, headers: list[Header], exc_info: Any = None) -> Any:
        if started and exc_info is None:
            raise RuntimeError("start_response called twice without exc_info")
        started[:] = [(status, list(headers))]
        return _no_write

    try:
        result = app(env, start_response)
        try:
            body = [bytes(part) if not isinstance(part, bytes) else part for part in result]
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
        if not started:
            raise RuntimeError("the handler returned without calling start_response")
    except Exception:
        log.exception("request failed", extra={"path": str(env.get("PATH_INFO", ""))[:100]})
        return plain(500, "Internal Server Error", "internal error\n")
    status, headers = started[0]
    code, _, reason = status.partition(" ")
    return Answer(int(code), reason, headers, [part for part in body if part])


def _no_write(data: bytes) -> None:
    raise RuntimeError("the write() callable is not supported: return the body instead")
