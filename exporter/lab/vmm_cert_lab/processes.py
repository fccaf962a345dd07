"""Start a process, wait until it answers, stop it: the one way the tests and the demo's
Prometheus and Alertmanager do it (``tests/conftest.py`` hands these out as fixtures)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

# The console script of the venv this runs in (make venv installs it).
EXPORTER = str(Path(sys.executable).parent / "vmm-cert-exporter")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(
    condition: Callable[[], object],
    what: str | Callable[[], str],
    timeout: float = 60.0,
    interval: float = 0.1,
    gone: Callable[[], str | None] = lambda: None,
) -> None:
    """Poll ``condition`` until it is true, else raise ``TimeoutError`` naming ``what``
    (a callable is asked then, so it can say what the state was).

    An ``OSError`` from it (not listening yet, connection reset; ``requests`` errors are
    ``OSError`` too) counts as "not yet". ``gone`` says why waiting is pointless (a process
    that exited), or None; then ``RuntimeError``.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            if condition():
                return
        except OSError:
            pass
        reason = gone()
        if reason is not None:
            raise RuntimeError(f"while waiting for {_said(what)}: {reason}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {_said(what)}")
        time.sleep(interval)


def _said(what: str | Callable[[], str]) -> str:
    return what if isinstance(what, str) else what()


class Process(subprocess.Popen[str]):
    """A started process: a ``Popen`` with text pipes, or one log file for both streams.

    ``port`` and ``url`` say where it listens when it was given a port; ``popen`` goes to
    ``Popen`` as it is (``start_new_session``...).
    """

    def __init__(
        self,
        argv: list[str],
        *,
        port: int | None = None,
        log: Path | None = None,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        name: str | None = None,
        **popen: Any,
    ) -> None:
        self.name = name or Path(argv[0]).name
        # a session of its own: stop() ends everything it started too
        self._session = bool(popen.get("start_new_session"))
        self.port = port
        self.log_path = log
        self._log: IO[bytes] | None = log.open("ab") if log is not None else None
        super().__init__(
            argv,
            stdout=subprocess.PIPE if self._log is None else self._log,
            stderr=subprocess.PIPE if self._log is None else subprocess.STDOUT,
            text=True,
            cwd=cwd,
            env={**(os.environ if env is None else env), "PYTHONUNBUFFERED": "1"},
            **popen,
        )

    @property
    def url(self) -> str:
        if self.port is None:
            raise ValueError(f"{self.name} was not given a port")
        return f"http://127.0.0.1:{self.port}"

    def wait_until(self, condition: Callable[[], object], what: str, timeout: float = 60) -> None:
        """``wait_until``, ending at once (with what it printed) if the process exits."""
        wait_until(condition, what, timeout, 0.1, gone=self._exited)

    def wait_ready(self, path: str = "/-/ready", timeout: float = 60) -> None:
        """Until ``path`` answers 200 over plain HTTP."""

        def ready() -> bool:
            with urllib.request.urlopen(self.url + path, timeout=2) as response:  # noqa: S310 - our own loopback URL
                return bool(response.status == 200)

        self.wait_until(ready, f"{self.name}: {path} to answer 200", timeout)

    def log_tail(self, lines: int = 30) -> str:
        if self.log_path is None:
            return ""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def _exited(self) -> str | None:
        if self.poll() is None:
            return None
        printed = self.log_tail() if self._log is not None else "".join(self.communicate())
        return f"{self.name} exited with {self.returncode}:\n{printed[-3000:]}"

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 10 s; closes the log. Started with
        ``start_new_session``, the whole session gets the signals and is waited for: a
        wrapper such as faketime forks the program it runs and does not pass signals on."""
        if self.poll() is None or self._session:
            self._signal(signal.SIGTERM)
            try:
                self.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                self.wait(timeout=10)
            if self._session and not self._group_gone(10.0):
                self._signal(signal.SIGKILL)
                self._group_gone(10.0)
        if self._log is not None:
            self._log.close()

    def _signal(self, signum: int) -> None:
        if not self._session:
            self.send_signal(signum)
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signum)

    def _group_gone(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                os.killpg(self.pid, 0)
            except ProcessLookupError:
                return True
            time.sleep(0.05)
        return False


class Processes:
    """The processes of one piece of work (a test), stopped together."""

    def __init__(self) -> None:
        self._started: list[Process] = []

    def start(self, *argv: str, **options: Any) -> Process:
        """``Process(argv, **options)``, stopped by ``stop_all``."""
        process = Process(list(argv), **options)
        self._started.append(process)
        return process

    def exporter(self, *args: str, listen: bool = False, **options: Any) -> Process:
        """``vmm-cert-exporter ARGS``; with ``listen``, on a free port of 127.0.0.1."""
        if listen:
            options["port"] = free_port()
            args = (*args, f"--web.listen-address=127.0.0.1:{options['port']}")
        return self.start(EXPORTER, *args, **options)

    def stop_all(self) -> None:
        for process in reversed(self._started):
            process.stop()


class ExporterCommand:
    """The installed ``vmm-cert-exporter`` command, run to completion."""

    path = EXPORTER

    def run(
        self,
        *args: str,
        timeout: float = 120,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Its output as text: ``stdout`` and ``stderr`` apart."""
        return subprocess.run(
            [self.path, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            cwd=cwd,
            env=None if env is None else dict(env),
        )
