"""The refresh in a child process of its own, so that a scrape never waits for it, and a
crash or memory spike of a refresh cannot take the server down.

Why, the messages on its pipe and who owns the shutdown: docs/architecture.md ("Why the
refresh runs in a process of its own")."""

from __future__ import annotations

import logging
import multiprocessing
import os
import pickle
import signal
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vmm_cert_exporter import malloc_tuning
from vmm_cert_exporter.call_budget import max_call_seconds
from vmm_cert_exporter.config import Config, ConfigError, load_config
from vmm_cert_exporter.logs import current_settings, setup_logging
from vmm_cert_exporter.metrics import (
    RenderedSnapshot,
    SnapshotCollector,
    expiry_lines,
    render_static,
)
from vmm_cert_exporter.refresh_histogram import RefreshHistogram
from vmm_cert_exporter.sharding import Shard
from vmm_cert_exporter.snapshot import Snapshot

if TYPE_CHECKING:
    from vmm_cert_exporter.collection import Refresher

log = logging.getLogger(__name__)

# added to the server's nice value for the refresh process (_yield_to_the_server)
REFRESH_NICENESS = 10
# Starting the child (a fresh interpreter, imports) and its exit take about a second: the
# server's wait for it is the refresher's own drain plus this.
_PROCESS_SECONDS = 2.0
# A child that died is started again after 1 s, doubling per failure up to the interval.
_FIRST_RESTART_DELAY = 1.0


