"""Record the workflow histories that ``test_replay.py`` replays on every run.

Run after a deliberate, versioned change to workflow code (never to make a failing replay pass):
``.venv/bin/python -m tests.workflow.record_histories``.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from temporalio.client import Client, WorkflowHandle

from tests.support.temporal import start_time_skipping
from tests.workflow.fakes import eventually
from tests.workflow.harness import Harness, harness
from workflows.messages import CommandName, Stage, mutex_workflow_id

HISTORIES = Path(__file__).resolve().parent.parent / "histories"


async def _save(client: Client, workflow_id: str, name: str) -> None:
    history = await client.get_workflow_handle(workflow_id).fetch_history()
    (HISTORIES / f"{name}.json").write_text(history.to_json() + "\n")
    print(f"recorded {name}: {len(history.events)} events")


async def record() -> None:
    HISTORIES.mkdir(exist_ok=True)
    async with await start_time_skipping() as env, harness(env.client) as h:
        # Wait on state, not result(): after a result the time-skipping server may jump
        # far ahead (it treats "no timeout" as ten years) and time out the idle mutex.
        happy = await h.start(requested_by="alice")
        await h.approve(happy)
        await h.wait_sent(happy)
        await h.call_back(happy, CommandName.ONE)
        await h.call_back(happy, CommandName.TWO)
        await eventually(lambda: _finished(h, happy), what="happy path done")

        failing = await h.start(requested_by="alice")
        await h.approve(failing)
        await h.wait_sent(failing)
        await h.call_back(failing, CommandName.TWO, status="failed")
        await eventually(lambda: _finished(h, failing), what="failure path done")

        rejected = await h.start(requested_by="alice")
        await h.approve(rejected, approved=False)
        await eventually(lambda: _finished(h, rejected), what="rejection done")

        # Two grants and two releases (one by the failure cleanup); the rejected process
        # never asked for the lock.
        await _save(env.client, mutex_workflow_id(h.resource), "mutex_grants_and_releases")
        await _save(env.client, happy.id, "process_completed")
        await _save(env.client, failing.id, "process_command_failed")
        await _save(env.client, rejected.id, "process_rejected")


async def _finished(h: Harness, handle: WorkflowHandle) -> bool:
    if (await h.state(handle)).stage not in (Stage.COMPLETED, Stage.FAILED):
        return False
    description = await handle.describe()
    return description.close_time is not None


if __name__ == "__main__":
    asyncio.run(record())
