"""deploy/systemd/: the exporter's and the receiver's units, checked by systemd itself.

``systemd-analyze verify`` and ``systemd-analyze security --offline=true`` need no running
systemd. Each unit's credentials are the secrets of the configuration it runs (the shipped
examples, whose secrets are under ``$CREDENTIALS_DIRECTORY``), and that configuration loads
with the credentials directory systemd would give it.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from vmm_cert_exporter.config import ConfigError, load_config
from vmm_cert_lab.processes import EXPORTER

ROOT = Path(__file__).resolve().parent.parent
UNITS = ROOT / "deploy" / "systemd"
INSTALLED = "/opt/vmm-cert-exporter/bin/vmm-cert-exporter"
# unit -> (the shipped configuration it runs, where the install puts it)
CONFIGS = {
    "vmm-cert-exporter.service": (
        ROOT / "deploy" / "config.example.yml",
        "/etc/vmm-cert-exporter/config.yml",
    ),
    "vmm-cert-receiver.service": (
        ROOT / "deploy" / "receiver.example.yml",
        "/etc/vmm-cert-exporter/receiver.yml",
    ),
}
MAX_EXPOSURE = 2.0


def systemd_analyze() -> str:
    found = shutil.which("systemd-analyze")
    assert found is not None, "systemd-analyze (Debian's systemd) is installed by make tools"
    return found


def directives(unit: Path) -> list[tuple[str, str]]:
    """(key, value) of every assignment of the unit, in order."""
    found = []
    for line in unit.read_text().splitlines():
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            found.append((key.strip(), value.strip()))
    return found


def here(unit: Path, tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at this venv's command (verify checks that it exists)."""
    text = unit.read_text()
    assert text.count(f"ExecStart={INSTALLED} ") == 1
    copy = tmp_path / unit.name
    copy.write_text(text.replace(f"ExecStart={INSTALLED} ", f"ExecStart={EXPORTER} "))
    return copy


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_systemd_analyze_verify_accepts_the_unit(name: str, tmp_path: Path) -> None:
    result = subprocess.run(
        [systemd_analyze(), "verify", str(here(UNITS / name, tmp_path))],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    # an unknown or misspelt key is only a warning: nothing printed is the bar
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), (
        result.stdout + result.stderr
    )


def test_systemd_analyze_verify_refuses_a_broken_unit(tmp_path: Path) -> None:
    unit = here(UNITS / "vmm-cert-exporter.service", tmp_path)
    unit.write_text(unit.read_text().replace("NoNewPrivileges=", "NoNewPrivilege="))
    result = subprocess.run(
        [systemd_analyze(), "verify", str(unit)], capture_output=True, text=True, check=False
    )
    assert "Unknown key 'NoNewPrivilege'" in result.stderr


