"""Slow and hostile clients against the exporter and the receiver themselves.

Idle connections, half-sent request heads, stalled TLS handshakes and slowloris clients must
not silence /metrics (a scrape timing out is an outage: ``up`` goes to 0), and a client that
streams a body over the limit must be able to read its 413. Small numbers here, with the
deadlines shortened where the test waits for them; ``bench/slow_clients.py`` measures 1,000
of each against the defaults (docs/security.md, "Slow and hostile clients").
"""

from __future__ import annotations

import select
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest
import requests

from vmm_cert_exporter.config import load_config
from vmm_cert_exporter.http.limits import Limits
from vmm_cert_exporter.receiver.service import Receiver, start_receiver
from vmm_cert_exporter.serve import Exporter, start_exporter
from vmm_cert_exporter.webconfig import load_web_config
from vmm_cert_lab.fleet.lab_ca import LabTLS, create_lab_tls
from vmm_cert_lab.fleet.runner import RunningLab
from vmm_cert_lab.processes import wait_until
from vmm_cert_lab.receiver_testing import auth, receiver_config

SHORT = Limits(handshake_timeout=1.0, head_timeout=1.0)
# a scrape that takes longer than this has been held up by the other clients
PROMPT = 5.0


@pytest.fixture(scope="module")
def lab_tls(tmp_path_factory: pytest.TempPathFactory) -> LabTLS:
    return create_lab_tls(tmp_path_factory.mktemp("tls"))


@contextmanager
def exporter(
    lab: RunningLab, directory: Path, limits: Limits, web: str | None = None
) -> Iterator[Exporter]:
    web_config = None
    if web is not None:
        (directory / "web.yml").write_text(web)
        web_config = load_web_config(directory / "web.yml")
    config = load_config(lab.write_config(directory / "exporter.yml"))
    running = start_exporter(
        config, "127.0.0.1:0", web_config=web_config, isolate=False, limits=limits
    )
    try:
        wait_until(lambda: running.refresher.snapshot.complete, "the first refresh", 60, 0.05)
        yield running
    finally:
        running.stop(drain=5.0)


@contextmanager
def receiver(
    lab: RunningLab, directory: Path, limits: Limits, **section: object
) -> Iterator[Receiver]:
    config = receiver_config(lab, directory, mode="dry-run", interval="1h", **section)
    running = start_receiver(config, background=False, limits=limits)
    try:
        yield running
    finally:
        running.stop()


@contextmanager
def connections(port: int, count: int, first_bytes: bytes = b"") -> Iterator[list[socket.socket]]:
    """``count`` connections that send ``first_bytes`` (maybe nothing) and then nothing more."""
    with ExitStack() as stack:
        socks = []
        for _ in range(count):
            sock = stack.enter_context(socket.create_connection(("127.0.0.1", port), timeout=10))
            if first_bytes:
                sock.sendall(first_bytes)
            socks.append(sock)
        yield socks


def closed(sock: socket.socket) -> bool:
    """Whether the server has closed ``sock`` (without waiting)."""
    if not select.select([sock], [], [], 0)[0]:
        return False
    try:
        return sock.recv(65536) == b""
    except OSError:
        return True


def wait_closed(socks: list[socket.socket], within: float) -> list[float]:
    """When each of ``socks`` was closed by the server, in seconds from now (or fails)."""
    began = time.monotonic()
    when: dict[int, float] = {}
    while len(when) < len(socks) and time.monotonic() - began < within:
        for i, sock in enumerate(socks):
            if i not in when and closed(sock):
                when[i] = time.monotonic() - began
        time.sleep(0.02)
    assert len(when) == len(socks), f"{len(socks) - len(when)} of {len(socks)} still open"
    return sorted(when.values())


def scrape(url: str, **options: Any) -> requests.Response:
    began = time.monotonic()
    answer = requests.get(url, timeout=PROMPT, **options)
    assert time.monotonic() - began < PROMPT
    return answer


def client_hello() -> bytes:
    client = ssl.create_default_context()
    client.check_hostname = False
    client.verify_mode = ssl.CERT_NONE
    tls = client.wrap_bio(ssl.MemoryBIO(), outgoing := ssl.MemoryBIO())
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def test_idle_and_half_sent_requests_do_not_silence_the_exporter(
    demo_lab: RunningLab, tmp_path: Path
) -> None:
    with exporter(demo_lab, tmp_path, Limits()) as running:
        ready = scrape(running.url + "/metrics").text
        with (
            connections(running.server.port, 50),
            connections(running.server.port, 50, b"GET /metrics HTTP/1.1\r\nHost: x\r\n"),
        ):
            for _ in range(3):
                answer = scrape(running.url + "/metrics", headers={"Accept-Encoding": "gzip"})
                assert answer.status_code == 200 and "vmm_cert_expiry_seconds{" in answer.text
                assert answer.headers["Content-Encoding"] == "gzip"
                assert scrape(running.url + "/-/healthy").text == "Healthy\n"
            assert running.server.open_connections >= 100
        assert "vmm_cert_expiry_seconds{" in ready


