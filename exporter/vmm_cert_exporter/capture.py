"""``vmm-cert-exporter capture``: run every read-only operation on the fleet once, and record it.

The calls are a refresh's (same config, inventory, scripts, runner, deadlines, concurrency):
``list-managed-computers`` and ``list-trusted-certificates`` on each configured VMM server,
then ``collect-certificates`` on every computer of the inventory that is read over WinRM.
What each script wrote is recorded byte for byte, before any decoding; a call that failed
before a script ran records why. As in a refresh, a computer that refused the credentials is
not asked again (account lockout policies count every attempt).

Nothing secret is written: not the configuration, not the endpoint, not the account (any
answer that mentions it is scrubbed). ``--redact`` also replaces every hostname
(``capture_redact``). The directory layout is ``capture_format``'s; docs/capture.md.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import shutil
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

from vmm_cert_exporter import __version__, failures
from vmm_cert_exporter.capture_format import (
    Call,
    Capture,
    CaptureDirError,
    Member,
    Skipped,
    prepare,
    write,
)
from vmm_cert_exporter.capture_redact import redact, scrub
from vmm_cert_exporter.config import Config, ConfigError, VmmServerConfig, load_config
from vmm_cert_exporter.failures import CollectError
from vmm_cert_exporter.inventory import VmmView, build_inventory, fqdn_key, view_from_result
from vmm_cert_exporter.logs import setup_logging
from vmm_cert_exporter.powershell import render_script
from vmm_cert_exporter.remoting import ScriptOutput, WinRMRunner
from vmm_cert_exporter.results import ScriptOutputError, parse_managed_computers
from vmm_cert_exporter.sources import WINRM, MethodTable

log = logging.getLogger(__name__)

LIST_MANAGED = "list-managed-computers"
LIST_TRUSTED = "list-trusted-certificates"
COLLECT = "collect-certificates"
_REFUSED = "the computer refused the credentials earlier in this capture"


class RecordingRunner(WinRMRunner):
    """The exporter's runner, returning the bytes a script wrote beside the decoded output."""

    keep_raw = True

    def run_raw(self, host: str, script: str) -> tuple[bytes, bytes, ScriptOutput]:
        """Run ``script`` on ``host``: (stdout bytes, stderr bytes, the decoded output)."""
        output = self.run(host, script)
        return output.raw_stdout, output.raw_stderr, output


def _call(runner: RecordingRunner, host: str, operation: str) -> tuple[Call, ScriptOutput | None]:
    started = time.monotonic()
    try:
        stdout, stderr, output = runner.run_raw(host, render_script(operation))
    except CollectError as exc:
        seconds = time.monotonic() - started
        return Call(
            host, operation, seconds, failure_reason=exc.reason, failure_detail=exc.detail
        ), None
    seconds = time.monotonic() - started
    return Call(host, operation, seconds, stdout, stderr, output.exit_code), output


def _view(server: VmmServerConfig, output: ScriptOutput | None) -> VmmView | None:
    """What the server reported, when it may be used for the inventory (as a refresh would)."""
    if output is None or output.exit_code != 0 or not server.discover:
        return None
    try:
        return view_from_result(server.host, parse_managed_computers(output.stdout))
    except ScriptOutputError as exc:
        log.warning(
            "cannot read what the VMM server manages; its computers are not captured",
            extra={"host": server.host, "operation": LIST_MANAGED, "detail": str(exc)},
        )
        return None


def capture_fleet(config: Config, runner: RecordingRunner) -> Capture:
    """Run every read-only operation once on the configured fleet; write nothing."""
    captured_at, started = time.time(), time.monotonic()
    calls: list[Call] = []
    skipped: list[Skipped] = []
    refused: set[str] = set()  # keys of computers that refused the credentials

    def server_calls(server: VmmServerConfig) -> list[tuple[Call, ScriptOutput | None]]:
        done = [_call(runner, server.host, LIST_MANAGED)]
        if done[0][0].failure_reason != failures.AUTH:
            done.append(_call(runner, server.host, LIST_TRUSTED))
        return done

    with (
        ThreadPoolExecutor(config.collection.concurrency, thread_name_prefix="capture") as pool,
        _abort_on_interrupt(runner),
    ):
        views: list[VmmView] = []
        servers = [(s, pool.submit(server_calls, s)) for s in config.vmm_servers]
        for server, future in servers:
            for call, output in future.result():
                calls.append(call)
                if call.failure_reason == failures.AUTH:
                    refused.add(fqdn_key(server.host))
                    if call.operation == LIST_MANAGED:
                        skipped.append(Skipped(server.host, LIST_TRUSTED, _REFUSED))
                if call.operation == LIST_MANAGED and (view := _view(server, output)):
                    views.append(view)
        inventory = build_inventory(config, views)
        methods = MethodTable(config)
        targets = []
        for computer in inventory.computers:
            if computer.key in refused:
                skipped.append(Skipped(computer.fqdn, COLLECT, _REFUSED))
            elif methods.of(computer) != WINRM:
                skipped.append(Skipped(computer.fqdn, COLLECT, "read by its TLS handshake"))
            else:
                targets.append(pool.submit(_call, runner, computer.fqdn, COLLECT))
        calls.extend(future.result()[0] for future in targets)
    return Capture(
        captured_at=captured_at,
        duration=time.monotonic() - started,
        exporter_version=__version__,
        winrm={
            "transport": config.winrm.transport,
            "https": config.winrm.uses_tls,
            "timeout_seconds": config.winrm.timeout,
        },
        concurrency=config.collection.concurrency,
        vmm_servers=[(s.host, s.discover) for s in config.vmm_servers],
        hosts=[(h.host, h.role) for h in config.hosts],
        members=[Member(c.fqdn, c.role, c.vmm_server, methods.of(c)) for c in inventory.computers],
        calls=calls,
        skipped=skipped,
    )


