"""``--version``: the version with what it runs on, in the layout Go exporters print."""

from __future__ import annotations

import argparse
import platform
import sys
from collections.abc import Sequence
from importlib import metadata
from typing import Any

from vmm_cert_exporter import __version__


def _distribution_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def version_text() -> str:
    """``vmm-cert-exporter, version X`` and the Python, pywinrm and platform lines."""
    python = f"{platform.python_version()} ({platform.python_implementation()})"
    lines = [
        f"vmm-cert-exporter, version {__version__}",
        f"  python version:   {python}",
        f"  pywinrm version:  {_distribution_version('pywinrm')}",
        f"  platform:         {sys.platform}/{platform.machine()}",
    ]
    return "\n".join(lines)


class VersionAction(argparse.Action):
    """Prints ``version_text()`` as it is (argparse's own version action reflows it)."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(
            option_strings, dest, nargs=0, default=argparse.SUPPRESS, help=kwargs.get("help")
        )

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        print(version_text())
        parser.exit()