class RefreshProcess:
    """``collection.Refresher``'s surface for the server, with the refresh in a child process."""

    def __init__(
        self,
        config: Config,
        *,
        shard: Shard | None = None,
        log_settings: tuple[str, str] | None = None,
    ) -> None:
        if not Path(config.path).is_file():
            raise ValueError(f"the refresh process reads the configuration file: {config.path}")
        self._config = config
        self._drain_seconds = max_call_seconds(config.winrm.timeout) + _PROCESS_SECONDS
        self._shard = shard
        self._log_settings = log_settings or current_settings()
        self._context = multiprocessing.get_context("spawn")
        self.histogram = RefreshHistogram()
        self.refreshes = 0
        # the last snapshot as the child pickled it, unpickled only when something asks for
        # it (the overview page): /metrics serves ``rendered``, made by the child
        self._snapshot: Snapshot | None = Snapshot.empty(config.collection.interval)
        self._snapshot_bytes = b""
        self._snapshot_lock = threading.Lock()
        self._complete = False
        self._received = 0
        self.rendered: RenderedSnapshot | None = None
        self.listeners: list[Callable[[Snapshot], None]] = []
        self.restarts = 0
        self._first_done = threading.Event()
        self._stopping = threading.Event()
        self._exited = threading.Event()
        self._lock = threading.Lock()  # the current child and its pipe
        self._process: Any = None  # multiprocessing's SpawnProcess
        self._conn: Connection | None = None
        self._stopped_in_time = False
        self._supervisor: threading.Thread | None = None

    # ---- what the server reads ---------------------------------------------------------
    @property
    def ready(self) -> bool:
        return self._complete

    @property
    def snapshot(self) -> Snapshot:
        """The last snapshot received; unpickled on first use after each refresh (~0.1 s per
        10,000 computers, in one piece: the reason /metrics does without it)."""
        with self._snapshot_lock:
            if self._snapshot is None:
                self._snapshot = pickle.loads(self._snapshot_bytes)  # noqa: S301 - our child
            return self._snapshot

    def wait_first(self, timeout: float | None = None) -> bool:
        return self._first_done.wait(timeout)

    @property
    def drain_seconds(self) -> float:
        """How long a stop may wait: the calls in flight run to their deadline, clean up, and
        the child exits."""
        return self._drain_seconds

    @property
    def pid(self) -> int | None:
        with self._lock:
            return None if self._process is None else int(self._process.pid)

    # ---- life cycle ----------------------------------------------------------------------
    def start(self) -> None:
        if self._supervisor is not None:
            raise RuntimeError("refresh process already started")
        self._supervisor = threading.Thread(
            target=self._supervise, name="refresh-process", daemon=True
        )
        self._supervisor.start()

    def stop(self, timeout: float | None = None) -> bool:
        """Ask the child to stop gracefully; wait up to ``timeout`` for it to exit, then end it.
        Returns whether it stopped in time (every call in flight finished and cleaned up)."""
        self._stopping.set()
        if self._supervisor is None:  # never started: nothing to stop
            return True
        self._send("stop")
        exited = self._exited.wait(timeout)
        if not exited:
            self._end_child()
        if self._supervisor is not None:
            self._supervisor.join(timeout=5.0)
        return exited and self._stopped_in_time

    def abort(self) -> None:
        """End the calls in flight now (each still sends Signal + Delete), then stop."""
        self._stopping.set()
        self._send("abort")

    # ---- the supervisor thread -------------------------------------------------------------
    def _send(self, command: str) -> None:
        with self._lock:
            conn = self._conn
            if conn is None:
                return
            try:
                conn.send(command)
            except OSError:  # the child is gone: nothing left to stop
                pass

    def _spawn(self) -> Connection:
        ours, theirs = self._context.Pipe(duplex=True)
        process = self._context.Process(
            target=child_main,
            args=(self._config.path, self._shard, self._log_settings, theirs),
            name="vmm-cert-exporter-refresh",
            daemon=True,  # never outlives the server, even if the server is killed
        )
        with self._lock:
            process.start()
            self._process, self._conn = process, ours
        theirs.close()  # the child holds its end: EOF here means the child is gone
        log.debug("refresh process started", extra={"pid": process.pid})
        return ours

    def _supervise(self) -> None:
        delay = _FIRST_RESTART_DELAY
        while True:
            try:
                conn = self._spawn()
            except OSError:
                log.exception("cannot start the refresh process")
                if self._stopping.wait(self._max_delay):
                    break
                continue
            if self._stopping.is_set():  # stop() came while the child was starting
                self._send("stop")
            published = self._receive(conn)
            with self._lock:
                process, self._conn = self._process, None
            process.join(timeout=_PROCESS_SECONDS)
            conn.close()
            if self._stopping.is_set():
                break
            # a refresh process that died (a crash, the OOM killer, kill -9): start another;
            # /metrics keeps the last snapshot, and its age shows in the refresh timestamp
            self.restarts += 1
            delay = _FIRST_RESTART_DELAY if published else min(delay * 2, self._max_delay)
            log.error(
                "refresh process ended unexpectedly; starting another",
                extra={"exit_code": process.exitcode, "restart_in_seconds": delay},
            )
            if self._stopping.wait(delay):
                break
        self._exited.set()

    @property
    def _max_delay(self) -> float:
        return max(_FIRST_RESTART_DELAY, self._config.collection.interval)

    def _receive(self, conn: Connection) -> bool:
        """Apply the child's messages until its pipe closes; whether it published anything."""
        published = False
        while True:
            try:
                message = conn.recv()
            except (EOFError, OSError):
                return published
            kind = message[0]
            if kind == "snapshot":
                _, histogram, refreshes, complete, points = message
                try:  # the frames that follow: the pickled snapshot, then the rendering's parts
                    pickled = conn.recv_bytes()
                    static = _frames(conn)
                    static_gz = _frames(conn)
                except (EOFError, OSError):
                    return published
                self._received += 1
                # histogram first: readers key caches on (snapshot, histogram count)
                self.histogram = histogram
                with self._snapshot_lock:
                    self._snapshot, self._snapshot_bytes = None, pickled
                # ids of snapshots (the keys of renderings made here) are never negative
                self.rendered = RenderedSnapshot((-1, self._received), static, static_gz, points)
                self._complete = bool(complete)
                self.refreshes = refreshes
                published = True
                for listener in self.listeners:
                    try:
                        listener(self.snapshot)
                    except Exception:
                        log.exception("snapshot listener failed")
                del static, static_gz, pickled
                malloc_tuning.trim()  # the last snapshot's rendering, once scrapes let it go
            elif kind == "first":
                self._first_done.set()
            elif kind == "stopped":
                self._stopped_in_time = bool(message[1])
            elif kind == "failed":
                log.error("refresh process cannot start", extra={"error": message[1]})

    def _end_child(self) -> None:
        with self._lock:
            process = self._process
        if process is None or not process.is_alive():
            return
        log.warning("refresh process did not stop in time; ending it")
        process.terminate()
        process.join(timeout=_PROCESS_SECONDS)
        if process.is_alive():
            process.kill()
            process.join(timeout=_PROCESS_SECONDS)


