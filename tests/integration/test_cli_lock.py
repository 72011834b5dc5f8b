"""``approval-flow lock`` as operators run it: a real CLI process against the dev server, where two
processes hold the locks of two resources at once and a third waits with a higher priority."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from functools import partial
from typing import Any

import pytest
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from cli.settings import CliSettings
from starter import start_process
from tests.integration.test_cli_cancel import cli
from tests.support.temporal import start_dev_server
from tests.support.waiting import eventually
from tests.workflow.fakes import Fakes
from workflows.messages import (
    APPROVAL_DECISION_SIGNAL,
    STATE_QUERY,
    ApprovalDecision,
    MutexState,
    ProcessOptions,
    ProcessState,
    mutex_workflow_id,
)
from workflows.mutex import MutexWorkflow
from workflows.process import ProcessWorkflow

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
async def dev_env() -> AsyncIterator[WorkflowEnvironment]:
    # A server of its own: ``lock`` lists every running mutex and queries each, and on the
    # session's server the mutexes of earlier tests have no worker left, so each of their
    # queries ran into the CLI's 10 s query timeout (8 at a time): 20 s and growing with the suite.
    async with await start_dev_server() as env:
        yield env


async def test_lock_lists_every_resource_with_its_holder_and_queue(
    dev_env: WorkflowEnvironment,
) -> None:
    suffix = uuid.uuid4().hex[:8]
    first, second = f"db-{suffix}", f"queue-{suffix}"
    settings = CliSettings(inbox_url=None, task_queue=f"lock-{suffix}")
    client = dev_env.client

    async def started(resource: str, priority: int) -> str:
        options = ProcessOptions(lock_resource=resource, lock_priority=priority)
        process = await start_process(client, settings, "operator", resource, options)
        await client.get_workflow_handle(process.process_id).signal(
            APPROVAL_DECISION_SIGNAL, ApprovalDecision(approved=True, decided_by="approver")
        )
        return process.process_id

    async def holds(process_id: str) -> bool:
        state: ProcessState = await client.get_workflow_handle(process_id).query(
            STATE_QUERY, result_type=ProcessState
        )
        return state.lock.status == "held"

    async with Worker(
        client,
        task_queue=settings.task_queue,
        workflows=[ProcessWorkflow, MutexWorkflow],
        activities=Fakes().activities(),
    ):
        holders = [await started(first, 3), await started(second, 5)]
        for holder in holders:
            await eventually(partial(holds, holder), f"{holder} holds its lock")
        waiting = [await started(first, 4), await started(first, 2)]

        async def queued() -> bool:
            state = await client.get_workflow_handle(mutex_workflow_id(first)).query(
                STATE_QUERY, result_type=MutexState
            )
            return len(state.queue) == 2

        await eventually(queued, "two processes wait for the first resource")

        code, out, err = await cli(dev_env, "lock", "--json")
        assert (code, err) == (0, ""), out
        locks: dict[str, Any] = {r["resource"]: r for r in json.loads(out)["resources"]}
        assert {first, second} <= set(locks)  # (other tests' resources may be listed too)
        assert [locks[r]["state"]["holder"]["holder_workflow_id"] for r in (first, second)] == (
            holders
        )
        queue = locks[first]["state"]["queue"]
        assert [(q["requester_workflow_id"], q["priority"]) for q in queue] == [
            (waiting[1], 2),
            (waiting[0], 4),
        ]

        code, out, err = await cli(dev_env, "lock", "--resource", second)
        assert (code, err) == (0, "")
        assert out.startswith(f"lock {second} (mutex-{second})\n  holder  {holders[1]}")
        assert "queue   empty" in out
