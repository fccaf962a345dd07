"""``make demo``: every link it prints answers 200 with something useful, and the command it
prints for Alertmanager (whose Debian package has no web UI) runs."""

from __future__ import annotations

import base64
import re
import shlex
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from vmm_cert_lab.fleet.scenario import lab_host
from vmm_cert_lab.processes import Processes

# what each printed link must show: the label the demo prints -> a text the page contains
USEFUL = {
    "exporter overview": lab_host("hv01"),
    "metrics": f'vmm_cert_expiry_seconds{{host="{lab_host("hv01")}"',
    "Prometheus alerts": "VMMCertificateExpired",
    "renewal desk": "Renewal desk",
    "renewal API": '"jobs"',
    "lab control API": lab_host("hv01"),
}
_URL = re.compile(r"https?://[^\s)]+")


def _fetch(url: str, headers: dict[str, str]) -> tuple[int, str]:
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode("utf-8", "replace")


@pytest.mark.e2e
def test_every_link_make_demo_prints_answers(tmp_path: Path, processes: Processes) -> None:
    log = tmp_path / "demo.log"
    demo = processes.exporter("demo", cwd=tmp_path, log=log)

    def printed() -> str | None:
        text = log.read_text(errors="replace")
        start = text.find("vmm-cert-exporter demo is running")
        end = text.find("  configuration", start)
        return text[start : text.find("\n", end)] if start >= 0 and end >= 0 else None

    demo.wait_until(printed, "the demo to print its links", timeout=180)
    block = printed()
    assert block is not None
    links: dict[str, str] = {}
    commands: list[str] = []
    for line in block.splitlines()[1:]:
        if line.strip().startswith("$ "):
            commands.append(line.strip()[2:])
            continue
        match = _URL.search(line)
        if match:
            links[line[: match.start()].strip()] = match.group(0)
    assert set(links) == set(USEFUL), block
    assert links["Prometheus alerts"].endswith("/alerts"), block

    user, password = re.search(r"user (\S+), password (\S+);", block).groups()  # type: ignore[union-attr]
    token_file = re.search(r"the token in (\S+)\)", block).group(1)  # type: ignore[union-attr]
    basic = base64.b64encode(f"{user}:{password}".encode()).decode()
    credentials = {
        "renewal desk": {"Authorization": f"Basic {basic}"},
        "renewal API": {"Authorization": f"Bearer {Path(token_file).read_text().strip()}"},
    }
    for label, url in links.items():
        status, body = _fetch(url, credentials.get(label, {}))
        assert status == 200, (label, url, status, body[:300])
        assert USEFUL[label] in body, (label, url, body[:500])

    # Debian's Alertmanager has no UI: the printed amtool command asks it for its alerts
    # (which fire only after the demo's first minute: the closed-loop test covers that)
    assert len(commands) == 1 and "amtool alert query --alertmanager.url=http" in commands[0]
    result = subprocess.run(
        shlex.split(commands[0]), capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 0 and "Alertname" in result.stdout, result
    demo.stop()
    assert demo.returncode == 0, demo.log_tail()
