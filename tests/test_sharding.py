"""--shard K/N: an exact split (no overlap, no gap), stable when computers are added."""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import socket
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from vmm_cert_exporter.cli import build_parser
from vmm_cert_exporter.collection import Refresher
from vmm_cert_exporter.config import load_config
from vmm_cert_exporter.inventory import Computer, Inventory
from vmm_cert_exporter.sharding import Shard, owner, parse_shard, shard_argument
from vmm_cert_lab.fleet.runner import RunningLab
from vmm_cert_lab.processes import EXPORTER, Processes
from vmm_cert_lab.promstack import Promtool

ROOT = Path(__file__).resolve().parents[1]
FLEET = [f"hv{i:05d}.corp.example" for i in range(20_000)]


def split(names: list[str], total: int) -> list[set[str]]:
    parts: list[set[str]] = [set() for _ in range(total)]
    for name in names:
        for k in range(total):
            if Shard(k, total).owns(name):
                parts[k].add(name)
    return parts


@pytest.mark.parametrize("total", [1, 2, 3, 5, 8])
def test_every_computer_has_exactly_one_shard(total: int) -> None:
    parts = split(FLEET[:5000], total)
    assert sum(len(p) for p in parts) == 5000  # no overlap ...
    assert set().union(*parts) == set(FLEET[:5000])  # ... and no gap
    # and the shares are even: within 15% of 1/N each
    for part in parts:
        assert abs(len(part) - 5000 / total) < 0.15 * 5000 / total


def test_adding_computers_never_moves_the_others() -> None:
    before = {name: owner(name, 4) for name in FLEET[:10_000]}
    owner.cache_clear()
    after = {name: owner(name, 4) for name in FLEET}  # 10,000 more computers
    assert all(after[name] == shard for name, shard in before.items())


def test_adding_a_shard_moves_only_about_one_in_n_plus_one_and_only_to_it() -> None:
    names = FLEET[:10_000]
    moved = [n for n in names if owner(n, 4) != owner(n, 5)]
    assert all(owner(n, 5) == 4 for n in moved)  # only to the new shard
    assert abs(len(moved) / len(names) - 1 / 5) < 0.03


@given(st.from_regex(r"[a-z][a-z0-9-]{0,20}\.[a-z]{2,10}\.example", fullmatch=True))
@settings(max_examples=200, deadline=None)
def test_spelling_does_not_matter(name: str) -> None:
    assert owner(name, 7) == owner(name.upper(), 7)


def test_the_assignment_is_fixed_across_versions() -> None:
    """blake2b-64 rendezvous of "<k>:<fqdn>", reproducible by other tools; never change it."""

    def reference(name: str, total: int) -> int:
        key = name.lower().encode()
        scores = [
            int.from_bytes(hashlib.blake2b(f"{k}:".encode() + key, digest_size=8).digest(), "big")
            for k in range(total)
        ]
        return scores.index(max(scores))

    names = [f"hv{i:02d}.corp.example" for i in range(1, 13)]
    assert [owner(n, 3) for n in names] == [1, 2, 1, 0, 2, 2, 0, 0, 1, 2, 1, 2]
    for n in FLEET[:2000]:
        assert owner(n, 7) == reference(n, 7)


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("3", "expected K/N"),
        ("auto", "expected K/N or auto/N"),
        ("auto/x", "expected K/N or auto/N"),
        ("a/3", "expected K/N"),
        ("3/3", "K must be from 0 to N-1 (2)"),
        ("-1/3", "expected K/N"),
        ("0/0", "N must be from 1"),
        ("0/5000", "N must be from 1 to 1024"),
    ],
)
def test_bad_shard_arguments(text: str, error: str) -> None:
    with pytest.raises(ValueError, match=error.replace("(", r"\(").replace(")", r"\)")):
        parse_shard(text)
    with pytest.raises(argparse.ArgumentTypeError):
        shard_argument(text)


@pytest.mark.parametrize(
    ("host", "total", "index"),
    [
        ("x-0", 3, 0),
        ("x-2", 3, 2),
        ("vmm-cert-exporter-11", 12, 11),
        ("vmm-cert-exporter-1.vmm-cert-exporter.monitoring.svc.cluster.local", 2, 1),
        ("single-0", 1, 0),
    ],
)
def test_auto_takes_k_from_the_host_names_ordinal(host: str, total: int, index: int) -> None:
    assert parse_shard(f"auto/{total}", hostname=lambda: host) == Shard(index, total)


