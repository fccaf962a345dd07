"""A real Alertmanager (Debian's prometheus-alertmanager) delivers to the receiver.

``amtool alert add`` stands in for Prometheus: Alertmanager groups the alert, POSTs its
webhook (version 4) with the bearer token from ``http_config.authorization``, and the
receiver, in execute mode against the lab, renews hv36. A hostile alert sent the same way
is rejected and changes nothing.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml

from vmm_cert_exporter.receiver.service import start_receiver
from vmm_cert_lab.fleet.runner import RunningLab
from vmm_cert_lab.fleet.scenario import LAB_DOMAIN, lab_host
from vmm_cert_lab.promstack import Tool, start_alertmanager
from vmm_cert_lab.receiver_testing import TOKEN, fleet_of, receiver_config


@pytest.mark.e2e
def test_alertmanager_webhook_renews_the_host(
    lab: RunningLab, tmp_path: Path, amtool: Tool
) -> None:
    config = receiver_config(lab, tmp_path, mode="execute", interval="1h")
    receiver = start_receiver(config, poll_interval=0.1)
    token = tmp_path / "am-token"
    token.write_text(TOKEN)
    token.chmod(0o600)
    am_config = tmp_path / "alertmanager.yml"
    am_config.write_text(
        yaml.safe_dump(
            {
                "route": {
                    "receiver": "vmm-cert-renewal",
                    "group_by": ["alertname", "host"],
                    "group_wait": "1s",
                    "group_interval": "5s",
                    "repeat_interval": "1h",
                },
                "receivers": [
                    {
                        "name": "vmm-cert-renewal",
                        "webhook_configs": [
                            {
                                "url": receiver.url + "/alertmanager",
                                "send_resolved": True,
                                "http_config": {
                                    "authorization": {
                                        "type": "Bearer",
                                        "credentials_file": str(token),
                                    }
                                },
                            }
                        ],
                    }
                ],
            }
        )
    )
    alertmanager = start_alertmanager(am_config, tmp_path)
    try:
        assert receiver.inventory.loaded.wait(30)

        def alert(*args: str) -> None:
            added = amtool.run(f"--alertmanager.url={alertmanager.url}", "alert", "add", *args)
            assert added.returncode == 0, added.stdout

        alert("VMMCertificateExpiringCritical", f"host=hv36.{LAB_DOMAIN}", "severity=critical")
        alert("VMMCertificateExpired", f"host=hv37.{LAB_DOMAIN}'; Stop-Computer #")
        deadline = time.monotonic() + 60
        job = None
        while time.monotonic() < deadline:
            jobs = receiver.journal.list_jobs()
            rejected = receiver.journal.rejected_alerts()
            if jobs and not jobs[0].active and rejected:
                job = jobs[0]
                break
            time.sleep(0.2)
        assert job is not None, alertmanager.log_tail()
        assert (job.host, job.status) == (lab_host("hv36"), "succeeded"), job.reason
        described = lab.model.describe(lab_host("hv36"))
        certs = [c for c in described["certificates"] if c["scvmm"]]
        year = int(lab.model.clock_info()["now"][:4])
        assert len(certs) == 1 and certs[0]["not_after"].startswith(f"{year + 5}-01-01")
        assert described["trusted"]["matches"] is True
        alerts = receiver.journal.job_alerts(job.id)
        assert alerts[0]["alertname"] == "VMMCertificateExpiringCritical"
        assert len(alerts[0]["fingerprint"]) == 16
        assert "not a plain FQDN" in rejected[0]["reason"]
        assert len(receiver.journal.list_jobs()) == 1
        assert fleet_of(lab).count("remove-certificates", lab_host("hv37")) == 0
        assert receiver.app.webhooks.snapshot()["unauthorized"] == 0
    finally:
        alertmanager.stop()
        receiver.stop()
