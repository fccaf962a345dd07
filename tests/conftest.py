"""Fixtures every test shares: the lab, free ports, the exporter's command, promtool, a real
KDC (``kdc``), and one way to start a process, wait for it and stop it
(``vmm_cert_lab.processes``, whose ``wait_until`` is how a test polls for anything).

``tests/lab/conftest.py`` and ``tests/receiver/conftest.py`` override ``lab`` for their own
directories (a light in-test fleet; a demo fleet that counts every script it receives).
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import threading
from collections.abc import Callable, Generator, Iterator, Mapping
from contextlib import AbstractContextManager, ExitStack
from importlib import resources
from pathlib import Path
from typing import Any, Protocol

import pytest
from playwright.sync_api import Browser, Page, sync_playwright
from prometheus_client import CollectorRegistry, generate_latest

from vmm_cert_exporter import kerberos
from vmm_cert_exporter.collection import Refresher
from vmm_cert_exporter.metrics import Exposition, SnapshotCollector
from vmm_cert_lab.fleet.interfaces import Faults
from vmm_cert_lab.fleet.runner import RunningLab, start_lab
from vmm_cert_lab.kdc import KDC
from vmm_cert_lab.processes import ExporterCommand, Processes
from vmm_cert_lab.processes import free_port as _free_port
from vmm_cert_lab.promstack import Promtool, Tool

# A test that requests one of these starts a process: it is end-to-end.
_PROCESS_FIXTURES = frozenset({"processes", "exporter_command", "browser", "browser_page", "kdc"})
# What the built-in scenarios give the lab account; a test may replace it with a canary.
_LAB_PASSWORD_LINE = "password: lab-password"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that starts a process must say so with ``@pytest.mark.e2e``, so that
    ``pytest -m "not e2e"`` stays the fast run; the files of ``long`` tests come first."""
    unmarked = [
        item.nodeid
        for item in items
        if _PROCESS_FIXTURES & set(getattr(item, "fixturenames", ()))
        and item.get_closest_marker("e2e") is None
    ]
    if unmarked:
        raise pytest.UsageError(
            "these tests start processes but are not marked e2e: " + ", ".join(unmarked)
        )
    # a file with a test of minutes goes first: handed out last, it would run alone at the
    # end while the other worker has nothing left (make e2e keeps this order for xdist)
    long_files = {item.path for item in items if item.get_closest_marker("long") is not None}
    items.sort(key=lambda item: item.path not in long_files)


@pytest.fixture(autouse=True)
def _logging_put_back() -> Iterator[None]:
    """A test that runs a command in this process (``main([...])``) sets up logging on the
    stderr pytest captured for that test, a stream closed once the test ends: a thread of a
    later test that logs would then fail on it. Each test leaves the root logger, and the
    thread exception hook, as it found them (pytest's own capture handlers come and go with
    each phase: they are left alone)."""
    root = logging.getLogger()
    before, level, hook = list(root.handlers), root.level, threading.excepthook
    yield
    for handler in list(root.handlers):
        if handler not in before and type(handler) is logging.StreamHandler:
            root.removeHandler(handler)
    root.setLevel(level)
    threading.excepthook = hook


# ---- ports, processes, tools ---------------------------------------------------------------


@pytest.fixture(scope="session")
def free_port() -> Callable[[], int]:
    """``free_port()``: a TCP port on 127.0.0.1 that nothing listens on right now."""
    return _free_port


@pytest.fixture
def processes() -> Iterator[Processes]:
    """``processes.start(*argv)`` or ``processes.exporter(*args, listen=True)``: processes
    stopped when the test ends. A test that uses it is marked ``e2e``."""
    started = Processes()
    try:
        yield started
    finally:
        started.stop_all()


@pytest.fixture(scope="session")
def exporter_command() -> ExporterCommand:
    """``exporter_command.run(*args)``: the installed command, run to completion."""
    return ExporterCommand()


@pytest.fixture(scope="session")
def promtool() -> Promtool:
    return Promtool()


@pytest.fixture(scope="session")
def amtool() -> Tool:
    return Tool("amtool")


# ---- a real browser ------------------------------------------------------------------------

# Debian's chromium (``make tools`` installs it): Playwright drives it, and never downloads one.
_CHROMIUM = "chromium"
_REPORTS = pytest.StashKey[dict[str, pytest.TestReport]]()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item,
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Keep each phase's report on the item, so a fixture knows at teardown that its test
    failed (``browser_page`` then takes screenshots)."""
    report = yield
    item.stash.setdefault(_REPORTS, {})[report.when] = report
    return report


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    """Headless Debian chromium, shared by the session's browser tests."""
    executable = shutil.which(_CHROMIUM)
    if executable is None:
        raise pytest.UsageError("no chromium on PATH: `make tools` installs Debian's chromium")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable, headless=True)
        try:
            yield launched
        finally:
            launched.close()


class BrowserPages(Protocol):
    def __call__(
        self,
        *,
        javascript: bool = True,
        http_credentials: tuple[str, str] | None = None,
        ignore_https_errors: bool = False,
    ) -> Page: ...


