"""The worker daemon as users run it: a real process, a real dev server, the AWS emulator."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from temporalio.testing import WorkflowEnvironment

from tests.support.moto_server import MotoServer, free_loopback_port, moto_env, running_moto_server

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
KEY = "k1:" + "s" * 40


def _run_worker(env: dict[str, str], within: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "worker"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=within,
        check=False,
    )


def _base_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("APPROVAL_", "TEMPORAL_"))}
    return env


def test_missing_setting_is_one_line_and_exit_2() -> None:
    result = _run_worker(_base_env())
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines == ["worker: invalid settings: APPROVAL_SIGNING_KEYS is not set"]


def test_unreachable_temporal_is_one_line_and_exit_1() -> None:
    port = free_loopback_port()  # nothing listens there
    result = _run_worker(
        {**_base_env(), "APPROVAL_SIGNING_KEYS": KEY, "TEMPORAL_ADDRESS": f"127.0.0.1:{port}"}
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"worker: cannot reach Temporal at 127.0.0.1:{port}")


def test_malformed_temporal_address_is_one_line_and_exit_2() -> None:
    env = {**_base_env(), "APPROVAL_SIGNING_KEYS": KEY, "TEMPORAL_ADDRESS": "localhost:99999"}
    result = _run_worker(env)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "worker: invalid settings: TEMPORAL_ADDRESS must be host:port, with a port from 1 to 65535"
    ]


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoServer]:
    with running_moto_server() as server:
        yield server


def test_sigterm_stops_the_worker_cleanly(dev_env: WorkflowEnvironment, moto: MotoServer) -> None:
    address = dev_env.client.service_client.config.target_host
    metrics_port = free_loopback_port()
    env = {
        **_base_env(),
        **moto_env(moto),
        "APPROVAL_SIGNING_KEYS": KEY,
        "TEMPORAL_ADDRESS": address,
        "APPROVAL_TASK_QUEUE": f"tq-worker-{os.getpid()}",
        # Another loopback address: the metrics must listen there only, not on every interface.
        "APPROVAL_METRICS_HOST": "127.0.0.2",
        "APPROVAL_METRICS_PORT": str(metrics_port),
        "APPROVAL_TOKEN_GRACE": "300",  # durations in seconds are taken as well as ISO 8601
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "worker"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 30
        seen = []
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            seen.append(line)
            if "worker polling task queue" in line:
                break
        assert any("worker polling task queue" in line for line in seen), "".join(seen)
        metrics = _get(f"http://127.0.0.2:{metrics_port}/metrics")
        assert "temporal_" in metrics  # the SDK's own metrics, for Prometheus
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", metrics_port), timeout=5).close()
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0, out
        assert "worker stopped" in out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return str(response.read().decode())
