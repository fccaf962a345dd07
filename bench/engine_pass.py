"""Cost of one receiver scheduling pass (``Engine.tick``) with a whole cohort's jobs waiting.

    .venv/bin/python -m bench.engine_pass [--sizes 300,3000,30000] [--passes 20]

A journal (real SQLite, WAL, synchronous=FULL, in a temporary directory) holds one cohort:
N - 1 hosts and their VMM server, journaled as ``renew_ahead`` journals them. Two of them
run (claimed by this engine, so nothing is started and no computer is reached), which
with ``max_concurrent: 2`` is the state of almost every pass while a big cohort is renewed
(docs/renewal.md#renewing-ahead): every other job waits, and the pass must say why. Timed:
the pass after the reasons are written (steady state: inside the window, the limit
reached), a pass outside the window, and one paused. The first pass (every reason
written) is reported apart.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from bench.common import table, write_result
from vmm_cert_exporter.config import Config, WinRMConfig
from vmm_cert_exporter.receiver.config import MaintenanceWindow, ReceiverConfig
from vmm_cert_exporter.receiver.engine import Engine
from vmm_cert_exporter.receiver.journal import CohortJob, Journal, OwnerLock
from vmm_cert_exporter.remoting import ScriptOutput

# 2026-12-01 23:00 UTC: inside the nightly window; 12:00 the next day: outside
INSIDE = datetime(2026, 12, 1, 23, tzinfo=UTC).timestamp()
OUTSIDE = INSIDE + 13 * 3600
SERVER = "vmm01.bench.example"


class _NoRenewals:
    """The runner of an engine that must not start anything (the limit is reached)."""

    def run(self, host: str, script: str, timeout: float | None = None) -> ScriptOutput:
        raise RuntimeError(f"the bench starts no renewal, yet one reached {host}")


def _cohort_job(host: str, role: str, procedure: str) -> CohortJob:
    return CohortJob(
        host=host,
        role=role,
        vmm_server=SERVER,
        is_vmm_server=host == SERVER,
        procedure=procedure,
        reason="cohort 2027-01-01",
        cohort="2027-01-01",
        planned_start_at=INSIDE,
    )


def _journal(directory: Path, size: int) -> Journal:
    journal = Journal(directory / "journal.sqlite", clock=lambda: INSIDE)
    jobs = [
        _cohort_job(f"hv{i:05d}.bench.example", "hyperv_host", "remove-register")
        for i in range(size - 1)
    ]
    jobs.append(_cohort_job(SERVER, "vmm_server", "update-vmm-certificate"))
    journal.create_cohort_jobs(jobs, "execute")
    return journal


def _timed(engine: Engine, passes: int) -> list[float]:
    times = []
    for _ in range(passes):
        start = time.perf_counter()
        if engine.tick():
            raise RuntimeError("a pass started a renewal")
        times.append(time.perf_counter() - start)
    return times


def measure(size: int, passes: int) -> list[str]:
    with tempfile.TemporaryDirectory(prefix="vmm-bench-") as tmp:
        directory = Path(tmp)
        journal = _journal(directory, size)
        now = [INSIDE]
        config = Config(
            path=str(directory / "receiver.yml"),
            winrm=WinRMConfig(transport="basic", username="bench"),
            receiver=ReceiverConfig(
                run_as_account="VMM Host Admins",
                mode="execute",
                renew_ahead=True,
                max_concurrent=2,
                max_concurrent_per_vmm_server=2,
                maintenance_windows=(
                    MaintenanceWindow(weekdays=tuple(range(7)), start=22 * 60, end=2 * 60),
                ),
            ),
        )
        owner = OwnerLock(journal.path)
        engine = Engine(config, journal, _NoRenewals(), owner=owner, clock=lambda: now[0])
        try:
            for job in journal.active_jobs()[:2]:  # two running: max_concurrent reached
                journal.claim(job.id, expected=(job.status,), owner=owner.id)
            start = time.perf_counter()
            engine.tick()
            first = time.perf_counter() - start
            steady = _timed(engine, passes)
            now[0] = OUTSIDE
            engine.tick()  # every reason changes to the window's
            outside = _timed(engine, passes)
            journal.set_paused(True, by="bench")
            engine.tick()
            paused = _timed(engine, passes)
            waiting = sum(1 for j in journal.active_jobs() if j.status == "waiting")
        finally:
            engine.stop()
            journal.close()
            owner.release()
    return [
        f"{size:,}",
        f"{waiting:,}",
        f"{first * 1000:.0f}",
        f"{statistics.median(steady) * 1000:.1f}",
        f"{max(steady) * 1000:.1f}",
        f"{statistics.median(outside) * 1000:.1f}",
        f"{statistics.median(paused) * 1000:.1f}",
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="300,3000,30000")
    parser.add_argument("--passes", type=int, default=20)
    args = parser.parse_args()
    rows = [measure(int(size), args.passes) for size in args.sizes.split(",")]
    text = "\n".join(
        [
            table(
                f"Receiver scheduling pass: one cohort waiting behind max_concurrent: 2 "
                f"({args.passes} passes each)",
                [
                    "jobs",
                    "waiting",
                    "first pass ms",
                    "steady median ms",
                    "steady max ms",
                    "outside window ms",
                    "paused ms",
                ],
                rows,
            ),
            "",
            f"measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        ]
    )
    print(text)
    write_result("engine_pass", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
