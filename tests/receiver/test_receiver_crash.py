"""``kill -9`` of a receiver process in the middle of a renewal, then a restart: no second
delete; the job is marked interrupted, resumed from verification, and ends verified."""

from __future__ import annotations

import json
import signal
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from vmm_cert_lab.fleet.interfaces import Faults
from vmm_cert_lab.fleet.runner import RunningLab
from vmm_cert_lab.fleet.scenario import lab_host
from vmm_cert_lab.processes import Processes
from vmm_cert_lab.receiver_testing import alert, auth, fleet_of, http, payload, receiver_config

HOST = lab_host("hv36")


def rows(journal: str, sql: str, args: tuple[object, ...] = ()) -> list[sqlite3.Row]:
    db = sqlite3.connect(f"file:{journal}?mode=ro", uri=True, timeout=10)
    db.row_factory = sqlite3.Row
    try:
        return list(db.execute(sql, args).fetchall())
    finally:
        db.close()


@pytest.mark.e2e
def test_kill_9_mid_register_then_restart(
    lab: RunningLab, tmp_path: Path, processes: Processes, free_port: Callable[[], int]
) -> None:
    port = free_port()
    config = receiver_config(
        lab, tmp_path, mode="execute", interval="1h", listen_address=f"127.0.0.1:{port}"
    )
    assert config.receiver is not None
    journal = config.receiver.journal
    url = f"http://127.0.0.1:{port}"
    fleet = fleet_of(lab)
    # every answer of the VMM server takes 0.3 s: register-managed-computer (five WinRM
    # requests) is in flight for about 1.5 s, long enough to kill the process inside it
    lab.model.set_faults(lab_host("vmm01"), Faults(latency=0.3))
    log = tmp_path / "receiver.log"
    first = processes.exporter("receiver", "--config", config.path, port=port, log=log)
    first.wait_ready(timeout=30)
    status, answer = http(
        "POST", url + "/alertmanager", json.dumps(payload(alert(HOST))).encode(), auth()
    )
    assert status == 200 and answer["alerts"][0]["outcome"] == "created"
    job_id = answer["alerts"][0]["job_id"]

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        started = rows(
            journal,
            "SELECT status FROM steps WHERE job_id = ? AND name = 'register-managed-computer'",
            (job_id,),
        )
        if started:
            break
        time.sleep(0.01)
    else:
        pytest.fail("the register step never started")
    first.kill()
    first.wait(timeout=10)

    # what the journal knew at the moment of the crash
    job = rows(journal, "SELECT * FROM jobs WHERE id = ?", (job_id,))[0]
    assert job["status"] == "running"
    assert [
        (r["name"], r["status"])
        for r in rows(
            journal, "SELECT name, status FROM steps WHERE job_id = ? ORDER BY id", (job_id,)
        )
    ] == [
        ("preflight", "succeeded"),
        ("remove-certificates", "succeeded"),
        ("register-managed-computer", "started"),
    ]
    assert fleet.count("remove-certificates", HOST) == 1

    lab.model.set_faults(lab_host("vmm01"), Faults())
    second = processes.exporter("receiver", "--config", config.path, port=port, log=log)
    second.wait_ready(timeout=30)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        status, detail = http("GET", f"{url}/api/jobs/{job_id}", headers=auth())
        if status == 200 and not detail["active"]:
            break
        time.sleep(0.1)
    assert detail["status"] == "succeeded", detail
    # never a second delete: the one remove-certificates of attempt 1 is the only one
    assert fleet.count("remove-certificates", HOST) == 1
    attempts = detail["attempts"]
    assert attempts[0]["result"] == "interrupted"
    assert attempts[0]["reason"] == "interrupted during register-managed-computer"
    assert attempts[1]["kind"] == "resume"
    steps = [(s["attempt"], s["name"], s["status"]) for s in detail["steps"]]
    assert steps[:4] == [
        (1, "preflight", "succeeded"),
        (1, "remove-certificates", "succeeded"),
        (1, "register-managed-computer", "unknown"),
        (2, "verify", steps[3][2]),
    ]
    # either the register reached VMM before the kill (verify succeeds at once), or the
    # next attempt found nothing to remove and registered
    if steps[3][2] == "failed":
        assert steps[4:] == [
            (3, "preflight", "succeeded"),
            (3, "remove-certificates", "skipped"),
            (3, "register-managed-computer", "succeeded"),
            (3, "verify", "succeeded"),
        ]
    else:
        assert steps[3:] == [(2, "verify", "succeeded")]
    assert any(e["kind"] == "interrupted" for e in detail["events"])
    described = lab.model.describe(HOST)
    certs = [c for c in described["certificates"] if c["scvmm"]]
    assert len(certs) == 1 and described["trusted"]["matches"] is True
    year = int(lab.model.clock_info()["now"][:4])
    assert certs[0]["not_after"].startswith(f"{year + 5}-01-01")

    # SIGTERM: a clean stop, exit code 0
    second.send_signal(signal.SIGTERM)
    assert second.wait(timeout=30) == 0
