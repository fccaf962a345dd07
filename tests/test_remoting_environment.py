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


def test_sessions_built_in_parallel_never_race_on_the_environment(tmp_path: Path) -> None:
    """requests' proxy lookup sets and restores os.environ['no_proxy'] around itself: two
    threads building sessions at once restored each other's value away (KeyError) until
    building was serialised. A tiny switch interval makes the interleaving likely."""
    import sys
    import threading

    (tmp_path / "pw").write_text("x")
    (tmp_path / "pw").chmod(0o600)
    (tmp_path / "c.yml").write_text(
        "winrm:\n  endpoint: 'https://{host}:5986/wsman'\n  transport: basic\n"
        "  username: x\n  password_file: pw\nhosts: [{host: hv01.corp.example}]\n"
    )
    runner = WinRMRunner(load_config(tmp_path / "c.yml").winrm)
    errors: list[BaseException] = []

    def build() -> None:
        for _ in range(400):
            try:
                runner._protocol("hv01.corp.example", 10).transport.close_session()
            except BaseException as exc:
                errors.append(exc)
                return

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        threads = [threading.Thread(target=build) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(interval)
    assert errors == []
