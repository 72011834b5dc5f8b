"""``approval-flow cancel --wait`` as operators run it: a real CLI process, the dev server, and a
worker running a process that holds the lock with both commands out.

What an operator must see afterwards: the CLI's answer and exit code, the record marked failed
with reason ``cancelled``, and the lock free for the next process.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from temporalio.client import WorkflowExecutionStatus
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from cli.settings import CliSettings
from starter import start_process
from tests.support.cli import cli_environment, run_cli
from tests.support.waiting import eventually
from tests.workflow.fakes import Fakes
from workflows.messages import (
    APPROVAL_DECISION_SIGNAL,
    STATE_QUERY,
    ApprovalDecision,
    FailureReason,
    MutexState,
    ProcessOptions,
    ProcessState,
    ProcessStatus,
    mutex_workflow_id,
)
from workflows.mutex import MutexWorkflow
from workflows.process import ProcessWorkflow

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


async def cli(env: WorkflowEnvironment, *args: str) -> tuple[int, str, str]:
    return await run_cli(cli_environment(env), *args)


async def test_cancel_wait_cleans_up_and_frees_the_lock(dev_env: WorkflowEnvironment) -> None:
    fakes = Fakes()
    resource = f"cancel-{uuid.uuid4().hex[:10]}"
    settings = CliSettings(
        inbox_url=None,
        task_queue=f"cancel-{uuid.uuid4()}",
        process=ProcessOptions(lock_resource=resource),
    )
    async with Worker(
        dev_env.client,
        task_queue=settings.task_queue,
        workflows=[ProcessWorkflow, MutexWorkflow],
        activities=fakes.activities(),
    ):
        started = await start_process(dev_env.client, settings, "operator", "to be cancelled")
        process_id = started.process_id
        handle = dev_env.client.get_workflow_handle(process_id)
        await handle.signal(
            APPROVAL_DECISION_SIGNAL, ApprovalDecision(approved=True, decided_by="approver")
        )

        async def holding_with_both_commands_out() -> bool:
            state = await handle.query(STATE_QUERY, result_type=ProcessState)
            sent = all(c.status == "sent" for c in state.commands.values())
            return state.lock.status == "held" and sent

        await eventually(holding_with_both_commands_out, "the process holds the lock, sends out")

        code, out, err = await cli(dev_env, "cancel", process_id, "--wait", "60")
        assert (code, err) == (0, ""), out
        lines = out.splitlines()
        assert lines[0] == f"{process_id}: cancellation requested"
        assert lines[1] == process_id
        assert "failed (stage failed)" in out
        assert "cancelled: process was cancelled" in out
        assert f"lock {resource}" in out and "released" in out

        # What an outsider sees: the record, Temporal's status, and a free lock.
        assert fakes.records[process_id]["status"] == ProcessStatus.FAILED
        assert fakes.records[process_id]["reason"] == FailureReason.CANCELLED
        assert (await handle.describe()).status == WorkflowExecutionStatus.CANCELED
        mutex = dev_env.client.get_workflow_handle(mutex_workflow_id(resource))

        async def lock_free() -> bool:
            state = await mutex.query(STATE_QUERY, result_type=MutexState)
            return state.holder is None and not state.queue

        await eventually(lock_free, "the lock is free again")

        # A second cancel, and one for a process that never was: one line each, exit 1.
        code, out, err = await cli(dev_env, "cancel", process_id)
        assert (code, out) == (1, "")
        assert err.strip() == (
            f"approval-flow: {process_id} is already closed (CANCELED, process failed): "
            "nothing to cancel"
        )
        code, out, err = await cli(dev_env, "cancel", "process-never-started")
        assert (code, out) == (1, "")
        assert err.strip() == "approval-flow: no process with id process-never-started"
