"""The refresh runs in a child process of ``serve`` (refresh_process.py).

Real processes throughout: a spawned child refreshing the lab over pywinrm, killed with
SIGKILL to prove the server survives it and starts another, and a server killed with SIGKILL
to prove its child does not outlive it (and still closes its WinRM shells).
"""

from __future__ import annotations

import gzip
import logging
import os
import platform
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from vmm_cert_exporter import malloc_tuning
from vmm_cert_exporter.config import Config, load_config
from vmm_cert_exporter.metrics import SnapshotCollector, render_snapshot
from vmm_cert_exporter.refresh_process import REFRESH_NICENESS, RefreshProcess
from vmm_cert_exporter.serve import Exporter, start_exporter
from vmm_cert_exporter.sharding import Shard
from vmm_cert_lab.fleet.interfaces import Faults
from vmm_cert_lab.fleet.runner import RunningLab
from vmm_cert_lab.fleet.scenario import LAB_DOMAIN, lab_host
from vmm_cert_lab.processes import Process, Processes, wait_until

pytestmark = pytest.mark.e2e


def _metrics(exporter: Exporter) -> str:
    with urllib.request.urlopen(exporter.url + "/metrics", timeout=10) as resp:
        return str(resp.read().decode())


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is dead for our purpose
    state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    return state != "Z"


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(p) for p in (task / "children").read_text().split()]
    return found


def _refresh_child(pid: int) -> int | None:
    """The refresh process among ``pid``'s children (not the resource tracker)."""
    for child in _children(pid):
        try:
            if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes():
                return child
        except OSError:
            continue
    return None


def test_serve_refreshes_in_a_child_process(lab: RunningLab, tmp_path: Path) -> None:
    exporter = start_exporter(_config(lab, tmp_path), "127.0.0.1:0")
    try:
        refresher = exporter.refresher
        assert isinstance(refresher, RefreshProcess)
        assert refresher.wait_first(timeout=60)
        assert refresher.pid is not None and refresher.pid != os.getpid()
        assert refresher.ready and refresher.refreshes >= 1
        # background work: below the server's priority, so a scrape never waits behind it
        ours = os.getpriority(os.PRIO_PROCESS, 0)
        expected = min(19, ours + REFRESH_NICENESS)
        assert os.getpriority(os.PRIO_PROCESS, refresher.pid) == expected > ours
        text = _metrics(exporter)
        assert f'vmm_cert_present{{host="hv38.{LAB_DOMAIN}",role="hyperv_host"}} 0.0' in text
        assert "vmm_cert_exporter_refresh_duration_seconds_count 1.0" in text
        assert "vmm_cert_exporter_refresh_process_restarts_total 0.0" in text
        # the child rendered the snapshot it sent: what this process would render of it
        snapshot, rendered = refresher.snapshot, refresher.rendered
        assert rendered is not None and len(snapshot.hosts) == len(lab.model.list_computers())
        mine = render_snapshot(
            SnapshotCollector(lambda: snapshot, lambda: refresher.histogram), snapshot, None
        )
        assert rendered.static == mine.static and rendered.points == mine.points
        assert gzip.decompress(b"".join(rendered.static_gz)) == b"".join(mine.static)
    finally:
        assert exporter.stop()


def _config(lab: RunningLab, tmp_path: Path) -> Config:
    return load_config(lab.write_config(tmp_path / "exporter.yml"))


