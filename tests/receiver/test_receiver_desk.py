"""The receiver desk over real HTTP: who may see it, what it shows, and that only its own
forms, carrying the signed-in user's CSRF token, change anything."""

from __future__ import annotations

import base64
import http.client as httpclient
import json
import re
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlencode, urlsplit

import pytest

from vmm_cert_exporter.config import load_config
from vmm_cert_exporter.config_file import ConfigError
from vmm_cert_exporter.receiver.service import Receiver, start_receiver
from vmm_cert_lab.fleet.runner import RunningLab
from vmm_cert_lab.fleet.scenario import lab_host
from vmm_cert_lab.receiver_config import desk_user
from vmm_cert_lab.receiver_testing import alert, auth, http, new_job, payload, receiver_config

ALICE, BOB = ("alice", "alice-desk-password"), ("bob", "bob-desk-password")


def basic(user: tuple[str, str]) -> dict[str, str]:
    token = base64.b64encode(f"{user[0]}:{user[1]}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def request(
    receiver: Receiver,
    method: str,
    path: str,
    *,
    user: tuple[str, str] | None = ALICE,
    form: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], str]:
    """One request, redirects not followed: (status, headers, body)."""
    parts = urlsplit(receiver.url)
    conn = httpclient.HTTPConnection(parts.hostname or "", parts.port, timeout=15)
    sent = dict(basic(user) if user else {})
    body = None
    if form is not None:
        body = urlencode(form).encode()
        sent["Content-Type"] = "application/x-www-form-urlencoded"
    sent.update(headers or {})
    try:
        conn.request(method, path, body=body, headers=sent)
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read().decode()
    finally:
        conn.close()


def token_of(page: str) -> str:
    match = re.search(r'name="csrf_token" value="([0-9a-f]+)"', page)
    assert match is not None, "the page has no form"
    return match.group(1)


@pytest.fixture
def desk_users(tmp_path: Path) -> list[dict[str, str]]:
    """alice and bob, as ``receiver.desk_users`` entries."""
    return [desk_user(tmp_path, *ALICE), desk_user(tmp_path, *BOB)]