# ---- the child side ----------------------------------------------------------------------
def _yield_to_the_server() -> None:
    """Run the refresh at a lower priority than the server: the refresh is background work
    that can take a few seconds longer, a scrape is waited for by Prometheus. Raising one's
    own nice value needs no privilege; a seccomp filter without ``setpriority`` refuses it
    (the shipped systemd unit allows it)."""
    try:
        os.nice(REFRESH_NICENESS)
    except OSError as exc:
        log.info("refresh process keeps the server's priority: %s", exc)


def child_main(
    config_path: str,
    shard: Shard | None,
    log_settings: tuple[str, str],
    conn: Connection,
) -> None:
    """The refresh process: refresh on the configured interval, publish to the server."""
    malloc_tuning.limit_arenas()  # before the refresh's threads
    _yield_to_the_server()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the server turns Ctrl-C into commands
    commands: list[str] = []
    signal.signal(signal.SIGTERM, lambda signum, frame: commands.append("stop"))
    setup_logging(*log_settings)
    # the WinRM stack (requests, pyspnego, pywinrm: ~35 MB) is loaded here, in the process
    # that refreshes; the server, which only serves, never loads it
    from vmm_cert_exporter.collection import Refresher

    send_lock = threading.Lock()

    def send(message: tuple[Any, ...]) -> bool:
        with send_lock:
            try:
                conn.send(message)
                return True
            except OSError:  # the server is gone
                return False

    try:
        config = load_config(config_path)
    except ConfigError as exc:
        send(("failed", str(exc)))
        raise SystemExit(2) from None
    refresher = Refresher(config, shard=shard)
    collector = SnapshotCollector(lambda: refresher.snapshot, lambda: refresher.histogram)

    def publish(snapshot: Snapshot) -> None:
        # runs in the refresher's thread, the only writer of its histogram and count; the
        # rendering is made here so that the server's interpreter only ever serves it.
        # Each part leaves as soon as it exists: a whole rendering is never held here.
        head = (
            "snapshot",
            refresher.histogram,
            refresher.refreshes,
            snapshot.complete,
            expiry_lines(snapshot),
        )
        with send_lock:
            try:
                conn.send(head)
                conn.send_bytes(pickle.dumps(snapshot, protocol=5))
                members: list[bytes] = []
                for part, member in render_static(collector, snapshot):
                    if part:
                        conn.send_bytes(part)
                    if member:
                        members.append(member)
                conn.send_bytes(_END)
                for member in members:
                    conn.send_bytes(member)
                conn.send_bytes(_END)
            except OSError:  # the server is gone
                refresher.abort()
                return
        malloc_tuning.trim()  # the rendering's peak, handed back before the next refresh

    refresher.listeners.append(publish)

    def first() -> None:
        refresher.wait_first()
        send(("first",))

    threading.Thread(target=first, name="first-refresh", daemon=True).start()
    refresher.start()
    in_time = _serve_commands(refresher, conn, commands)
    send(("stopped", in_time))
    conn.close()


_END = b""  # ends a run of frames (no part of a rendering is empty)


def _frames(conn: Connection) -> tuple[bytes, ...]:
    """The frames up to the next ``_END``."""
    frames: list[bytes] = []
    while frame := conn.recv_bytes():
        frames.append(frame)
    return tuple(frames)


def _serve_commands(refresher: Refresher, conn: Connection, commands: list[str]) -> bool:
    """Wait for "stop" / "abort" (or the server's end); return whether the stop was in time."""
    deadline: float | None = None
    while True:
        command = commands.pop(0) if commands else _next_command(conn)
        if command in ("stop", "abort") and deadline is None:
            deadline = time.monotonic() + refresher.drain_seconds
        if command == "abort":
            refresher.abort()
        if deadline is not None:
            if refresher.stop(timeout=0):
                return True
            if time.monotonic() > deadline:
                return False


def _next_command(conn: Connection) -> str | None:
    try:
        if conn.poll(0.1):
            command = conn.recv()
            return command if command in ("stop", "abort") else None
    except (EOFError, OSError):
        time.sleep(0.1)  # the pipe stays closed: do not spin while the calls end
        return "abort"  # the server is gone: nobody to publish to, end the calls now
    return None
