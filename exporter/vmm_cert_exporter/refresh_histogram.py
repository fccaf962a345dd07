"""The histogram of refresh durations (``vmm_cert_exporter_refresh_duration_seconds``).

Its own module: ``serve``'s server process keeps one (filled from its refresh process) and
must not load the WinRM stack that ``collection`` brings in.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

# a refresh takes from a second (a handful of hosts) to minutes (thousands of hosts at low
# concurrency)
REFRESH_BUCKETS = (1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)


@dataclass
class RefreshHistogram:
    """Cumulative histogram of refresh durations (exported by the metrics collector)."""

    buckets: tuple[float, ...] = REFRESH_BUCKETS
    counts: list[int] = field(default_factory=lambda: [0] * (len(REFRESH_BUCKETS) + 1))
    total: float = 0.0
    count: int = 0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, seconds)] += 1
        self.total += seconds
        self.count += 1

    def cumulative(self) -> list[tuple[str, float]]:
        out: list[tuple[str, float]] = []
        running = 0
        for bound, n in zip(self.buckets, self.counts, strict=False):
            running += n
            out.append((repr(float(bound)), float(running)))
        out.append(("+Inf", float(self.count)))
        return out