def wait_for(receiver: Receiver, job_id: int, status: str, timeout: float = 30.0) -> None:
    """Wait until the job has ``status`` and is settled there: a new job is already
    ``planned``, so a dry run's ``planned`` only counts once the job is finished."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = receiver.journal.get(job_id)
        if job is not None and job.status == status:
            if status != "planned" or job.finished_at is not None:
                return
        time.sleep(0.05)
    raise TimeoutError(receiver.journal.get(job_id))


def test_desk_signs_in_shows_the_banner_and_escapes_what_hosts_and_webhooks_sent(
    start: Callable[..., Receiver], desk_users: list[dict[str, str]]
) -> None:
    receiver = start(require_approval=True, desk_users=desk_users)
    status, headers, page = request(receiver, "GET", "/", user=None)
    assert status == 401 and headers["WWW-Authenticate"].startswith("Basic realm=")
    assert request(receiver, "GET", "/", user=("alice", "wrong"))[0] == 401
    assert request(receiver, "GET", "/", user=("mallory", "x"))[0] == 401
    # while a bcrypt runs, a new sign-in is told to retry instead of holding a handler thread;
    # credentials already checked are not
    with receiver.app.desk._bcrypt:
        status, headers, _ = request(receiver, "GET", "/", user=("mallory", "y"))
        assert status == 429 and headers["Retry-After"] == "1"
        assert request(receiver, "GET", "/", user=("alice", "wrong"))[0] == 401
    # a hostile label, refused (no such host), comes back escaped
    hostile = '<script>alert("x")</script>.lab.example'
    status, _ = http("POST", receiver.url + "/alertmanager", _payload(hostile), auth())
    assert status == 200
    status, headers, page = request(receiver, "GET", "/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert "script-src" not in headers["Content-Security-Policy"]  # no script runs at all
    assert "<script" not in page and "&lt;script&gt;alert(&quot;x&quot;)" in page
    assert "signed in as <b>alice</b>" in page
    assert "EXECUTE" in page and "RUNNING" in page and "required for every job" in page
    assert "<code>*.lab.example</code>" in page  # the allowlist
    assert "43 computers" in page
    # the stylesheet is the package's own, served without credentials
    status, headers, css = request(receiver, "GET", "/desk.css", user=None)
    assert status == 200 and headers["Content-Type"].startswith("text/css") and "body" in css
    # the receiver's own token is accepted too (curl), and the API is unchanged
    assert request(receiver, "GET", "/", user=None, headers=auth())[0] == 200
    assert http("GET", receiver.url + "/api/jobs", headers=basic(ALICE))[0] == 401


def _payload(*hosts: str) -> bytes:
    alerts = [alert(h, fingerprint=f"{i + 1:016x}") for i, h in enumerate(hosts)]
    return json.dumps(payload(*alerts)).encode()


def test_approve_from_the_desk_runs_the_job_and_journals_who(
    start: Callable[..., Receiver], desk_users: list[dict[str, str]]
) -> None:
    receiver = start(require_approval=True, desk_users=desk_users)
    status, answer = http(
        "POST", receiver.url + "/alertmanager", _payload(lab_host("hv36"), lab_host("hv37")), auth()
    )
    assert status == 200
    first, second = (a["job_id"] for a in answer["alerts"])
    wait_for(receiver, first, "waiting")
    wait_for(receiver, second, "waiting")
    status, _, page = request(receiver, "GET", "/")
    assert "<b>2</b> awaiting approval" in page
    rows = re.findall(r'<tr class="active" data-job="(\d+)">', page)
    assert rows[:2] == [str(first), str(second)]
    assert page.count("awaiting approval</span>") == 2
    token = token_of(page)

    status, headers, _ = request(
        receiver, "POST", f"/jobs/{first}/approve", form={"csrf_token": token}
    )
    assert status == 303 and headers["Location"] == f"/jobs/{first}"
    wait_for(receiver, first, "succeeded")
    job = receiver.journal.get(first)
    assert job is not None and job.approved_by == "alice"
    assert any(e["message"] == "approved by alice" for e in receiver.journal.events(first))
    status, _, detail = request(receiver, "GET", f"/jobs/{first}")
    assert status == 200 and "succeeded</span>" in detail
    for step in ("preflight", "remove-certificates", "register-managed-computer", "verify"):
        assert f"<td>{step}</td>" in detail
    assert 'id="certificates-before"' in detail and 'id="certificates-after"' in detail
    assert "approved by alice" in detail and "VMMCertificateExpiringCritical" in detail

    # bob cancels the other one with his own token
    bob_token = token_of(request(receiver, "GET", "/", user=BOB)[2])
    status, _, _ = request(
        receiver, "POST", f"/jobs/{second}/cancel", user=BOB, form={"csrf_token": bob_token}
    )
    assert status == 303
    cancelled = receiver.journal.get(second)
    assert cancelled is not None and cancelled.status == "cancelled"
    assert cancelled.reason == "cancelled by bob"
    # a second cancel is a conflict, said in words
    status, _, page = request(
        receiver, "POST", f"/jobs/{second}/cancel", user=BOB, form={"csrf_token": bob_token}
    )
    assert status == 409 and "nothing was changed" in page

    # pause and resume, journaled with who
    status, _, _ = request(receiver, "POST", "/pause", form={"csrf_token": token})
    assert status == 303 and receiver.engine.pause_state().by == "alice"
    page = request(receiver, "GET", "/")[2]
    assert "PAUSED</span> by alice" in page and 'action="/resume"' in page
    request(receiver, "POST", "/resume", user=BOB, form={"csrf_token": bob_token})
    state = receiver.engine.pause_state()
    assert not state.paused and state.by == "bob"


def test_forged_posts_change_nothing_and_say_why(
    start: Callable[..., Receiver], desk_users: list[dict[str, str]]
) -> None:
    receiver = start(require_approval=True, desk_users=desk_users)
    status, answer = http(
        "POST", receiver.url + "/alertmanager", _payload(lab_host("hv36")), auth()
    )
    job_id = answer["alerts"][0]["job_id"]
    wait_for(receiver, job_id, "waiting")
    alice_token = token_of(request(receiver, "GET", "/")[2])
    bob_token = token_of(request(receiver, "GET", "/", user=BOB)[2])
    assert alice_token != bob_token
    path = f"/jobs/{job_id}/approve"
    forged: list[tuple[dict[str, str] | None, dict[str, str], str]] = [
        (None, {}, "carries no csrf_token"),
        ({"csrf_token": ""}, {}, "carries no csrf_token"),
        ({"csrf_token": "0" * 64}, {}, "not valid for alice"),
        ({"csrf_token": bob_token}, {}, "not valid for alice"),
        (
            {"csrf_token": alice_token},
            {"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"},
            "another site (cross-site)",
        ),
        ({"csrf_token": alice_token}, {"Origin": "https://evil.example"}, "evil.example"),
    ]
    for form, headers, reason in forged:
        status, _, page = request(receiver, "POST", path, form=form, headers=headers)
        assert status == 403, (form, headers)
        assert "nothing was changed" in page and reason in page, page
    # a GET never acts
    assert request(receiver, "GET", path)[0] == 404
    status, _, _ = request(receiver, "POST", "/pause", form={"csrf_token": bob_token})
    assert status == 403
    job = receiver.journal.get(job_id)
    assert job is not None and job.approved_at is None and job.status == "waiting"
    assert not receiver.engine.pause_state().paused
    assert not [e for e in receiver.journal.events() if e["kind"] in ("approved", "paused")]
    # the same form from the desk itself is accepted
    status, _, _ = request(
        receiver,
        "POST",
        path,
        form={"csrf_token": alice_token},
        headers={"Origin": receiver.url, "Sec-Fetch-Site": "same-origin"},
    )
    assert status == 303


def test_desk_users_are_bcrypt_hashes(lab: RunningLab, tmp_path: Path) -> None:
    plain = tmp_path / "not-a-hash"
    plain.write_text("hunter2-the-password\n")
    plain.chmod(0o600)
    path = receiver_config(lab, tmp_path).path
    text = Path(path).read_text()
    entry = f"  desk_users:\n  - username: carol\n    password_hash_file: {plain}\n"
    Path(path).write_text(text.replace("receiver:\n", "receiver:\n" + entry, 1))
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    assert "receiver.desk_users[0].password_hash_file" in message
    assert "bcrypt hash" in message and "hunter2" not in message
    # the token's identity in the journal is not a name a person may take
    hashed = desk_user(tmp_path, "x", "a-password")["password_hash_file"]
    entry = f"  desk_users:\n  - username: bearer\n    password_hash_file: {hashed}\n"
    Path(path).write_text(text.replace("receiver:\n", "receiver:\n" + entry, 1))
    with pytest.raises(ConfigError, match=r"desk_users\[0\]\.username: bearer is the identity"):
        load_config(path)


def test_a_thousand_waiting_jobs_page_by_a_hundred_under_200_kb(
    lab: RunningLab, tmp_path: Path
) -> None:
    config = receiver_config(
        lab, tmp_path, require_approval=True, desk_users=[desk_user(tmp_path, *ALICE)]
    )
    receiver = start_receiver(config, background=False)  # no engine: the jobs stay waiting
    try:
        for n in range(1000):
            new_job(receiver.journal, host=f"hv{n:04}.lab.example")
        status, _, page = request(receiver, "GET", "/")
        assert status == 200 and len(page.encode()) < 200_000, len(page.encode())
        assert "<b>1000</b> active jobs, <b>1000</b> awaiting approval" in page
        assert page.count("data-job=") == 100 and "page 1 of 10" in page
        assert 'data-job="1"' in page  # the oldest waiting job first
        status, _, last = request(receiver, "GET", "/?page=10")
        assert status == 200 and "page 10 of 10" in last and 'data-job="1000"' in last
        assert request(receiver, "GET", "/?page=x")[0] == 400
    finally:
        receiver.stop()


def test_a_dry_run_job_page_shows_the_procedure_why_and_the_planned_steps(
    start: Callable[..., Receiver], desk_users: list[dict[str, str]]
) -> None:
    receiver = start(mode="dry-run", desk_users=desk_users)
    status, answer = http(
        "POST", receiver.url + "/alertmanager", _payload(lab_host("hv36")), auth()
    )
    job_id = answer["alerts"][0]["job_id"]
    wait_for(receiver, job_id, "planned")
    page = request(receiver, "GET", "/")[2]
    assert '<span class="mode">DRY-RUN</span>' in page and "changes nothing" in page
    status, _, detail = request(receiver, "GET", f"/jobs/{job_id}")
    assert status == 200
    job = receiver.journal.get(job_id)
    assert job is not None and job.plan is not None
    plan = detail.split('<section id="plan">', 1)[1].split("</section>", 1)[0]
    assert f"<dd>{job.plan['why']}</dd>" in plan and "<dd>remove-register</dd>" in plan
    assert "In execute mode</dt><dd>start at once" in plan
    assert all(f"<li>{p}</li>" in plan for p in job.plan["problems"]) and job.plan["problems"]
    assert 'id="planned-steps"' in plan and "<td>register-managed-computer</td>" in plan
    assert f"/jobs/{job_id}/approve" not in detail  # a dry run has nothing to approve
