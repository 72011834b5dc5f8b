"""Scenarios of the operators' patches (issue 11): command heartbeats, redrive, mutex priority,
approval links in the process's trace.

``command-heartbeats``, ``redrive``, ``approval-links-traced`` (ProcessWorkflow) and
``mutex-priority`` (MutexWorkflow) each guard a branch that only processes started from them on
take; each scenario asserts its patch's marker is in the history it saves. Names start ``ops_``
so they can be recorded on their own (``--only 'ops_*'``) beside other changes' histories in one
version folder.
"""

from __future__ import annotations

import argparse
import asyncio
import uuid
from datetime import timedelta
from typing import Any

from opentelemetry.sdk.trace import TracerProvider
from temporalio.client import Client, WorkflowHandle
from temporalio.contrib.opentelemetry import TracingInterceptor

from cli import redrive
from cli.settings import CliSettings
from tests.workflow.fakes import eventually
from tests.workflow.harness import Harness, harness
from tests.workflow.record_histories.recording import (
    FAST_RETRIES,
    PATIENCE,
    SECOND,
    E,
    History,
    Recording,
    start,
)
from workflows.asking import APPROVAL_LINKS_TRACED_PATCH
from workflows.messages import (
    PROCESS_ID_PREFIX,
    ApprovalPolicy,
    CommandHeartbeat,
    CommandName,
    FailureReason,
    LinkTrace,
    LockRelease,
    ProcessInput,
    mutex_workflow_id,
)
from workflows.mutex import PRIORITY_PATCH, MutexWorkflow
from workflows.process import (
    COMMAND_HEARTBEATS_PATCH,
    LOCAL_WRITES_PATCH,
    REDRIVE_PATCH,
    ProcessWorkflow,
)

ONE, TWO = CommandName.ONE, CommandName.TWO
HEARTBEAT = 2 * SECOND
# The commands' callbacks never come unless a scenario sends them: only heartbeats decide.
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


def _runs(history: History, patch: str) -> bool:
    """Whether the run took the branch of a process ``patch``: its marker, or the marker of
    ``process-local-writes``, which stands for every process patch before it."""
    return _patched(history, patch) or _patched(history, LOCAL_WRITES_PATCH)


async def _beat(handle: WorkflowHandle[Any, Any], command: CommandName, progress: Any) -> None:
    await handle.signal(
        ProcessWorkflow.command_heartbeat,
        CommandHeartbeat(command=command.value, progress=progress),
    )


async def ops_heartbeat_missed(rec: Recording) -> None:
    """Command one's system falls silent: timed out after the heartbeat timeout, not the hour."""
    async with harness(rec.client) as h:
        handle = await start(h, command_heartbeat_timeout=HEARTBEAT, **PATIENT)
        await h.approve(handle)
        await h.wait_sent(handle)
        await _beat(handle, ONE, {"percent": 10})
        await h.call_back(handle, TWO)
        history = await rec.failed(handle, FailureReason.COMMAND_TIMEOUT)
        assert _runs(history, COMMAND_HEARTBEATS_PATCH)
        assert history.signals_received("command_heartbeat") == 1
        assert history.of(E.EVENT_TYPE_TIMER_FIRED)
        rec.save("ops_heartbeat_missed", history)


async def ops_heartbeats_kept_alive(rec: Recording) -> None:
    """Heartbeats for twice the heartbeat timeout keep both commands alive; then they succeed.

    The scenario plays the downstream systems, which heartbeat on a clock of their own: a pause
    between heartbeats is their cadence (a quarter of the timeout), not a wait for a condition.
    """
    async with harness(rec.client) as h:
        handle = await start(h, command_heartbeat_timeout=HEARTBEAT, **PATIENT)
        await h.approve(handle)
        await h.wait_sent(handle)
        for percent in range(0, 100, 12):  # 9 heartbeats, HEARTBEAT / 4 apart
            await _beat(handle, ONE, {"percent": percent})
            await _beat(handle, TWO, None)
            await asyncio.sleep(HEARTBEAT.total_seconds() / 4)
        state = await h.state(handle)
        assert [c.status for c in state.commands.values()] == ["sent", "sent"]
        await h.call_back(handle, ONE)
        await h.call_back(handle, TWO)
        history = await rec.completed(handle)
        assert _runs(history, COMMAND_HEARTBEATS_PATCH)
        assert history.signals_received("command_heartbeat") == 18
        # Each command's heartbeat timer fired at least once and found a newer heartbeat.
        assert len(history.of(E.EVENT_TYPE_TIMER_FIRED)) >= 2
        rec.save("ops_heartbeats_kept_alive", history)