@pytest.mark.parametrize(
    ("host", "error"),
    [
        ("exporter", "'exporter' does not end in -<number>; give --shard K/3 instead"),
        ("x-", "does not end in -<number>"),
        ("x-01", "does not end in -<number>"),  # a StatefulSet never pads its ordinals
        ("x3", "does not end in -<number>"),
        ("x-3", "'x-3' gives shard 3, but auto/3 has shards 0 to 2"),
        ("x-1a.corp-2", "does not end in -<number>"),  # the first label only
    ],
)
def test_auto_refuses_a_host_name_without_a_fitting_ordinal(host: str, error: str) -> None:
    with pytest.raises(ValueError, match=error.replace("(", r"\(").replace(")", r"\)")):
        parse_shard("auto/3", hostname=lambda: host)


def test_auto_reads_this_machines_host_name() -> None:
    # whatever this machine is called, auto/N agrees with its trailing ordinal or refuses
    host = socket.gethostname()
    label = host.split(".")[0]
    tail = label.rsplit("-", 1)[-1]
    if "-" in label and tail.isdigit() and (tail == "0" or not tail.startswith("0")):
        assert parse_shard(f"auto/{int(tail) + 1}") == Shard(int(tail), int(tail) + 1)
    else:
        with pytest.raises(ValueError, match="does not end in -<number>"):
            parse_shard("auto/3")


def test_cli_accepts_shard_on_serve_and_check() -> None:
    parser = build_parser()
    args = parser.parse_args(["serve", "--config", "x.yml", "--shard", "1/3"])
    assert args.shard == Shard(1, 3)
    args = parser.parse_args(["check", "--config", "x.yml", "--shard", "0/2"])
    assert args.shard == Shard(0, 2)
    assert parser.parse_args(["serve", "--config", "x.yml"]).shard is None


def test_select_keeps_the_vmm_views() -> None:
    inventory = Inventory(
        computers=tuple(Computer(n, "hyperv_host") for n in FLEET[:100]), vmm_views={}
    )
    kept = Shard(0, 2).select(inventory)
    assert {c.fqdn for c in kept.computers} == {n for n in FLEET[:100] if owner(n, 2) == 0}


def test_shards_of_a_lab_fleet_read_it_exactly_once(lab: RunningLab, tmp_path: Path) -> None:
    """Three refreshers with --shard k/3 over the demo fleet: together, every computer once."""
    config = load_config(lab.write_config(tmp_path / "exporter.yml"))
    everything = {h.computer.key for h in Refresher(config).refresh_once().hosts}
    seen: list[str] = []
    for k in range(3):
        snapshot = Refresher(config, shard=Shard(k, 3)).refresh_once()
        assert all(h.last_ok or h.last_error_reason for h in snapshot.hosts)
        seen += [h.computer.key for h in snapshot.hosts]
    assert len(seen) == len(set(seen)) == len(everything)
    assert set(seen) == everything
    # the VMM server's own certificate belongs to exactly one shard
    assert seen.count(lab.vmm_servers[0].lower()) == 1


def test_example_prometheus_config_passes_promtool(promtool: Promtool) -> None:
    path = ROOT / "deploy" / "prometheus-sharded.yml"
    result = promtool.run("check", "config", str(path))
    assert result.returncode == 0, result.stdout
    jobs = yaml.safe_load(path.read_text())["scrape_configs"]
    shard_jobs = [j for j in jobs if j["job_name"].startswith("vmm-cert-exporter-shard-")]
    assert len(shard_jobs) == 3
    assert len({j["static_configs"][0]["targets"][0] for j in shard_jobs}) == 3


@pytest.mark.e2e
def test_auto_shards_named_like_statefulset_pods_read_a_2000_computer_lab_once(
    make_lab, processes: Processes, tmp_path: Path
) -> None:
    """Three real ``check --shard auto/3`` processes, each in a UTS namespace of its own whose
    host name is x-0, x-1 or x-2 (as a StatefulSet names its pods): every computer of a
    2,000-computer lab once among them."""
    unshare = shutil.which("unshare")
    assert unshare is not None, "unshare (util-linux) is needed to give a process a host name"
    lab = make_lab(hosts=2000)
    config = lab.write_config(tmp_path / "exporter.yml")
    started = []
    for k in range(3):
        # the host name is set in the new namespace, then the exporter replaces the shell
        script = f'hostname "x-{k}" && exec "$0" "$@"'
        started.append(
            processes.start(
                unshare,
                "--uts",
                "sh",
                "-c",
                script,
                EXPORTER,
                "check",
                "--config",
                str(config),
                "--shard",
                "auto/3",
                "--json",
                "--log.level=warn",
            )
        )
    seen: list[str] = []
    for k, process in enumerate(started):
        out, err = process.communicate(timeout=240)
        assert process.returncode in (0, 1, 2), f"x-{k}: {process.returncode}\n{err[-3000:]}"
        hosts = [row["host"] for row in json.loads(out)["computers"]]
        assert hosts, f"x-{k} read nothing"
        seen += hosts
    everything = {c["fqdn"].lower() for c in lab.model.list_computers()}
    assert len(seen) == len(set(seen)) == len(everything) > 2000  # and the VMM server
    assert set(seen) == everything
