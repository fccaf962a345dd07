"""The fleet-scale /metrics path: caches per snapshot and per second, chunked writes."""

from __future__ import annotations

import datetime
import gzip
import http.client
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from prometheus_client import CollectorRegistry, generate_latest

from vmm_cert_exporter.certificate import parse_certificate
from vmm_cert_exporter.inventory import Computer
from vmm_cert_exporter.metrics import (
    Exposition,
    SnapshotCollector,
    render_snapshot,
    scrape_second,
)
from vmm_cert_exporter.refresh_histogram import RefreshHistogram
from vmm_cert_exporter.snapshot import HostSnapshot, Snapshot, StoredCertificate
from vmm_cert_exporter.web import make_app, make_server


def synthetic_snapshot(n: int) -> Snapshot:
    key = ec.generate_private_key(ec.SECP256R1())
    hosts = []
    for i in range(n):
        fqdn = f"hv{i:05d}.scale.example"
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, fqdn)])
        start = datetime.datetime(2022 + i % 5, 1, 1, tzinfo=datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(i + 1)
            .not_valid_before(start)
            .not_valid_after(start.replace(year=start.year + 5))
            .sign(key, hashes.SHA256())
        )
        info = parse_certificate(cert.public_bytes(serialization.Encoding.DER))
        hosts.append(
            HostSnapshot(
                computer=Computer(fqdn, "hyperv_host", "vmm01.scale.example", "Responding"),
                certificates=(StoredCertificate(info, "SCVMM_CERTIFICATE_KEY_CONTAINER", True),),
                trusted=True,
                last_success=1_700_000_000.0,
                last_ok=True,
                last_duration=0.05,
                last_error=None,
                last_error_reason=None,
            )
        )
    return Snapshot(tuple(hosts), 1_700_000_000.0, 60.0, 900.0, True)


@pytest.fixture(scope="module")
def big() -> Snapshot:
    return synthetic_snapshot(3000)  # ~3.6 MB of text: several write chunks


def reference(
    snapshot: Snapshot, histogram: RefreshHistogram, instant: float, restarts: int = 0
) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(
        SnapshotCollector(
            lambda: snapshot, lambda: histogram, clock=lambda: instant, restarts=lambda: restarts
        )
    )
    return generate_latest(registry)


def test_expiry_is_computed_at_the_whole_second() -> None:
    assert scrape_second(1_800_000_000.999) == 1_800_000_000.0
    assert scrape_second(-0.5) == -1.0


def test_one_rendering_per_second_equal_to_generate_latest(big: Snapshot) -> None:
    histogram = RefreshHistogram()
    collector = SnapshotCollector(lambda: big, lambda: histogram)
    exposition = Exposition(collector, lambda: big, lambda: histogram.count)
    t = 1_800_000_000.1
    first = exposition.render_parts(now=t)
    again = exposition.render_parts(now=t + 0.8)  # same second: the very same bytes objects
    assert all(a is b for a, b in zip(first, again, strict=True))
    assert b"".join(first) == reference(big, histogram, t)
    later = exposition.render(now=t + 1)
    assert later == reference(big, histogram, t + 1) != b"".join(first)
    assert gzip.decompress(exposition.render_gzip(now=t + 1)) == later


def test_a_restart_of_the_refresh_process_is_served_without_a_new_rendering(
    big: Snapshot,
) -> None:
    histogram = RefreshHistogram()
    restarts = 0
    collector = SnapshotCollector(lambda: big, lambda: histogram, restarts=lambda: restarts)
    exposition = Exposition(collector, lambda: big, lambda: histogram.count)
    t = 1_800_000_000.0
    before = exposition.render_parts(now=t)
    assert before[-1].endswith(b"\nvmm_cert_exporter_refresh_process_restarts_total 0.0\n")
    restarts = 2  # the refresh process died twice; the snapshot is the same
    after = exposition.render_parts(now=t)
    assert after[1] is before[1]  # the snapshot's rendering is reused, not redone
    assert b"".join(after) == reference(big, histogram, t, restarts=2) != b"".join(before)
    assert gzip.decompress(exposition.render_gzip(now=t)) == b"".join(after)


def test_a_scrape_during_a_rendering_gets_the_previous_snapshot(big: Snapshot) -> None:
    current = {"snapshot": big}
    collector = SnapshotCollector(lambda: current["snapshot"])
    exposition = Exposition(collector, lambda: current["snapshot"])
    t = 1_800_000_000.0
    before = exposition.render(now=t)
    current["snapshot"] = Snapshot(big.hosts[:10], t, 1.0, 900.0, True)
    with exposition._render_lock:  # another thread is rendering the new snapshot
        assert exposition.render(now=t) == before
    assert exposition.render(now=t) != before  # then the new one is served


