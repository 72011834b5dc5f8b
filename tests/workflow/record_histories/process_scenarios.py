"""ProcessWorkflow scenarios: one function per branch, each saving the run it drove.

Activities are the in-memory fakes (replay never runs activities); the mutex is real.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from temporalio.client import WorkflowHandle

from tests.workflow.fakes import Fakes, HttpReply, eventually
from tests.workflow.harness import harness
from tests.workflow.record_histories.recording import (
    PATIENCE,
    SECOND,
    E,
    Recording,
    queued,
    sent,
    start,
)
from workflows.messages import (
    CommandName,
    CompletionPolicy,
    FailureReason,
    LockRequest,
    ProcessStatus,
    RetrySettings,
    mutex_workflow_id,
)
from workflows.mutex import MutexWorkflow

ONE, TWO = CommandName.ONE, CommandName.TWO
SEND_TWO = "send_command_two"


async def completed(rec: Recording) -> None:
    async with harness(rec.client) as h:
        handle = await start(h)
        await h.approve(handle)
        await h.wait_sent(handle)
        await h.call_back(handle, ONE)
        await h.call_back(handle, TWO)
        history = await rec.completed(handle)
        assert history.signals_sent("release") == 1
        rec.save("process_completed", history)


async def rejected(rec: Recording) -> None:
    async with harness(rec.client) as h:
        handle = await start(h)
        await h.approve(handle, approved=False)
        history = await rec.failed(handle, FailureReason.REJECTED)
        assert not history.activities("request_lock")
        rec.save("process_rejected", history)


async def approval_timeout(rec: Recording) -> None:
    async with harness(rec.client) as h:
        handle = await start(h, approval_timeout=SECOND)
        history = await rec.failed(handle, FailureReason.APPROVAL_TIMEOUT)
        assert history.of(E.EVENT_TYPE_TIMER_FIRED)
        rec.save("process_approval_timeout", history)


async def command_failed(rec: Recording) -> None:
    async with harness(rec.client) as h:
        handle = await start(h)
        await h.approve(handle)
        await h.wait_sent(handle)
        await h.call_back(handle, TWO, status="failed")
        history = await rec.failed(handle, FailureReason.COMMAND_FAILED)
        assert history.signals_received("command_callback") == 1
        rec.save("process_command_failed", history)


async def command_send_failed(rec: Recording) -> None:
    """HTTP 400 is final: the send fails at once and the process fails ``command-failed``."""
    async with harness(rec.client) as h:
        handle = await start(h)
        h.fakes.http_replies[handle.id] = [HttpReply(400)]
        await h.approve(handle)
        history = await rec.failed(handle, FailureReason.COMMAND_FAILED)
        assert history.closed_activities(SEND_TWO, E.EVENT_TYPE_ACTIVITY_TASK_FAILED) == 1
        assert len(h.fakes.sends[(handle.id, TWO)]) == 1  # not retried
        rec.save("process_command_send_failed", history)


async def command_timeout(rec: Recording) -> None:
    async with harness(rec.client) as h:
        handle = await start(h, command_timeout=SECOND)
        await h.approve(handle)
        history = await rec.failed(handle, FailureReason.COMMAND_TIMEOUT)
        assert len(history.of(E.EVENT_TYPE_TIMER_FIRED)) >= 1
        assert history.signals_received("command_callback") == 0
        rec.save("process_command_timeout", history)


async def cancelled_awaiting_approval(rec: Recording) -> None:
    async with harness(rec.client) as h:
        handle = await start(h)
        await rec.until(
            handle,
            "approval timer started",
            lambda history: history.of(E.EVENT_TYPE_TIMER_STARTED),
        )
        await handle.cancel()
        history = await rec.cancelled(handle)
        assert history.of(E.EVENT_TYPE_WORKFLOW_EXECUTION_CANCEL_REQUESTED)
        assert not history.activities("request_lock")
        assert h.fakes.records[handle.id]["reason"] == FailureReason.CANCELLED
        rec.save("process_cancelled_awaiting_approval", history)


async def cancelled_during_activity(rec: Recording) -> None:
    """A cancel that reaches the workflow through an activity (publish held in flight)."""
    fakes = Fakes(publish_gate=asyncio.Event())
    async with harness(rec.client, fakes) as h:
        handle = await start(h)
        await eventually(lambda: handle.id in fakes.publishing, within=PATIENCE, what="publish")
        await handle.cancel()
        try:
            history = await rec.cancelled(handle)
        finally:
            assert fakes.publish_gate is not None
            fakes.publish_gate.set()
        assert history.of(E.EVENT_TYPE_ACTIVITY_TASK_CANCEL_REQUESTED)
        rec.save("process_cancelled_during_activity", history)


async def cancelled_while_sending(rec: Recording) -> None:
    """Cancelled in the command phase while the HTTP send is being retried after 503s."""
    async with harness(rec.client) as h:
        handle = await start(h)
        h.fakes.http_replies[handle.id] = [HttpReply(503)] * 10
        await h.approve(handle)
        await eventually(
            lambda: len(h.fakes.sends[(handle.id, TWO)]) >= 2, within=PATIENCE, what="a retry"
        )
        await handle.cancel()
        history = await rec.cancelled(handle)
        # Cancelled between two attempts, and waited for: not abandoned.
        assert history.unfinished_activities(SEND_TWO) == 0
        assert history.closed_activities(SEND_TWO, E.EVENT_TYPE_ACTIVITY_TASK_CANCELED) == 1
        assert history.signals_sent("release") == 1
        rec.save("process_cancelled_while_sending", history)


async def cancelled_during_cleanup(rec: Recording) -> None:
    """An operator cancels a process that is already failing: the cleanup still finishes."""
    fakes = Fakes(fail_gate=asyncio.Event())
    async with harness(rec.client, fakes) as h:
        handle = await start(h)
        await h.approve(handle, approved=False)
        # The write runs as a local activity (no event until it ends): the fake says it began.
        await eventually(
            lambda: handle.id in fakes.fail_waiting, within=PATIENCE, what="the failed write"
        )
        await handle.cancel()
        await _cancel_delivered(rec, handle)
        assert fakes.fail_gate is not None
        fakes.fail_gate.set()
        history = await rec.failed(handle, FailureReason.REJECTED)
        assert fakes.records[handle.id]["reason"] == FailureReason.REJECTED
        rec.save("process_cancelled_during_cleanup", history)


async def _cancel_delivered(rec: Recording, handle: WorkflowHandle[Any, Any]) -> None:
    """Wait until the cancel is recorded and handed to a workflow task while a write still runs:
    never idle meanwhile (the task that runs a local activity stays open, heartbeating)."""

    async def delivered() -> bool:
        events = (await rec.history(handle.id)).events
        kinds = [e.event_type for e in events]
        requested = E.EVENT_TYPE_WORKFLOW_EXECUTION_CANCEL_REQUESTED
        return (
            requested in kinds
            and E.EVENT_TYPE_WORKFLOW_TASK_STARTED in kinds[kinds.index(requested) :]
        )

    await eventually(delivered, within=PATIENCE, what="the cancel delivered")


async def cancelled_while_completing(rec: Recording) -> None:
    """A cancel that arrives while the record is written ``completed``: both commands are done
    and the lock given back, so it changes nothing; the process completes."""
    fakes = Fakes(complete_gate=asyncio.Event())
    async with harness(rec.client, fakes) as h:
        handle = await start(h)
        await h.approve(handle)
        await h.wait_sent(handle)
        await h.call_back(handle, ONE)
        await h.call_back(handle, TWO)
        await eventually(
            lambda: handle.id in fakes.complete_waiting, within=PATIENCE, what="completed write"
        )
        await handle.cancel()
        await _cancel_delivered(rec, handle)
        assert fakes.complete_gate is not None
        fakes.complete_gate.set()
        history = await rec.completed(handle)
        assert history.of(E.EVENT_TYPE_WORKFLOW_EXECUTION_CANCEL_REQUESTED)
        assert history.signals_sent("release") == 1
        assert fakes.records[handle.id]["status"] is ProcessStatus.COMPLETED
        rec.save("process_cancelled_while_completing", history)


async def options_out_of_range(rec: Recording) -> None:
    """Started without the starters' check, with an approval timeout past the year 9999: the
    process fails ``error`` at once, its record marked, instead of failing a task for ever."""
    async with harness(rec.client) as h:
        handle = await start(h, approval_timeout=timedelta(days=3_000_000))
        history = await rec.failed(handle, FailureReason.ERROR)
        assert not history.activities("request_lock")
        assert h.fakes.records[handle.id]["status"] is ProcessStatus.FAILED
        rec.save("process_options_out_of_range", history)


async def error_record_missing(rec: Recording) -> None:
    """A non-retryable activity failure (the record vanished) fails the process ``error``."""
    async with harness(rec.client) as h:
        handle = await start(h)
        await eventually(lambda: handle.id in h.fakes.records, within=PATIENCE, what="record")
        del h.fakes.records[handle.id]
        await h.approve(handle)
        history = await rec.failed(handle, FailureReason.ERROR)
        # Both the in-progress write and the cleanup's failed write are refused.
        writes = history.local_activities("update_process_status")
        assert [w.HasField("failure") for w in writes] == [True, True]
        assert history.signals_sent("release") == 1
        rec.save("process_error_record_missing", history)


async def error_lease_revoked(rec: Recording) -> None:
    """The lease expires while the commands wait: the mutex revokes it, the process fails."""
    async with harness(rec.client) as h:
        await rec.start_mutex(h, liveness_interval=SECOND)
        handle = await start(h, lease_timeout=SECOND)
        await h.approve(handle)
        history = await rec.failed(handle, FailureReason.ERROR)
        assert history.signals_received("lock_revoked") == 1
        assert history.signals_sent("release") == 0  # a revoked lease is not given back
        state, mutex = await rec.mutex_idle(h)
        assert state.counters.expired_leases == 1
        assert mutex.signals_sent("lock_revoked") == 1
        assert mutex.of(E.EVENT_TYPE_TIMER_FIRED)
        rec.save("process_error_lease_revoked", history)
        rec.save("mutex_lease_revoked", mutex)


async def retried_create(rec: Recording) -> None:
    async with harness(rec.client, Fakes(create_failures=1)) as h:
        handle = await start(h)
        await h.approve(handle)
        await h.wait_sent(handle)
        await h.call_back(handle, ONE)
        await h.call_back(handle, TWO)
        history = await rec.completed(handle)
        # The worker's try failed; the activity that took the write over succeeded.
        (local,) = history.local_activities("create_process")
        assert local.HasField("failure")
        (attempt,) = history.attempts("create_process")
        assert attempt.attempt == 1, attempt
        assert h.fakes.create_calls[handle.id] == 2
        rec.save("process_retried_create", history)


async def retried_http_503(rec: Recording) -> None:
    """503 then 200: retried after the linear delay (interval x attempt) the interceptor sets."""
    async with harness(rec.client) as h:
        handle = await start(h)
        h.fakes.http_replies[handle.id] = [HttpReply(503)]
        await h.approve(handle)
        await eventually(lambda: sent(h, handle, TWO), within=PATIENCE, what="the retried send")
        await h.call_back(handle, ONE)
        await h.call_back(handle, TWO)
        history = await rec.completed(handle)
        (attempt,) = history.attempts(SEND_TWO)
        assert attempt.attempt == 2, attempt
        retry = attempt.last_failure.application_failure_info.next_retry_delay
        assert retry.ToTimedelta() == SECOND, retry
        rec.save("process_retried_http_503", history)


async def retry_after_honoured(rec: Recording) -> None:
    """429 with Retry-After 1 s wins over a one-minute linear delay."""
    async with harness(rec.client) as h:
        slow = RetrySettings(max_attempts=5, delay=timedelta(minutes=1))
        handle = await start(h, http_retry=slow)
        h.fakes.http_replies[handle.id] = [HttpReply(429, retry_after=SECOND)]
        await h.approve(handle)
        await eventually(lambda: sent(h, handle, TWO), within=PATIENCE, what="the retried send")
        await h.call_back(handle, ONE)
        await h.call_back(handle, TWO)
        history = await rec.completed(handle)
        (attempt,) = history.attempts(SEND_TWO)
        assert attempt.attempt == 2, attempt
        retry = attempt.last_failure.application_failure_info.next_retry_delay
        assert retry.ToTimedelta() == SECOND, retry
        rec.save("process_retry_after_honoured", history)


async def min_successful_stops_send(rec: Recording) -> None:
    """min_successful=1: done on the first success; the other send, still retrying, is cancelled
    and waited for before the lock goes back."""
    async with harness(rec.client) as h:
        handle = await start(h, completion=CompletionPolicy(min_successful=1))
        h.fakes.http_replies[handle.id] = [HttpReply(503)] * 10
        await h.approve(handle)
        await h.wait_sent(handle, ONE)
        await eventually(
            lambda: len(h.fakes.sends[(handle.id, TWO)]) >= 2, within=PATIENCE, what="a retry"
        )
        await h.call_back(handle, ONE)
        history = await rec.completed(handle)
        result = await handle.result()
        assert [o.status for o in result.commands] == ["succeeded", "not-awaited"]
        assert history.unfinished_activities(SEND_TWO) == 0
        assert history.closed_activities(SEND_TWO, E.EVENT_TYPE_ACTIVITY_TASK_CANCELED) == 1
        rec.save("process_min_successful_stops_send", history)


async def stops_send_in_flight(rec: Recording) -> None:
    """min_successful=1 settles while the other send's request is in flight: the process cancels
    it, the cancel reaches the send by its heartbeat, and the lock goes back once it resolved."""
    gate = asyncio.Event()
    fakes = Fakes(send_gate=gate)
    async with harness(rec.client, fakes) as h:
        try:
            handle = await start(
                h,
                completion=CompletionPolicy(min_successful=1),
                send_heartbeat_timeout=SECOND,
            )
            await h.approve(handle)
            await h.wait_sent(handle, ONE)
            await h.wait_send_started(handle, TWO)
            await h.call_back(handle, ONE)
            await eventually(
                lambda: (handle.id, TWO) in fakes.cancels_seen, within=PATIENCE, what="the cancel"
            )
        finally:
            gate.set()
        history = await rec.completed(handle)
        assert history.of(E.EVENT_TYPE_ACTIVITY_TASK_CANCEL_REQUESTED)
        assert history.closed_activities(SEND_TWO, E.EVENT_TYPE_ACTIVITY_TASK_CANCELED) == 1
        canceled = history.of(E.EVENT_TYPE_ACTIVITY_TASK_CANCELED)[-1].event_id
        released = [
            e.event_id
            for e in history.of(E.EVENT_TYPE_SIGNAL_EXTERNAL_WORKFLOW_EXECUTION_INITIATED)
            if e.signal_external_workflow_execution_initiated_event_attributes.signal_name
            == "release"
        ]
        assert released and released[0] > canceled  # the lock went back after the send
        rec.save("process_stops_send_in_flight", history)


async def cancelled_send_in_flight(rec: Recording) -> None:
    """Cancelled while a send's request is in flight: the cleanup waits for it, then releases,
    marks the record, and the process ends Cancelled."""
    gate = asyncio.Event()
    fakes = Fakes(send_gate=gate)
    async with harness(rec.client, fakes) as h:
        try:
            handle = await start(h, send_heartbeat_timeout=SECOND)
            await h.approve(handle)
            await h.wait_sent(handle, ONE)
            await h.wait_send_started(handle, TWO)
            await handle.cancel()
            await eventually(
                lambda: (handle.id, TWO) in fakes.cancels_seen, within=PATIENCE, what="the cancel"
            )
        finally:
            gate.set()
        history = await rec.cancelled(handle)
        assert history.closed_activities(SEND_TWO, E.EVENT_TYPE_ACTIVITY_TASK_CANCELED) == 1
        assert history.signals_sent("release") == 1
        assert fakes.records[handle.id]["reason"] == FailureReason.CANCELLED
        rec.save("process_cancelled_send_in_flight", history)


async def tolerated_failure(rec: Recording) -> None:
    async with harness(rec.client) as h:
        handle = await start(h, completion=CompletionPolicy(tolerated_failure_count=1))
        await h.approve(handle)
        await h.wait_sent(handle)
        await h.call_back(handle, ONE, status="failed")
        await h.call_back(handle, TWO)
        history = await rec.completed(handle)
        result = await handle.result()
        assert [o.status for o in result.commands] == ["failed", "succeeded"]
        rec.save("process_tolerated_failure", history)


async def first_decision_wins(rec: Recording) -> None:
    async with harness(rec.client) as h:
        handle = await start(h)
        await h.approve(handle, by="bob")
        await h.approve(handle, approved=False, by="carol")
        await h.wait_sent(handle)
        await h.call_back(handle, ONE)
        await h.call_back(handle, TWO)
        history = await rec.completed(handle)
        assert history.signals_received("approval_decision") == 2
        assert (await h.state(handle)).approval.decided_by == "bob"
        rec.save("process_first_decision_wins", history)


async def repeated_and_unknown_callbacks(rec: Recording) -> None:
    async with harness(rec.client) as h:
        handle = await start(h)
        await h.approve(handle)
        await h.wait_sent(handle)
        await h.call_back(handle, ONE)
        await h.call_back(handle, ONE, status="failed")  # a repeat: ignored
        await h.call_back(handle, "command-three")  # unknown: ignored
        await h.call_back(handle, TWO)
        history = await rec.completed(handle)
        assert history.signals_received("command_callback") == 4
        rec.save("process_repeated_and_unknown_callbacks", history)


async def lock_contention(rec: Recording) -> None:
    """Behind a holder: processes time out waiting for the lock, or are cancelled waiting."""
    async with harness(rec.client) as h:
        holder = await start(h, requested_by="holder")
        await h.approve(holder)
        await h.wait_sent(holder)
        cancelled = await start(h, requested_by="cancelled")
        await h.approve(cancelled)
        await eventually(lambda: queued(h, cancelled.id), within=PATIENCE, what="the waiter queued")
        timed_out = await start(h, requested_by="timed-out", lock_timeout=SECOND)
        await h.approve(timed_out)
        lock_timeout = await rec.failed(timed_out, FailureReason.LOCK_TIMEOUT)
        assert lock_timeout.timers_after("request_lock") == 1
        # A deadline already past once the request is in (as after a slow request_lock).
        late = await start(h, requested_by="late", lock_timeout=timedelta(milliseconds=1))
        await h.approve(late)
        deadline_passed = await rec.failed(late, FailureReason.LOCK_TIMEOUT)
        assert deadline_passed.timers_after("request_lock") == 0  # no wait at all
        await cancelled.cancel()
        cancel = await rec.cancelled(cancelled)
        await h.call_back(holder, ONE)
        await h.call_back(holder, TWO)
        await rec.completed(holder)
        state, mutex = await rec.mutex_idle(h)
        assert state.counters.cancelled_requests == 3
        assert (state.counters.grants, state.counters.releases) == (1, 1)
        for history in (lock_timeout, deadline_passed, cancel):
            assert history.signals_sent("cancel") == 1
        assert mutex.signals_received("cancel") == 3
        rec.save("process_lock_timeout", lock_timeout)
        rec.save("process_lock_timeout_deadline_passed", deadline_passed)
        rec.save("process_cancelled_waiting_for_lock", cancel)
        rec.save("mutex_queued_requests_cancelled", mutex)


async def release_without_mutex(rec: Recording) -> None:
    """The mutex was terminated under a holder: its release fails, is logged, and it completes."""
    async with harness(rec.client) as h:
        handle = await start(h)
        await h.approve(handle)
        await h.wait_sent(handle)
        await rec.client.get_workflow_handle(mutex_workflow_id(h.resource)).terminate("operator")
        await h.call_back(handle, ONE)
        await h.call_back(handle, TWO)
        history = await rec.completed(handle)
        assert len(history.of(E.EVENT_TYPE_SIGNAL_EXTERNAL_WORKFLOW_EXECUTION_FAILED)) == 1
        rec.save("process_release_without_mutex", history)


async def _policy_not_met(rec: Recording, name: str, policy: CompletionPolicy) -> None:
    """Command one fails, command two succeeds, and ``policy`` does not accept that."""
    async with harness(rec.client) as h:
        handle = await start(h, completion=policy)
        await h.approve(handle)
        await h.wait_sent(handle)
        await h.call_back(handle, ONE, status="failed")
        history = await rec.failed(handle, FailureReason.COMMAND_FAILED)
        rec.save(name, history)


async def tolerated_count_exceeded(rec: Recording) -> None:
    policy = CompletionPolicy(tolerated_failure_count=0)
    await _policy_not_met(rec, "process_tolerated_count_exceeded", policy)


async def tolerated_percentage_exceeded(rec: Recording) -> None:
    policy = CompletionPolicy(tolerated_failure_percentage=40)
    await _policy_not_met(rec, "process_tolerated_percentage_exceeded", policy)


async def min_successful_unreachable(rec: Recording) -> None:
    policy = CompletionPolicy(min_successful=2)
    await _policy_not_met(rec, "process_min_successful_unreachable", policy)


async def late_grant_released(rec: Recording) -> None:
    """A grant that reaches a process after it stopped waiting is handed straight back.

    The race (a grant sent just before the requester's cancel arrives) cannot be timed from
    outside, so the recorder delivers the request once more after the cancel, as a late
    duplicate would: the real mutex then grants it to a process that is no longer waiting.
    """
    fakes = Fakes(fail_gate=asyncio.Event())  # keeps the late process open for its grant
    async with harness(rec.client, fakes) as h:
        holder = await start(h, requested_by="holder")
        await h.approve(holder)
        await h.wait_sent(holder)
        late = await start(h, requested_by="late", lock_timeout=SECOND)
        await h.approve(late)

        async def gave_up() -> bool:
            lock = (await h.state(late)).lock
            return (
                lock.status == "cancelled"
                and (await h.mutex_state()).counters.cancelled_requests == 1
            )

        await eventually(gave_up, within=PATIENCE, what="the late process to give up")
        lock = (await h.state(late)).lock
        assert lock.request_id is not None and lock.requested_at is not None
        mutex = rec.client.get_workflow_handle_for(MutexWorkflow.run, mutex_workflow_id(h.resource))
        await mutex.signal(
            MutexWorkflow.request,
            LockRequest(
                requester_workflow_id=late.id,
                request_id=lock.request_id,
                lease_timeout=h.options().lease_timeout,
                requested_at=lock.requested_at,
            ),
        )
        await h.call_back(holder, ONE)
        await h.call_back(holder, TWO)
        await rec.completed(holder)
        state, mutex_history = await rec.mutex_idle(h)
        assert (state.counters.grants, state.counters.releases) == (2, 2)
        assert fakes.fail_gate is not None
        fakes.fail_gate.set()
        history = await rec.failed(late, FailureReason.LOCK_TIMEOUT)
        assert history.signals_received("lock_granted") == 1
        assert history.signals_sent("cancel") == 1 and history.signals_sent("release") == 1
        rec.save("process_late_grant_released", history)
        rec.save("mutex_late_grant_released", mutex_history)


SCENARIOS = [
    completed,
    rejected,
    approval_timeout,
    command_failed,
    command_send_failed,
    command_timeout,
    cancelled_awaiting_approval,
    cancelled_during_activity,
    cancelled_while_sending,
    cancelled_during_cleanup,
    cancelled_while_completing,
    options_out_of_range,
    error_record_missing,
    error_lease_revoked,
    retried_create,
    retried_http_503,
    retry_after_honoured,
    min_successful_stops_send,
    stops_send_in_flight,
    cancelled_send_in_flight,
    tolerated_failure,
    tolerated_count_exceeded,
    tolerated_percentage_exceeded,
    min_successful_unreachable,
    first_decision_wins,
    repeated_and_unknown_callbacks,
    lock_contention,
    late_grant_released,
    release_without_mutex,
]
