"""The exporter's WinRM calls take nothing from the process environment.

Proxy variables and ``REQUESTS_CA_BUNDLE`` never apply (the endpoint and ``ca_trust_path``
say everything), so requests need not look them up on every request.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from vmm_cert_exporter.config import load_config
from vmm_cert_exporter.powershell import render_script
from vmm_cert_exporter.remoting import WinRMRunner
from vmm_cert_lab.fleet.runner import RunningLab

DEAD_PROXY = "http://127.0.0.1:9"  # the discard port: nothing answers there


@pytest.fixture
def tls_lab(make_lab: Callable[..., RunningLab]) -> RunningLab:
    return make_lab(tls=True, tls_listener=False)


def test_calls_ignore_proxy_and_ca_bundle_variables(
    tls_lab: RunningLab, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runner = WinRMRunner(load_config(tls_lab.write_config(tmp_path / "exporter.yml")).winrm)
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.setenv(name, DEAD_PROXY)
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    # a bundle without the lab CA: were it used, validation would fail
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tmp_path / "missing-bundle.pem"))
    monkeypatch.setenv("CURL_CA_BUNDLE", str(tmp_path / "missing-bundle.pem"))
    output = runner.run(tls_lab.vmm_servers[0], render_script("collect-certificates"))
    assert output.exit_code == 0
    assert '"certificates"' in output.stdout
