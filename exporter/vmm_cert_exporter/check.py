"""``vmm-cert-exporter check``: one refresh and a verdict, like a monitoring plugin.

Exit 0 when every computer is fine, 1 for warnings (expiring within --warn-days, duplicate
certificates, a computer that could not be read), 2 for critical findings (expired, within
--critical-days, missing, not trusted by VMM).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass

from vmm_cert_exporter.collection import Refresher
from vmm_cert_exporter.config import ConfigError, load_config
from vmm_cert_exporter.logs import setup_logging
from vmm_cert_exporter.snapshot import HostSnapshot, Snapshot

OK, WARNING, CRITICAL = 0, 1, 2
_NAMES = {OK: "OK", WARNING: "WARNING", CRITICAL: "CRITICAL"}


@dataclass(frozen=True)
class Finding:
    host: str
    role: str
    status: int
    days_left: float | None
    not_after: str | None
    problems: tuple[str, ...]


def assess(host: HostSnapshot, now: float, warn_days: float, critical_days: float) -> Finding:
    problems: list[str] = []
    status = OK
    current = host.current
    days = None if current is None else (current.info.not_after.timestamp() - now) / 86400.0
    if host.present is False:
        problems.append("no SCVMM certificate")
        status = CRITICAL
    if days is not None:
        if days <= 0:
            problems.append("expired")
            status = CRITICAL
        elif days <= critical_days:
            problems.append(f"expires within {critical_days:g} days")
            status = CRITICAL
        elif days <= warn_days:
            problems.append(f"expires within {warn_days:g} days")
            status = max(status, WARNING)
    if host.trusted is False:
        problems.append("VMM's TrustedPeople copy does not match")
        status = CRITICAL
    if host.certificates is not None and len(host.certificates) > 1:
        problems.append(f"{len(host.certificates)} SCVMM certificates")
        status = max(status, WARNING)
    if not host.last_ok:
        problems.append(f"not read: {host.last_error or 'skipped'}")
        status = max(status, WARNING)
    return Finding(
        host=host.computer.fqdn,
        role=host.computer.role,
        status=status,
        days_left=None if days is None else round(days, 2),
        not_after=None if current is None else current.info.not_after.isoformat(),
        problems=tuple(problems),
    )


def findings(
    snapshot: Snapshot, now: float, warn_days: float, critical_days: float
) -> list[Finding]:
    out = [assess(h, now, warn_days, critical_days) for h in snapshot.hosts]
    return sorted(
        out, key=lambda f: (-f.status, f.days_left if f.days_left is not None else 1e9, f.host)
    )


def render_table(rows: list[Finding]) -> str:
    header = ("STATUS", "HOST", "ROLE", "DAYS LEFT", "NOT AFTER", "PROBLEMS")
    table = [header] + [
        (
            _NAMES[f.status],
            f.host,
            f.role,
            "" if f.days_left is None else f"{f.days_left:.1f}",
            (f.not_after or "")[:10],
            "; ".join(f.problems),
        )
        for f in rows
    ]
    widths = [max(len(r[i]) for r in table) for i in range(len(header) - 1)]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(r[:-1], widths, strict=True)) + "  " + r[-1]
        for r in table
    ]
    return "\n".join(line.rstrip() for line in lines)


def run(args: argparse.Namespace) -> int:
    setup_logging(args.log_level, args.log_format)
    if not 0 < args.critical_days < args.warn_days:
        print("error: expected 0 < --critical-days < --warn-days", file=sys.stderr)
        return 3
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    try:
        snapshot = Refresher(config, shard=getattr(args, "shard", None)).refresh_once()
    except KeyboardInterrupt:
        # in-flight calls were aborted (with Signal + Delete) by the refresher; no traceback
        print("interrupted", file=sys.stderr)
        return 130
    rows = findings(snapshot, time.time(), args.warn_days, args.critical_days)
    worst = max((f.status for f in rows), default=OK)
    if args.json:
        print(
            json.dumps(
                {
                    "status": _NAMES[worst],
                    "computers": [
                        {**f.__dict__, "status": _NAMES[f.status], "problems": list(f.problems)}
                        for f in rows
                    ],
                },
                indent=2,
            )
        )
    else:
        print(render_table(rows))
        print(
            f"\n{_NAMES[worst]}: {len(rows)} computers, "
            f"{sum(f.status == CRITICAL for f in rows)} critical, "
            f"{sum(f.status == WARNING for f in rows)} warning"
        )
    return worst
