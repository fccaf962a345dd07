"""``make screenshots``: the README's pictures of the exporter's landing page and the renewal
desk, taken by Debian's chromium (Playwright, never a browser download) from the demo.

Runs what ``make demo`` runs (the demo lab, the exporter, the receiver in execute mode and,
when installed, Prometheus and Alertmanager) with short alert durations, waits until the
closed loop has renewed the hosts whose alerts fired, and writes ``landing.png`` and
``desk.png`` into the directory given (``docs/images``).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

from playwright.sync_api import sync_playwright

from vmm_cert_exporter.receiver.journal import Journal
from vmm_cert_exporter.rules import FOR_DURATIONS
from vmm_cert_lab.demo import DEMO_DESK_PASSWORD, DEMO_DESK_USER, Stack, running_stack

VIEWPORT = {"width": 1280, "height": 900}
# enough renewals for the desk to show a realistic day; the demo renews ten hosts
RENEWALS = 8
TIMEOUT = 240.0


def _settled(journal: Journal) -> bool:
    jobs = journal.list_jobs(limit=1000)
    done = sum(1 for j in jobs if j.status == "succeeded")
    return done >= RENEWALS and not any(j.status in ("running", "planned") for j in jobs)


def _wait_for_renewals(stack: Stack) -> None:
    assert stack.receiver is not None
    deadline = time.monotonic() + TIMEOUT
    while not _settled(stack.receiver.journal):
        if time.monotonic() > deadline:
            print(f"still renewing after {TIMEOUT:g}s: taking the pictures as they are")
            return
        time.sleep(1.0)


def take(target: Path) -> None:
    chromium = shutil.which("chromium")
    if chromium is None:
        sys.exit("no chromium on PATH: `make tools` installs Debian's chromium")
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="screenshots-") as workdir:
        with running_stack(
            Path(workdir),
            interval="10s",
            scrape_interval="1s",
            for_durations=dict.fromkeys(FOR_DURATIONS, "3s"),
            preferred_ports=False,
        ) as stack:
            stack.exporter.refresher.wait_first(timeout=120)
            _wait_for_renewals(stack)
            assert stack.receiver is not None
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=chromium, headless=True)
                try:
                    pages = (
                        ("landing.png", f"{stack.exporter.url}/", None),
                        (
                            "desk.png",
                            f"{stack.receiver.url}/",
                            {"username": DEMO_DESK_USER, "password": DEMO_DESK_PASSWORD},
                        ),
                    )
                    for name, url, credentials in pages:
                        context = browser.new_context(
                            viewport=VIEWPORT,  # type: ignore[arg-type]
                            http_credentials=credentials,  # type: ignore[arg-type]
                        )
                        page = context.new_page()
                        response = page.goto(url)
                        if response is None or response.status != 200:
                            sys.exit(f"{url} did not answer 200")
                        page.screenshot(path=target / name)
                        context.close()
                        print(f"wrote {target / name}")
                finally:
                    browser.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("target", type=Path, nargs="?", default=Path("docs/images"))
    take(parser.parse_args().target)


if __name__ == "__main__":
    main()
