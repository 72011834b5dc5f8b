"""``approval-flow replay`` against the dev server: live histories replayed on the code on disk.

A process is run to completion (its mutex keeps running) on a task queue of the test's own, then
the real console script replays both histories. The same command with a deliberately
incompatible ``ProcessWorkflow`` in place of the code on disk must say which history breaks and
exit 1; a server that is not there is one line and exit 3.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from temporalio.testing import WorkflowEnvironment

import worker
from cli.main import run as cli_run
from tests.support.moto_server import free_loopback_port
from tests.workflow.harness import Harness, harness
from tests.workflow.record_histories.recording import PATIENCE
from workflows.messages import CommandName, mutex_workflow_id
from workflows.mutex import MutexWorkflow

from .workflow_variants import PatchedProcessWorkflow, UnpatchedProcessWorkflow

pytestmark = pytest.mark.integration

CLI = str(Path(sys.executable).parent / "approval-flow")


def _env(address: str, task_queue: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("APPROVAL_", "TEMPORAL_"))}
    return {**env, "TEMPORAL_ADDRESS": address, "APPROVAL_TASK_QUEUE": task_queue}


async def _complete_one_process(h: Harness) -> str:
    handle = await h.start()
    await h.approve(handle)
    await h.wait_sent(handle)
    for command in CommandName:
        await h.call_back(handle, command)
    await asyncio.wait_for(handle.result(), PATIENCE)
    return handle.id


async def test_live_histories_replay_on_the_code_on_disk(
    dev_env: WorkflowEnvironment, monkeypatch: pytest.MonkeyPatch
) -> None:
    address = dev_env.client.service_client.config.target_host
    async with harness(dev_env.client) as h:
        process_id = await _complete_one_process(h)
        mutex_id = mutex_workflow_id(h.resource)

        result = await asyncio.to_thread(
            subprocess.run,
            [CLI, "replay", "--closed-within", "1h"],
            env=_env(address, h.task_queue),
            capture_output=True,
            text=True,
            timeout=PATIENCE,
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        lines = result.stdout.splitlines()
        assert sorted(line.split()[:2] for line in lines[:-1]) == sorted(
            [["ok", process_id], ["ok", mutex_id]]
        )
        assert lines[-1].endswith(": 2 ok, 0 would break"), lines[-1]
        assert result.stderr == ""

        # Running only: the completed process is left out.
        monkeypatch.setenv("TEMPORAL_ADDRESS", address)
        monkeypatch.setenv("APPROVAL_TASK_QUEUE", h.task_queue)
        out = io.StringIO()
        code = await asyncio.to_thread(cli_run, ["replay", "--closed-within", "0", "--json"], out)
        assert code == 0
        document = json.loads(out.getvalue())
        assert [(d["workflow_id"], d["replays"]) for d in document["histories"]] == [
            (mutex_id, True)
        ]

        # A change guarded by workflow.patched replays...
        monkeypatch.setattr(worker, "WORKFLOWS", [PatchedProcessWorkflow, MutexWorkflow])
        out = io.StringIO()
        assert await asyncio.to_thread(cli_run, ["replay"], out) == 0, out.getvalue()

        # ...the same change unguarded breaks the completed process, and only it.
        monkeypatch.setattr(worker, "WORKFLOWS", [UnpatchedProcessWorkflow, MutexWorkflow])
        out = io.StringIO()
        code = await asyncio.to_thread(cli_run, ["replay"], out)
        assert code == 1, out.getvalue()
        verdicts = {line.split()[1]: line.split()[0] for line in out.getvalue().splitlines()[:-1]}
        assert verdicts == {process_id: "BREAKS", mutex_id: "ok"}
        broken = next(line for line in out.getvalue().splitlines() if line.startswith("BREAKS"))
        # The core's reason, not its debug dump: "[TMPRL1100] Nondeterminism error: ...".
        assert "Nondeterminism error" in broken and "Failure {" not in broken, broken


def test_an_unreachable_server_is_one_line_and_exit_3() -> None:
    port = free_loopback_port()  # nothing listens there
    result = subprocess.run(
        [CLI, "replay"],
        env=_env(f"127.0.0.1:{port}", "tq-none"),
        capture_output=True,
        text=True,
        timeout=PATIENCE,
        check=False,
    )
    assert result.returncode == 3, result.stdout + result.stderr
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"127.0.0.1:{port}" in lines[0], lines