def test_a_snapshot_rendered_elsewhere_is_served_without_reading_the_snapshot(
    big: Snapshot,
) -> None:
    """serve's refresh process renders each snapshot; the server only serves the parts."""
    histogram = RefreshHistogram()
    histogram.observe(12.0)
    rendered = render_snapshot(SnapshotCollector(lambda: big, lambda: histogram), big, (-1, 1))

    def unread() -> Snapshot:
        raise AssertionError("the server read the snapshot")

    exposition = Exposition(
        SnapshotCollector(unread, restarts=lambda: 1), unread, prerendered=lambda: rendered
    )
    t = 1_800_000_000.4
    plain = exposition.render(now=t)
    assert plain == reference(big, histogram, t, restarts=1)
    assert gzip.decompress(exposition.render_gzip(now=t)) == plain
    # the body is the rendering's own parts, never a joined copy
    parts = exposition.render_parts(now=t)
    assert all(a is b for a, b in zip(parts[1:-1], rendered.static, strict=True))


@pytest.fixture()
def server(big: Snapshot) -> Iterator[tuple[str, Exposition]]:
    histogram = RefreshHistogram()
    collector = SnapshotCollector(lambda: big, lambda: histogram)
    exposition = Exposition(collector, lambda: big, lambda: histogram.count)
    httpd = make_server(make_app(exposition, lambda: big), "127.0.0.1:0")
    httpd.prepare()
    thread = threading.Thread(target=httpd.serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.bind_addr[1]}/metrics", exposition
    finally:
        httpd.stop()
        thread.join(timeout=5)


def test_large_bodies_are_served_whole(server: tuple[str, Exposition]) -> None:
    url, exposition = server
    for _ in range(3):  # retry across a second boundary between the two reads
        second = int(time.time())
        with urllib.request.urlopen(url, timeout=30) as answer:
            body = answer.read()
            length = int(answer.headers["Content-Length"])
        expected = exposition.render(now=second)
        if int(time.time()) == second:
            break
    assert len(body) == length > 3 << 20
    assert body == expected
    request = urllib.request.Request(url, headers={"Accept-Encoding": "gzip"})
    with urllib.request.urlopen(request, timeout=30) as answer:
        assert answer.headers["Content-Encoding"] == "gzip"
        assert b"vmm_cert_expiry_seconds" in gzip.decompress(answer.read())


def test_many_scrapers_at_once_are_all_answered(server: tuple[str, Exposition]) -> None:
    url, _ = server
    sizes: list[int] = []

    def scrape() -> None:
        request = urllib.request.Request(url, headers={"Accept-Encoding": "gzip"})
        with urllib.request.urlopen(request, timeout=30) as answer:
            sizes.append(len(gzip.decompress(answer.read())))

    threads = [threading.Thread(target=scrape) for _ in range(24)]  # more than the workers
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(sizes) == 24
    assert time.monotonic() - started < 30  # no 1 s SYN-retry stalls piling up


def test_keep_alive_after_a_large_body_and_head(server: tuple[str, Exposition]) -> None:
    """httpio.SendallWriter: whole bodies, then the next response on the same connection."""
    url, _ = server
    host, port = url.split("//")[1].split("/")[0].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        lengths = []
        for method in ("GET", "HEAD", "GET"):
            conn.request(method, "/metrics")
            answer = conn.getresponse()
            body = answer.read()
            lengths.append(len(body))
            assert answer.status == 200
            assert int(answer.headers["Content-Length"]) > 3 << 20
        assert lengths[0] > 3 << 20 and lengths[1] == 0 and lengths[2] > 3 << 20
    finally:
        conn.close()


def test_a_client_that_stops_reading_holds_no_other_scrape(server: tuple[str, Exposition]) -> None:
    url, _ = server
    host, port = url.split("//")[1].split("/")[0].split(":")
    stalled = socket.create_connection((host, int(port)))
    try:
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")  # and never read
        time.sleep(0.5)  # its worker is now blocked in sendall on a full socket
        started = time.monotonic()
        with urllib.request.urlopen(url, timeout=30) as answer:
            assert len(answer.read()) > 3 << 20
        assert time.monotonic() - started < 10
    finally:
        stalled.close()