@contextlib.contextmanager
def _abort_on_interrupt(runner: WinRMRunner) -> Iterator[None]:
    """Ctrl-C: end the calls in flight now (each still cleans up) instead of waiting."""
    try:
        yield
    except KeyboardInterrupt:
        runner.abort()
        raise


def _secrets(config: Config) -> tuple[list[str], list[str]]:
    """(values scrubbed anywhere, names scrubbed as words) of the configuration's accounts."""
    anywhere: list[str] = []
    for secret in (
        config.winrm.password,
        config.receiver.bearer_token if config.receiver else None,
        config.receiver.basic_auth_password if config.receiver else None,
    ):
        if secret is not None:
            anywhere.append(secret.reveal())
    words: list[str] = []
    for user in (
        config.winrm.username,
        config.receiver.basic_auth_username if config.receiver else None,
    ):
        if user:
            # DOMAIN\name and name@domain: the name, never the domain alone (hostnames hold it)
            account = user.rsplit("\\", 1)[-1].split("@", 1)[0]
            words.extend(w for w in (user, account) if w)
    return anywhere, words


def _endpoint_host(config: Config) -> list[str]:
    """A fixed host in the endpoint template (a gateway), which errors may name."""
    host = urlsplit(config.winrm.endpoint.replace("{host}", "placeholder.invalid")).hostname
    return [host] if host and host != "placeholder.invalid" else []


def _summary(capture: Capture, directory: Path) -> Iterator[str]:
    s = capture.summary()
    failed = ", ".join(f"{reason} {n}" for reason, n in s["failed"].items()) or "none"
    yield (
        f"captured {s['calls']} calls on {s['computers']} computers into {directory} "
        f"in {capture.duration:.1f}s"
    )
    yield (
        f"  answered: {s['answered']} (exit code not 0: {s['exit_nonzero']}); "
        f"failed before a script ran: {failed}; skipped: {s['skipped']}"
    )
    if capture.redacted:
        yield "  redacted: hostnames are hostNNN.redacted, certificates re-issued"
    else:
        yield "  not redacted: it names your computers; use --redact before sharing it outside"


def capture_command(args: argparse.Namespace) -> int:
    """Exit 0 when a computer answered, 1 when none did (the capture is written all the
    same: the failures are evidence), 2 on a bad configuration or output directory."""
    setup_logging(args.log_level, args.log_format)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"vmm-cert-exporter capture: {exc}", file=sys.stderr)
        return 2
    directory = Path(args.out)
    try:
        staging = prepare(directory, force=args.force)
    except CaptureDirError as exc:
        print(f"vmm-cert-exporter capture: {exc}", file=sys.stderr)
        return 2
    try:
        try:
            capture = capture_fleet(config, RecordingRunner(config.winrm))
        except KeyboardInterrupt:
            print("interrupted: nothing was written", file=sys.stderr)
            return 130
        if args.redact:
            capture = redact(capture, extra_names=_endpoint_host(config))
        anywhere, words = _secrets(config)
        capture = scrub(capture, anywhere=anywhere, words=words)
        try:
            write(capture, staging, directory)
        except OSError as exc:
            print(
                f"vmm-cert-exporter capture: {directory}: cannot write the capture: "
                f"{exc.strerror or exc}",
                file=sys.stderr,
            )
            return 2
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    for line in _summary(capture, directory):
        print(line)
    if not any(call.answered for call in capture.calls):
        print("vmm-cert-exporter capture: no computer answered", file=sys.stderr)
        return 1
    return 0