@pytest.fixture
def browser_page(
    browser: Browser, request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[BrowserPages]:
    """``browser_page(javascript=..., http_credentials=(user, password))``: a page in a fresh
    browser context of its own. When the test fails, every page it opened is saved as a
    screenshot in the test's temp dir (``screenshot-N.png``)."""
    pages: list[Page] = []

    def new_page(
        *,
        javascript: bool = True,
        http_credentials: tuple[str, str] | None = None,
        ignore_https_errors: bool = False,
    ) -> Page:
        context = browser.new_context(
            java_script_enabled=javascript,
            http_credentials=(
                {"username": http_credentials[0], "password": http_credentials[1]}
                if http_credentials
                else None
            ),
            ignore_https_errors=ignore_https_errors,
        )
        page = context.new_page()
        pages.append(page)
        return page

    try:
        yield new_page
    finally:
        reports = request.node.stash.get(_REPORTS, {})
        failed = any(r.failed for r in reports.values())
        for number, page in enumerate(pages, 1):
            if failed and not page.is_closed():
                with contextlib.suppress(Exception):  # a crashed page has nothing to show
                    page.screenshot(path=tmp_path / f"screenshot-{number}.png", full_page=True)
            page.context.close()


# ---- /metrics ------------------------------------------------------------------------------

TwoExpositions = Callable[[Refresher, float], tuple[Exposition, Callable[[], bytes]]]


@pytest.fixture(scope="session")
def two_expositions() -> TwoExpositions:
    """``fast, reference = two_expositions(refresher, instant)``: the cached /metrics path
    (``fast.render(now=instant)``) and what prometheus_client's ``generate_latest`` renders
    from the same collector at that instant (``reference()``, rendered anew each call)."""

    def both(refresher: Refresher, instant: float) -> tuple[Exposition, Callable[[], bytes]]:
        collector = SnapshotCollector(
            lambda: refresher.snapshot, lambda: refresher.histogram, clock=lambda: instant
        )

        def reference() -> bytes:
            registry = CollectorRegistry(auto_describe=False)
            registry.register(collector)
            return generate_latest(registry)

        fast = Exposition(collector, lambda: refresher.snapshot, lambda: refresher.histogram.count)
        return fast, reference

    return both


# ---- the lab -------------------------------------------------------------------------------


class OpenLab(Protocol):
    def __call__(
        self,
        state_dir: Path,
        scenario: str = "demo",
        *,
        password: str | None = None,
        faults: Mapping[str, Faults] | None = None,
        **options: Any,
    ) -> AbstractContextManager[RunningLab]: ...


@contextlib.contextmanager
def _open_lab(
    state_dir: Path,
    scenario: str = "demo",
    *,
    password: str | None = None,
    faults: Mapping[str, Faults] | None = None,
    **options: Any,
) -> Iterator[RunningLab]:
    """A lab on a built-in scenario (or a scenario file), stopped on exit.

    ``password`` replaces the lab account's password (a canary a test then searches for);
    ``faults`` are set before the lab is handed over; ``options`` go to ``start_lab``.
    """
    state_dir.mkdir(parents=True, exist_ok=True)
    if password is not None:
        builtin = resources.files("vmm_cert_lab.fleet").joinpath(f"scenarios/{scenario}.yaml")
        text = builtin.read_text()
        assert _LAB_PASSWORD_LINE in text, f"{scenario}: no lab password to replace"
        written = state_dir / "scenario.yaml"
        written.write_text(text.replace(_LAB_PASSWORD_LINE, f"password: '{password}'"))
        scenario = str(written)
    with start_lab(scenario=scenario, state_dir=state_dir, **options) as lab:
        if password is not None:
            assert lab.account.password == password
        for fqdn, fault in (faults or {}).items():
            lab.model.set_faults(fqdn, fault)
        yield lab


@pytest.fixture(scope="session")
def open_lab() -> OpenLab:
    """``with open_lab(state_dir, scenario, password=..., faults=..., **start_lab_options)``:
    a lab for a fixture of a wider scope than one test."""
    return _open_lab


@pytest.fixture
def make_lab(tmp_path: Path) -> Iterator[Callable[..., RunningLab]]:
    """``make_lab(scenario="demo", **options)``: a lab of this test's own (the options of
    ``open_lab``), stopped when the test ends."""
    with ExitStack() as stack:
        made = 0

        def make(scenario: str = "demo", **options: Any) -> RunningLab:
            nonlocal made
            made += 1
            return stack.enter_context(_open_lab(tmp_path / f"lab{made}", scenario, **options))

        yield make


@pytest.fixture
def lab(make_lab: Callable[..., RunningLab]) -> RunningLab:
    """The demo lab, this test's own (it may change it). A held Receive ends after 5 s, so
    stopping the lab never waits long for a client."""
    return make_lab(max_operation_wait=5.0)


@pytest.fixture(scope="module")
def demo_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningLab]:
    """The demo lab, shared by one module's tests: a test that changes it puts it back."""
    with _open_lab(tmp_path_factory.mktemp("demo-lab")) as running:
        yield running


# ---- Kerberos ------------------------------------------------------------------------------


@pytest.fixture
def kdc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[KDC]:
    """A real MIT KDC (realm ``LAB.EXAMPLE``, free port, its files in the test's directory),
    which this process's ``KRB5_CONFIG`` names; stopped, and every Kerberos login of the
    product in this process ended, when the test ends. Marked ``e2e`` (it runs krb5kdc)."""
    realm = KDC(tmp_path / "kdc")
    for name in ("KRB5CCNAME", "KRB5_KTNAME", "KRB5_CLIENT_KTNAME", kerberos.MANAGED_ENV):
        monkeypatch.delenv(name, raising=False)
    realm.start()
    monkeypatch.setenv("KRB5_CONFIG", str(realm.krb5_conf))
    monkeypatch.setenv("KRB5_KDC_PROFILE", str(realm.kdc_conf))
    try:
        yield realm
    finally:
        kerberos.stop_all()
        realm.stop()
