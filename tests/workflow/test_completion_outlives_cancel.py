"""A cancel that arrives once the commands are done does not undo the completion (patch
``process-completion-outlives-cancel``).

Before the patch, a cancel that reached the final ``completed`` write (both commands succeeded,
the lock already given back) turned into the failure cleanup: the record said failed
``cancelled`` and the run ended Cancelled although every effect had happened. With the real
table the write in the worker cannot be interrupted, so it could even land first: DynamoDB said
completed, Temporal said cancelled.
"""

from __future__ import annotations

import asyncio

from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowExecutionStatus, WorkflowHandle
from temporalio.testing import WorkflowEnvironment

from tests.workflow.fakes import Fakes, eventually
from tests.workflow.harness import harness
from tests.workflow.test_options_out_of_range import patch_ids
from workflows.messages import CommandName, ProcessStatus, Stage
from workflows.process import COMPLETION_OUTLIVES_CANCEL_PATCH

E = EventType


async def cancel_delivered(handle: WorkflowHandle) -> bool:
    """The cancel is in the history and a workflow task after it has started: the process has
    it (the completed write is held meanwhile, so the run cannot have ended first)."""
    kinds = [e.event_type for e in (await handle.fetch_history()).events]
    requested = E.EVENT_TYPE_WORKFLOW_EXECUTION_CANCEL_REQUESTED
    return (
        requested in kinds and E.EVENT_TYPE_WORKFLOW_TASK_STARTED in kinds[kinds.index(requested) :]
    )


async def test_a_cancel_during_the_completed_write_leaves_the_process_completed(
    time_env: WorkflowEnvironment,
) -> None:
    fakes = Fakes(complete_gate=asyncio.Event())
    async with harness(time_env.client, fakes) as h:
        handle = await h.start()
        await h.approve(handle)
        await h.wait_sent(handle)
        await h.call_back(handle, CommandName.ONE)
        await h.call_back(handle, CommandName.TWO)
        # Held at the fake: a state query would wait for the task the local write holds open.
        await eventually(lambda: handle.id in fakes.complete_waiting, what="the completed write")
        await handle.cancel()
        await eventually(lambda: cancel_delivered(handle), what="the cancel delivered")
        assert fakes.complete_gate is not None
        fakes.complete_gate.set()

        result = await handle.result()
        assert result.status == "success"
        assert [o.status for o in result.commands] == ["succeeded", "succeeded"]
        assert (await handle.describe()).status is WorkflowExecutionStatus.COMPLETED
        # The record and the state tell the same story: completed, never failed or cancelled.
        assert fakes.history[handle.id] == [
            ProcessStatus.PENDING,
            ProcessStatus.IN_PROGRESS,
            ProcessStatus.COMPLETED,
        ]
        assert fakes.records[handle.id].get("reason") is None
        state = await h.state(handle)
        assert state.status is ProcessStatus.COMPLETED and state.stage is Stage.COMPLETED
        assert state.failure_reason is None
        assert state.lock.status == "released"
        assert (await h.mutex_state()).holder is None
        assert COMPLETION_OUTLIVES_CANCEL_PATCH in patch_ids(
            list((await handle.fetch_history()).events)
        )
