"""Slow and hostile clients against the real exporter and receiver: do scrapes stay prompt?

    .venv/bin/python -m bench.slow_clients [--clients 1000] [--window 25]

Each server runs as its own command (``serve`` against a lab of 200 computers, ``receiver`` on
the lab's written configuration), plain and with TLS from ``--web.config.file``, with its
default limits (10 s head and handshake deadlines). Against each, one scenario at a time, an
attacker process (asyncio) holds ``--clients`` connections:

- ``idle``: connected, sending nothing (on a TLS port: never starting the handshake);
- ``half head`` (plain): half a request head, then nothing (the attack of the issue);
- ``half hello`` (TLS): the first 100 bytes of a ClientHello, then nothing;
- ``hello`` (TLS): a whole ClientHello, then nothing (the server has answered it and holds
  an OpenSSL session for it until the handshake deadline);
- ``slowloris`` (plain): one header byte a second, for ever;

and reconnects each one the server closes, so that ``--clients`` stay open for the whole
window (slowloris excepted: each client connects once, and the figure is how long the server
let it live). Meanwhile this process scrapes ``/metrics`` and ``/-/healthy`` alternately, each
on a new connection (a TLS handshake included), every 50 ms, and samples the server's RSS.
Then the Basic-auth burst against ``serve`` with bcrypt cost 10: 100 requests with valid
credentials in one second, once all with the same user (the cache) and once with 100 users
of their own (100 bcrypt checks in one thread), beside a scraper with its own credentials.

Targets (docs/security.md): p99 <= 250 ms for /metrics and /-/healthy, server RSS growth <= 64 MB,
every slowloris client cut by the head deadline. Writes ``bench/results/slow_clients.txt``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import http.client
import json
import resource
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bcrypt
import yaml

from bench.common import lab_process, process_rss_mb, table, write_result

P99_MS = 250.0
RSS_MB = 64.0
HOSTS = 200
HALF_HEAD = b"GET /metrics HTTP/1.1\r\nHost: x\r\n"

# ---- the attacker (a child process) ---------------------------------------------------------


def _client_hello() -> bytes:
    client = ssl.create_default_context()
    client.check_hostname = False
    client.verify_mode = ssl.CERT_NONE
    outgoing = ssl.MemoryBIO()
    tls = client.wrap_bio(ssl.MemoryBIO(), outgoing)
    try:
        tls.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


async def _attack(mode: str, port: int, clients: int, window: float) -> dict[str, Any]:
    hello = _client_hello()
    first = {"idle": b"", "half-head": HALF_HEAD, "half-hello": hello[:100], "hello": hello}
    first["slowloris"] = b"GET /metrics HTTP/1.1\r\n"
    began = time.monotonic()
    end = began + window
    lifetimes: list[float] = []
    opened = refused = 0
    answered = 0  # a server that answers half a request would be a bug

    async def one(delay: float) -> None:
        nonlocal opened, refused, answered
        await asyncio.sleep(delay)
        while time.monotonic() < end:
            t0 = time.monotonic()
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                refused += 1
                await asyncio.sleep(0.1)
                continue
            opened += 1
            if first[mode]:
                writer.write(first[mode])
            try:
                while True:
                    left = end - time.monotonic()
                    if left <= 0:
                        break
                    try:
                        data = await asyncio.wait_for(reader.read(4096), min(1.0, left))
                    except TimeoutError:
                        if mode == "slowloris":
                            writer.write(b"X")  # one more header byte; the header never ends
                        continue
                    if data and mode == "hello":
                        continue  # the server's half of the handshake, never answered
                    if data:
                        answered += 1
                    lifetimes.append(time.monotonic() - t0)
                    break
            except OSError:
                lifetimes.append(time.monotonic() - t0)
            finally:
                writer.close()
            if mode == "slowloris":
                return

    # connect over the first second, as a real flood would ramp up
    await asyncio.gather(*(one(i / clients) for i in range(clients)))
    return {
        "opened": opened,
        "refused": refused,
        "cut": len(lifetimes),
        "answered": answered,
        "lifetime_max": max(lifetimes, default=0.0),
        "lifetime_min": min(lifetimes, default=0.0),
    }


def attacker_main(mode: str, port: int, clients: int, window: float) -> None:
    print("ready", flush=True)
    result = asyncio.run(_attack(mode, port, clients, window))
    print(json.dumps(result), flush=True)


# ---- the server under test ------------------------------------------------------------------


@dataclass
class Server:
    kind: str  # "exporter" or "receiver"
    tls: bool
    port: int
    process: subprocess.Popen[bytes]
    ca: str | None = None
    auth: str | None = None

    def connection(self) -> http.client.HTTPConnection:
        if self.tls:
            context = ssl.create_default_context(cafile=self.ca)
            return http.client.HTTPSConnection("127.0.0.1", self.port, timeout=10, context=context)
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)

    def get(self, path: str, auth: str | None = None) -> tuple[int, float]:
        """Status and seconds of one request on a new connection (as a scraper makes it)."""
        began = time.perf_counter()
        connection = self.connection()
        try:
            headers = {"Authorization": auth} if auth else {}
            connection.request("GET", path, headers=headers)
            answer = connection.getresponse()
            answer.read()
            return answer.status, time.perf_counter() - began
        finally:
            connection.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def server(
    kind: str, lab_config: Path, directory: Path, tls: bool, web: dict[str, Any] | None = None
) -> Iterator[Server]:
    from vmm_cert_lab.fleet.lab_ca import create_lab_tls

    port = _free_port()
    argv = [
        sys.executable,
        "-m",
        "vmm_cert_exporter",
        "serve" if kind == "exporter" else "receiver",
        "--config",
        str(lab_config),
        f"--web.listen-address=127.0.0.1:{port}",
    ]
    web = dict(web or {})
    ca = None
    if tls:
        pki = create_lab_tls(directory / "tls")
        web["tls_server_config"] = {"cert_file": str(pki.cert_path), "key_file": str(pki.key_path)}
        ca = str(pki.ca_path)
    if web:
        path = directory / f"web-{kind}-{int(tls)}.yml"
        path.write_text(yaml.safe_dump(web))
        argv.append(f"--web.config.file={path}")
    log = (directory / f"{kind}.log").open("wb")
    process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    running = Server(kind, tls, port, process, ca)
    try:
        deadline = time.monotonic() + 120
        ready = "/-/ready" if kind == "exporter" else "/-/healthy"
        while True:
            try:
                if (
                    running.get(ready, auth=BURST_AUTH if web.get("basic_auth_users") else None)[0]
                    == 200
                ):
                    break
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"{kind} did not start: {(directory / f'{kind}.log').read_text()}"
                )
            time.sleep(0.2)
        yield running
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


# ---- measuring ------------------------------------------------------------------------------


@dataclass
class Figures:
    latencies: dict[str, list[float]] = field(
        default_factory=lambda: {"/metrics": [], "/-/healthy": []}
    )
    failures: int = 0
    rss_before: float = 0.0
    rss_peak: float = 0.0

    def p(self, path: str, q: float) -> float:
        values = sorted(self.latencies[path])
        return 1000 * values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


def scrape_while(target: Server, seconds: float, figures: Figures, auth: str | None = None) -> None:
    end = time.monotonic() + seconds
    paths = ["/metrics", "/-/healthy"]
    i = 0
    while time.monotonic() < end:
        path = paths[i % 2]
        i += 1
        try:
            status, took = target.get(path, auth)
            if status != 200:
                figures.failures += 1
            figures.latencies[path].append(took)
        except OSError:
            figures.failures += 1
        figures.rss_peak = max(figures.rss_peak, process_rss_mb(target.process.pid))
        time.sleep(0.05)


def attacked(
    target: Server, mode: str, clients: int, window: float
) -> tuple[Figures, dict[str, Any]]:
    figures = Figures()
    scrape_while(target, 2.0, Figures())  # warm: the first scrapes render and cache
    figures.rss_before = process_rss_mb(target.process.pid)
    figures.rss_peak = figures.rss_before
    attacker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bench.slow_clients",
            "--attack",
            mode,
            "--port",
            str(target.port),
            "--clients",
            str(clients),
            "--window",
            str(window),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert attacker.stdout is not None
    attacker.stdout.readline()  # "ready"
    time.sleep(2.0)  # the clients are connected
    scrape_while(target, window - 4.0, figures)
    out, _ = attacker.communicate(timeout=window + 60)
    return figures, json.loads(out.strip().splitlines()[-1])


# ---- the Basic-auth burst -------------------------------------------------------------------

BURST_USERS = 100
BURST_PASSWORD = "burst-password"
BURST_AUTH = "Basic " + base64.b64encode(b"scraper:scraper-password").decode()


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def burst_users() -> dict[str, str]:
    users = {
        f"user{i:03d}": bcrypt.hashpw(BURST_PASSWORD.encode(), bcrypt.gensalt(10)).decode()
        for i in range(BURST_USERS)
    }
    users["scraper"] = bcrypt.hashpw(b"scraper-password", bcrypt.gensalt(10)).decode()
    return users


def burst(target: Server, distinct: bool) -> tuple[Figures, float]:
    """100 requests with valid credentials over one second, a scraper beside them."""
    figures = Figures()
    headers = [
        _basic(f"user{i:03d}" if distinct else "user000", BURST_PASSWORD)
        for i in range(BURST_USERS)
    ]
    statuses: list[int] = []

    def send(header: str) -> None:
        try:
            statuses.append(target.get("/-/healthy", header)[0])
        except OSError:
            statuses.append(0)

    figures.rss_before = figures.rss_peak = process_rss_mb(target.process.pid)

    def launch() -> None:  # spread over one second
        for header in headers:
            threading.Thread(target=send, args=(header,), daemon=True).start()
            time.sleep(1.0 / BURST_USERS)

    began = time.monotonic()
    launcher = threading.Thread(target=launch)
    launcher.start()
    scrape_while(target, 2.0, figures, auth=BURST_AUTH)
    launcher.join()
    while len(statuses) < BURST_USERS and time.monotonic() - began < 60:
        time.sleep(0.05)
    wall = time.monotonic() - began
    figures.failures += sum(1 for s in statuses if s != 200)
    return figures, wall


# ---- the run --------------------------------------------------------------------------------


def raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--window", type=float, default=25.0)
    parser.add_argument(
        "--attack", choices=["idle", "half-head", "half-hello", "hello", "slowloris"]
    )
    parser.add_argument("--port", type=int)
    args = parser.parse_args()
    raise_nofile()
    if args.attack:
        attacker_main(args.attack, args.port, args.clients, args.window)
        return 0
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft < 2 * args.clients + 256:
        print(f"RLIMIT_NOFILE {soft} is too low for {args.clients} clients", file=sys.stderr)
        return 1
    rows: list[list[str]] = []
    verdicts: list[bool] = []
    with lab_process(HOSTS) as lab_config, tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        for kind in ("exporter", "receiver"):
            for tls in (False, True):
                modes = (
                    ["idle", "half-hello", "hello"] if tls else ["idle", "half-head", "slowloris"]
                )
                with server(kind, lab_config, directory, tls) as target:
                    for mode in modes:
                        # slowloris clients connect once: the window covers their lives
                        window = 14.0 if mode == "slowloris" else args.window
                        figures, attack = attacked(target, mode, args.clients, window)
                        rows.append(_row(kind, tls, mode, args.clients, figures, attack))
                        verdicts.append(_ok(figures, attack, mode, args.clients))
                        print(rows[-1], flush=True)
        with server(
            "exporter", lab_config, directory, False, {"basic_auth_users": burst_users()}
        ) as target:
            for distinct in (False, True):
                figures, wall = burst(target, distinct)
                label = "100 users" if distinct else "1 user"
                attack = {"cut": "-", "lifetime_max": 0.0, "answered": 0, "opened": BURST_USERS}
                rows.append(
                    _row("exporter", False, f"basic burst, {label}", BURST_USERS, figures, attack)
                )
                rows[-1][-1] = f"burst took {wall:.1f} s"
                verdicts.append(_ok(figures, attack, "burst", BURST_USERS))
                print(rows[-1], flush=True)
    text = "\n".join(
        [
            table(
                "scrapes (/metrics, /-/healthy on new connections, every 50 ms) while an attacker "
                f"holds the connections; servers with default limits; lab of {HOSTS} computers",
                [
                    "server",
                    "scheme",
                    "attack",
                    "clients",
                    "metrics p50/p99 ms",
                    "healthy p50/p99 ms",
                    "failed",
                    "RSS before->peak MB",
                    "cut by the server",
                    "longest life s",
                ],
                rows,
            ),
            f"targets: p99 <= {P99_MS:.0f} ms, RSS growth <= {RSS_MB:.0f} MB, no failed scrape, "
            f"every slowloris client cut by the head deadline -> "
            f"{'met' if all(verdicts) else 'NOT MET'}",
            "hello: a whole ClientHello, then nothing: not a slow client but a handshake flood "
            "(each costs the server ~0.4 ms of CPU at once, the attacker's own handshakes share "
            "the cores): its p99 is shown, not held to the target; its memory and failures are",
        ]
    )
    print(text)
    write_result("slow_clients", text)
    return 0 if all(verdicts) else 1


def _row(
    kind: str, tls: bool, mode: str, clients: int, figures: Figures, attack: dict[str, Any]
) -> list[str]:
    return [
        kind,
        "https" if tls else "http",
        mode,
        f"{clients:,}",
        f"{figures.p('/metrics', 0.5):.1f} / {figures.p('/metrics', 0.99):.1f}",
        f"{figures.p('/-/healthy', 0.5):.1f} / {figures.p('/-/healthy', 0.99):.1f}",
        str(figures.failures),
        f"{figures.rss_before:.0f} -> {figures.rss_peak:.0f}",
        f"{attack['cut']}",
        f"{attack['lifetime_max']:.1f}",
    ]


def _ok(figures: Figures, attack: dict[str, Any], mode: str, clients: int) -> bool:
    prompt = figures.p("/metrics", 0.99) <= P99_MS and figures.p("/-/healthy", 0.99) <= P99_MS
    ok = (
        # a whole ClientHello costs the server a handshake's CPU at once: a flood of them is
        # measured for what it costs, beyond the slow-client targets
        (prompt or mode == "hello")
        and figures.failures == 0
        and figures.rss_peak - figures.rss_before <= RSS_MB
        and attack["answered"] == 0
    )
    if mode == "slowloris":
        ok = ok and attack["cut"] == clients and attack["lifetime_max"] <= 12.0
    return ok


if __name__ == "__main__":
    sys.exit(main())
