"""The CLI on a process Temporal closed by itself (``temporal workflow terminate``): a real CLI
process, the dev server, and a worker that ran the process up to its approval.

None of the workflow's code runs on a terminate, so its state, its ``ProcessStatus`` search
attribute and its record in the process table all keep saying ``pending``. What an operator
must see: that it was terminated, that its record was left as it was, and no "failed with
pending" (``common.closed``).
"""

from __future__ import annotations

import json
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
    STATE_QUERY,
    ProcessOptions,
    ProcessState,
    ProcessStatus,
    Stage,
    redrive_process_id,
)
from workflows.mutex import MutexWorkflow
from workflows.process import ProcessWorkflow

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


async def cli(env: WorkflowEnvironment, task_queue: str, *args: str) -> tuple[int, str, str]:
    environment = cli_environment(
        env, ("TEMPORAL_", "APPROVAL_"), APPROVAL_TASK_QUEUE=task_queue, APPROVAL_INBOX_URL=""
    )
    return await run_cli(environment, *args)


async def test_a_terminated_process_reads_as_terminated(dev_env: WorkflowEnvironment) -> None:
    fakes = Fakes()
    settings = CliSettings(
        inbox_url=None,
        task_queue=f"terminated-{uuid.uuid4()}",
        process=ProcessOptions(lock_resource=f"terminated-{uuid.uuid4().hex[:10]}"),
    )
    async with Worker(
        dev_env.client,
        task_queue=settings.task_queue,
        workflows=[ProcessWorkflow, MutexWorkflow],
        activities=fakes.activities(),
    ):
        started = await start_process(dev_env.client, settings, "operator", "to be terminated")
        process_id = started.process_id
        handle = dev_env.client.get_workflow_handle(process_id)

        async def awaiting_approval() -> bool:
            state = await handle.query(STATE_QUERY, result_type=ProcessState)
            return state.stage is Stage.AWAITING_APPROVAL

        await eventually(awaiting_approval, "the process waits for its approval")
        await handle.terminate("operator")
        # Nothing of the process ran to close its record: it still says pending.
        assert fakes.records[process_id]["status"] == ProcessStatus.PENDING

        code, out, err = await cli(dev_env, settings.task_queue, "status", process_id)
        assert (code, err) == (0, ""), out
        assert (
            "terminated in Temporal, at stage awaiting-approval (its own last status: pending)"
            in out
        )
        assert "cleanup" in out and "record in the process table was not closed" in out
        assert out.splitlines()[-1].split() == ["temporal", "TERMINATED"]
        code, out, err = await cli(dev_env, settings.task_queue, "status", process_id, "--json")
        assert (code, err) == (0, ""), out
        document = json.loads(out)
        assert (document["process_status"], document["temporal_status"]) == (
            "terminated",
            "TERMINATED",
        )

        code, out, err = await cli(dev_env, settings.task_queue, "list", "--status", "pending")
        assert code == 0, err
        assert process_id not in out

        code, out, err = await cli(dev_env, settings.task_queue, "cancel", process_id)
        assert (code, out) == (1, "")
        assert err.strip() == (
            f"approval-flow: {process_id} is already closed (TERMINATED): nothing to cancel"
        )

        code, out, err = await cli(dev_env, settings.task_queue, "redrive", process_id)
        redriven = dev_env.client.get_workflow_handle(redrive_process_id(process_id, 1))
        try:
            assert (code, err) == (0, ""), out
            assert (
                "It was terminated in Temporal at stage awaiting-approval, before it finished"
                in out
            )
            assert "failed with" not in out
            assert (await redriven.describe()).status == WorkflowExecutionStatus.RUNNING
        finally:
            await redriven.terminate("test over")
