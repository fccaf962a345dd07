"""Kerberos credentials for ``transport: kerberos``: ticket caches of the process's own, kept
fresh in the background.

With a keytab or a password, ``kinit`` writes the principal's TGT into a private cache
collection (``DIR:``, in a 0700 directory) that ``KRB5CCNAME`` names for this process and the
refresh process it starts, so the exporter's and the receiver's accounts can live in one
process. Calls read memory copies of that file (ticket_mirror.py), where the service tickets
they obtain stay. Two thirds into a ticket's lifetime a new
one is written beside it and renamed over it, so a call in flight never finds the cache
empty: refreshes go on while renewal happens. The password reaches ``kinit`` on its standard
input only, never its arguments or environment. With ``kerberos_ccache`` (or nothing) the
cache is someone else's to renew.

Why ``kinit`` and not a library: pywinrm's Kerberos (pykerberos) only reads a cache, and
``kinit`` is the tool an admin already trusts for the same job.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from vmm_cert_exporter.ccache_file import tgt_end
from vmm_cert_exporter.config import WinRMConfig
from vmm_cert_exporter.ticket_mirror import TicketMirror, use

log = logging.getLogger(__name__)

# The process's collection directory; a child process (the refresh) inherits it and leaves
# the renewals to its parent.
MANAGED_ENV = "VMM_CERT_EXPORTER_KRB5_MANAGED"
_KINIT_SECONDS = 30.0
_RETRY_SECONDS = (1.0, 60.0)  # after a failed kinit: the first wait, the longest
# Why this process has no cache collection, if making it failed (a read-only root without a
# writable /tmp): every computer's failure then says so instead of only "no ticket".
_collection_failure: str | None = None


@dataclass(frozen=True)
class _Identity:
    principal: str | None
    keytab: str | None
    has_password: bool
    ccache: str | None


def _collection() -> Path:
    """This process's cache collection (made on first use), or the inherited one."""
    inherited = os.environ.get(MANAGED_ENV)
    if inherited:
        return Path(inherited)
    directory = Path(tempfile.mkdtemp(prefix="vmm-cert-exporter-krb5-"))
    os.chmod(directory, 0o700)
    (directory / "cc").mkdir(mode=0o700)
    atexit.register(shutil.rmtree, directory, True)
    os.environ["KRB5CCNAME"] = f"DIR:{directory / 'cc'}"
    os.environ[MANAGED_ENV] = str(directory)
    return directory


def _slug(principal: str) -> str:
    return hashlib.sha256(principal.lower().encode()).hexdigest()[:16]


