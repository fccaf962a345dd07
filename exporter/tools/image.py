"""Build the Dockerfile here, without a Docker engine: Debian's buildah, chroot isolation.

The Dockerfile's ``ARG BASE`` (python:3.12-slim for a registry) becomes a Debian bookworm
base made locally with debootstrap, cut down as slim images are (no apt lists or caches, no
docs, man pages or locales), with ``python`` beside ``python3`` and pip allowed to install
into the system Python as in the official images. The base is made once and kept outside
the repository (``CACHE``, and buildah's own storage), so later builds reuse it.

    python exporter/tools/image.py build      # make image: prints the image's name

tests/test_image.py builds and runs the image through these functions.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Final

ROOT: Final = Path(__file__).resolve().parents[2]
CACHE: Final = Path(os.environ.get("VMM_CERT_IMAGE_CACHE", "/var/cache/vmm-cert-exporter"))
BASE_TAR: Final = "base-bookworm.tar"
BASE_IMAGE: Final = "localhost/vmm-cert-exporter-base:bookworm"
IMAGE: Final = "localhost/vmm-cert-exporter:test"
MIRROR: Final = "http://deb.debian.org/debian"
# what the Dockerfile needs from its base: Python, pip, the CA certificates
BASE_PACKAGES: Final = "python3,python3-pip,ca-certificates"
# pip inside the build reaches PyPI through whatever TLS this machine trusts
HOST_CA_BUNDLE: Final = Path("/etc/ssl/certs/ca-certificates.crt")
# a slim base, as python:*-slim: nothing apt or a reader of man pages needs at run time
TRIMMED: Final = (
    "var/cache/apt",
    "var/lib/apt/lists",
    "usr/share/doc",
    "usr/share/man",
    "usr/share/info",
    "usr/share/locale",
)
ENV: Final = {**os.environ, "BUILDAH_ISOLATION": "chroot", "STORAGE_DRIVER": "overlay"}


def buildah(*args: str, capture: bool = True) -> str:
    """Run buildah; its standard output, stripped. CalledProcessError names what it said."""
    result = subprocess.run(
        ["buildah", *args],
        capture_output=capture,
        text=True,
        env=ENV,
        check=False,
    )
    if result.returncode != 0:
        raise subprocess.CalledProcessError(
            result.returncode, result.args, result.stdout, result.stderr
        )
    return (result.stdout or "").strip()


def image_exists(name: str) -> bool:
    found = subprocess.run(
        ["buildah", "inspect", "--type", "image", "--format", "{{.FromImageID}}", name],
        capture_output=True,
        text=True,
        env=ENV,
        check=False,
    )
    return found.returncode == 0


def make_base_tar(tar: Path) -> None:
    """debootstrap a minimal bookworm with Python into a directory, slim it, tar it."""
    tar.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=tar.parent, prefix="base-") as work:
        rootfs = Path(work) / "rootfs"
        subprocess.run(
            [
                "debootstrap",
                "--variant=minbase",
                f"--include={BASE_PACKAGES}",
                "bookworm",
                str(rootfs),
                MIRROR,
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        for part in TRIMMED:
            target = rootfs / part
            if target.is_dir():
                shutil.rmtree(target)
                target.mkdir()
        # the official images' `python`, and their pip that installs into the system Python
        (rootfs / "usr/bin/python").symlink_to("python3")
        for marker in rootfs.glob("usr/lib/python3*/EXTERNALLY-MANAGED"):
            marker.unlink()
        partial = tar.with_suffix(".partial")
        subprocess.run(
            ["tar", "--numeric-owner", "-C", str(rootfs), "-cf", str(partial), "."], check=True
        )
        partial.rename(tar)


def ensure_base(cache: Path = CACHE) -> str:
    """The base image's name: imported from the cached tar (made first when absent). One
    process at a time (a lock file in the cache): two test runs never make it twice."""
    cache.mkdir(parents=True, exist_ok=True)
    with (cache / "base.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _ensure_base(cache)


def _ensure_base(cache: Path) -> str:
    if image_exists(BASE_IMAGE):
        return BASE_IMAGE
    tar = cache / BASE_TAR
    if not tar.is_file():
        make_base_tar(tar)
    container = buildah("from", "scratch")
    try:
        buildah("add", container, str(tar), "/")
        buildah(
            "config",
            "--env",
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "--env",
            "LANG=C.UTF-8",
            "--cmd",
            "python3",
            container,
        )
        buildah("commit", "--quiet", container, BASE_IMAGE)
    finally:
        subprocess.run(["buildah", "rm", container], capture_output=True, env=ENV, check=False)
    return BASE_IMAGE


def build(tag: str = IMAGE, target: str | None = None) -> str:
    """``buildah bud`` of the repository's Dockerfile on the local base; the image's name.

    Docker format, so the HEALTHCHECK is kept (OCI image configs have no place for it).
    Layers are kept in buildah's storage: a later build reuses the steps whose inputs did not
    change, above all the Kerberos build stage (apt, a compiler, pykerberos' wheel), which
    only constraints.txt or the base changes."""
    base = ensure_base()
    args = [
        "bud",
        "--isolation",
        "chroot",
        "--format",
        "docker",
        "--layers",
        "--force-rm",
        "--build-arg",
        f"BASE={base}",
        "--tag",
        tag,
        "--file",
        str(ROOT / "Dockerfile"),
    ]
    if HOST_CA_BUNDLE.is_file():
        args += ["--volume", f"{HOST_CA_BUNDLE}:{HOST_CA_BUNDLE}:ro"]
    if target is not None:
        args += ["--target", target]
    buildah(*args, str(ROOT), capture=False)
    return tag


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("base", help="make (or reuse) the local base image; print its name")
    p = sub.add_parser("build", help="build the Dockerfile on the local base; print its name")
    p.add_argument("--tag", default=IMAGE)
    p.add_argument("--target", default=None, help="a stage of the Dockerfile (e.g. lab)")
    args = parser.parse_args(argv)
    if shutil.which("buildah") is None or shutil.which("debootstrap") is None:
        print("buildah and debootstrap are needed: make tools installs them", file=sys.stderr)
        return 2
    if args.command == "base":
        print(ensure_base())
    else:
        print(build(args.tag, args.target))
    return 0


if __name__ == "__main__":
    sys.exit(main())
