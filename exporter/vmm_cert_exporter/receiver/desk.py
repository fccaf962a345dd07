"""The receiver desk: ``/`` and ``/jobs/{id}`` for people in a browser (docs/renewal.md).

Browsers cannot send the bearer token Alertmanager uses, so the desk also accepts the
``receiver.desk_users`` (Basic auth, bcrypt hashes): each person signs in under their own
name, which the journal records with every approval, cancellation and pause. The receiver's
own credentials (token, ``basic_auth``) are accepted too, under the identity the API gives
them.

Reading is a GET and changes nothing. Every change is a POST that must carry the CSRF token
of the signed-in user (``csrf.py``) and, when the browser says where the form came from
(``Origin``, ``Sec-Fetch-Site``), come from the desk itself; otherwise it is refused with 403
and the reason, and nothing changes. Refusals and successes are journaled by the journal's
own calls (``actions.py``, shared with the API).
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable
from importlib import resources
from typing import Any, Final
from urllib.parse import parse_qs

from vmm_cert_exporter.config import ReceiverConfig
from vmm_cert_exporter.http.credentials import BcryptUsers
from vmm_cert_exporter.http.wsgi import StartResponse
from vmm_cert_exporter.receiver import desk_html
from vmm_cert_exporter.receiver.actions import JOB_ACTIONS, JobAction, job_action, set_paused
from vmm_cert_exporter.receiver.csrf import FIELD, CsrfTokens
from vmm_cert_exporter.receiver.discovery import InventoryCache
from vmm_cert_exporter.receiver.engine import Engine
from vmm_cert_exporter.receiver.guards import awaiting_approval
from vmm_cert_exporter.receiver.journal import Job, JobConflict, Journal

log = logging.getLogger(__name__)

REALM: Final = "vmm-cert-exporter receiver desk"
_CHALLENGE: Final = f'Basic realm="{REALM}", charset="UTF-8"'
_JOB: Final = re.compile(r"/jobs/([0-9]{1,12})(?:/(approve|cancel))?")
# How many finished jobs, refused alerts and events the desk lists (the API pages further).
FINISHED_JOBS: Final = 100
# Jobs per page: a cohort of a thousand hosts waiting for approval still makes pages of
# about 100 KB, not one of a megabyte.
PAGE_JOBS: Final = 100
REFUSALS: Final = 20
EVENTS: Final = 30
_CSS: Final = resources.files("vmm_cert_exporter.receiver").joinpath("desk.css").read_bytes()
_SECURITY_HEADERS: Final = (
    # no script at all, styles only from the desk, forms only to the desk, never framed
    (
        "Content-Security-Policy",
        "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'",
    ),
    ("X-Frame-Options", "DENY"),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "same-origin"),
    ("Cache-Control", "no-store"),
)


def is_desk_path(path: str) -> bool:
    return path in ("/", "/desk.css", "/pause", "/resume") or _JOB.fullmatch(path) is not None


class Refused(Exception):
    def __init__(self, status: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class Desk:
    def __init__(
        self,
        config: ReceiverConfig,
        journal: Journal,
        engine: Engine,
        inventory: InventoryCache,
        *,
        csrf: CsrfTokens | None = None,
    ) -> None:
        self.config = config
        self.journal = journal
        self.engine = engine
        self.inventory = inventory
        self.csrf = csrf or CsrfTokens()
        hashes = {u.username: u.password_hash for u in config.desk_users}
        self.users = BcryptUsers(hashes) if hashes else None
        self._bcrypt = threading.Lock()

    # ---- who --------------------------------------------------------------------------------

    def identity(self, environ: dict[str, Any]) -> str | None:
        """The signed-in person: the receiver's own credentials' identity, else a desk user.

        bcrypt runs here, in the handler's thread, once per distinct header: outcomes are
        cached (``BcryptUsers``), so a browser sending the same credentials again costs an
        HMAC. One bcrypt at a time; a sign-in arriving while one runs is answered 429 at once
        rather than holding a handler thread that the webhook may need.
        """
        known = environ.get("REMOTE_USER")  # the HTTP layer checked the receiver's own
        if known:
            return str(known)
        if self.users is None:
            return None
        attempt = self.users.attempt(environ.get("HTTP_AUTHORIZATION"))
        if attempt is None:
            return None
        ok = self.users.cached(attempt)
        if ok is None:
            if not self._bcrypt.acquire(blocking=False):
                raise Refused("429 Too Many Requests", "another sign-in is being checked: retry")
            try:
                ok = self.users.verify(attempt)  # an unknown user costs a bcrypt too (timing)
            finally:
                self._bcrypt.release()
        return attempt.user.decode("utf-8", "replace") if ok else None

    # ---- requests ---------------------------------------------------------------------------

    def __call__(
        self,
        environ: dict[str, Any],
        start_response: StartResponse,
        read_body: Callable[[], bytes],
    ) -> list[bytes]:
        path = environ.get("PATH_INFO", "/")
        method = environ.get("REQUEST_METHOD", "GET")
        if path == "/desk.css":
            return self._answer(start_response, "200 OK", _CSS, "text/css; charset=utf-8")
        try:
            identity = self.identity(environ)
        except Refused as exc:
            return self._html(
                start_response,
                exc.status,
                desk_html.message_page(exc.status[4:], exc.message, identity=None),
                [("Retry-After", "1")],
            )
        if identity is None:
            hint = (
                "sign in with a desk user (receiver.desk_users)"
                if self.users is not None
                else "no desk user is configured: add receiver.desk_users (docs/renewal.md)"
            )
            return self._html(
                start_response,
                "401 Unauthorized",
                desk_html.message_page("Sign in", hint, identity=None),
                [("WWW-Authenticate", _CHALLENGE)],
            )
        try:
            if method in ("GET", "HEAD"):
                page = self._get(path, environ.get("QUERY_STRING", ""), identity)
                return self._html(start_response, "200 OK", page)
            if method != "POST":
                raise Refused("405 Method Not Allowed", "use GET to read and the buttons to act")
            return self._post(path, environ, start_response, identity, read_body)
        except Refused as exc:
            extra = [("Allow", "GET, HEAD, POST")] if exc.status.startswith("405") else []
            return self._html(
                start_response,
                exc.status,
                desk_html.message_page(exc.status[4:], exc.message, identity=identity),
                extra,
            )

    def _get(self, path: str, query: str, identity: str) -> str:
        token = self.csrf.token(identity)
        if path == "/":
            try:
                page = parse_qs(query, max_num_fields=5).get("page", ["1"])[0]
            except ValueError:  # more fields than max_num_fields
                page = ""
            if not page.isdigit() or not 1 <= int(page) <= 100_000:
                raise Refused("400 Bad Request", "page must be a number from 1")
            return self.desk(identity, token, int(page))
        match = _JOB.fullmatch(path)
        if match is None or match.group(2) is not None:
            raise Refused("404 Not Found", f"no page {path[:100]}")
        return self.job(int(match.group(1)), identity, token)

    def desk(self, identity: str, token: str, page: int = 1) -> str:
        active = self.journal.active_jobs()
        finished = [j for j in self.journal.list_jobs(limit=FINISHED_JOBS) if not j.active]
        items = [self._item(j) for j in active]
        # awaiting approval first, then running, then the other active jobs, oldest first
        items.sort(
            key=lambda i: (
                not (i.awaiting_approval and i.cancellable),
                i.job.status != "running",
                i.job.id,
            )
        )
        active_count = len(items)
        waiting = sum(1 for i in items if i.awaiting_approval and i.cancellable)
        items += [self._item(j) for j in finished]
        pages = max(1, -(-len(items) // PAGE_JOBS))
        page = min(page, pages)
        shown = items[(page - 1) * PAGE_JOBS : page * PAGE_JOBS]
        banner = desk_html.Banner(
            self.config,
            self.engine.pause_state(),
            len(self.inventory.inventory.computers),
            self.inventory.loaded.is_set(),
        )
        return desk_html.desk_page(
            banner,
            shown,
            desk_html.Paging(page, pages, active_count, waiting),
            self.journal.rejected_alerts(limit=REFUSALS),
            self.journal.events(limit=EVENTS),
            identity=identity,
            token=token,
        )

    def job(self, job_id: int, identity: str, token: str) -> str:
        job = self.journal.get(job_id)
        if job is None:
            raise Refused("404 Not Found", f"no job {job_id}")
        return desk_html.job_page(
            self._item(job),
            self.journal.steps(job_id),
            self.journal.attempts(job_id),
            self.journal.job_alerts(job_id),
            self.journal.events(job_id),
            identity=identity,
            token=token,
        )

    def _item(self, job: Job) -> desk_html.DeskJob:
        return desk_html.DeskJob(job, awaiting_approval(job, self.config) and job.mode == "execute")

    # ---- actions ----------------------------------------------------------------------------

    def _post(
        self,
        path: str,
        environ: dict[str, Any],
        start_response: StartResponse,
        identity: str,
        read_body: Callable[[], bytes],
    ) -> list[bytes]:
        match = _JOB.fullmatch(path)
        if path not in ("/pause", "/resume") and (match is None or match.group(2) is None):
            raise Refused("405 Method Not Allowed", "this page only reads; its buttons act")
        refusal = self._cross_site(environ) or self.csrf.refusal(
            identity, self._token(environ, read_body)
        )
        if refusal is not None:
            log.warning(
                "desk action refused",
                extra={"path": path[:100], "by": identity, "reason": refusal},
            )
            raise Refused("403 Forbidden", f"refused, nothing was changed: {refusal}")
        if match is None:
            set_paused(self.journal, self.engine, path == "/pause", identity)
            return self._see_other(start_response, "/")
        job_id = int(match.group(1))
        action: JobAction = "approve" if match.group(2) == JOB_ACTIONS[0] else "cancel"
        try:
            job_action(self.journal, self.engine, action, job_id, identity)
        except KeyError:
            raise Refused("404 Not Found", f"no job {job_id}") from None
        except JobConflict as exc:
            raise Refused("409 Conflict", f"nothing was changed: {exc}") from None
        return self._see_other(start_response, f"/jobs/{job_id}")

    @staticmethod
    def _cross_site(environ: dict[str, Any]) -> str | None:
        """Why the browser says another site sent this form, or None."""
        site = environ.get("HTTP_SEC_FETCH_SITE")
        if site is not None and site != "same-origin":
            return f"the form came from another site ({site[:40]})"
        origin = environ.get("HTTP_ORIGIN")
        own = f"{environ.get('wsgi.url_scheme', 'http')}://{environ.get('HTTP_HOST', '')}"
        if origin is not None and origin != own:
            return f"the form came from {origin[:100]}, not from the desk ({own[:100]})"
        return None

    @staticmethod
    def _token(environ: dict[str, Any], read_body: Callable[[], bytes]) -> str | None:
        kind = environ.get("CONTENT_TYPE", "").split(";")[0].strip().lower()
        if kind != "application/x-www-form-urlencoded":
            return None
        try:
            fields = parse_qs(read_body().decode("ascii"), max_num_fields=10)
        except (UnicodeDecodeError, ValueError):
            return None
        values = fields.get(FIELD)
        return values[0] if values else None

    # ---- answers ----------------------------------------------------------------------------

    @staticmethod
    def _answer(
        start_response: StartResponse,
        status: str,
        data: bytes,
        content_type: str,
        extra: list[tuple[str, str]] | None = None,
    ) -> list[bytes]:
        start_response(
            status,
            [
                ("Content-Type", content_type),
                ("Content-Length", str(len(data))),
                *_SECURITY_HEADERS,
                *(extra or []),
            ],
        )
        return [data]

    def _html(
        self,
        start_response: StartResponse,
        status: str,
        text: str,
        extra: list[tuple[str, str]] | None = None,
    ) -> list[bytes]:
        return self._answer(
            start_response, status, text.encode(), "text/html; charset=utf-8", extra
        )

    @staticmethod
    def _see_other(start_response: StartResponse, location: str) -> list[bytes]:
        # Post/Redirect/Get: reloading the page that follows never repeats the action
        start_response(
            "303 See Other",
            [("Location", location), ("Content-Length", "0"), *_SECURITY_HEADERS],
        )
        return []
