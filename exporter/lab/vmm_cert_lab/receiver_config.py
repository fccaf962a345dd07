"""A receiver configuration pointing at a running lab (``make demo`` and the tests).

``write_lab_receiver_config(lab, path, token=...)`` writes the lab's exporter configuration
(``RunningLab.write_config``) plus a ``receiver:`` section: the lab's VMM Run As account,
a bearer token file (0600) beside the configuration, a journal beside it, and the mode.
Execute mode is meant for the lab only: the lab is the one fleet where renewing everything
that alerts is the point.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import bcrypt
import yaml

if TYPE_CHECKING:
    from vmm_cert_lab.fleet.runner import RunningLab
    from vmm_cert_lab.lab_child import LabChild

# The lab's one Run As account (docs/lab-scenarios.md), when the model does not say.
LAB_RUN_AS_ACCOUNT = "VMM Host Admins"


def lab_run_as_account(lab: RunningLab | LabChild) -> str:
    # a lab in its own process answers for its model
    accounts = getattr(getattr(lab, "model", lab), "run_as_accounts", None)
    if callable(accounts):
        names = list(accounts())
        if names:
            return str(names[0])
    return LAB_RUN_AS_ACCOUNT


def desk_user(
    directory: str | os.PathLike[str], username: str, password: str, *, rounds: int = 4
) -> dict[str, str]:
    """A ``receiver.desk_users`` entry for the lab: the bcrypt hash of ``password`` in a 0600
    file of ``directory``. Cost 4 (the lowest) keeps tests fast; never for a real desk."""
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds)).decode()
    path = Path(directory) / f"desk-{username}.bcrypt"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(hashed + "\n")
    return {"username": username, "password_hash_file": str(Path(path).resolve())}


def write_lab_receiver_config(
    lab: RunningLab | LabChild,
    path: str | os.PathLike[str],
    *,
    token: str,
    mode: str = "execute",
    listen_address: str = "127.0.0.1:0",
    journal: str | os.PathLike[str] | None = None,
    receiver: Mapping[str, Any] | None = None,
    winrm: Mapping[str, Any] | None = None,
    collection: Mapping[str, Any] | None = None,
) -> Path:
    """Write the configuration; ``receiver``, ``winrm`` and ``collection`` override or add
    keys of those sections (a ``winrm`` key given None is removed)."""
    target = lab.write_config(path)
    data: dict[str, Any] = yaml.safe_load(target.read_text(encoding="utf-8"))
    token_file = target.with_name(target.stem + ".token")
    fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(token)
    os.chmod(token_file, 0o600)
    section: dict[str, Any] = {
        "listen_address": listen_address,
        "bearer_token_file": str(token_file.resolve()),
        "mode": mode,
        "run_as_account": lab_run_as_account(lab),
        "allow_hosts": ["*.lab.example"],
        "max_concurrent": 2,
        "max_concurrent_per_vmm_server": 2,
        # the lab renews in milliseconds; a demo should not wait an hour to retry
        "backoff_initial": "1m",
        "backoff_max": "32m",
        # the demo's alerts overlap (Soon and Critical for one host): a second job for a
        # host renewed a moment ago waits this long, then finds it fresh
        "cooldown": "2m",
        "journal": str(Path(journal).resolve() if journal else target.with_suffix(".sqlite")),
    }
    section.update(receiver or {})
    data["receiver"] = section
    for key, value in (winrm or {}).items():
        if value is None:
            data["winrm"].pop(key, None)  # a key the lab's Basic configuration has
        else:
            data["winrm"][key] = value
    if collection:
        data.setdefault("collection", {}).update(collection)
    target.write_text(
        f"# Written for the lab at {lab.url}: the renewal receiver in {mode} mode\n"
        + yaml.safe_dump(data, sort_keys=False),
        encoding="utf-8",
    )
    return target