def test_a_killed_refresh_process_is_replaced_and_metrics_keep_serving(
    lab: RunningLab, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    exporter = start_exporter(_config(lab, tmp_path), "127.0.0.1:0")
    try:
        refresher = exporter.refresher
        assert isinstance(refresher, RefreshProcess)
        assert refresher.wait_first(timeout=60)
        first_pid, published = refresher.pid, refresher.snapshot
        assert first_pid is not None
        with caplog.at_level(logging.ERROR):
            os.kill(first_pid, signal.SIGKILL)
            wait_until(lambda: not _alive(first_pid), "the child to die", 10)
            # the last snapshot is still served while there is no refresh process
            assert f'host="hv01.{LAB_DOMAIN}"' in _metrics(exporter)
            wait_until(lambda: refresher.restarts == 1, "a restart", 10)
            # the restart is counted at once, although the snapshot has not changed
            assert "vmm_cert_exporter_refresh_process_restarts_total 1.0" in _metrics(exporter)
            wait_until(lambda: refresher.snapshot is not published, "a new snapshot", 60)
        assert refresher.pid not in (None, first_pid)
        assert "refresh process ended unexpectedly" in caplog.text
        assert f'host="hv01.{LAB_DOMAIN}"' in _metrics(exporter)
    finally:
        assert exporter.stop()


def test_a_configuration_that_no_longer_loads_is_reported_by_the_server(
    lab: RunningLab, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = _config(lab, tmp_path)
    exporter = start_exporter(config, "127.0.0.1:0")
    try:
        refresher = exporter.refresher
        assert isinstance(refresher, RefreshProcess)
        assert refresher.wait_first(timeout=60)
        pid = refresher.pid
        assert pid is not None
        # someone breaks the file, then the refresh process dies: the new one cannot start
        path = Path(config.path)
        data = yaml.safe_load(path.read_text())
        data["winrm"]["timeout"] = "soon"
        path.write_text(yaml.safe_dump(data))
        with caplog.at_level(logging.ERROR):
            os.kill(pid, signal.SIGKILL)
            wait_until(lambda: "refresh process cannot start" in caplog.text, "the error", 30)
        failed = next(r for r in caplog.records if r.getMessage() == "refresh process cannot start")
        error = str(failed.__dict__["error"])
        assert config.path in error and "winrm.timeout" in error, error
        assert f'host="hv01.{LAB_DOMAIN}"' in _metrics(exporter)  # still serving what it had
    finally:
        exporter.stop(drain=10)


def _serve_slowly(processes: Processes, lab: RunningLab, tmp_path: Path, **popen: Any) -> Process:
    """``serve`` as a real process, against hosts slow enough to have calls in flight."""
    for computer in lab.model.list_computers():
        if computer["fqdn"] != lab_host("vmm01"):
            lab.model.set_faults(computer["fqdn"], Faults(latency=0.5))
    config = lab.write_config(tmp_path / "exporter.yml")
    return processes.exporter("serve", "--config", str(config), listen=True, **popen)


def test_the_refresh_process_does_not_outlive_a_killed_server(
    lab: RunningLab, tmp_path: Path, processes: Processes
) -> None:
    proc = _serve_slowly(processes, lab, tmp_path)  # calls are in flight when the server dies
    children: list[int] = []
    try:
        # the refresh process (and multiprocessing's resource tracker beside it)
        wait_until(lambda: _refresh_child(proc.pid), "the refresh process", 30)
        children = _children(proc.pid)
        wait_until(lambda: lab.server.stats()["open_shells_total"], "calls in flight", 60)
        proc.kill()
        proc.wait()
        # the child sees its pipe close, ends its calls (Signal + Delete) and exits
        wait_until(lambda: not any(_alive(c) for c in children), "the children to exit", 20)
        wait_until(
            lambda: lab.server.stats()["open_shells_total"] == 0,
            lambda: f"no shell left, stats {lab.server.stats()}",
            10,
        )
    finally:
        if proc.poll() is None:
            proc.kill()
        for child in children:
            if _alive(child):
                os.kill(child, signal.SIGKILL)
        proc.communicate()


def test_ctrl_c_to_the_process_group_is_one_graceful_stop(
    lab: RunningLab, tmp_path: Path, processes: Processes
) -> None:
    """Ctrl-C reaches the server and its child at once: that is one stop, not an abort."""
    proc = _serve_slowly(
        processes,
        lab,
        tmp_path,
        start_new_session=True,  # its own process group, as a terminal's foreground job
    )
    try:
        wait_until(lambda: lab.server.stats()["open_shells_total"], "calls in flight", 60)
        os.killpg(proc.pid, signal.SIGINT)
        _, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert proc.returncode == 0, stderr
    assert "second signal" not in stderr
    assert 'msg="refresh abandoned: shutting down' in stderr
    assert "msg=stopped" in stderr
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr
    wait_until(lambda: lab.server.stats()["open_shells_total"] == 0, "no shell left", 5)


def test_the_refresh_process_reads_only_its_shard(lab: RunningLab, tmp_path: Path) -> None:
    shard = Shard(1, 3)
    exporter = start_exporter(_config(lab, tmp_path), "127.0.0.1:0", shard=shard)
    try:
        assert exporter.refresher.wait_first(timeout=60)
        hosts = {h.computer.fqdn for h in exporter.refresher.snapshot.hosts}
        everyone = {c["fqdn"] for c in lab.model.list_computers()}
        assert hosts and hosts == {fqdn for fqdn in everyone if shard.owns(fqdn)}
    finally:
        assert exporter.stop()


def test_the_server_process_never_loads_the_winrm_stack() -> None:
    """``serve``'s server only serves: requests, pyspnego and pywinrm (~35 MB) are loaded
    by its refresh process alone."""
    probe = (
        "import sys, vmm_cert_exporter.serve, vmm_cert_exporter.cli;"
        "print(sorted({m.split('.')[0] for m in sys.modules}"
        " & {'winrm', 'spnego', 'requests', 'requests_ntlm', 'gssapi', 'krb5'}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]", out


def test_glibc_accepts_the_arena_cap() -> None:
    assert platform.libc_ver()[0] == "glibc"  # the machines this runs on: Debian
    assert malloc_tuning.limit_arenas()
