"""``--shard K/N``: N exporters split one fleet, with no overlap and no gap.

Rendezvous hashing of the lower-cased FQDN, applied after discovery; its properties are in
docs/scaling.md ("Sharding"). ``--shard auto/N`` takes K from the trailing ordinal of the
host name, which is how a Kubernetes StatefulSet names its pods (``name-3``)."""

from __future__ import annotations

import argparse
import hashlib
import re
import socket
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Final

from vmm_cert_exporter.inventory import Inventory, fqdn_key

MAX_SHARDS: Final = 1024
# a StatefulSet pod's host name: <statefulset name>-<ordinal>
_ORDINAL_RE: Final = re.compile(r"-(0|[1-9][0-9]*)$")


@lru_cache(maxsize=1 << 17)
def owner(fqdn: str, total: int) -> int:
    """The shard (0-based) that owns ``fqdn`` among ``total`` shards."""
    key = fqdn_key(fqdn).encode("utf-8")
    best, best_score = 0, -1
    for index in range(total):
        digest = hashlib.blake2b(b"%d:%s" % (index, key), digest_size=8).digest()
        score = int.from_bytes(digest, "big")
        if score > best_score:
            best, best_score = index, score
    return best


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` (0-based) of ``total``."""

    index: int
    total: int

    def __post_init__(self) -> None:
        if not 1 <= self.total <= MAX_SHARDS:
            raise ValueError(f"N must be from 1 to {MAX_SHARDS}, got {self.total}")
        if not 0 <= self.index < self.total:
            raise ValueError(f"K must be from 0 to N-1 ({self.total - 1}), got {self.index}")

    def __str__(self) -> str:
        return f"{self.index}/{self.total}"

    def owns(self, fqdn: str) -> bool:
        return self.total == 1 or owner(fqdn, self.total) == self.index

    def select(self, inventory: Inventory) -> Inventory:
        """The part of ``inventory`` this shard reads and publishes."""
        mine = tuple(c for c in inventory.computers if self.owns(c.fqdn))
        return Inventory(computers=mine, vmm_views=inventory.vmm_views)


def parse_shard(text: str, hostname: Callable[[], str] = socket.gethostname) -> Shard:
    """``"K/N"`` -> ``Shard(K, N)``, ``"auto/N"`` -> K from ``hostname()``'s trailing
    ordinal; ValueError with the reason otherwise."""
    index_text, sep, total_text = text.strip().partition("/")
    if sep and index_text == "auto" and total_text.isdigit():
        return Shard(ordinal(hostname(), int(total_text)), int(total_text))
    if not sep or not index_text.isdigit() or not total_text.isdigit():
        raise ValueError(f"expected K/N or auto/N with 0 <= K < N (e.g. 0/3), got {text!r}")
    return Shard(int(index_text), int(total_text))


def ordinal(host: str, total: int) -> int:
    """The K of ``auto/total``: the number after the last ``-`` of the host name's first
    label (``vmm-cert-exporter-3`` -> 3)."""
    label = host.split(".", 1)[0]
    match = _ORDINAL_RE.search(label)
    if match is None:
        raise ValueError(
            f"--shard auto/{total} takes K from the host name's trailing ordinal, as a "
            f"StatefulSet names its pods (name-0 ... name-{max(total - 1, 0)}), but the host "
            f"name {host!r} does not end in -<number>; give --shard K/{total} instead"
        )
    index = int(match.group(1))
    if index >= total:
        raise ValueError(
            f"the host name {host!r} gives shard {index}, but auto/{total} has shards 0 to "
            f"{total - 1}: are the StatefulSet's replicas and N the same?"
        )
    return index


def shard_argument(text: str) -> Shard:
    """``argparse`` type for ``--shard``."""
    try:
        return parse_shard(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
