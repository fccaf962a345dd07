"""The receiver's HTTP handler (a WSGI app) and ``start_receiver``, which wires it all up.

Endpoints (docs/renewal.md):

=======================================  ==================================================
``POST /alertmanager``                   Alertmanager webhook v4 (authenticated)
``GET /api/jobs``                        the journal's jobs (``?status=&host=&limit=``)
``GET /api/jobs/{id}``                   one job with its plan, attempts, steps, alerts
``POST /api/jobs/{id}/approve|cancel``   approve (with ``require_approval``) or cancel
``POST /api/pause``, ``/api/resume``     the global pause switch (persisted)
``GET /api/status``                      mode, pause, inventory, limits
``GET /metrics``, ``/-/healthy``,        unauthenticated, as for every exporter
``/-/ready``
``GET /``, ``/jobs/{id}``; ``POST``      the desk, for people in a browser (``desk.py``:
``/jobs/{id}/approve|cancel``,           desk users or the receiver's credentials; every
``/pause``, ``/resume``                  POST carries a CSRF token)
=======================================  ==================================================

Order of checks for everything else: a body larger than ``max_request_bytes`` is refused
(413) before anything else, so no one can make the server read megabytes; then a browser's
cross-site request (``Origin`` or ``Sec-Fetch-Site``) gets 403, because Alertmanager and
curl never send those and a web page must not be able to drive the API with credentials a
browser cached (the desk's pages are for browsers: ``desk.py`` checks its own forms instead);
then credentials (401, the body neither parsed nor written); then the route.
The HTTP layer (``vmm_cert_exporter.http``) serves it: it reads at most
``max_request_bytes`` of a body (plus one byte, so a larger one is seen), checks the
credentials and hands the caller's identity over as ``REMOTE_USER``; which paths need one is
decided here.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import logging
import re
import ssl
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from vmm_cert_exporter.cohorts import (
    Capacity,
    Projection,
    capacities,
    group,
    procedure_mix,
    project,
)
from vmm_cert_exporter.config import Config, ReceiverConfig, parse_listen_address
from vmm_cert_exporter.http.credentials import SharedSecrets
from vmm_cert_exporter.http.limits import Limits
from vmm_cert_exporter.http.server import HTTPServer
from vmm_cert_exporter.http.tls_context import TLSSetupError, server_context
from vmm_cert_exporter.http.wsgi import StartResponse
from vmm_cert_exporter.receiver.actions import job_action, set_paused
from vmm_cert_exporter.receiver.ahead import RenewAhead
from vmm_cert_exporter.receiver.desk import Desk, is_desk_path
from vmm_cert_exporter.receiver.discovery import InventoryCache
from vmm_cert_exporter.receiver.engine import Engine
from vmm_cert_exporter.receiver.intake import intake
from vmm_cert_exporter.receiver.journal import (
    JOB_STATUSES,
    JobConflict,
    Journal,
    OwnerLock,
)
from vmm_cert_exporter.receiver.metrics import ReceiverCollector, WebhookCounter
from vmm_cert_exporter.receiver.runbook import ScriptRunner
from vmm_cert_exporter.receiver.webhook import PayloadError, parse_webhook
from vmm_cert_exporter.remoting import WinRMRunner
from vmm_cert_exporter.webconfig import WebConfigFile

log = logging.getLogger(__name__)

_JOB_PATH = re.compile(r"/api/jobs/([0-9]{1,12})(?:/(approve|cancel))?")
_JSON_TYPE = re.compile(r"application/json\s*(?:;.*)?", re.IGNORECASE)


class _HTTPError(Exception):
    def __init__(self, status: str, message: str, outcome: str = "invalid") -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.outcome = outcome


def _json(
    start_response: StartResponse,
    status: str,
    body: object,
    extra: Iterable[tuple[str, str]] = (),
) -> list[bytes]:
    # ensure_ascii: hostile text from labels comes back escaped, never as raw bytes
    data = (json.dumps(body, ensure_ascii=True, indent=1) + "\n").encode()
    start_response(
        status,
        [
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(data))),
            ("Cache-Control", "no-store"),
            ("X-Content-Type-Options", "nosniff"),
            *extra,
        ],
    )
    return [data]


def _plain(start_response: StartResponse, status: str, text: str) -> list[bytes]:
    data = text.encode()
    start_response(
        status, [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(data)))]
    )
    return [data]


class ReceiverApp:
    """The WSGI application."""

    def __init__(
        self,
        config: ReceiverConfig,
        journal: Journal,
        engine: Engine,
        inventory: InventoryCache,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.journal = journal
        self.engine = engine
        self.inventory = inventory
        self.clock = clock
        self.credentials = SharedSecrets(
            realm="vmm-cert-exporter receiver",
            bearer_token=config.bearer_token,
            basic_username=config.basic_auth_username,
            basic_password=config.basic_auth_password,
        )
        self.desk = Desk(config, journal, engine, inventory)
        self.webhooks = WebhookCounter()
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(
            ReceiverCollector(
                journal,
                self.webhooks,
                config.mode,
                lambda: engine.pause_state().paused,
                capacity=self._capacity,
                cohort_margin=config.cohort_margin,
                cohorts=self.projections,
            )
        )

    def _capacity(self, *, planning: bool = False) -> Capacity:
        """The capacity used now: measured once the journal holds a successful renewal.
        ``planning``: as if not paused (a schedule outlives a pause; the jobs wait)."""
        config = self.config
        _, used = capacities(
            max_concurrent=config.max_concurrent,
            per_vmm_server=config.max_concurrent_per_vmm_server,
            vmm_servers=len(self.inventory.inventory.vmm_views),
            windows=config.maintenance_windows,
            approval=config.require_approval,
            paused=False if planning else self.engine.pause_state().paused,
            assumed=config.assumed_renewal_duration,
            durations=self.journal.renewal_durations(),
            at=self.clock(),
            mix=self._procedure_mix(),
            approved_share=self.journal.approved_share() if config.require_approval else 1.0,
        )
        return used

    def _procedure_mix(self) -> dict[str, int]:
        """The census's computers left to renew (inside min_validity), by procedure."""
        return procedure_mix(
            ((h.computer, h.not_after) for h in self.inventory.holdings),
            self.inventory.inventory.vmm_views,
            now=self.clock(),
            min_validity=self.config.min_validity,
        )

    def planning_capacity(self) -> Capacity:
        return self._capacity(planning=True)

    def projections(self) -> list[Projection]:
        """The upcoming cohorts (not expired yet) of the census, counting only computers not
        renewed yet, projected at the capacity used now (docs/renewal.md#cohorts)."""
        now = self.clock()
        cohorts = group((h.computer.role, h.not_after) for h in self.inventory.holdings)
        return [
            p
            for p in project(cohorts, self._capacity(), now, self.config.cohort_margin)
            if p.cohort.expires_at > now
        ]

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "/")
        method = environ.get("REQUEST_METHOD", "GET")
        webhook = path == "/alertmanager"
        try:
            if path in ("/metrics", "/-/healthy", "/-/ready"):
                return self._open(path, method, start_response)
            self._check_size(environ)
            if is_desk_path(path):
                return self.desk(environ, start_response, lambda: self._body(environ))
            if environ.get("HTTP_ORIGIN") or environ.get("HTTP_SEC_FETCH_SITE", "") in (
                "cross-site",
                "same-site",
            ):
                raise _HTTPError(
                    "403 Forbidden",
                    "requests from web pages are refused (Origin / Sec-Fetch-Site present)",
                    "forbidden",
                )
            identity = environ.get("REMOTE_USER")  # the HTTP layer checked self.credentials
            if identity is None:
                if webhook:
                    self.webhooks.inc("unauthorized")
                log.warning(
                    "unauthorized request",
                    extra={"path": path[:100], "remote": environ.get("REMOTE_ADDR")},
                )
                return _json(
                    start_response,
                    "401 Unauthorized",
                    {"error": "missing or wrong credentials"},
                    [("WWW-Authenticate", c) for c in self.credentials.challenges],
                )
            if webhook:
                if method != "POST":
                    raise _HTTPError("405 Method Not Allowed", "use POST")
                return self._webhook(environ, start_response)
            return self._api(path, method, environ, start_response, identity)
        except _HTTPError as exc:
            if webhook:
                self.webhooks.inc(exc.outcome)
            extra = [("Allow", "POST")] if exc.status.startswith("405") else []
            return _json(start_response, exc.status, {"error": exc.message}, extra)
        except Exception:  # answer 500 and keep serving; the request's effects are journaled
            log.exception("request failed", extra={"path": path[:100]})
            if webhook:
                self.webhooks.inc("error")
            return _json(start_response, "500 Internal Server Error", {"error": "internal error"})

    # ---- helpers ------------------------------------------------------------------------

    def _check_size(self, environ: dict[str, Any]) -> None:
        length = environ.get("CONTENT_LENGTH") or ""
        if length and not length.isdigit():
            raise _HTTPError("400 Bad Request", "Content-Length is not a number")
        if length and int(length) > self.config.max_request_bytes:
            raise _HTTPError(
                "413 Request Entity Too Large",
                f"the body is larger than max_request_bytes ({self.config.max_request_bytes})",
                "too_large",
            )

    def _body(self, environ: dict[str, Any]) -> bytes:
        stream = environ["wsgi.input"]
        limit = self.config.max_request_bytes
        length = environ.get("CONTENT_LENGTH") or ""
        try:
            if length:
                data: bytes = stream.read(int(length))
                if len(data) < int(length):
                    raise _HTTPError("400 Bad Request", "the body is shorter than Content-Length")
                return data
            # chunked (or no body): the layer read at most one byte past the limit
            data = stream.read(limit + 1)
        except OSError as exc:
            raise _HTTPError("400 Bad Request", f"the body could not be read: {exc}") from exc
        if len(data) > limit:
            raise _HTTPError(
                "413 Request Entity Too Large",
                f"the body is larger than max_request_bytes ({limit})",
                "too_large",
            )
        return data

    def _open(self, path: str, method: str, start_response: StartResponse) -> list[bytes]:
        if method not in ("GET", "HEAD"):
            return _plain(start_response, "405 Method Not Allowed", "only GET and HEAD\n")
        if path == "/metrics":
            data = generate_latest(self.registry)
            start_response(
                "200 OK",
                [("Content-Type", CONTENT_TYPE_PLAIN_0_0_4), ("Content-Length", str(len(data)))],
            )
            return [] if method == "HEAD" else [data]
        if path == "/-/healthy":
            return _plain(start_response, "200 OK", "Healthy\n")
        if self.inventory.loaded.is_set():
            return _plain(start_response, "200 OK", "Ready\n")
        return _plain(start_response, "503 Service Unavailable", "inventory not loaded yet\n")

    # ---- POST /alertmanager -------------------------------------------------------------

    def _webhook(self, environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
        if not _JSON_TYPE.fullmatch(environ.get("CONTENT_TYPE", "")):
            raise _HTTPError(
                "415 Unsupported Media Type", "expected Content-Type: application/json"
            )
        body = self._body(environ)
        remote = environ.get("REMOTE_ADDR")
        try:
            payload = parse_webhook(body)
        except PayloadError as exc:
            self.journal.record_webhook(
                outcome="invalid",
                reason=str(exc),
                receiver=None,
                group_key=None,
                alerts=0,
                remote=remote,
            )
            log.warning("invalid webhook", extra={"reason": str(exc)[:300], "remote": remote})
            raise _HTTPError("400 Bad Request", str(exc)) from exc
        if not self.inventory.loaded.is_set():
            # Alertmanager retries 5xx: nothing is lost while discovery finishes
            self.webhooks.inc("unavailable")
            return _json(
                start_response,
                "503 Service Unavailable",
                {"error": "the inventory is not loaded yet; retry"},
                [("Retry-After", "5")],
            )
        webhook_id = self.journal.record_webhook(
            outcome="received",
            reason=None,
            receiver=payload.receiver,
            group_key=payload.group_key,
            alerts=len(payload.alerts),
            remote=remote,
        )
        decisions = intake(
            payload,
            config=self.config,
            inventory=self.inventory.inventory,
            journal=self.journal,
            webhook_id=webhook_id,
            now=self.clock(),
        )
        accepted = any(d.outcome != "rejected" for d in decisions)
        outcome = "accepted" if accepted else "no_action"
        self.journal.set_webhook_outcome(webhook_id, outcome)
        self.webhooks.inc(outcome)
        if accepted:
            self.engine.wake()
        log.info(
            "webhook",
            extra={
                "outcome": outcome,
                "alerts": len(decisions),
                "jobs": ",".join(str(d.job_id) for d in decisions if d.job_id is not None),
                "remote": remote,
            },
        )
        return _json(
            start_response,
            "200 OK",
            {
                "outcome": outcome,
                "mode": self.config.mode,
                "alerts": [d.to_json() for d in decisions],
            },
        )

    # ---- the API ------------------------------------------------------------------------

    def _api(
        self,
        path: str,
        method: str,
        environ: dict[str, Any],
        start_response: StartResponse,
        identity: str,
    ) -> list[bytes]:
        if path == "/api/jobs":
            if method != "GET":
                raise _HTTPError("405 Method Not Allowed", "use GET")
            return _json(start_response, "200 OK", self._list(environ.get("QUERY_STRING", "")))
        if path == "/api/status":
            if method != "GET":
                raise _HTTPError("405 Method Not Allowed", "use GET")
            return _json(start_response, "200 OK", self.status())
        if path in ("/api/pause", "/api/resume"):
            if method != "POST":
                raise _HTTPError("405 Method Not Allowed", "use POST")
            set_paused(self.journal, self.engine, path == "/api/pause", identity)
            return _json(start_response, "200 OK", self.status())
        match = _JOB_PATH.fullmatch(path)
        if match is None:
            raise _HTTPError("404 Not Found", "no such endpoint")
        job_id, action = int(match.group(1)), match.group(2)
        if action is None:
            if method != "GET":
                raise _HTTPError("405 Method Not Allowed", "use GET")
            detail = self.job_detail(job_id)
            if detail is None:
                raise _HTTPError("404 Not Found", f"no job {job_id}")
            return _json(start_response, "200 OK", detail)
        if method != "POST":
            raise _HTTPError("405 Method Not Allowed", "use POST")
        try:
            job = job_action(
                self.journal,
                self.engine,
                "approve" if action == "approve" else "cancel",
                job_id,
                identity,
            )
        except KeyError:
            raise _HTTPError("404 Not Found", f"no job {job_id}") from None
        except JobConflict as exc:
            raise _HTTPError("409 Conflict", str(exc)) from None
        return _json(start_response, "200 OK", job.to_json())

    def _list(self, query: str) -> dict[str, Any]:
        params = parse_qs(query, keep_blank_values=False, max_num_fields=10)
        status = params.get("status", [None])[0]
        if status is not None and status not in JOB_STATUSES:
            raise _HTTPError("400 Bad Request", f"status must be one of {', '.join(JOB_STATUSES)}")
        limit_text = params.get("limit", ["100"])[0] or "100"
        if not limit_text.isdigit() or not 1 <= int(limit_text) <= 1000:
            raise _HTTPError("400 Bad Request", "limit must be an integer from 1 to 1000")
        host = params.get("host", [None])[0]
        jobs = self.journal.list_jobs(limit=int(limit_text), status=status, host=host)
        return {
            "mode": self.config.mode,
            "paused": self.engine.pause_state().paused,
            "jobs": [
                {**j.to_json(), "steps": [s.to_json() for s in self.journal.steps(j.id)]}
                for j in jobs
            ],
        }

    def job_detail(self, job_id: int) -> dict[str, Any] | None:
        job = self.journal.get(job_id)
        if job is None:
            return None
        return {
            **job.to_json(),
            "plan": job.plan,
            "attempts": [a.to_json() for a in self.journal.attempts(job_id)],
            "steps": [s.to_json() for s in self.journal.steps(job_id)],
            "alerts": self.journal.job_alerts(job_id),
            "events": self.journal.events(job_id),
        }

    def status(self) -> dict[str, Any]:
        pause = self.engine.pause_state()
        inventory = self.inventory.inventory
        return {
            "mode": self.config.mode,
            "paused": pause.paused,
            "paused_by": pause.by,
            "pause_file": self.config.pause_file,
            "inventory": {
                "loaded": self.inventory.loaded.is_set(),
                "computers": len(inventory.computers),
                "discovery_errors": dict(self.inventory.errors),
                "census_computers": len(self.inventory.holdings),
                "census_errors": dict(self.inventory.census_errors),
            },
            "renew_ahead": self.config.renew_ahead,
            "limits": {
                "max_concurrent": self.config.max_concurrent,
                "max_concurrent_per_vmm_server": self.config.max_concurrent_per_vmm_server,
                "require_approval": self.config.require_approval,
                "maintenance_windows": len(self.config.maintenance_windows),
            },
            "jobs_active": self.journal.status_counts(),
        }


# --------------------------------------------------------------------------------------------
# Wiring


def make_receiver_server(
    app: ReceiverApp,
    config: ReceiverConfig,
    listen: str,
    web_config: WebConfigFile | None = None,
    limits: Limits | None = None,
) -> HTTPServer:
    tls = None
    if config.tls_cert_file and config.tls_key_file:
        try:
            # mutual TLS with client_ca_file: only clients with a certificate from this CA
            # get to HTTP at all
            tls = server_context(
                config.tls_cert_file,
                config.tls_key_file,
                client_ca_file=config.tls_client_ca_file,
                verify_mode=ssl.CERT_REQUIRED if config.tls_client_ca_file else ssl.CERT_NONE,
            )
        except TLSSetupError as exc:
            raise ValueError(f"receiver.tls: {exc.message}") from None
    limits = dataclasses.replace(limits or Limits(), max_body_bytes=config.max_request_bytes)
    return HTTPServer(
        app,
        listen,
        name="vmm-cert-exporter-receiver",
        web_config=web_config,
        tls=tls,
        credentials=app.credentials,
        limits=limits,
    )


def _check_web_config(rcfg: ReceiverConfig, web_config: WebConfigFile | None) -> None:
    """--web.config.file may secure the receiver, but not twice over what its section does."""
    if web_config is None:
        return
    if web_config.tls is not None and rcfg.tls_cert_file is not None:
        raise ValueError(
            f"TLS is configured twice, in receiver.tls and in {web_config.path}: keep one"
        )
    own_auth = rcfg.bearer_token is not None or rcfg.basic_auth_username is not None
    if web_config.basic_auth_users and own_auth:
        raise ValueError(
            f"{web_config.path}: basic_auth_users cannot be combined with the receiver's own "
            "credentials (bearer_token_file / basic_auth): Alertmanager sends one Authorization "
            "header, which cannot satisfy both; keep the receiver's"
        )


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # "" (every interface) or a name: assume reachable from the network


@dataclass
class Receiver:
    """A running receiver (for the CLI, ``make demo`` and tests)."""

    config: Config
    journal: Journal
    engine: Engine
    inventory: InventoryCache
    app: ReceiverApp
    server: HTTPServer
    owner: OwnerLock

    @property
    def url(self) -> str:
        return self.server.url

    def stop(self) -> None:
        self.server.stop()
        self.inventory.stop()
        self.engine.stop()
        self.owner.release()
        self.journal.close()


def start_receiver(
    config: Config,
    *,
    runner: ScriptRunner | None = None,
    clock: Callable[[], float] = time.time,
    listen_address: str | None = None,
    poll_interval: float = 1.0,
    background: bool = True,
    web_config: WebConfigFile | None = None,
    limits: Limits | None = None,
) -> Receiver:
    """Open the journal, start discovery, the engine and the HTTP server; return at once.

    ``background=False`` starts only the HTTP server: tests then drive
    ``receiver.inventory.refresh()`` and ``receiver.engine.tick(wait=True)`` themselves.
    """
    rcfg = config.receiver
    if rcfg is None:
        raise ValueError(f"{config.path}: the configuration has no receiver section")
    _check_web_config(rcfg, web_config)
    journal = Journal(rcfg.journal, clock=clock)
    owner = OwnerLock(rcfg.journal)
    try:
        runner = runner or WinRMRunner(config.winrm)
        inventory = InventoryCache(config, runner, census=True)
        engine = Engine(
            config, journal, runner, owner=owner, clock=clock, poll_interval=poll_interval
        )
        app = ReceiverApp(rcfg, journal, engine, inventory, clock=clock)
        ahead = RenewAhead(rcfg, journal, app.planning_capacity, clock)

        def plan_ahead() -> None:
            if ahead.run(inventory.holdings, inventory.inventory.vmm_views):
                engine.wake()

        inventory.listeners.append(plan_ahead)
        server = make_receiver_server(
            app, rcfg, listen_address or rcfg.listen_address, web_config, limits
        )
        server.start()  # binds first: a taken port fails here, before we report success
    except BaseException:
        owner.release()
        journal.close()
        raise
    if background:
        inventory.start()
        engine.start()
    receiver = Receiver(config, journal, engine, inventory, app, server, owner)
    host = parse_listen_address(listen_address or rcfg.listen_address)[0]
    if not _loopback(host) and server.tls is None:
        log.warning(
            "listening beyond loopback without TLS: the bearer token crosses the network in "
            "clear text; set receiver.tls or put a TLS proxy in front",
            extra={"address": receiver.url},
        )
    log.info(
        "receiver listening",
        extra={"address": receiver.url, "mode": rcfg.mode, "journal": rcfg.journal},
    )
    return receiver