class KerberosLogin:
    """The process's Kerberos credentials for one ``winrm`` section."""

    def __init__(self, config: WinRMConfig) -> None:
        self._config = config
        self.principal = config.username or ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.directory: Path | None = None
        self.renewals = 0
        self.obtained: float | None = None
        self.expires: float | None = None
        self._mirror: TicketMirror | None = None

    @property
    def managed(self) -> bool:
        """True when this process (or its parent) obtains and renews the ticket."""
        return self._config.keytab_file is not None or self._config.password is not None

    @property
    def cache_file(self) -> Path:
        assert self.directory is not None
        return self.directory / "cc" / f"tkt{_slug(self.principal)}"

    def start(self) -> KerberosLogin:
        if not self.managed:
            ccache = self._config.kerberos_ccache
            if ccache is not None:
                os.environ["KRB5CCNAME"] = ccache
                if ccache.startswith("FILE:") or ":" not in ccache:
                    self._mirror = TicketMirror(Path(ccache.removeprefix("FILE:")), _slug(ccache))
            return self
        inherited = bool(os.environ.get(MANAGED_ENV))
        try:
            self.directory = _collection()
        except OSError as exc:
            global _collection_failure
            _collection_failure = (
                f"kinit for {self.principal} not run: no writable directory for the ticket "
                f"caches ({exc.strerror or exc}): set TMPDIR to one, or mount a tmpfs at /tmp "
                "when the root file system is read-only"
            )
            log.error("Kerberos: %s", _collection_failure)
            return self
        self._mirror = TicketMirror(self.cache_file, _slug(self.principal))
        if inherited and self.cache_file.exists():
            return self  # the parent process logs on and renews; this one reads
        self.renew()  # kinit on start; a failure is retried in the background
        self._thread = threading.Thread(target=self._run, name="kerberos-renewal", daemon=True)
        self._thread.start()
        return self

    def use_for(self, host: str) -> None:
        """Make this thread's next security context, to ``host``, use this login's tickets
        (ticket_mirror.py: why a memory copy)."""
        use(self._mirror, host)

    def stop(self) -> None:
        """Stop renewing; the cache of a login this process started is removed."""
        self._stop.set()
        if self._thread is None:
            return  # inherited or unmanaged: the cache is not ours
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=_KINIT_SECONDS)
        for path in (self.cache_file, self._status_file):
            with contextlib.suppress(OSError):
                path.unlink()

    # --- logging on ------------------------------------------------------------------------

    @property
    def _status_file(self) -> Path:
        assert self.directory is not None
        return self.directory / f"status{_slug(self.principal)}"

    def renew(self) -> bool:
        """kinit into a new cache and rename it over the current one; True on success."""
        assert self.directory is not None
        cfg = self._config
        principal = self.principal
        fresh = self.directory / f"new{_slug(principal)}.{os.getpid()}"
        argv = ["kinit", "-c", f"FILE:{fresh}"]
        stdin = b""
        if cfg.keytab_file is not None:
            argv += ["-k", "-t", cfg.keytab_file]
        elif cfg.password is not None:
            stdin = cfg.password.reveal().encode() + b"\n"
        argv.append(principal)
        with self._lock:
            started = time.time()
            try:
                done = subprocess.run(
                    argv,
                    input=stdin,
                    capture_output=True,
                    timeout=_KINIT_SECONDS,
                    check=False,
                    env={k: v for k, v in os.environ.items() if k != "KRB5CCNAME"},
                )
                error = _kinit_error(done.stdout, done.stderr) if done.returncode != 0 else None
            except FileNotFoundError:
                error = "kinit is not installed (Debian: krb5-user, RHEL: krb5-workstation)"
            except subprocess.TimeoutExpired:
                error = f"kinit did not finish within {_KINIT_SECONDS:g}s"
            if error is None:
                expires = tgt_end(fresh)
                fresh.replace(self.cache_file)
                self.obtained, self.expires = started, expires
                self.renewals += 1
                self._write_status("")
                log.info(
                    "Kerberos: obtained a ticket for %s, valid %.0fs",
                    principal,
                    (expires or started) - started,
                )
                return True
            with contextlib.suppress(OSError):
                fresh.unlink()
            self._write_status(f"kinit for {principal} failed: {error}")
            log.warning("Kerberos: kinit for %s failed: %s", principal, error)
            return False

    def _write_status(self, text: str) -> None:
        tmp = self._status_file.with_suffix(".tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(self._status_file)

    def next_wait(self, failures: int) -> float:
        """Seconds until the next kinit: two thirds into the ticket's life, or sooner (and
        more often, up to a minute apart) after failures."""
        first, longest = _RETRY_SECONDS
        if failures:
            return float(min(longest, first * 2 ** (failures - 1)))
        if self.expires is None or self.obtained is None:
            return longest
        lifetime = max(1.0, self.expires - self.obtained)
        return max(0.5, self.obtained + lifetime * 2 / 3 - time.time())

    def _run(self) -> None:
        failures = 0 if self.expires is not None else 1
        while not self._stop.wait(self.next_wait(failures)):
            failures = 0 if self.renew() else failures + 1


def last_failure(principal: str | None) -> str | None:
    """What the last kinit for ``principal`` in this process (or its parent) said, if it
    failed."""
    directory = os.environ.get(MANAGED_ENV)
    if not principal:
        return None
    if not directory:
        return _collection_failure
    try:
        text = (Path(directory) / f"status{_slug(principal)}").read_text(encoding="utf-8")
    except OSError:
        return None
    return text.strip() or None


def _kinit_error(stdout: bytes, stderr: bytes) -> str:
    if b"Password expired" in stdout:
        # kinit then asks for a new password, which only a person should give
        return "Password has expired: set a new one for the account"
    lines = [line.strip() for line in stderr.decode(errors="replace").splitlines() if line.strip()]
    # kinit's prompts go to stdout; its error is the last line on stderr
    text = lines[-1] if lines else "no error text"
    return text.removeprefix("kinit: ")


_logins: dict[_Identity, KerberosLogin] = {}
_logins_lock = threading.Lock()


def login(config: WinRMConfig) -> KerberosLogin | None:
    """The process's login for ``config`` (started on first use), None unless kerberos."""
    if config.transport != "kerberos":
        return None
    identity = _Identity(
        config.username, config.keytab_file, config.password is not None, config.kerberos_ccache
    )
    with _logins_lock:
        existing = _logins.get(identity)
        if existing is not None:
            return existing
        for key, other in list(_logins.items()):
            if key.principal == identity.principal:
                other.stop()  # the same account, logging on another way now
                del _logins[key]
        started = KerberosLogin(config).start()
        _logins[identity] = started
        return started


# --- failures, in the words an admin acts on -----------------------------------------------
# GSSAPI's minor-status texts (MIT krb5; * is a principal) -> what failed; {spn} is the
# computer's SPN.
_NO_KDC = "no KDC reachable for the realm (check the domain controllers and krb5.conf)"
_CAUSES: tuple[tuple[str, str], ...] = (
    ("pykerberos is not installed",
     "pywinrm's Kerberos support is not installed: pip install 'vmm-cert-exporter[kerberos]' "
     "(it builds against libkrb5-dev)"),
    ("Server * not found in Kerberos database",
     "unknown SPN {spn}: no account holds it; register it on the computer's account "
     "(setspn -S {spn} <computer>) or set winrm.kerberos_hostname_override/kerberos_service"),
    ("Cannot contact any KDC", _NO_KDC),
    ("Cannot find KDC", _NO_KDC),
    ("Clock skew too great",
     "clock skew: this machine's and the KDC's clocks differ by more than Kerberos allows "
     "(5 minutes)"),
    ("Password has expired", "the account's password has expired: set a new one"),
    ("Client's credentials have been revoked",
     "the account's credentials were revoked (disabled, locked out or expired account)"),
    ("Client * not found in Kerberos database", "the KDC does not know the account's principal"),
    ("Preauthentication failed", "wrong password or keytab for the account's principal"),
    ("Ticket expired", "the ticket has expired and no new one could be obtained"),
    ("credential has expired", "the ticket has expired and no new one could be obtained"),
    ("No Kerberos credentials available", "no ticket in the credential cache"),
    ("No credentials cache found", "no ticket in the credential cache"),
    ("No credentials were supplied", "no ticket in the credential cache"),
)  # fmt: skip
_SKEW_ALLOWED = 300.0


def describe_failure(
    text: str, *, spn: str, principal: str | None, refused: bool, skew: float | None
) -> str | None:
    """The message of a failed Kerberos call: ``text`` is the exception's, ``refused`` that
    the computer answered 401, ``skew`` its clock minus ours (from its HTTP Date). None when
    the failure is not Kerberos' (a connection refused, a timeout)."""
    kinit = last_failure(principal)
    for needle, cause in _CAUSES:
        if _matches(needle, text):
            found = cause.format(spn=spn)
            # an empty or expired cache is the symptom; kinit's own failure is the cause
            if kinit and "ticket" in found:
                found += f"; {kinit}"
            return f"Kerberos: {found}"
    if kinit and ("KerberosExchangeError" in text or refused):
        return f"Kerberos: {kinit}"
    if refused:
        if skew is not None and abs(skew) > _SKEW_ALLOWED:
            ahead = "ahead of" if skew > 0 else "behind"
            return (
                f"Kerberos: the computer refused the ticket for {spn}: clock skew, its clock "
                f"is {abs(skew) / 60:.0f} minutes {ahead} this machine's (Kerberos allows "
                "5): fix its time synchronisation"
            )
        return (
            f"Kerberos: the computer refused the ticket for {spn} (HTTP 401): its SPN or "
            "keytab does not match the KDC's (a duplicate SPN, a reset computer account), it "
            "does not accept Kerberos, or it requires channel binding (CBT hardening)"
        )
    if "KerberosExchangeError" in text or "MutualAuthenticationError" in text:
        return f"Kerberos: {text.split(': ', 1)[-1][:300]}"
    return None


def stop_all() -> None:
    """Stop every login of this process and forget its collection (tests; a service's end
    does it at exit)."""
    global _collection_failure
    with _logins_lock:
        for started in _logins.values():
            started.stop()
        _logins.clear()
        _collection_failure = None
        directory = os.environ.pop(MANAGED_ENV, None)
        if directory:
            shutil.rmtree(directory, ignore_errors=True)
            os.environ.pop("KRB5CCNAME", None)


def _matches(needle: str, text: str) -> bool:
    """``needle`` in ``text``, case-insensitively, ``*`` standing for any one principal (MIT
    names it: "Server HTTP/hv01@REALM not found")."""
    low = text.lower()
    if "*" not in needle:
        return needle.lower() in low
    head, tail = (part.lower() for part in needle.split("*", 1))
    start = low.find(head)
    return start >= 0 and tail in low[start + len(head) :]
