"""The receiver desk in a real browser (Debian's chromium via Playwright), against the lab in
execute mode: approve a job, watch it run to success; a form from another site is refused."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Page, Route

from vmm_cert_exporter.config import load_config
from vmm_cert_exporter.receiver.service import Receiver, start_receiver
from vmm_cert_lab.fleet.runner import RunningLab
from vmm_cert_lab.fleet.scenario import lab_host
from vmm_cert_lab.receiver_config import desk_user, write_lab_receiver_config
from vmm_cert_lab.receiver_testing import TOKEN, alert, auth, http, payload

pytestmark = pytest.mark.e2e

ALICE = ("alice", "alice-desk-password")


@pytest.fixture
def receiver(lab: RunningLab, tmp_path: Path) -> Iterator[Receiver]:
    """Execute mode against the lab, every job waiting for approval, alice a desk user."""
    path = write_lab_receiver_config(
        lab,
        tmp_path / "receiver.yml",
        token=TOKEN,
        receiver={
            "require_approval": True,
            "desk_users": [desk_user(tmp_path, *ALICE)],
        },
        # beside a browser on two busy cores, the lab may answer slowly
        winrm={"timeout": "30s"},
        collection={"interval": "1h"},
    )
    running = start_receiver(load_config(path), poll_interval=0.05)
    try:
        assert running.inventory.loaded.wait(30)
        yield running
    finally:
        running.stop()


def _alert(receiver: Receiver, host: str) -> int:
    body = json.dumps(payload(alert(host))).encode()
    status, answer = http("POST", receiver.url + "/alertmanager", body, auth())
    assert status == 200, answer
    job_id = int(answer["alerts"][0]["job_id"])
    deadline = time.monotonic() + 30
    while (job := receiver.journal.get(job_id)) is None or job.status != "waiting":
        assert time.monotonic() < deadline, job
        time.sleep(0.05)
    return job_id


def _status(page: Page) -> str:
    return page.locator(".job-status .status").inner_text()


def test_approve_in_the_desk_runs_the_job_to_success_without_javascript(
    receiver: Receiver, browser_page: Callable[..., Page]
) -> None:
    host = lab_host("hv36")
    job_id = _alert(receiver, host)
    page = browser_page(javascript=False, http_credentials=ALICE)
    response = page.goto(receiver.url + "/")
    assert response is not None and response.status == 200
    assert page.title() == "Renewal desk"
    assert page.locator("#banner .mode").inner_text() == "EXECUTE"
    assert "RUNNING" in page.locator("#pause").inner_text()
    first = page.locator("#jobs tbody tr").first
    assert first.get_attribute("data-job") == str(job_id)
    assert first.locator(".status").inner_text() == "awaiting approval"
    assert host in first.inner_text()

    first.get_by_role("button", name="Approve").click()
    assert page.url == f"{receiver.url}/jobs/{job_id}"
    deadline = time.monotonic() + 60
    while _status(page) != "succeeded":
        assert _status(page) != "failed", page.locator(".job-status").inner_text()
        assert time.monotonic() < deadline, _status(page)
        time.sleep(0.2)
        page.reload()
    assert page.locator("#steps tbody tr").count() == 4
    assert "verify" in page.locator("#steps").inner_text()
    before = page.locator("#certificates-before tbody tr td:first-child").all_inner_texts()
    after = page.locator("#certificates-after tbody tr td:first-child").all_inner_texts()
    assert before and after and set(before).isdisjoint(after)  # a new certificate
    assert "by alice at" in page.locator("#job").inner_text()
    assert page.locator("#next-attempt").inner_text() == "none: finished"

    page.get_by_role("link", name="← all jobs").click()
    row = page.locator(f'#jobs tr[data-job="{job_id}"]')
    assert row.locator(".status").inner_text() == "succeeded"
    assert "approved by alice" in page.locator("table.events").inner_text()


def test_a_form_from_another_site_is_refused_and_changes_nothing(
    receiver: Receiver, browser_page: Callable[..., Page]
) -> None:
    job_id = _alert(receiver, lab_host("hv37"))
    page = browser_page(http_credentials=ALICE)
    page.goto(receiver.url + f"/jobs/{job_id}")
    token = page.locator('input[name="csrf_token"]').first.get_attribute("value")
    assert token
    action = f"{receiver.url}/jobs/{job_id}/approve"
    with_token = f'<input type="hidden" name="csrf_token" value="{token}">'
    forms = {"": "another site", with_token: "another site"}

    def attacker(route: Route) -> None:
        fields = route.request.url.rsplit("/", 1)[1]
        route.fulfill(
            content_type="text/html",
            body=f'<form method="post" action="{action}">{list(forms)[int(fields)]}'
            '<button type="submit">win a prize</button></form>',
        )

    # another site's page posting to the desk while alice's credentials are cached in the
    # browser: without the token, and even with it (as if it had leaked)
    page.route("http://attacker.invalid/**", attacker)
    for number, reason in enumerate(forms.values()):
        page.goto(f"http://attacker.invalid/{number}")
        with page.expect_navigation():
            page.get_by_role("button", name="win a prize").click()
        message = page.locator("#message").inner_text()
        assert "refused, nothing was changed" in message and reason in message, message
    # the desk's own origin without the token: refused too
    page.goto(receiver.url + f"/jobs/{job_id}")
    page.evaluate("document.querySelectorAll('input[name=csrf_token]').forEach(i => i.remove())")
    page.get_by_role("button", name="Approve").click()
    assert "carries no csrf_token" in page.locator("#message").inner_text()
    job = receiver.journal.get(job_id)
    assert job is not None and job.approved_at is None and job.status == "waiting"
    # the desk's own button, same browser, same credentials, works
    page.goto(receiver.url + f"/jobs/{job_id}")
    page.get_by_role("button", name="Cancel").click()
    assert page.locator(".job-status .status").inner_text() == "cancelled"
