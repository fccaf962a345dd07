"""Cost of one cohort-planner evaluation: group the fleet's NotAfters into cohorts, build the
receiver's capacity (windows, concurrency, measured durations) and project every cohort.

    .venv/bin/python -m bench.cohort_planner [--sizes 1000,10000,50000] [--runs 20]

The fleet is shaped like a real one: four fifths of the computers on the 1 January of one of
five years (the yearly cohorts), the rest renewed on a random day of the past year (a cohort
per day, so ~365 small ones). The capacity has a nightly window and 10,000 measured
renewals. This is what `cohorts` does after its refresh and what the receiver does per
scrape of its capacity; the target is at most 1 s per evaluation at 50,000 computers.
The second figure is `renew_ahead`'s schedule after a census (every cohort inside
min_validity: each computer's procedure, the policy, its planned start), taken with the
same target.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from datetime import UTC, datetime

from bench.common import table, write_result
from vmm_cert_exporter.cohorts import Capacity, capacities, group, project
from vmm_cert_exporter.inventory import Computer, VmmView
from vmm_cert_exporter.receiver.ahead import schedule
from vmm_cert_exporter.receiver.census import Holding
from vmm_cert_exporter.receiver.config import MaintenanceWindow, ReceiverConfig

TARGET_SECONDS = 1.0
_DAY = 86400.0


def fleet(size: int, now: float, seed: int = 1) -> list[tuple[str, float]]:
    rng = random.Random(seed)
    year = datetime.fromtimestamp(now, UTC).year
    new_years = [datetime(year + k, 1, 1, tzinfo=UTC).timestamp() for k in range(1, 6)]
    roles = ("hyperv_host",) * 18 + ("library_server", "vmm_server")
    points = []
    for _ in range(size):
        if rng.random() < 0.8:
            after = rng.choice(new_years)
        else:  # renewed on some day of the past year: five years from then
            after = now + 5 * 365 * _DAY - rng.randrange(365) * _DAY
        points.append((rng.choice(roles), after))
    return points


def census(points: list[tuple[str, float]]) -> tuple[list[Holding], dict[str, VmmView]]:
    """The points as the receiver's census holds them, managed by three VMM servers."""
    servers = [f"vmm{k}.bench.example" for k in range(3)]
    holdings = [
        Holding(
            Computer(
                servers[i % 3] if role == "vmm_server" and i < 3 else f"c{i}.bench.example",
                "vmm_server" if role == "vmm_server" and i < 3 else "hyperv_host",
                servers[i % 3],
                is_vmm_server=role == "vmm_server" and i < 3,
            ),
            after,
        )
        for i, (role, after) in enumerate(points)
    ]
    views = {
        server: VmmView(
            server,
            "2022",
            False,
            True,
            tuple(h.computer for h in holdings if h.computer.vmm_server == server),
        )
        for server in servers
    }
    return holdings, views


def plan_ahead(holdings: list[Holding], views: dict[str, VmmView], capacity: Capacity,
               now: float) -> int:  # fmt: skip
    config = ReceiverConfig(run_as_account="VMM Host Admins", renew_ahead=True)
    return sum(len(p.jobs) for p in schedule(holdings, views, config, capacity, now))


def evaluate(points: list[tuple[str, float]], now: float) -> int:
    return len(project(group(points), _capacity(now), now, 7 * _DAY))


def _capacity(now: float) -> Capacity:
    _, used = capacities(
        max_concurrent=4,
        per_vmm_server=2,
        vmm_servers=3,
        windows=(MaintenanceWindow(weekdays=tuple(range(7)), start=22 * 60, end=2 * 60),),
        approval=False,
        paused=False,
        assumed=300.0,
        durations={"remove-register": [240.0] * 9000, "update-vmm-certificate": [600.0] * 1000},
        at=now,
    )
    return used


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000,50000")
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    now = time.time()
    rows = []
    worst = 0.0
    for size in (int(s) for s in args.sizes.split(",")):
        points = fleet(size, now)
        cohorts = evaluate(points, now)  # warm-up, and the cohort count
        times = []
        for _ in range(args.runs):
            start = time.perf_counter()
            evaluate(points, now)
            times.append(time.perf_counter() - start)
        median, slowest = statistics.median(times), max(times)
        holdings, views = census(points)
        capacity = _capacity(now)
        scheduled = plan_ahead(holdings, views, capacity, now)
        ahead = []
        for _ in range(max(1, args.runs // 4)):
            start = time.perf_counter()
            plan_ahead(holdings, views, capacity, now)
            ahead.append(time.perf_counter() - start)
        worst = max(worst, slowest, max(ahead))
        rows.append(
            [
                f"{size:,}",
                str(cohorts),
                f"{median * 1000:.1f}",
                f"{slowest * 1000:.1f}",
                f"{scheduled:,}",
                f"{statistics.median(ahead) * 1000:.1f}",
                f"{max(ahead) * 1000:.1f}",
            ]
        )
    verdict = "met" if worst <= TARGET_SECONDS else "MISSED"
    text = "\n".join(
        [
            table(
                f"Cohort planner: one evaluation ({args.runs} runs per size; renew_ahead's "
                "schedule a quarter as often)",
                [
                    "computers",
                    "cohorts",
                    "median ms",
                    "max ms",
                    "renew_ahead jobs",
                    "schedule median ms",
                    "schedule max ms",
                ],
                rows,
            ),
            "",
            f"target <= {TARGET_SECONDS:g} s per evaluation: {verdict} "
            f"(slowest {worst * 1000:.0f} ms)",
            f"measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        ]
    )
    print(text)
    write_result("cohort_planner", text)
    return 0 if verdict == "met" else 1


if __name__ == "__main__":
    raise SystemExit(main())
