"""How long the lab takes to answer a WS-Management request: a named latency profile.

``none`` answers as fast as the lab can (about a millisecond per request). ``windows`` plays
a real host: creating a WinRS shell starts wsmprovhost and PowerShell (about 800 ms), every
other WS-Management request costs about 100 ms, and a Receive carries as much finished output
as the client's MaxEnvelopeSize allows (Windows sends what it has buffered; the lab's small
default chunks exist to test multi-Receive, and at 100 ms each they would cost a long output
seconds that no real host charges). The delay is slept in the request's own connection
thread, so clients never wait for each other (docs/lab.md#latency-profiles).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Latency:
    """Seconds added before the lab answers a shell Create, and any other WS-Man request;
    whether a Receive fills the client's envelope instead of the lab's ``receive_chunk``."""

    name: str
    shell_create: float = 0.0
    request: float = 0.0
    fill_envelope: bool = False

    def __post_init__(self) -> None:
        if self.shell_create < 0 or self.request < 0:
            raise ValueError("latency seconds must be >= 0")


NONE = Latency("none")
WINDOWS = Latency("windows", shell_create=0.8, request=0.1, fill_envelope=True)
PROFILES: dict[str, Latency] = {p.name: p for p in (NONE, WINDOWS)}


def latency_profile(name: str) -> Latency:
    """The profile called ``name``; ValueError naming the known ones otherwise."""
    try:
        return PROFILES[name.strip().lower()]
    except KeyError:
        known = ", ".join(PROFILES)
        raise ValueError(f"unknown latency profile {name!r} (known: {known})") from None
