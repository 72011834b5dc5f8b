"""``make run`` refuses cleanly: a taken port, a port given twice, a part that dies.

None of these needs the real servers up, so each takes about a second.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.moto_server import free_loopback_port

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
PORTS = ("TEMPORAL", "UI", "MOTO", "API", "SIMULATOR", "INBOX", "METRICS")
OWN_PREFIXES = ("APPROVAL_", "SIMULATOR_", "INBOX_", "LOCAL_STACK_")


def stack_env(data_dir: Path, **overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(OWN_PREFIXES)}
    env.update({f"LOCAL_STACK_{name}_PORT": str(free_loopback_port()) for name in PORTS})
    env["LOCAL_STACK_DATA_DIR"] = str(data_dir)
    env.update(overrides)
    return env


def run_stack(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "local_stack"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_taken_port_is_one_clear_line(tmp_path: Path, taken_port: int) -> None:
    data_dir = tmp_path / "data"
    result = run_stack(stack_env(data_dir, LOCAL_STACK_UI_PORT=str(taken_port)))

    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"make run: port {taken_port} (Temporal UI) is already in use; "
        "set LOCAL_STACK_UI_PORT to another port or stop what is using it"
    ]
    assert not data_dir.exists()  # refused before anything started


def test_port_given_twice_is_refused(tmp_path: Path) -> None:
    port = str(free_loopback_port())
    env = stack_env(tmp_path / "data", LOCAL_STACK_API_PORT=port, LOCAL_STACK_INBOX_PORT=port)
    result = run_stack(env)

    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"make run: LOCAL_STACK_API_PORT and LOCAL_STACK_INBOX_PORT are both set to port {port}"
    ]


def test_a_part_that_dies_is_named_and_the_rest_stopped(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    broken = bin_dir / "temporal"
    broken.write_text("#!/bin/sh\necho 'cannot open the database'\nexit 3\n")
    broken.chmod(0o755)

    result = run_stack(stack_env(tmp_path / "data", LOCAL_STACK_BIN_DIR=str(bin_dir)))

    assert result.returncode == 1
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.splitlines()
    assert lines[0] == "make run: temporal exited with code 3 while starting; stopping the rest."
    assert "  cannot open the database" in lines
    assert "moto stopped" in result.stdout  # the part that did start was stopped
