"""What a process leaves in its history: few events, and no workflow task inside the lock it can
do without (issue 12; patch ``process-local-writes``).

Counted on the time-skipping server from the history an operator reads (``temporal workflow
show``): an event count is not a timing. ``make bench`` measures the same on a dev server under
load (``happy_path_history_events``), where signals that arrive together share a task.
"""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from temporalio import activity
from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import HistoryEvent, MarkerRecordedEventAttributes
from temporalio.client import WorkflowFailureError, WorkflowHandle
from temporalio.testing import WorkflowEnvironment

from tests.workflow.fakes import Fakes, eventually
from tests.workflow.harness import Harness, harness
from workflows.messages import (
    CommandName,
    ProcessStatus,
    RequestLock,
    SendCommand,
    StatusUpdateResult,
    UpdateProcessStatus,
)

E = EventType
# Issue 12's bound for a completed process (it was 71-80 before the local writes).
HAPPY_PATH_MAX_EVENTS = 64


async def _completed(h: Harness) -> tuple[WorkflowHandle, list[HistoryEvent]]:
    handle = await h.start()
    await h.approve(handle)
    await h.wait_sent(handle)
    await h.call_back(handle, CommandName.ONE)
    await h.call_back(handle, CommandName.TWO)
    result = await handle.result()
    assert result.status == "success"
    return handle, list((await handle.fetch_history()).events)


def _of(events: list[HistoryEvent], kind: EventType.ValueType) -> list[HistoryEvent]:
    return [e for e in events if e.event_type == kind]


def _scheduled(events: list[HistoryEvent], *names: str) -> list[HistoryEvent]:
    """The activities named ``names`` the workflow scheduled (not local ones)."""
    return [
        e
        for e in _of(events, E.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED)
        if e.activity_task_scheduled_event_attributes.activity_type.name in names
    ]


def _completed_activities(events: list[HistoryEvent], name: str) -> list[HistoryEvent]:
    """The completions of the activity ``name`` (scheduled, not local)."""
    scheduled = {e.event_id for e in _scheduled(events, name)}
    return [
        e
        for e in _of(events, E.EVENT_TYPE_ACTIVITY_TASK_COMPLETED)
        if e.activity_task_completed_event_attributes.scheduled_event_id in scheduled
    ]


def _local_activities(events: list[HistoryEvent], name: str) -> list[MarkerRecordedEventAttributes]:
    """The markers the local activity ``name`` left, one per try."""
    markers = [
        e.marker_recorded_event_attributes for e in _of(events, E.EVENT_TYPE_MARKER_RECORDED)
    ]
    return [
        m
        for m in markers
        if m.marker_name == "core_local_activity"
        and json.loads(m.details["data"].payloads[0].data).get("activity_type") == name
    ]


async def test_a_completed_process_stays_within_64_history_events(
    time_env: WorkflowEnvironment,
) -> None:
    async with harness(time_env.client) as h:
        handle, events = await _completed(h)
    assert len(events) <= HAPPY_PATH_MAX_EVENTS, [E.Name(e.event_type) for e in events]
    # Every record step is still there, each written once, in the original's order.
    assert h.fakes.history[handle.id] == [
        ProcessStatus.PENDING,
        ProcessStatus.IN_PROGRESS,
        ProcessStatus.COMPLETED,
    ]
    # One patch marker: the newest patch stands for the older ones.
    patches = [
        e
        for e in _of(events, E.EVENT_TYPE_MARKER_RECORDED)
        if e.marker_recorded_event_attributes.marker_name == "core_patch"
    ]
    assert len(patches) == 1


class GrantFirst(Fakes):
    """``request_lock`` returns only once the mutex's grant is in the process's history: the
    order that, under load, once put two workflow tasks between the grant and the sends."""

    @activity.defn(name="request_lock")
    async def request_lock(self, request: RequestLock) -> None:
        await super().request_lock(request)
        process = activity.client().get_workflow_handle(request.request.requester_workflow_id)

        async def granted() -> bool:
            return any(
                e.workflow_execution_signaled_event_attributes.signal_name == "lock_granted"
                for e in _of(
                    list((await process.fetch_history()).events),
                    E.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED,
                )
            )

        await eventually(granted, what="the grant before the request's result")


