"""ProcessWorkflow on the time-skipping server: every timeout of the original in milliseconds."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
from temporalio.client import WorkflowExecutionStatus, WorkflowFailureError
from temporalio.exceptions import ApplicationError, CancelledError
from temporalio.testing import WorkflowEnvironment

from tests.workflow.fakes import Fakes, HttpReply, eventually
from tests.workflow.harness import harness
from workflows.messages import CommandName, CompletionPolicy, ProcessStatus


async def test_happy_path(time_env: WorkflowEnvironment) -> None:
    async with harness(time_env.client) as h:
        handle = await h.start()
        await h.approve(handle)
        await h.wait_sent(handle)
        await h.call_back(handle, CommandName.ONE)
        await h.call_back(handle, CommandName.TWO)
        result = await handle.result()
        assert result.status == "success"
        assert [o.status for o in result.commands] == ["succeeded", "succeeded"]
        assert h.fakes.history[handle.id] == [
            ProcessStatus.PENDING,
            ProcessStatus.IN_PROGRESS,
            ProcessStatus.COMPLETED,
        ]
        assert h.fakes.create_calls[handle.id] == 1
        state = await h.state(handle)
        assert state.status is ProcessStatus.COMPLETED
        assert state.lock.status == "released"
        assert (await h.mutex_state()).holder is None


async def test_rejected(time_env: WorkflowEnvironment) -> None:
    async with harness(time_env.client) as h:
        handle = await h.start()
        await h.approve(handle, approved=False)
        with pytest.raises(WorkflowFailureError) as failure:
            await handle.result()
        assert isinstance(failure.value.cause, ApplicationError)
        assert failure.value.cause.type == "rejected"
        assert h.fakes.records[handle.id]["status"] is ProcessStatus.FAILED


async def _failure(handle) -> ApplicationError:
    with pytest.raises(WorkflowFailureError) as failure:
        await handle.result()
    cause = failure.value.cause
    assert isinstance(cause, ApplicationError)
    return cause


@pytest.mark.parametrize("failing", [CommandName.ONE, CommandName.TWO])
async def test_command_failure_callback_fails_the_process(
    time_env: WorkflowEnvironment, failing: CommandName
) -> None:
    async with harness(time_env.client) as h:
        handle = await h.start()
        await h.approve(handle)
        await h.wait_sent(handle)
        await h.call_back(handle, failing, status="failed")
        error = await _failure(handle)
        assert error.type == "command-failed"
        assert f"{failing.value} failed" in error.message
        record = h.fakes.records[handle.id]
        assert record["status"] is ProcessStatus.FAILED
        assert record["reason"] == "command-failed"
        assert (await h.mutex_state()).holder is None


async def test_approval_times_out_after_one_hour(time_env: WorkflowEnvironment) -> None:
    async with harness(time_env.client) as h:
        handle = await h.start()
        error = await _failure(handle)
        state = await h.state(handle)
        assert state.finished_at is not None
        elapsed = state.finished_at - state.created_at
        assert error.type == "approval-timeout"
        assert timedelta(hours=1) <= elapsed < timedelta(hours=1, minutes=1)
        assert h.fakes.records[handle.id]["reason"] == "approval-timeout"
        assert h.fakes.lock_requests == []  # never queued for the lock


async def test_command_callback_times_out_after_one_hour(time_env: WorkflowEnvironment) -> None:
    async with harness(time_env.client) as h:
        handle = await h.start()
        await h.approve(handle)
        await h.wait_sent(handle)
        await h.call_back(handle, CommandName.ONE)
        error = await _failure(handle)
        assert error.type == "command-timeout"
        state = await h.state(handle)
        sent_at = state.commands[CommandName.TWO].sent_at
        assert state.finished_at is not None and sent_at is not None
        # 1 s of slack below the hour: under load (CI, load 8) the time-skipping server once
        # stamped the timer's workflow task 3 ms before the hour the timer was started for.
        waited = state.finished_at - sent_at
        assert timedelta(hours=1) - timedelta(seconds=1) <= waited < timedelta(hours=1, minutes=1)
        assert state.commands[CommandName.TWO].status == "timed-out"
        assert state.commands[CommandName.ONE].status == "succeeded"


async def test_create_fails_once_then_succeeds(time_env: WorkflowEnvironment) -> None:
    fakes = Fakes(create_failures=1)
    async with harness(time_env.client, fakes) as h:
        handle = await h.start()
        # The worker's try fails; the activity that takes the write over succeeds at once
        # (test_process_history.py: its own retries keep the original's 2 min x attempt).
        await h.approve(handle)
        await h.wait_sent(handle)
        await h.call_back(handle, CommandName.ONE)
        await h.call_back(handle, CommandName.TWO)
        await handle.result()
        assert fakes.create_calls[handle.id] == 2
        assert list(fakes.records) == [handle.id]  # one record, made with the workflow's id
        assert fakes.history[handle.id][-1] is ProcessStatus.COMPLETED


def _gaps(attempts: list) -> list[timedelta]:
    return [later.at - earlier.at for earlier, later in itertools.pairwise(attempts)]


async def test_http_503_is_retried_after_the_linear_delay(time_env: WorkflowEnvironment) -> None:
    fakes = Fakes()
    async with harness(time_env.client, fakes) as h:
        handle = await h.start()
        fakes.http_replies[handle.id] = [HttpReply(503), HttpReply(503), HttpReply(200)]
        await h.approve(handle)
        await h.wait_sent(handle, CommandName.ONE)
        # The retries wait in server timers; let workflow time pass so they fire.
        await time_env.sleep(timedelta(minutes=16))
        await eventually(lambda: len(fakes.sends[(handle.id, CommandName.TWO)]) == 3)
        attempts = fakes.sends[(handle.id, CommandName.TWO)]
        gaps = _gaps(attempts)
        assert [a.attempt for a in attempts] == [1, 2, 3]
        assert timedelta(minutes=5) <= gaps[0] < timedelta(minutes=6)
        assert timedelta(minutes=10) <= gaps[1] < timedelta(minutes=11)
        await h.call_back(handle, CommandName.ONE)
        await h.call_back(handle, CommandName.TWO)
        await handle.result()
        assert (await h.state(handle)).commands[CommandName.TWO].attempts == 3


async def test_http_retry_after_wins_over_the_linear_delay(time_env: WorkflowEnvironment) -> None:
    fakes = Fakes()
    async with harness(time_env.client, fakes) as h:
        handle = await h.start()
        fakes.http_replies[handle.id] = [HttpReply(429, retry_after=timedelta(seconds=42))]
        await h.approve(handle)
        await h.wait_sent(handle, CommandName.ONE)
        await time_env.sleep(timedelta(minutes=1))
        await eventually(lambda: len(fakes.sends[(handle.id, CommandName.TWO)]) == 2)
        gap = _gaps(fakes.sends[(handle.id, CommandName.TWO)])[0]
        assert timedelta(seconds=42) <= gap < timedelta(seconds=50)
        await h.call_back(handle, CommandName.ONE)
        await h.call_back(handle, CommandName.TWO)
        await handle.result()


async def test_http_400_is_not_retried(time_env: WorkflowEnvironment) -> None:
    fakes = Fakes()
    async with harness(time_env.client, fakes) as h:
        handle = await h.start()
        fakes.http_replies[handle.id] = [HttpReply(400)]
        await h.approve(handle)
        # A final 400 settles the default policy at once: no callback is waited for.
        error = await _failure(handle)
        assert error.type == "command-failed"
        assert "command-two send-failed" in error.message
        assert "HTTP 400" in error.message
        assert len(fakes.sends[(handle.id, CommandName.TWO)]) == 1


async def test_aws_outage_exhausts_three_attempts(time_env: WorkflowEnvironment) -> None:
    fakes = Fakes(sqs_down=True)
    async with harness(time_env.client, fakes) as h:
        handle = await h.start()
        await h.approve(handle)
        await h.wait_sent(handle, CommandName.TWO)
        await h.call_back(handle, CommandName.TWO)
        error = await _failure(handle)
        attempts = fakes.sends[(handle.id, CommandName.ONE)]
        assert [a.attempt for a in attempts] == [1, 2, 3]
        gaps = _gaps(attempts)
        assert timedelta(minutes=2) <= gaps[0] < timedelta(minutes=3)
        assert timedelta(minutes=4) <= gaps[1] < timedelta(minutes=5)
        assert error.type == "command-failed"
        assert "SQS unavailable" in error.message


async def test_completion_policy_tolerating_one_failure_succeeds(
    time_env: WorkflowEnvironment,
) -> None:
    async with harness(time_env.client) as h:
        handle = await h.start(completion=CompletionPolicy(tolerated_failure_count=1))
        await h.approve(handle)
        await h.wait_sent(handle)
        await h.call_back(handle, CommandName.ONE, status="failed")
        await h.call_back(handle, CommandName.TWO)
        result = await handle.result()
        assert {o.command: o.status for o in result.commands} == {
            CommandName.ONE: "failed",
            CommandName.TWO: "succeeded",
        }
        assert h.fakes.records[handle.id]["status"] is ProcessStatus.COMPLETED


async def test_min_successful_settles_without_waiting_for_the_other(
    time_env: WorkflowEnvironment,
) -> None:
    async with harness(time_env.client) as h:
        handle = await h.start(completion=CompletionPolicy(min_successful=1))
        await h.approve(handle)
        await h.wait_sent(handle)
        await h.call_back(handle, CommandName.TWO)
        result = await handle.result()
        assert {o.command: o.status for o in result.commands} == {
            CommandName.ONE: "not-awaited",
            CommandName.TWO: "succeeded",
        }


async def _cancelled(handle) -> None:
    """The process ended Cancelled in Temporal (not Failed), as the UI and ``describe`` show."""
    with pytest.raises(WorkflowFailureError) as failure:
        await handle.result()
    assert isinstance(failure.value.cause, CancelledError), failure.value.cause
    assert (await handle.describe()).status is WorkflowExecutionStatus.CANCELED


async def test_cancel_mid_run_ends_cancelled_after_its_cleanup(
    time_env: WorkflowEnvironment,
) -> None:
    async with harness(time_env.client) as h:
        handle = await h.start()
        await h.approve(handle)
        await h.wait_sent(handle)
        assert (await h.mutex_state()).holder is not None
        await handle.cancel()
        await _cancelled(handle)
        # The cleanup ran before the close: record failed/cancelled, lock given back.
        record = h.fakes.records[handle.id]
        assert record["status"] is ProcessStatus.FAILED
        assert record["reason"] == "cancelled"
        assert (await h.mutex_state()).holder is None
        state = await h.state(handle)
        assert state.lock.status == "released"
        assert state.failure_reason == "cancelled"


@contextlib.asynccontextmanager
async def _opened_at_exit(gate: asyncio.Event) -> AsyncIterator[None]:
    """Open ``gate`` however the test ends, so the worker never waits on a held send."""
    try:
        yield
    finally:
        gate.set()


async def test_lock_goes_back_only_after_a_send_in_flight_resolved(
    time_env: WorkflowEnvironment,
) -> None:
    """min_successful=1 settles on command one while command two's POST is still in flight:
    the process cancels that send and holds the lock until the send has resolved."""
    gate = asyncio.Event()
    fakes = Fakes(send_gate=gate)
    async with harness(time_env.client, fakes) as h, _opened_at_exit(gate):
        handle = await h.start(
            completion=CompletionPolicy(min_successful=1),
            send_heartbeat_timeout=timedelta(seconds=1),
        )
        await h.approve(handle)
        await h.wait_sent(handle, CommandName.ONE)
        await h.wait_send_started(handle, CommandName.TWO)  # held in flight
        await h.call_back(handle, CommandName.ONE)
        await eventually(
            lambda: (handle.id, CommandName.TWO) in fakes.cancels_seen,
            what="the cancel to reach the send in flight",
        )
        # Settled, the send told to stop, but still in flight: the lock stays with the process.
        holder = (await h.mutex_state()).holder
        assert holder is not None and holder.holder_workflow_id == handle.id
        assert (await h.state(handle)).lock.status == "held"
        assert fakes.sends_resolved == []
        gate.set()  # the request in flight ends; only now may the lock go back
        result = await handle.result()
        assert fakes.sends_resolved == [(handle.id, CommandName.TWO)]
        assert [o.status for o in result.commands] == ["succeeded", "not-awaited"]
        assert (await h.mutex_state()).holder is None
        assert fakes.records[handle.id]["status"] is ProcessStatus.COMPLETED


async def test_cancel_waits_for_the_send_in_flight_before_releasing(
    time_env: WorkflowEnvironment,
) -> None:
    gate = asyncio.Event()
    fakes = Fakes(send_gate=gate)
    async with harness(time_env.client, fakes) as h, _opened_at_exit(gate):
        handle = await h.start(send_heartbeat_timeout=timedelta(seconds=1))
        await h.approve(handle)
        await h.wait_sent(handle, CommandName.ONE)
        await h.wait_send_started(handle, CommandName.TWO)  # held in flight
        await handle.cancel()
        await eventually(
            lambda: (handle.id, CommandName.TWO) in fakes.cancels_seen,
            what="the cancel to reach the send in flight",
        )
        holder = (await h.mutex_state()).holder
        assert holder is not None and holder.holder_workflow_id == handle.id
        gate.set()
        await _cancelled(handle)
        assert fakes.sends_resolved == [(handle.id, CommandName.TWO)]
        assert (await h.mutex_state()).holder is None
        assert fakes.records[handle.id]["reason"] == "cancelled"


async def test_sends_carry_the_fence_of_the_lease(time_env: WorkflowEnvironment) -> None:
    async with harness(time_env.client) as h:
        handle = await h.start()
        await h.approve(handle)
        await h.wait_sent(handle)
        lease = (await h.state(handle)).lock.lease_id
        assert lease is not None
        for command in CommandName:
            sent = h.fakes.commands[(handle.id, command)]
            assert (sent.lock_resource, sent.lease_id) == (h.resource, lease)
        await h.call_back(handle, CommandName.ONE)
        await h.call_back(handle, CommandName.TWO)
        await handle.result()


async def test_a_missing_record_fails_naming_the_record(time_env: WorkflowEnvironment) -> None:
    async with harness(time_env.client) as h:
        handle = await h.start()
        await eventually(lambda: handle.id in h.fakes.records, what="record created")
        del h.fakes.records[handle.id]  # lost, as by an emulator that forgot its tables
        await h.approve(handle)
        error = await _failure(handle)
        assert error.type == "error"
        assert error.message.endswith(f"process record {handle.id} does not exist")
        assert (await h.mutex_state()).holder is None


async def _no_holder(h) -> bool:
    return (await h.mutex_state()).holder is None


async def test_first_approval_decision_wins(time_env: WorkflowEnvironment) -> None:
    async with harness(time_env.client) as h:
        handle = await h.start()
        await h.approve(handle, approved=True, by="bob")
        await h.approve(handle, approved=False, by="eve")
        await h.wait_sent(handle)
        state = await h.state(handle)
        assert state.approval.decision == "approved"
        assert state.approval.decided_by == "bob"
        await h.call_back(handle, CommandName.ONE)
        await h.call_back(handle, CommandName.TWO)
        await handle.result()


async def test_callback_for_unknown_command_is_ignored_and_logged(
    time_env: WorkflowEnvironment, caplog: pytest.LogCaptureFixture
) -> None:
    async with harness(time_env.client) as h:
        handle = await h.start()
        await h.approve(handle)
        await h.wait_sent(handle)
        with caplog.at_level(logging.WARNING, logger="temporalio.workflow"):
            await h.call_back(handle, "command-three", status="failed")
            await eventually(
                lambda: any("unknown command" in r.getMessage() for r in caplog.records),
                what="warning logged",
            )
        state = await h.state(handle)
        assert state.status is ProcessStatus.IN_PROGRESS
        assert {c.status for c in state.commands.values()} == {"sent"}
        await h.call_back(handle, CommandName.ONE)
        await h.call_back(handle, CommandName.TWO)
        await handle.result()


async def test_tolerated_failure_waits_for_every_command(time_env: WorkflowEnvironment) -> None:
    """As the original: a tolerance alone does not end the phase early; the lock stays held."""
    async with harness(time_env.client) as h:
        handle = await h.start(completion=CompletionPolicy(tolerated_failure_count=1))
        await h.approve(handle)
        await h.wait_sent(handle)
        await h.call_back(handle, CommandName.TWO)
        await eventually(
            lambda: _command_status(h, handle, CommandName.TWO, "succeeded"), what="two done"
        )
        state = await h.state(handle)
        assert state.status is ProcessStatus.IN_PROGRESS and state.lock.status == "held"
        await h.call_back(handle, CommandName.ONE, status="failed")
        result = await handle.result()
        assert {o.command: o.status for o in result.commands} == {
            CommandName.ONE: "failed",
            CommandName.TWO: "succeeded",
        }


async def _command_status(h, handle, command: CommandName, status: str) -> bool:
    return bool((await h.state(handle)).commands[command].status == status)


async def test_min_successful_with_no_tolerance_completes_on_first_success(
    time_env: WorkflowEnvironment,
) -> None:
    async with harness(time_env.client) as h:
        handle = await h.start(
            completion=CompletionPolicy(min_successful=1, tolerated_failure_count=0)
        )
        await h.approve(handle)
        await h.wait_sent(handle)
        await h.call_back(handle, CommandName.ONE)
        result = await handle.result()
        assert {o.command: o.status for o in result.commands} == {
            CommandName.ONE: "succeeded",
            CommandName.TWO: "not-awaited",
        }
        state = await h.state(handle)
        assert state.commands[CommandName.TWO].status == "not-awaited"  # not left "sent"


async def test_cancel_during_an_activity_is_reported_as_cancelled(
    time_env: WorkflowEnvironment,
) -> None:
    fakes = Fakes(publish_gate=asyncio.Event())
    async with harness(time_env.client, fakes) as h:
        handle = await h.start()
        await eventually(lambda: handle.id in fakes.publishing, what="publish in flight")
        await handle.cancel()
        await _cancelled(handle)
        assert fakes.publish_gate is not None
        fakes.publish_gate.set()
        assert fakes.records[handle.id]["reason"] == "cancelled"


async def test_cancel_during_cleanup_still_marks_the_record(time_env: WorkflowEnvironment) -> None:
    fakes = Fakes(fail_gate=asyncio.Event())
    async with harness(time_env.client, fakes) as h:
        handle = await h.start()
        await h.approve(handle, approved=False)
        # The failed write is held in flight. Watched at the fake, not with the state query: the
        # write runs as a local activity, and a query waits for the task that runs it (16 s).
        await eventually(lambda: handle.id in fakes.fail_waiting, what="cleanup under way")
        await handle.cancel()  # an operator cancels a process that is already failing
        assert fakes.fail_gate is not None
        fakes.fail_gate.set()
        error = await _failure(handle)
        assert error.type == "rejected"  # the first reason stands
        assert fakes.records[handle.id]["status"] is ProcessStatus.FAILED
        assert fakes.records[handle.id]["reason"] == "rejected"


async def test_each_step_logs_its_start_and_end_with_the_process_id(
    time_env: WorkflowEnvironment, caplog: pytest.LogCaptureFixture
) -> None:
    """`grep process-… .data/logs/*.log` follows a completed process through the worker."""
    steps = [
        "create process",
        "ask for approval",
        "wait for the lock",
        "start process",
        "run commands",
        "complete process",
    ]
    with caplog.at_level(logging.INFO, logger="temporalio.workflow"):
        async with harness(time_env.client) as h:
            handle = await h.start()
            await h.approve(handle)
            await h.wait_sent(handle)
            await h.call_back(handle, CommandName.ONE)
            await h.call_back(handle, CommandName.TWO)
            await handle.result()
    lines = [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.INFO and handle.id in r.getMessage()
    ]
    for step in steps:
        assert any(f"step {step!r} started" in line for line in lines), step
        assert any(f"step {step!r} ended" in line for line in lines), step
