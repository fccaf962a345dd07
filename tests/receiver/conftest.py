"""Fixtures for the renewal receiver tests: a demo lab per test (counting every script it
receives) and harnesses on it. Helpers live in ``vmm_cert_lab.receiver_testing``."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from vmm_cert_exporter.receiver.service import Receiver, start_receiver
from vmm_cert_lab.fleet.runner import RunningLab
from vmm_cert_lab.fleet.scenario import load_fleet
from vmm_cert_lab.receiver_testing import CountingFleet, Harness, make_harness, receiver_config


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """Commands run in-process call setup_logging (a handler on the captured stderr); put
    the root logger back so later threads do not log into a closed capture."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture
def lab(make_lab: Callable[..., RunningLab]) -> RunningLab:
    """The demo lab, fresh for each test (renewals change it), counting what it is sent."""
    return make_lab(fleet=CountingFleet(load_fleet("demo")))


@pytest.fixture
def ha_lab(make_lab: Callable[..., RunningLab]) -> RunningLab:
    """The ``ha`` lab, fresh for each test: a highly available VMM 2022, a highly available
    VMM 2019 UR1 without Update-SCVMMCertificate, and a VMM 2022 configured by an alias."""
    return make_lab(fleet=CountingFleet(load_fleet("ha")))


@pytest.fixture
def ha_harness(ha_lab: RunningLab, tmp_path: Path) -> Iterator[Harness]:
    harness = make_harness(ha_lab, tmp_path / "ha-receiver")
    yield harness
    harness.close()


@pytest.fixture
def harness_factory(lab: RunningLab, tmp_path: Path) -> Iterator[Callable[..., Harness]]:
    made: list[Harness] = []

    def make(**kwargs: Any) -> Harness:
        harness = make_harness(lab, tmp_path / f"receiver{len(made)}", **kwargs)
        made.append(harness)
        return harness

    yield make
    for harness in made:
        harness.close()


@pytest.fixture
def harness(harness_factory: Callable[..., Harness]) -> Harness:
    """Execute mode, defaults otherwise (backoff 1h..32h, cooldown 6h), fake clock at now."""
    return harness_factory()


@pytest.fixture
def start(lab: RunningLab, tmp_path: Path) -> Iterator[Callable[..., Receiver]]:
    """``start(**receiver_keys)``: a running receiver (HTTP, engine, discovery) on this test's
    lab, its inventory loaded; stopped when the test ends."""
    started: list[Receiver] = []

    def make(**receiver: Any) -> Receiver:
        directory = tmp_path / f"r{len(started)}"
        directory.mkdir()
        config = receiver_config(lab, directory, interval="1h", **receiver)
        running = start_receiver(config, poll_interval=0.05)
        assert running.inventory.loaded.wait(30)
        started.append(running)
        return running

    yield make
    for running in started:
        running.stop()