def exposure(unit: Path) -> float:
    result = subprocess.run(
        [systemd_analyze(), "security", "--offline=true", "--no-pager", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d) (\w+)", result.stdout)
    assert match is not None, result.stdout + result.stderr
    return float(match.group(1))


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_exposure_is_ok_and_recorded_in_security_md(name: str, tmp_path: Path) -> None:
    score = exposure(here(UNITS / name, tmp_path))
    assert score <= MAX_EXPOSURE
    security = (ROOT / "docs" / "security.md").read_text()
    assert f"| `{name}` | {score:.1f} OK |" in security


def test_the_exposure_figure_reacts_to_the_hardening(tmp_path: Path) -> None:
    unit = here(UNITS / "vmm-cert-exporter.service", tmp_path)
    hardened = exposure(unit)
    kept = ("Type", "ExecStart", "LoadCredential")
    bare = "\n".join(
        line
        for line in unit.read_text().splitlines()
        if "=" not in line or line.startswith("#") or line.split("=")[0] in kept
    )
    unit.write_text(bare)
    assert exposure(unit) > hardened + 5


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_the_unit_is_hardened_as_documented(name: str) -> None:
    found = directives(UNITS / name)
    settings = dict(found)
    for key, value in {
        "DynamicUser": "yes",
        "ProtectSystem": "strict",
        "NoNewPrivileges": "yes",
        "CapabilityBoundingSet": "",
        "SystemCallArchitectures": "native",
    }.items():
        assert settings.get(key) == value, key
    assert set(settings["RestrictAddressFamilies"].split()) == {"AF_INET", "AF_INET6", "AF_UNIX"}
    filters = [v for k, v in found if k == "SystemCallFilter"]
    # the exporter's refresh process lowers its own priority (refresh_process.py)
    allowed = ["setpriority"] if name == "vmm-cert-exporter.service" else []
    assert filters == ["@system-service", "~@privileged @resources", *allowed]
    # the configuration is read once at start: a restart, not a reload (the header says so)
    assert "ExecReload" not in settings
    assert "systemctl restart" in (UNITS / name).read_text()


def credentials(name: str) -> dict[str, str]:
    """LoadCredential= of the unit: credential name -> the file systemd reads it from."""
    loaded = {}
    for key, value in directives(UNITS / name):
        if key == "LoadCredential":
            credential, _, source = value.partition(":")
            loaded[credential] = source
    return loaded


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_every_secret_of_the_configuration_is_a_credential_of_the_unit(name: str) -> None:
    config, installed = CONFIGS[name]
    text = config.read_text()
    named = set(re.findall(r"\$CREDENTIALS_DIRECTORY/([\w.-]+)", text))
    assert named and named == set(credentials(name))
    for source in credentials(name).values():
        assert source.startswith("/etc/vmm-cert-exporter/credentials/")
    exec_start = dict(directives(UNITS / name))["ExecStart"]
    assert exec_start.endswith(f" --config {installed}")
    # the install lines of the header put the configuration where ExecStart reads it
    assert f"deploy/{config.name} {installed}" in (UNITS / name).read_text()


def test_the_receivers_journal_is_in_its_state_directory() -> None:
    settings = dict(directives(UNITS / "vmm-cert-receiver.service"))
    state = Path("/var/lib") / settings["StateDirectory"]
    journal = re.search(r"journal: (\S+)", CONFIGS["vmm-cert-receiver.service"][0].read_text())
    assert journal is not None and Path(journal.group(1)).parent == state
    # the exporter keeps nothing between runs
    assert "StateDirectory" not in dict(directives(UNITS / "vmm-cert-exporter.service"))


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_the_configuration_reads_its_secrets_from_the_credentials_directory(
    name: str, tmp_path: Path
) -> None:
    """As systemd starts the unit: each LoadCredential= file copied into a directory of the
    service's own, $CREDENTIALS_DIRECTORY set to it."""
    config, _ = CONFIGS[name]
    directory = tmp_path / "credentials"
    directory.mkdir()
    for credential in credentials(name):
        (directory / credential).write_text(f"{credential}-value\n")
        (directory / credential).chmod(0o400)
    state = tmp_path / "state"
    state.mkdir()
    text = config.read_text().replace("/var/lib/vmm-cert-exporter/", f"{state}/")
    path = tmp_path / config.name
    path.write_text(text)
    loaded = load_config(path, environ={"CREDENTIALS_DIRECTORY": str(directory)})
    assert loaded.winrm.password is not None
    password = loaded.winrm.password.reveal()
    assert password == (
        "receiver-winrm-password-value" if loaded.receiver else "winrm-password-value"
    )
    if loaded.receiver is not None:
        assert loaded.receiver.bearer_token is not None
        assert loaded.receiver.bearer_token.reveal() == "receiver-token-value"
    # outside systemd the variable is unset: the error says so, on the key that needs it
    with pytest.raises(
        ConfigError, match=r"winrm\.password_file.*\$CREDENTIALS_DIRECTORY is not set"
    ):
        load_config(path, environ={})


def test_the_readmes_systemd_path_installs_what_the_unit_reads() -> None:
    readme = (ROOT / "README.md").read_text()
    unit = "vmm-cert-exporter.service"
    for credential, source in credentials(unit).items():
        assert f"install -D -m 0600 /path/to/password {source}" in readme, credential
    config, installed = CONFIGS[unit]
    assert f"install -D -m 0644 deploy/{config.name} {installed}" in readme
    assert f"cp deploy/systemd/{unit} /etc/systemd/system/" in readme
    assert INSTALLED.replace("/bin/vmm-cert-exporter", "/bin/pip install --constraint") in readme
