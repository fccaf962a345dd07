"""The HTTP layer's mechanics with real sockets: framing, lingering close, the connection cap,
bcrypt off the event loop, the send deadline. A small WSGI app stands in for the handlers;
``test_slow_clients.py`` runs the exporter and the receiver themselves."""

from __future__ import annotations

import base64
import http.client
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import bcrypt
import pytest
import requests

from vmm_cert_exporter.http.limits import Limits
from vmm_cert_exporter.http.server import HTTPServer
from vmm_cert_exporter.web import make_server
from vmm_cert_exporter.webconfig import load_web_config

BIG = b"m" * (8 << 20)


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    """/big: 8 MB; /echo: the body it was given; anything else: the method and path."""
    path = environ["PATH_INFO"]
    if path == "/big":
        body = BIG
    elif path == "/echo":
        body = environ["wsgi.input"].read()
    else:
        body = f"{environ['REQUEST_METHOD']} {path} {environ.get('REMOTE_USER', '-')}\n".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


@pytest.fixture
def serve() -> Iterator[Callable[..., HTTPServer]]:
    servers: list[HTTPServer] = []

    def start(limits: Limits | None = None, **options: Any) -> HTTPServer:
        server = make_server(app, "127.0.0.1:0", limits=limits, **options).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def _read_all(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def _closed_by_server(sock: socket.socket, within: float) -> bool:
    """True when the server closes ``sock`` (EOF or reset) within ``within`` seconds."""
    sock.settimeout(within)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def test_keep_alive_pipelining_and_head(serve: Callable[..., HTTPServer]) -> None:
    server = serve()
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(
            b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n"
            b"HEAD /b HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /c HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        data = _read_all(sock)
    assert data.count(b"HTTP/1.1 200 OK\r\n") == 3
    assert data.index(b"GET /a -") < data.index(b"GET /c -")
    assert b"HEAD /b" not in data  # a HEAD answer has headers only
    assert b"Server: vmm-cert-exporter\r\n" in data and b"Date: " in data


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"\x16\x03\x01\x02\x00garbage\r\n\r\n", b"400"),
        (b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n", b"400"),
        (b"GET / HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 70_000 + b"\r\n\r\n", b"431"),
    ],
)
def test_malformed_requests_get_their_status(
    serve: Callable[..., HTTPServer], request_bytes: bytes, status: bytes
) -> None:
    server = serve()
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(request_bytes)
        assert _read_all(sock).startswith(b"HTTP/1.1 " + status)


def test_expect_100_continue_and_an_echoed_body(serve: Callable[..., HTTPServer]) -> None:
    server = serve()
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(
            b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n"
            b"Connection: close\r\n\r\n"
        )
        assert sock.recv(100).startswith(b"HTTP/1.1 100 ")
        sock.sendall(b"hello")
        assert _read_all(sock).endswith(b"\r\n\r\nhello")


def test_a_refusal_of_a_large_body_is_readable_by_the_client(
    serve: Callable[..., HTTPServer],
) -> None:
    """The client streams 5 MB, then reads: the answer is there, not a connection reset."""
    server = serve(Limits(max_body_bytes=1024))
    # a declared length over the limit: the handler answers from the head, nothing is read
    r = requests.post(server.url + "/echo", data=b"x" * 5_000_000, timeout=30)
    assert r.status_code == 200 and r.content == b""
    assert r.headers["Connection"] == "close"
    # chunked: the handler gets one byte more than the limit, so it sees the body is larger
    r = requests.post(server.url + "/echo", data=iter([b"y" * 65536] * 80), timeout=30)
    assert r.status_code == 200 and len(r.content) == 1025
    assert r.headers["Connection"] == "close"


def test_lingering_is_bounded(serve: Callable[..., HTTPServer]) -> None:
    """A client that goes on sending after the answer is cut after linger_bytes."""
    server = serve(Limits(max_body_bytes=1024, linger_bytes=256 << 10, linger_timeout=30))
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 999999999\r\n\r\n")
        sent = 0
        with pytest.raises(OSError):  # reset (or a broken pipe) once the budget is spent
            while sent < 64 << 20:
                sock.sendall(b"z" * 65536)
                sent += 65536
    assert sent < 32 << 20  # the budget plus what the two sockets' buffers hold


def test_the_connection_cap_closes_the_oldest_idle_connection(
    serve: Callable[..., HTTPServer],
) -> None:
    server = serve(Limits(max_connections=8))
    idle = [socket.create_connection(("127.0.0.1", server.port), timeout=10) for _ in range(8)]
    try:
        for sock in idle:  # all of them accepted before the next one comes
            sock.sendall(b"G")
        deadline = time.monotonic() + 10
        while server.open_connections < 8 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert requests.get(server.url + "/new", timeout=10).text == "GET /new -\n"
        assert _closed_by_server(idle[0], within=5)  # the oldest made room
        for sock in idle[1:]:
            assert not _closed_by_server(sock, within=0.05)
    finally:
        for sock in idle:
            sock.close()


@pytest.mark.parametrize("send_threads", [0, 16])  # the event loop sends, or a send thread
def test_large_answers_arrive_whole_on_a_kept_alive_connection(
    serve: Callable[..., HTTPServer], send_threads: int
) -> None:
    server = serve(Limits(send_threads=send_threads))
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        for path in ("/big", "/x", "/big"):
            connection.request("GET", path)
            body = connection.getresponse().read()
            assert body == (BIG if path == "/big" else b"GET /x -\n")
    finally:
        connection.close()


@pytest.mark.parametrize("send_threads", [0, 16])
def test_a_client_that_stops_reading_is_dropped_after_the_send_deadline(
    serve: Callable[..., HTTPServer], send_threads: int
) -> None:
    server = serve(Limits(send_timeout=1.0, send_threads=send_threads))
    stalled = socket.socket()
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled.connect(("127.0.0.1", server.port))
    try:
        stalled.sendall(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")  # and never reads
        deadline = time.monotonic() + 15
        while server.open_connections and time.monotonic() < deadline:
            time.sleep(0.1)
        assert server.open_connections == 0
    finally:
        stalled.close()


def _basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def test_bcrypt_runs_beside_the_event_loop_and_known_credentials_wait_for_none(
    serve: Callable[..., HTTPServer], tmp_path: Path
) -> None:
    """Uncached passwords queue for the one bcrypt thread; requests whose credentials were
    checked before (right or wrong) are answered meanwhile, not after the queue."""
    hashed = bcrypt.hashpw(b"right", bcrypt.gensalt(12)).decode()  # ~0.3 s a check
    web = tmp_path / "web.yml"
    web.write_text(f"basic_auth_users:\n  prometheus: '{hashed}'\n")
    server = serve(web_config=load_web_config(web))
    first = requests.get(server.url + "/x", headers=_basic("prometheus", "right"), timeout=30)
    assert first.status_code == 200 and first.text == "GET /x prometheus\n"
    assert (
        requests.get(server.url, headers=_basic("prometheus", "old"), timeout=30).status_code == 401
    )
    done: list[str] = []

    def get(name: str, password: str, status: int) -> None:
        r = requests.get(server.url + "/", headers=_basic("prometheus", password), timeout=60)
        assert r.status_code == status
        if status == 401:
            assert r.headers["WWW-Authenticate"].startswith("Basic")
        done.append(name)

    queue = [threading.Thread(target=get, args=(f"new{i}", f"new{i}", 401)) for i in range(4)]
    for thread in queue:
        thread.start()
    time.sleep(0.1)  # the four are queued behind each other in the bcrypt thread
    get("right", "right", 200)
    get("old", "old", 401)
    for thread in queue:
        thread.join()
    assert sorted(done) == ["new0", "new1", "new2", "new3", "old", "right"]
    assert done.index("old") < 3, done  # not behind the whole queue


def test_stop_answers_the_request_in_flight(serve: Callable[..., HTTPServer]) -> None:
    server = serve()
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    connection.request("GET", "/big")
    answer = connection.getresponse()
    stopper = threading.Thread(target=server.stop)
    stopper.start()
    assert len(answer.read()) == len(BIG)
    stopper.join(timeout=10)
    assert not stopper.is_alive()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", server.port), timeout=2)
