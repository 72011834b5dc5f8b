"""What every scenario shares: where its histories go, and the checks that prove what they cover.

A scenario asserts on the history itself (the close event, the failure type, an activity's attempt,
a timer that fired, a signal sent or received) before it saves it, so a recording that took
another path than its name says fails instead of quietly guarding the wrong branch.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from temporalio.api.common.v1 import Payload
from temporalio.api.enums.v1 import EventType, WorkflowTaskFailedCause
from temporalio.api.history.v1 import (
    ActivityTaskStartedEventAttributes,
    HistoryEvent,
    MarkerRecordedEventAttributes,
)
from temporalio.client import Client, WorkflowFailureError, WorkflowHandle, WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.exceptions import ApplicationError, CancelledError

from tests.workflow.fakes import eventually
from tests.workflow.harness import Harness
from workflows.messages import (
    CommandName,
    FailureReason,
    MutexInput,
    MutexOptions,
    MutexState,
    ProcessResult,
    RetrySettings,
    mutex_workflow_id,
)
from workflows.mutex import MutexWorkflow
from workflows.process import ProcessWorkflow

# Real time passes on the dev server: every wait the workflows make is cut to about a second.
SECOND = timedelta(seconds=1)
FAST_RETRIES: dict[str, Any] = {
    "aws_retry": RetrySettings(max_attempts=3, delay=SECOND),
    "http_retry": RetrySettings(max_attempts=5, delay=SECOND),
}
# How long a scenario waits for any one thing on a machine shared with others.
PATIENCE = 30.0

E = EventType
UNHANDLED_COMMAND = WorkflowTaskFailedCause.WORKFLOW_TASK_FAILED_CAUSE_UNHANDLED_COMMAND
_ACTIVITY_CLOSED = (
    E.EVENT_TYPE_ACTIVITY_TASK_COMPLETED,
    E.EVENT_TYPE_ACTIVITY_TASK_FAILED,
    E.EVENT_TYPE_ACTIVITY_TASK_TIMED_OUT,
    E.EVENT_TYPE_ACTIVITY_TASK_CANCELED,
)


@dataclass(frozen=True)
class History:
    """A fetched history and the questions the scenarios ask of it."""

    history: WorkflowHistory

    @property
    def events(self) -> Sequence[HistoryEvent]:
        return self.history.events

    @property
    def closed_by(self) -> EventType.ValueType:
        return self.events[-1].event_type

    def of(self, kind: EventType.ValueType) -> list[HistoryEvent]:
        return [e for e in self.events if e.event_type == kind]

    def failure_type(self) -> str:
        """The ``ApplicationError`` type the workflow failed with (the failure reason)."""
        assert self.closed_by == E.EVENT_TYPE_WORKFLOW_EXECUTION_FAILED, self.closed_by
        failure = self.events[-1].workflow_execution_failed_event_attributes.failure
        return failure.application_failure_info.type

    def signals_received(self, name: str) -> int:
        events = self.of(E.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED)
        return sum(
            e.workflow_execution_signaled_event_attributes.signal_name == name for e in events
        )

    def signals_sent(self, name: str) -> int:
        events = self.of(E.EVENT_TYPE_SIGNAL_EXTERNAL_WORKFLOW_EXECUTION_INITIATED)
        attributes = [
            e.signal_external_workflow_execution_initiated_event_attributes for e in events
        ]
        return sum(a.signal_name == name for a in attributes)

    def activities(self, name: str) -> list[int]:
        """Event ids of the scheduled activities of type ``name``."""
        kind = E.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
        return [
            e.event_id
            for e in self.of(kind)
            if e.activity_task_scheduled_event_attributes.activity_type.name == name
        ]

    def local_activities(self, name: str) -> list[MarkerRecordedEventAttributes]:
        """The markers of local activity ``name`` (the process table's writes, from patch
        ``process-local-writes`` on): one per call, with its ``failure`` when it failed."""
        recorded = self.of(E.EVENT_TYPE_MARKER_RECORDED)
        markers = [e.marker_recorded_event_attributes for e in recorded]
        return [
            marker
            for marker in markers
            if marker.marker_name == "core_local_activity"
            and _json(marker.details["data"].payloads).get("activity_type") == name
        ]

    def attempts(self, name: str) -> list[ActivityTaskStartedEventAttributes]:
        """The started events of activity ``name``: ``attempt`` > 1 means it was retried."""
        scheduled = set(self.activities(name))
        events = self.of(E.EVENT_TYPE_ACTIVITY_TASK_STARTED)
        started = [e.activity_task_started_event_attributes for e in events]
        return [a for a in started if a.scheduled_event_id in scheduled]

    def closed_activities(self, name: str, kind: EventType.ValueType) -> int:
        scheduled = set(self.activities(name))
        return sum(_scheduled_id(e) in scheduled for e in self.of(kind))

    def timers_after(self, name: str) -> int:
        """Timers started after the last activity of type ``name`` completed."""
        scheduled = set(self.activities(name))
        done = [
            e.event_id
            for e in self.of(E.EVENT_TYPE_ACTIVITY_TASK_COMPLETED)
            if e.activity_task_completed_event_attributes.scheduled_event_id in scheduled
        ]
        assert done, f"no {name} completed"
        return sum(e.event_id > done[-1] for e in self.of(E.EVENT_TYPE_TIMER_STARTED))

    def unfinished_activities(self, name: str) -> int:
        """Activities of type ``name`` the workflow stopped waiting for (ABANDON, or closed)."""
        closed = {_scheduled_id(e) for e in self.events if e.event_type in _ACTIVITY_CLOSED}
        return sum(event_id not in closed for event_id in self.activities(name))

    def continued_as_new_with(self) -> MutexInput:
        """The input the run handed to its successor."""
        assert self.closed_by == E.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW, self.closed_by
        attributes = self.events[-1].workflow_execution_continued_as_new_event_attributes
        (carried,) = pydantic_data_converter.payload_converter.from_payloads(
            attributes.input.payloads, [MutexInput]
        )
        assert isinstance(carried, MutexInput)
        return carried

    def next_run_id(self) -> str | None:
        if self.closed_by != E.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW:
            return None
        attributes = self.events[-1].workflow_execution_continued_as_new_event_attributes
        return attributes.new_execution_run_id

    def settled(self) -> bool:
        """Idle, and no activity or outgoing signal is waiting for its outcome either."""
        if not self.idle():
            return False
        outcomes = {
            E.EVENT_TYPE_EXTERNAL_WORKFLOW_EXECUTION_SIGNALED,
            E.EVENT_TYPE_SIGNAL_EXTERNAL_WORKFLOW_EXECUTION_FAILED,
        }
        signals = len(self.of(E.EVENT_TYPE_SIGNAL_EXTERNAL_WORKFLOW_EXECUTION_INITIATED))
        answered = sum(e.event_type in outcomes for e in self.events)
        scheduled = len(self.of(E.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED))
        closed = sum(e.event_type in _ACTIVITY_CLOSED for e in self.events)
        return signals == answered and scheduled == closed

    def idle(self) -> bool:
        """No workflow task outstanding: the history will not change until something arrives."""
        scheduled = len(self.of(E.EVENT_TYPE_WORKFLOW_TASK_SCHEDULED))
        ended = sum(
            len(self.of(kind))
            for kind in (
                E.EVENT_TYPE_WORKFLOW_TASK_COMPLETED,
                E.EVENT_TYPE_WORKFLOW_TASK_FAILED,
                E.EVENT_TYPE_WORKFLOW_TASK_TIMED_OUT,
            )
        )
        return scheduled == ended


def _json(payloads: Sequence[Payload]) -> dict[str, Any]:
    """The first payload as a JSON object (a marker's details)."""
    decoded = json.loads(payloads[0].data) if payloads else {}
    return decoded if isinstance(decoded, dict) else {}


def _scheduled_id(event: HistoryEvent) -> int:
    attributes = getattr(event, event.WhichOneof("attributes") or "")
    return int(attributes.scheduled_event_id)


@dataclass
class Recording:
    """The dev server's client and the folder this recording writes into."""

    client: Client
    folder: Path
    saved: dict[str, int] = field(default_factory=dict)

    async def history(self, workflow_id: str, run_id: str | None = None) -> History:
        handle = self.client.get_workflow_handle(workflow_id, run_id=run_id)
        return History(await handle.fetch_history())

    def save(self, name: str, history: History) -> None:
        """Write one run's history as ``<name>.json``, after the checks every recording needs."""
        assert name not in self.saved, f"two scenarios save {name}"
        # A task the server refused because a signal came in meanwhile is the protocol at work
        # (a continue-as-new racing a signal); any other failed task is a bug in the code.
        failed_tasks = [
            e
            for e in history.of(E.EVENT_TYPE_WORKFLOW_TASK_FAILED)
            if e.workflow_task_failed_event_attributes.cause != UNHANDLED_COMMAND
        ]
        assert not failed_tasks, f"{name}: a workflow task failed: {failed_tasks[0]}"
        (self.folder / f"{name}.json").write_text(history.history.to_json() + "\n")
        self.saved[name] = len(history.events)

    # -- process expectations --------------------------------------------------------------

    async def completed(self, handle: WorkflowHandle[Any, Any]) -> History:
        await handle.result()
        history = await self.history(handle.id)
        assert history.closed_by == E.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED
        return history

    async def failed(self, handle: WorkflowHandle[Any, Any], reason: FailureReason) -> History:
        """Wait for the process to fail with ``reason`` as its ``ApplicationError`` type."""
        try:
            await handle.result()
        except WorkflowFailureError as err:
            assert isinstance(err.cause, ApplicationError), err.cause
            assert err.cause.type == reason.value, f"{err.cause.type}: {err.cause.message}"
        else:
            raise AssertionError(f"{handle.id} completed; expected {reason.value}")
        history = await self.history(handle.id)
        assert history.failure_type() == reason.value
        return history

    async def cancelled(self, handle: WorkflowHandle[Any, Any]) -> History:
        """Wait for the process to end Cancelled (after its cleanup marked the record)."""
        try:
            await handle.result()
        except WorkflowFailureError as err:
            assert isinstance(err.cause, CancelledError), err.cause
        else:
            raise AssertionError(f"{handle.id} completed; expected it cancelled")
        history = await self.history(handle.id)
        assert history.closed_by == E.EVENT_TYPE_WORKFLOW_EXECUTION_CANCELED, history.closed_by
        return history

    async def until(self, handle: WorkflowHandle[Any, Any], what: str, check: Any) -> History:
        """Wait until ``check(history)`` holds and no workflow task is outstanding."""
        found: list[History] = []

        async def holds() -> bool:
            history = await self.history(handle.id)
            found[:] = [history]
            return history.idle() and bool(check(history))

        await eventually(holds, within=PATIENCE, what=what)
        return found[0]

    # -- mutex helpers ------------------------------------------------------------------------

    async def start_mutex(self, h: Harness, **options: Any) -> str:
        """Start the resource's mutex first, with short intervals; requests then join it."""
        handle = await self.client.start_workflow(
            MutexWorkflow.run,
            MutexInput(resource=h.resource, options=MutexOptions(**options)),
            id=mutex_workflow_id(h.resource),
            task_queue=h.task_queue,
        )
        assert handle.result_run_id is not None
        return handle.result_run_id

    async def mutex_idle(self, h: Harness) -> tuple[MutexState, History]:
        """Wait until nobody holds or waits for the lock and the mutex has nothing left to do."""
        mutex_id = mutex_workflow_id(h.resource)
        seen: list[tuple[MutexState, History]] = []

        async def idle() -> bool:
            state = await h.mutex_state()
            history = await self.history(mutex_id)
            seen[:] = [(state, history)]
            return state.holder is None and not state.queue and history.settled()

        await eventually(idle, within=PATIENCE, what=f"{mutex_id} idle")
        return seen[0]


async def start(
    h: Harness, requested_by: str = "alice", **overrides: Any
) -> WorkflowHandle[ProcessWorkflow, ProcessResult]:
    """Start a process whose retries wait a second instead of minutes."""
    return await h.start(requested_by, **{**FAST_RETRIES, **overrides})


async def queued(h: Harness, process_id: str) -> bool:
    """Whether the process waits in the mutex's queue."""
    state = await h.mutex_state()
    return any(r.requester_workflow_id == process_id for r in state.queue)


async def sent(h: Harness, handle: WorkflowHandle[Any, Any], command: CommandName) -> bool:
    """Whether the process has seen ``command``'s send succeed (a retried one included)."""
    return (await h.state(handle)).commands[command].status == "sent"
