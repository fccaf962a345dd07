"""remoting's watchdogs: one shared deadline thread, not a timer thread per call."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from vmm_cert_exporter.remoting import _Watchdog


def _blocked_recv(sock: socket.socket, woke: dict[int, float], key: int) -> None:
    try:
        sock.recv(1)
    except OSError:
        pass
    woke[key] = time.monotonic()


def test_deadlines_fire_in_order_on_one_thread_and_disarmed_ones_never() -> None:
    started = time.monotonic()
    pairs = [socket.socketpair() for _ in range(40)]
    woke: dict[int, float] = {}
    readers = []
    try:
        # deadlines out of order; the even ones end (disarm) before their deadline
        delays = [0.3 + 0.02 * ((i * 7) % 40) for i in range(40)]
        for i, (ours, _) in enumerate(pairs):
            watchdog = _Watchdog(started + delays[i])

            def call(w: _Watchdog = watchdog, sock: socket.socket = ours, key: int = i) -> None:
                with w.armed():
                    w.track(sock)
                    if key % 2 == 0:
                        return  # the call finished in time
                    _blocked_recv(sock, woke, key)  # held until the deadline shuts it down

            reader = threading.Thread(target=call)
            reader.start()
            readers.append(reader)
        time.sleep(0.1)  # every call armed (the first deadline is 0.3 s away)
        deadline_threads = [t for t in threading.enumerate() if t.name == "deadlines"]
        assert len(deadline_threads) == 1  # one for every call, not one per call
        for reader in readers:
            reader.join(timeout=10)
        assert sorted(woke) == list(range(1, 40, 2))
        for key, at in woke.items():
            late = at - (started + delays[key])
            assert -0.01 <= late < 0.5, (key, late)  # not before its deadline, soon after
        # the calls that ended first still have working sockets
        for i in range(0, 40, 2):
            ours, theirs = pairs[i]
            theirs.sendall(b"x")
            assert ours.recv(1) == b"x"
    finally:
        for ours, theirs in pairs:
            ours.close()
            theirs.close()


def test_fire_ends_a_call_at_once_and_a_late_connection_too() -> None:
    watchdog = _Watchdog(time.monotonic() + 60)
    ours, theirs = socket.socketpair()
    later, other = socket.socketpair()
    try:
        with watchdog.armed():
            watchdog.track(ours)
            watchdog.fire()  # abort(): as if the deadline had passed
            assert watchdog.fired
            assert ours.recv(1) == b""  # shut down: recv returns at once
            watchdog.track(later)  # a connection opened after the deadline never waits
            assert later.recv(1) == b""
    finally:
        for sock in (ours, theirs, later, other):
            sock.close()


@contextmanager
def _tracked_call(*, opening: bool) -> Iterator[tuple[_Watchdog, socket.socket, socket.socket]]:
    """An armed watchdog (deadline a minute away) tracking one end of a socket pair, as a
    call in flight: ``opening`` while it waits for its shell's Create."""
    watchdog = _Watchdog(time.monotonic() + 60)
    ours, theirs = socket.socketpair()
    try:
        with watchdog.armed():
            watchdog.track(ours)
            watchdog.opening = opening
            yield watchdog, ours, theirs
    finally:
        ours.close()
        theirs.close()


def test_an_abort_lets_a_create_in_flight_answer_so_its_shell_can_be_deleted() -> None:
    with _tracked_call(opening=True) as (watchdog, ours, theirs):
        watchdog.abort(allowance=30)
        assert not watchdog.fired
        theirs.send(b"x")  # the socket still works: the Create's answer can arrive
        assert ours.recv(1) == b"x"
        assert watchdog.opened()  # the call ends here (then Signal + Delete)
        assert watchdog.fired


def test_a_create_that_does_not_answer_within_the_allowance_is_ended() -> None:
    woke: dict[int, float] = {}
    with _tracked_call(opening=True) as (watchdog, ours, _):
        started = time.monotonic()
        waiter = threading.Thread(target=_blocked_recv, args=(ours, woke, 0))
        waiter.start()
        watchdog.abort(allowance=0.3)
        waiter.join(10)
        assert watchdog.fired and 0 in woke
        assert woke[0] - started >= 0.3  # not before the allowance


def test_an_abort_outside_a_create_ends_the_call_at_once() -> None:
    with _tracked_call(opening=False) as (watchdog, ours, _):
        watchdog.abort(allowance=30)
        assert watchdog.fired and ours.recv(1) == b""
        assert not watchdog.opened()
