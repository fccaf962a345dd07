"""A real Prometheus scrapes the exporter (running against the demo lab) and answers queries."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from vmm_cert_exporter.config import load_config
from vmm_cert_exporter.serve import Exporter, start_exporter
from vmm_cert_lab.fleet.runner import start_lab
from vmm_cert_lab.fleet.scenario import lab_host
from vmm_cert_lab.processes import Process
from vmm_cert_lab.promstack import Promtool, start_prometheus

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Exporter, Process]]:
    work = tmp_path_factory.mktemp("e2e")
    with start_lab(scenario="demo", state_dir=work / "lab") as lab:
        config = load_config(lab.write_config(work / "exporter.yml"))
        exporter = start_exporter(config, "127.0.0.1:0")
        try:
            assert exporter.refresher.wait_first(timeout=60)
            target = exporter.url.removeprefix("http://")
            prom_cfg = work / "prometheus.yml"
            prom_cfg.write_text(
                yaml.safe_dump(
                    {
                        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                        "scrape_configs": [
                            {
                                "job_name": "vmm-cert-exporter",
                                "static_configs": [{"targets": [target]}],
                            }
                        ],
                    }
                )
            )
            prometheus = start_prometheus(prom_cfg, work)
            try:
                yield exporter, prometheus
            finally:
                prometheus.stop()
        finally:
            exporter.stop()


def query(
    promtool: Promtool, prometheus: Process, expr: str, timeout: float = 30.0
) -> list[dict[str, Any]]:
    """``promtool query instant`` until it returns data (the first scrape takes a moment)."""
    deadline = time.monotonic() + timeout
    while True:
        data = promtool.query(prometheus.url, expr)
        if data or time.monotonic() > deadline:
            return data
        time.sleep(0.5)


def hosts(data: list[dict[str, object]]) -> set[str]:
    return {str(item["metric"]["host"]) for item in data}  # type: ignore[index]


def test_prometheus_scrapes_every_case(stack: tuple[Exporter, Process], promtool: Promtool) -> None:
    _, prometheus = stack
    assert hosts(query(promtool, prometheus, "vmm_cert_expiry_seconds < 0")) == {lab_host("hv37")}
    assert hosts(query(promtool, prometheus, "vmm_cert_expiry_seconds > 0 < 7*86400")) == {
        lab_host("hv36")
    }
    assert hosts(query(promtool, prometheus, "vmm_cert_expiry_seconds > 7*86400 < 30*86400")) == {
        *(lab_host(f"hv{n}") for n in range(31, 36)),
        lab_host("vmm01"),
    }
    assert hosts(query(promtool, prometheus, "vmm_cert_present == 0")) == {lab_host("hv38")}
    assert hosts(query(promtool, prometheus, "vmm_cert_trusted == 0")) == {lab_host("hv39")}
    assert hosts(query(promtool, prometheus, "vmm_cert_certificates > 1")) == {lab_host("hv41")}
    assert hosts(query(promtool, prometheus, "vmm_cert_collect_success == 0")) == {lab_host("hv40")}
    up = query(promtool, prometheus, 'up{job="vmm-cert-exporter"}')
    assert up and up[0]["value"][1] == "1"
