"""The import-linter contracts of pyproject.toml: kept by the tree, broken by a forbidden import.

Each case copies the product and the lab packages, adds one import to the copy and runs
``lint-imports`` with the repository's own configuration against it (the copies come first on
PYTHONPATH, ahead of this venv's editable installs).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {
    "vmm_cert_exporter": ROOT / "exporter" / "vmm_cert_exporter",
    "vmm_cert_lab": ROOT / "exporter" / "lab" / "vmm_cert_lab",
}
PRODUCT_CONTRACT = "The product never imports the lab"
FLEET_CONTRACT = "The simulated fleet imports nothing of the product"


def lint_imports(tmp_path: Path, injected: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """lint-imports on a copy of both packages, with ``injected`` source appended to files."""
    source = tmp_path / "src"
    for name, package in PACKAGES.items():
        shutil.copytree(package, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    for relative, code in injected.items():
        target = source / relative
        target.write_text(target.read_text(encoding="utf-8") + "\n" + code + "\n")
    exe = Path(sys.executable).parent / "lint-imports"
    assert exe.exists(), "import-linter is a test dependency; run make test"
    return subprocess.run(
        [str(exe), "--no-cache", "--no-logo", str(ROOT / "pyproject.toml")],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(source)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def broken(output: str) -> set[str]:
    return {line.rsplit(" ", 1)[0] for line in output.splitlines() if line.endswith(" BROKEN")}


def test_the_tree_keeps_both_contracts(tmp_path: Path) -> None:
    result = lint_imports(tmp_path, {})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Contracts: 2 kept, 0 broken." in result.stdout


@pytest.mark.parametrize(
    ("file", "code", "contract", "chain"),
    [
        (
            "vmm_cert_exporter/check.py",
            "import vmm_cert_lab.demo",
            PRODUCT_CONTRACT,
            "vmm_cert_exporter.check -> vmm_cert_lab.demo",
        ),
        (  # an import for the type checker only is an import too
            "vmm_cert_exporter/receiver/engine.py",
            "import typing\nif typing.TYPE_CHECKING:\n    from vmm_cert_lab.fleet import runner",
            PRODUCT_CONTRACT,
            "vmm_cert_exporter.receiver.engine -> vmm_cert_lab.fleet.runner",
        ),
        (  # the lab would share the product's parsers, and with them their bugs
            "vmm_cert_lab/fleet/model.py",
            "from vmm_cert_exporter import results",
            FLEET_CONTRACT,
            "vmm_cert_lab.fleet.model -> vmm_cert_exporter.results",
        ),
        (  # through the lab's own tooling, which drives the product
            "vmm_cert_lab/fleet/scenario.py",
            "from vmm_cert_lab import receiver_testing",
            FLEET_CONTRACT,
            "vmm_cert_lab.fleet.scenario -> vmm_cert_lab.receiver_testing",
        ),
    ],
)
def test_a_forbidden_import_breaks_its_contract(
    tmp_path: Path, file: str, code: str, contract: str, chain: str
) -> None:
    result = lint_imports(tmp_path, {file: code})
    assert result.returncode == 1, result.stdout + result.stderr
    (name,) = broken(result.stdout)
    assert name.startswith(contract), result.stdout
    assert chain in result.stdout, result.stdout