async def _redrive(h: Harness, process_id: str) -> WorkflowHandle[Any, Any]:
    settings = CliSettings(task_queue=h.task_queue, inbox_url=None)
    args = argparse.Namespace(process_id=process_id, wait=0.0)
    document, _ = await redrive.run(args, h.client, settings)
    return h.client.get_workflow_handle(document["process_id"])


async def ops_redrive_completed(rec: Recording) -> None:
    """Command two failed; the redrive keeps the approval and command one, sends command two."""
    async with harness(rec.client) as h:
        original = await start(h)
        await h.approve(original)
        await h.wait_sent(original)
        await h.call_back(original, ONE)
        await h.call_back(original, TWO, status="failed")
        await rec.failed(original, FailureReason.COMMAND_FAILED)
        again = await _redrive(h, original.id)
        await h.wait_sent(again, TWO)
        await h.call_back(again, TWO)
        history = await rec.completed(again)
        assert _runs(history, REDRIVE_PATCH)
        assert not history.activities("publish_approval_request")
        assert not history.activities("send_command_one") and history.activities("send_command_two")
        assert history.activities("request_lock")
        rec.save("ops_redrive_completed", history)


async def ops_redrive_asks_again(rec: Recording) -> None:
    """A rejected process, redriven: asked again, approved, both commands sent."""
    async with harness(rec.client) as h:
        original = await start(h)
        await h.approve(original, approved=False)
        await rec.failed(original, FailureReason.REJECTED)
        again = await _redrive(h, original.id)
        await h.approve(again)
        await h.wait_sent(again)
        await h.call_back(again, ONE)
        await h.call_back(again, TWO)
        history = await rec.completed(again)
        assert _runs(history, REDRIVE_PATCH)
        assert history.activities("publish_approval_request")
        rec.save("ops_redrive_asks_again", history)


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


async def _start_traced(h: Harness, **overrides: Any) -> WorkflowHandle[Any, Any]:
    """Start a process as a traced starter does (the CLI with OTEL_* set): the start's headers
    carry its trace context, which the workflow reads for the links it has mailed."""
    provider = TracerProvider()  # spans made and dropped: only the header matters here
    config = h.client.config()
    config["interceptors"] = [TracingInterceptor(provider.get_tracer("record_histories"))]
    options = h.options(**{**FAST_RETRIES, **overrides})
    return await Client(**config).start_workflow(
        ProcessWorkflow.run,
        ProcessInput(requested_by="alice", description="traced", options=options),
        id=f"{PROCESS_ID_PREFIX}{uuid.uuid4()}",
        task_queue=h.task_queue,
    )


def _link_traces(h: Harness, process_id: str) -> set[LinkTrace | None]:
    mailed = [n.link_trace for n in h.fakes.notices[process_id]]
    shared = h.fakes.approvals.get(process_id)
    return {*mailed, *([shared.link_trace] if shared else [])}


async def ops_links_traced_named(rec: Recording) -> None:
    """A traced process with a named approver, reminded once: every mail's links continue the
    process's trace (patch approval-links-traced), the same in the reminder."""
    async with harness(rec.client) as h:
        policy = ApprovalPolicy(approvers="ada@example.test=Ada", remind_every=SECOND)
        handle = await _start_traced(h, approval=policy)
        await eventually(
            lambda: h.fakes.mailed(handle.id, "reminder"), within=PATIENCE, what="a reminder"
        )
        await h.decide_as(handle, "ada@example.test")
        await h.wait_sent(handle)
        await h.call_back(handle, ONE)
        await h.call_back(handle, TWO)
        history = await rec.completed(handle)
        assert _runs(history, APPROVAL_LINKS_TRACED_PATCH)
        [trace] = _link_traces(h, handle.id)
        assert trace is not None and trace.traceparent is not None
        rec.save("ops_links_traced_named", history)


async def ops_links_traced_shared(rec: Recording) -> None:
    """A traced process without named approvers: the shared link carries the process's trace."""
    async with harness(rec.client) as h:
        handle = await _start_traced(h)
        await h.approve(handle)
        await h.wait_sent(handle)
        await h.call_back(handle, ONE)
        await h.call_back(handle, TWO)
        history = await rec.completed(handle)
        assert _runs(history, APPROVAL_LINKS_TRACED_PATCH)
        [trace] = _link_traces(h, handle.id)
        assert trace is not None and trace.traceparent is not None
        rec.save("ops_links_traced_shared", history)


SCENARIOS = [
    ops_heartbeat_missed,
    ops_heartbeats_kept_alive,
    ops_redrive_completed,
    ops_redrive_asks_again,
    ops_mutex_priority,
    ops_links_traced_named,
    ops_links_traced_shared,
]
