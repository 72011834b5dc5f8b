"""Scenarios of the operators' patches (issue 11): so far ``mutex-priority``.

Each scenario asserts its patch's marker is in the history it saves. Names start ``ops_`` so
they can be recorded on their own (``--only ops_mutex``) beside other changes' histories in one
version folder.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from temporalio.client import WorkflowHandle

from tests.workflow.fakes import eventually
from tests.workflow.harness import Harness, harness
from tests.workflow.record_histories.recording import (
    PATIENCE,
    E,
    History,
    Recording,
    start,
)
from workflows.messages import CommandName, LockRelease, mutex_workflow_id
from workflows.mutex import PRIORITY_PATCH, MutexWorkflow

ONE, TWO = CommandName.ONE, CommandName.TWO
PATIENT: dict[str, Any] = {
    "command_timeout": timedelta(minutes=10),
    "lease_timeout": timedelta(hours=1),
}


def _patched(history: History, patch: str) -> bool:
    """Whether the run recorded ``patch``'s marker (the branch the patch guards ran)."""
    return any(
        patch.encode() in payload.data
        for event in history.of(E.EVENT_TYPE_MARKER_RECORDED)
        for payload in event.marker_recorded_event_attributes.details["patch-data"].payloads
    )


async def _known(h: Harness, process_id: str) -> bool:
    state = await h.mutex_state()
    holder = state.holder.holder_workflow_id if state.holder else None
    return holder == process_id or any(r.requester_workflow_id == process_id for r in state.queue)


async def _join(h: Harness, name: str, priority: int) -> WorkflowHandle[Any, Any]:
    handle = await start(h, requested_by=name, lock_priority=priority, **PATIENT)
    await h.approve(handle)
    await eventually(lambda: _known(h, handle.id), within=PATIENCE, what=f"{name} queued")
    return handle


async def _finish(rec: Recording, h: Harness, handle: WorkflowHandle[Any, Any]) -> None:
    await h.wait_sent(handle)
    await h.call_back(handle, ONE)
    await h.call_back(handle, TWO)
    await rec.completed(handle)


async def ops_mutex_priority(rec: Recording) -> None:
    """An urgent request overtakes two queued default ones; the holder is never preempted; the
    mutex continues as new with its queue in order, and orders the next arrival by priority."""
    async with harness(rec.client) as h:
        first_run = await rec.start_mutex(h, max_history_events=100)
        holder = await _join(h, "holder", 3)
        await h.wait_sent(holder)
        normal = await _join(h, "normal", 3)
        low = await _join(h, "low", 4)
        urgent = await _join(h, "urgent", 1)
        state = await h.mutex_state()
        assert state.holder is not None and state.holder.holder_workflow_id == holder.id
        assert [r.requester_workflow_id for r in state.queue] == [urgent.id, normal.id, low.id]
        mutex = rec.client.get_workflow_handle_for(MutexWorkflow.run, mutex_workflow_id(h.resource))
        stale = LockRelease(request_id="nobody", lease_id=999)

        async def rolled_over() -> bool:
            await mutex.signal(MutexWorkflow.release, stale)
            return (await mutex.describe()).run_id != first_run

        await eventually(rolled_over, within=PATIENCE, what="the mutex to continue as new")
        second = await _join(h, "second", 2)
        queue = [r.requester_workflow_id for r in (await h.mutex_state()).queue]
        assert queue == [urgent.id, second.id, normal.id, low.id]
        for handle in (holder, urgent, second, normal, low):
            await _finish(rec, h, handle)
        await rec.mutex_idle(h)
        first = await rec.history(mutex_workflow_id(h.resource), first_run)
        assert _patched(first, PRIORITY_PATCH)
        next_run = first.next_run_id()
        assert next_run is not None
        carried = first.continued_as_new_with().state
        assert carried is not None
        assert [r.requester_workflow_id for r in carried.queue] == [urgent.id, normal.id, low.id]
        later = await rec.history(mutex_workflow_id(h.resource), next_run)
        assert _patched(later, PRIORITY_PATCH) and later.next_run_id() is None
        rec.save("ops_mutex_priority_run1", first)
        rec.save("ops_mutex_priority_run2", later)


SCENARIOS = [ops_mutex_priority]