@pytest.mark.parametrize("fakes", [Fakes, GrantFirst], ids=["request-first", "grant-first"])
async def test_the_sends_leave_in_the_task_that_took_the_grant(
    time_env: WorkflowEnvironment, fakes: type[Fakes]
) -> None:
    """Inside the lock, the in-progress write no longer costs a workflow task of its own: the
    task that takes the grant writes the record and schedules both sends.

    The process takes the grant once it holds both the ``lock_granted`` signal and the result
    of its ``request_lock`` activity. Usually the activity's result comes first; under load the
    mutex's grant can overtake it (the activity signals the mutex, which grants at once), and
    the task that runs the grant's handler then only waits for the activity: a task the
    server makes for the signal, not one the write costs."""
    async with harness(time_env.client, fakes()) as h:
        _, events = await _completed(h)
    (granted,) = [
        e
        for e in _of(events, E.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED)
        if e.workflow_execution_signaled_event_attributes.signal_name == "lock_granted"
    ]
    (requested,) = _completed_activities(events, "request_lock")
    sends = _scheduled(events, "send_command_one", "send_command_two")
    assert len(sends) == 2
    # Between holding the grant and the sends, one workflow task completes: the one that took it.
    holds_the_grant = max(granted.event_id, requested.event_id)
    tasks = [
        e
        for e in _of(events, E.EVENT_TYPE_WORKFLOW_TASK_COMPLETED)
        if holds_the_grant < e.event_id < min(s.event_id for s in sends)
    ]
    assert len(tasks) == 1, [E.Name(e.event_type) for e in events]


async def test_no_send_leaves_before_the_record_says_in_progress(
    time_env: WorkflowEnvironment,
) -> None:
    """The write and the sends share a task, but the write still comes first: even when its try
    in the worker fails and it goes on as an activity, no send is scheduled before it is done.

    The failing try is what makes this able to fail: a local write that succeeds holds the
    task's commands (the sends among them) until it is done, so the sends would come after it
    even if the workflow did not wait for it."""
    seen: dict[CommandName, ProcessStatus] = {}

    class Watching(Fakes):
        in_progress_failures = 1

        @activity.defn(name="update_process_status")
        async def update_process_status(self, update: UpdateProcessStatus) -> StatusUpdateResult:
            if update.status is ProcessStatus.IN_PROGRESS and self.in_progress_failures > 0:
                self.in_progress_failures -= 1
                raise RuntimeError("DynamoDB unavailable (scripted)")
            return await super().update_process_status(update)

        def _record_send(self, command: SendCommand) -> None:
            seen[command.command] = self.records[command.process_id]["status"]
            super()._record_send(command)

    async with harness(time_env.client, Watching()) as h:
        _, events = await _completed(h)
    assert seen == {name: ProcessStatus.IN_PROGRESS for name in CommandName}
    # The worker's try failed: the in-progress write went on as an activity ...
    (write,) = _scheduled(events, "update_process_status")
    (written,) = [
        e
        for e in _of(events, E.EVENT_TYPE_ACTIVITY_TASK_COMPLETED)
        if e.activity_task_completed_event_attributes.scheduled_event_id == write.event_id
    ]
    # ... and every send was scheduled after that activity completed.
    sends = _scheduled(events, "send_command_one", "send_command_two")
    assert len(sends) == 2
    assert all(s.event_id > written.event_id for s in sends), [E.Name(e.event_type) for e in events]


async def test_a_failing_record_write_goes_on_as_an_activity_with_the_original_retries(
    time_env: WorkflowEnvironment,
) -> None:
    """The worker's one quick try fails: the server takes the write over as an activity, with
    the original's retries (2 min x attempt), and the record is made once."""
    fakes = Fakes(create_failures=2)
    async with harness(time_env.client, fakes) as h:
        handle = await h.start()
        await eventually(lambda: fakes.create_calls[handle.id] == 2, what="the activity's try")
        await h.advance(timedelta(minutes=2, seconds=30))
        await eventually(lambda: handle.id in fakes.approvals, what="the approval request")
        events = list((await handle.fetch_history()).events)
    (local,) = _local_activities(events, "create_process")
    assert local.HasField("failure")
    (scheduled,) = _scheduled(events, "create_process")
    (started,) = [
        e
        for e in _of(events, E.EVENT_TYPE_ACTIVITY_TASK_STARTED)
        if e.activity_task_started_event_attributes.scheduled_event_id == scheduled.event_id
    ]
    assert started.activity_task_started_event_attributes.attempt == 2
    waited = started.event_time.ToDatetime() - scheduled.event_time.ToDatetime()
    assert timedelta(minutes=2) <= waited < timedelta(minutes=3)
    assert fakes.create_calls[handle.id] == 3
    assert fakes.history[handle.id][0] is ProcessStatus.PENDING  # made once, on the third try


async def test_a_write_no_retry_can_fix_is_not_handed_on(time_env: WorkflowEnvironment) -> None:
    """The record is gone: the worker's try says so, and no activity tries again."""
    async with harness(time_env.client) as h:
        handle = await h.start()
        await eventually(lambda: handle.id in h.fakes.records, what="record created")
        del h.fakes.records[handle.id]
        await h.approve(handle)
        with pytest.raises(WorkflowFailureError):
            await handle.result()
        events = list((await handle.fetch_history()).events)
    writes = _local_activities(events, "update_process_status")
    assert [w.HasField("failure") for w in writes] == [True, True]  # in-progress, then failed
    assert not _scheduled(events, "update_process_status")
