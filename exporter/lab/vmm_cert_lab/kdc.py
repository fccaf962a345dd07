"""A real MIT Kerberos KDC for the tests: its own realm, database and configuration in a
temporary directory, listening on 127.0.0.1 on free ports, started and stopped by the test.

Nothing of the machine's own Kerberos configuration is read or written: every tool runs with
``KRB5_CONFIG`` and ``KRB5_KDC_PROFILE`` pointing into the directory, and clients are given
the same through ``env()`` (and a ccache of their own through ``KRB5CCNAME``).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from vmm_cert_lab.processes import free_port

REALM = "LAB.EXAMPLE"
_BINARIES = ("krb5kdc", "kdb5_util", "kadmin.local")


def available() -> str | None:
    """None when the KDC's programs are installed, else what is missing."""
    missing = [b for b in _BINARIES if not Path(_binary(b)).exists()]
    return ", ".join(missing) or None


def _binary(name: str) -> str:
    return shutil.which(name) or f"/usr/sbin/{name}"


@dataclass
class KDC:
    """One realm; ``start()`` makes the database and runs ``krb5kdc`` in the foreground."""

    directory: Path
    realm: str = REALM
    max_life: str = "10h"
    # the tools' and the clients' clock allowance: MIT's default, Windows' "5 minutes"
    clockskew: int = 300
    port: int = 0
    _process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def krb5_conf(self) -> Path:
        return self.directory / "krb5.conf"

    @property
    def kdc_conf(self) -> Path:
        return self.directory / "kdc.conf"

    def env(self, ccache: Path | str | None = None) -> dict[str, str]:
        """What a process of this realm needs in its environment (added to os.environ)."""
        env = dict(os.environ)
        env["KRB5_CONFIG"] = str(self.krb5_conf)
        env["KRB5_KDC_PROFILE"] = str(self.kdc_conf)
        env.pop("KRB5_KTNAME", None)
        env.pop("KRB5_CLIENT_KTNAME", None)
        if ccache is not None:
            env["KRB5CCNAME"] = f"FILE:{ccache}"
        return env

    def _write_config(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        if not self.port:
            self.port = free_port()
        realm = self.realm
        self.krb5_conf.write_text(
            f"""[libdefaults]
    default_realm = {realm}
    dns_lookup_kdc = false
    dns_lookup_realm = false
    rdns = false
    dns_canonicalize_hostname = false
    ignore_acceptor_hostname = false
    udp_preference_limit = 1
    clockskew = {self.clockskew}
    ticket_lifetime = {self.max_life}
    renew_lifetime = 1d
    forwardable = false
    kdc_timeout = 2000
    max_retries = 1

[realms]
    {realm} = {{
        kdc = 127.0.0.1:{self.port}
        admin_server = 127.0.0.1:{self.port}
    }}

[domain_realm]
    .lab.example = {realm}
    lab.example = {realm}
""",
            encoding="utf-8",
        )
        self.kdc_conf.write_text(
            f"""[kdcdefaults]
    kdc_listen = 127.0.0.1:{self.port}
    kdc_tcp_listen = 127.0.0.1:{self.port}

[realms]
    {realm} = {{
        database_name = {self.directory / "principal"}
        key_stash_file = {self.directory / "stash"}
        acl_file = {self.directory / "kadm5.acl"}
        max_life = {self.max_life}
        max_renewable_life = 1d
        supported_enctypes = aes256-cts-hmac-sha1-96:normal aes128-cts-hmac-sha1-96:normal
        kdc_listen = 127.0.0.1:{self.port}
        kdc_tcp_listen = 127.0.0.1:{self.port}
    }}

[logging]
    kdc = FILE:{self.directory / "kdc.log"}
""",
            encoding="utf-8",
        )
        (self.directory / "kadm5.acl").write_text("", encoding="utf-8")

    def _run(self, *argv: str, stdin: str | None = None) -> str:
        done = subprocess.run(
            argv,
            input=(stdin or "").encode(),
            capture_output=True,
            env=self.env(),
            timeout=60,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"{argv[0]} failed ({done.returncode}): {done.stderr.decode(errors='replace')}"
            )
        return done.stdout.decode(errors="replace")

    def kadmin(self, *queries: str) -> str:
        """Run kadmin.local queries in one process (read from its standard input)."""
        done = subprocess.run(
            [_binary("kadmin.local")],
            input="".join(q + "\n" for q in queries).encode(),
            capture_output=True,
            env=self.env(),
            timeout=60,
            check=False,
        )
        errors = [
            line
            for line in done.stderr.decode(errors="replace").splitlines()
            if line.strip()
            and not line.startswith("Authenticating as")
            and not line.startswith("No policy specified")
        ]
        if done.returncode != 0 or errors:
            raise RuntimeError(f"kadmin.local failed: {'; '.join(errors) or done.returncode}")
        return done.stdout.decode(errors="replace")

    def start(self) -> KDC:
        self._write_config()
        master = secrets.token_hex(16)
        self._run(_binary("kdb5_util"), "create", "-s", "-r", self.realm, "-P", master)
        self.launch()
        return self

    def launch(self) -> None:
        """Run krb5kdc (again, after ``stop_serving``) and wait until it answers."""
        log = (self.directory / "krb5kdc.out").open("ab")
        self._process = subprocess.Popen(
            [_binary("krb5kdc"), "-n", "-r", self.realm, "-P", str(self.directory / "kdc.pid")],
            env=self.env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        log.close()
        deadline = time.monotonic() + 10

        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(
                    f"krb5kdc exited with {self._process.returncode}: "
                    + (self.directory / "krb5kdc.out").read_text(errors="replace")
                )
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("krb5kdc did not listen within 10 s")

    def stop_serving(self) -> None:
        """Stop krb5kdc, keeping the realm (a KDC that goes down)."""
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(timeout=5)
        self._process = None

    def stop(self) -> None:
        self.stop_serving()

    def __enter__(self) -> KDC:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # --- principals and keytabs -------------------------------------------------------------

    def add_user(
        self, name: str, password: str, *, max_life: str | None = None, expired: bool = False
    ) -> str:
        """A user principal (``name@REALM``) with a password; returns the principal."""
        principal = f"{name}@{self.realm}"
        options = f'-maxlife "{max_life}" ' if max_life else ""
        self.kadmin(f"addprinc {options}-pw {password} {principal}")
        if expired:
            self.expire_password(principal)
        return principal

    def expire_password(self, principal: str) -> None:
        self.kadmin(f"modprinc -pwexpire yesterday {principal}")

    def user_keytab(self, principal: str, path: Path) -> Path:
        """Export the principal's current keys (its password stays valid)."""
        self.kadmin(f"ktadd -k {path} -norandkey {principal}")
        return path

    def add_service(self, spn: str, keytab: Path) -> str:
        """A service principal (``HTTP/fqdn``) with a random key, appended to ``keytab``."""
        principal = f"{spn}@{self.realm}"
        self.kadmin(f"addprinc -randkey {principal}", f"ktadd -k {keytab} -norandkey {principal}")
        return principal

    def add_computers(
        self, fqdns: list[str], keytab: Path, services: tuple[str, ...] = ("HTTP", "WSMAN")
    ) -> None:
        """The SPNs Windows computers register for WinRM (``setspn -L`` shows them), all
        in one keytab (the lab plays every computer in one process)."""
        principals = [f"{s}/{fqdn.lower()}@{self.realm}" for fqdn in fqdns for s in services]
        if not principals:
            return
        self.kadmin(
            *(f"addprinc -randkey {p}" for p in principals),
            f"ktadd -k {keytab} -norandkey {' '.join(principals)}",
        )

    def delete(self, principal: str) -> None:
        self.kadmin(f"delprinc -force {principal}")


# --- a realm for a whole lab -----------------------------------------------------------------

EXPORTER_ACCOUNT = "svc-vmmcert"
RECEIVER_ACCOUNT = "svc-vmmrenew"


@dataclass(frozen=True)
class LabRealm:
    """The accounts and keytabs of a lab's realm: the exporter's, the receiver's and the
    computers' ``HTTP/`` and ``WSMAN/`` SPNs (one keytab, for the lab's listeners)."""

    kdc: KDC
    exporter_principal: str
    exporter_keytab: Path
    receiver_principal: str
    receiver_keytab: Path
    computers_keytab: Path

    def winrm(self, who: str = "exporter") -> dict[str, str | None]:
        """The ``winrm`` keys that log ``who`` (exporter or receiver) on with its keytab
        (None: a key of the lab's Basic configuration to drop)."""
        principal, keytab = (
            (self.exporter_principal, self.exporter_keytab)
            if who == "exporter"
            else (self.receiver_principal, self.receiver_keytab)
        )
        return {
            "transport": "kerberos",
            "username": principal,
            "keytab_file": str(keytab),
            "password_file": None,
            "allow_unencrypted_basic": None,
        }


def lab_realm(kdc: KDC, computers: list[str], directory: Path) -> LabRealm:
    """Principals with random passwords and their keytabs in ``directory`` (0600)."""
    directory.mkdir(parents=True, exist_ok=True)
    exporter = kdc.add_user(EXPORTER_ACCOUNT, secrets.token_urlsafe(18))
    receiver = kdc.add_user(RECEIVER_ACCOUNT, secrets.token_urlsafe(18))
    exporter_keytab = kdc.user_keytab(exporter, directory / f"{EXPORTER_ACCOUNT}.keytab")
    receiver_keytab = kdc.user_keytab(receiver, directory / f"{RECEIVER_ACCOUNT}.keytab")
    computers_keytab = directory / "computers.keytab"
    kdc.add_computers(computers, computers_keytab)
    for keytab in (exporter_keytab, receiver_keytab, computers_keytab):
        keytab.chmod(0o600)
    return LabRealm(kdc, exporter, exporter_keytab, receiver, receiver_keytab, computers_keytab)


@contextlib.contextmanager
def realm_environment(kdc: KDC) -> Iterator[None]:
    """This process's ``KRB5_CONFIG``/``KRB5_KDC_PROFILE`` name ``kdc``'s, put back on exit."""
    names = ("KRB5_CONFIG", "KRB5_KDC_PROFILE")
    saved = {name: os.environ.get(name) for name in names}
    os.environ["KRB5_CONFIG"] = str(kdc.krb5_conf)
    os.environ["KRB5_KDC_PROFILE"] = str(kdc.kdc_conf)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