def test_slowloris_clients_are_cut_at_the_head_deadline(
    demo_lab: RunningLab, tmp_path: Path
) -> None:
    with exporter(demo_lab, tmp_path, SHORT) as running:
        port = running.server.port
        with connections(port, 20, b"GET /metrics HTTP/1.1\r\n") as socks:
            stop = threading.Event()

            def trickle() -> None:  # one header byte every 0.1 s on each, for ever
                while not stop.wait(0.1):
                    for sock in socks:
                        try:
                            sock.send(b"X")
                        except OSError:
                            pass

            trickling = threading.Thread(target=trickle, daemon=True)
            trickling.start()
            try:
                assert scrape(running.url + "/metrics").status_code == 200
                cut = wait_closed(socks, within=10.0)
                assert scrape(running.url + "/-/healthy").status_code == 200
            finally:
                stop.set()
                trickling.join()
        # each one at the 1 s deadline, counted from its connection, not from its last byte
        assert cut[-1] < 4.0, cut


def test_stalled_tls_handshakes_do_not_silence_the_exporter(
    demo_lab: RunningLab, tmp_path: Path, lab_tls: LabTLS
) -> None:
    web = f"tls_server_config:\n  cert_file: {lab_tls.cert_path}\n  key_file: {lab_tls.key_path}\n"
    with exporter(demo_lab, tmp_path, SHORT, web) as running:
        port = running.server.port
        hello = client_hello()
        with (
            connections(port, 30) as silent,
            connections(port, 10, hello[:100]) as half,
            connections(port, 10, hello) as whole,  # the server answers, then waits
        ):
            answer = scrape(running.url + "/metrics", verify=str(lab_tls.ca_path))
            assert answer.status_code == 200 and "vmm_cert_expiry_seconds{" in answer.text
            for sock in whole:
                assert sock.recv(5)[:1] == b"\x16"  # the ServerHello's record
            cut = wait_closed(silent + half + whole, within=10.0)
            assert cut[-1] < 4.0, cut  # the 1 s handshake deadline
            assert scrape(running.url + "/-/healthy", verify=str(lab_tls.ca_path)).ok


def test_idle_clients_and_stalled_handshakes_do_not_silence_the_receiver(
    demo_lab: RunningLab, tmp_path: Path, lab_tls: LabTLS
) -> None:
    tls = {"cert_file": str(lab_tls.cert_path), "key_file": str(lab_tls.key_path)}
    with receiver(demo_lab, tmp_path, SHORT, tls=tls) as running:
        port = running.server.port
        with connections(port, 40) as silent, connections(port, 10, client_hello()[:100]) as half:
            verify = str(lab_tls.ca_path)
            assert scrape(running.url + "/-/healthy", verify=verify).text == "Healthy\n"
            assert "vmm_receiver_" in scrape(running.url + "/metrics", verify=verify).text
            status = scrape(running.url + "/api/status", verify=verify, headers=auth())
            assert status.status_code == 200 and status.json()["mode"] == "dry-run"
            assert scrape(running.url + "/api/status", verify=verify).status_code == 401
            cut = wait_closed(silent + half, within=10.0)
            assert cut[-1] < 4.0, cut


def test_a_client_streaming_a_large_body_reads_its_413(
    demo_lab: RunningLab, tmp_path: Path
) -> None:
    """Without a lingering close the client gets a reset while it still sends, not the 413."""
    body = b"[" + b" " * 5_000_000 + b"]"
    with receiver(demo_lab, tmp_path, Limits(), max_request_bytes=64 * 1024) as running:
        headers = {**auth(), "Content-Type": "application/json"}
        for _ in range(3):
            answer = requests.post(
                running.url + "/alertmanager", data=body, headers=headers, timeout=30
            )
            assert answer.status_code == 413
            assert "max_request_bytes" in answer.json()["error"]
        chunked = requests.post(
            running.url + "/alertmanager",
            data=iter([body[i : i + 65536] for i in range(0, len(body), 65536)]),
            headers=headers,
            timeout=30,
        )
        assert chunked.status_code == 413
        assert running.app.webhooks.snapshot()["too_large"] == 4
    with exporter(demo_lab, tmp_path, Limits()) as running:
        answer = requests.post(running.url + "/metrics", data=body, timeout=30)
        assert answer.status_code == 405 and answer.text == "only GET and HEAD\n"
