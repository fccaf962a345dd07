"""Generated fleets (``--hosts N``): a realistic mix, deterministic for a seed; and the
``big-cohort`` scenario: one year's computers, all expiring on the next 1 January.

The result is an ordinary scenario document, so it goes through the same validation and
builder as a YAML file. ``hosts`` counts managed computers besides the VMM server.
"""

from __future__ import annotations

import random
from typing import Any

LIBRARY_SHARE = 0.03  # ~3% library servers, the rest Hyper-V hosts
ANOMALY_SHARE = 0.01  # ~1% each: certificate missing, TrustedPeople mismatch, duplicate
# cohorts: how many years ago computers were added (0-4, i.e. all still valid with 5 years);
# weights mimic a fleet that grew, then was partly refreshed
COHORT_WEIGHTS = {0: 0.15, 1: 0.25, 2: 0.25, 3: 0.2, 4: 0.15}


def generated_scenario(hosts: int, seed: int, domain: str) -> dict[str, Any]:
    if isinstance(hosts, bool) or not isinstance(hosts, int) or hosts < 0:
        raise ValueError(f"hosts must be an integer >= 0, got {hosts!r}")
    rng = random.Random(seed)  # noqa: S311 - a reproducible lab, not cryptography
    libraries = round(hosts * LIBRARY_SHARE)
    anomalies = round(hosts * ANOMALY_SHARE)
    years = list(COHORT_WEIGHTS)
    weights = list(COHORT_WEIGHTS.values())
    computers: list[dict[str, Any]] = []
    width = max(4, len(str(hosts)))
    for index in range(hosts):
        is_library = index < libraries
        name = f"lib{index + 1:0{width}d}" if is_library else f"hv{index - libraries + 1:0{width}d}"
        computers.append(
            {
                "fqdn": f"{name}.{domain}",
                "role": "library_server" if is_library else "hyperv_host",
                "added_years_ago": rng.choices(years, weights)[0],
            }
        )
    # disjoint picks so each anomaly stays readable on its own
    picked = rng.sample(range(hosts), min(hosts, 3 * anomalies))
    for offset, field, value in (
        (0, "certificate", "missing"),
        (anomalies, "trusted", "mismatch"),
        (2 * anomalies, "certificate", "duplicate"),
    ):
        for index in picked[offset : offset + anomalies]:
            computers[index][field] = value
    return {
        "name": f"generated-{hosts}-seed{seed}",
        "vmm_server": {"fqdn": f"vmm01.{domain}", "version": "2019 UR2", "added_years_ago": 1},
        "computers": computers,
    }


BIG_COHORT_HOSTS = 3000


def big_cohort_scenario(hosts: int, domain: str) -> dict[str, Any]:
    """``hosts`` managed computers (3 % library servers) and their VMM server (2022, so it
    renews itself with Update-SCVMMCertificate), all added four years ago: with the lab's
    five-year certificates every one expires on the next 1 January of the lab clock, the
    cohort docs/renewal.md#cohorts is about."""
    if isinstance(hosts, bool) or not isinstance(hosts, int) or hosts < 1:
        raise ValueError(f"hosts must be an integer >= 1, got {hosts!r}")
    libraries = round(hosts * LIBRARY_SHARE)
    width = max(4, len(str(hosts)))
    computers = [
        {
            "fqdn": (
                f"lib{index + 1:0{width}d}.{domain}"
                if index < libraries
                else f"hv{index - libraries + 1:0{width}d}.{domain}"
            ),
            "role": "library_server" if index < libraries else "hyperv_host",
            "added_years_ago": 4,
        }
        for index in range(hosts)
    ]
    return {
        "name": f"big-cohort-{hosts}",
        "description": "one year's computers, all expiring on the next 1 January",
        "vmm_server": {"fqdn": f"vmm01.{domain}", "version": "2022", "added_years_ago": 4},
        "computers": computers,
    }
