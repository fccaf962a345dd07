"""The pages as a browser shows them: Debian's chromium, headless, driven by Playwright."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from playwright.sync_api import Page

from vmm_cert_lab.fleet.runner import RunningLab
from vmm_cert_lab.fleet.scenario import lab_host
from vmm_cert_lab.processes import Processes


@pytest.mark.e2e
@pytest.mark.parametrize("javascript", [True, False], ids=["js", "no-js"])
def test_landing_page_lists_the_fleet(
    demo_lab: RunningLab,
    tmp_path: Path,
    processes: Processes,
    browser_page: Callable[..., Page],
    javascript: bool,
) -> None:
    config = demo_lab.write_config(tmp_path / "c.yml")
    exporter = processes.exporter("serve", "--config", str(config), listen=True)
    exporter.wait_ready()
    page = browser_page(javascript=javascript)
    response = page.goto(f"{exporter.url}/")
    assert response is not None and response.status == 200
    assert page.title() == "vmm-cert-exporter"
    hosts = page.locator("table.computers tbody tr td:first-child").all_text_contents()
    assert lab_host("hv01") in hosts and lab_host("hv38") in hosts
