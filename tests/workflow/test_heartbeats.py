"""Command heartbeats on the time-skipping server: a missed heartbeat ends the command in
minutes, heartbeats keep it alive up to the callback wait, and the completion policy decides."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from temporalio.client import WorkflowFailureError, WorkflowHandle
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment

from tests.workflow.harness import Harness, callback, harness, heartbeat
from workflows.messages import (
    CommandName,
    CompletionPolicy,
    FailureReason,
    ProcessStatus,
)

HEARTBEAT = timedelta(minutes=5)


async def sent(h: Harness, **options: Any) -> WorkflowHandle[Any, Any]:
    handle = await h.start(command_heartbeat_timeout=HEARTBEAT, **options)
    await h.approve(handle)
    await h.wait_sent(handle)
    return handle


async def failure_of(handle: WorkflowHandle[Any, Any]) -> ApplicationError:
    with pytest.raises(WorkflowFailureError) as failure:
        await handle.result()
    cause = failure.value.cause
    assert isinstance(cause, ApplicationError)
    return cause


async def test_a_missed_heartbeat_times_the_command_out_in_minutes(
    time_env: WorkflowEnvironment,
) -> None:
    async with harness(time_env.client) as h:
        handle = await sent(h)
        await h.call_back(handle, CommandName.TWO)
        # Command one's system never heartbeats: timed out after HEARTBEAT, not the hour.
        error = await failure_of(handle)
        assert error.type == FailureReason.COMMAND_TIMEOUT.value
        assert "command-one timed-out (no heartbeat within 0:05:00" in error.message
        state = await h.state(handle)
        one = state.commands[CommandName.ONE]
        assert one.status == "timed-out" and one.heartbeats == 0
        assert one.sent_at is not None and one.finished_at is not None
        assert one.finished_at - one.sent_at < timedelta(hours=1)
        assert state.commands[CommandName.TWO].status == "succeeded"
        assert h.fakes.records[handle.id]["reason"] == FailureReason.COMMAND_TIMEOUT
        # The downstream system was told how often to heartbeat.
        assert h.fakes.commands[(handle.id, CommandName.ONE)].heartbeat_timeout == HEARTBEAT


async def test_heartbeats_keep_a_long_command_alive_and_show_its_progress(
    time_env: WorkflowEnvironment,
) -> None:
    async with harness(time_env.client) as h:
        handle = await sent(h)
        # Sent in workflow time (Harness.downstream): 4 x 3 min = 12 min > HEARTBEAT of
        # heartbeats, then the callbacks. A heartbeat after the result, and one for an unknown
        # command, change nothing.
        every = timedelta(minutes=3)
        beats = [
            signal
            for percent in (10, 40, 70, 90)
            for signal in (
                heartbeat(CommandName.ONE, {"percent": percent}, after=every),
                heartbeat(CommandName.TWO),
            )
        ]
        await h.downstream(
            handle,
            *beats,
            callback(CommandName.ONE),
            heartbeat(CommandName.ONE, "late"),
            heartbeat("command-three", "who?"),
            callback(CommandName.TWO),
        )
        result = await handle.result()
        assert [o.status for o in result.commands] == ["succeeded", "succeeded"]
        one = (await h.state(handle)).commands[CommandName.ONE]
        assert (one.heartbeats, one.progress) == (4, {"percent": 90})
        # Alive past HEARTBEAT on its heartbeats, the deadline always one HEARTBEAT on.
        assert one.sent_at is not None and one.last_heartbeat_at is not None
        assert one.last_heartbeat_at - one.sent_at > HEARTBEAT
        assert one.heartbeat_deadline == one.last_heartbeat_at + HEARTBEAT


async def test_heartbeats_never_outlast_the_callback_wait(time_env: WorkflowEnvironment) -> None:
    async with harness(time_env.client) as h:
        handle = await sent(h, command_timeout=timedelta(minutes=12))
        await h.call_back(handle, CommandName.TWO)
        # 9 minutes of heartbeats, 3 min apart in workflow time, then silence. (Sent by the test
        # after each advance, they landed a minute late each under load, and the 12-minute wait
        # had ended before the test looked: see Harness.downstream.)
        every = timedelta(minutes=3)
        await h.downstream(handle, *[heartbeat(CommandName.ONE, after=every)] * 3)
        error = await failure_of(handle)
        # The wait ended at the callback wait's cap, not at a missed heartbeat ...
        assert "command-one timed-out (no callback within 0:12:00)" in error.message
        # ... and the heartbeats had kept the command alive past HEARTBEAT to get there.
        one = (await h.state(handle)).commands[CommandName.ONE]
        assert one.heartbeats == 3
        assert one.sent_at is not None and one.last_heartbeat_at is not None
        assert one.last_heartbeat_at - one.sent_at > HEARTBEAT


async def test_the_completion_policy_decides_after_a_missed_heartbeat(
    time_env: WorkflowEnvironment,
) -> None:
    async with harness(time_env.client) as h:
        handle = await sent(h, completion=CompletionPolicy(tolerated_failure_count=1))
        await h.call_back(handle, CommandName.TWO)
        result = await handle.result()
        assert [o.status for o in result.commands] == ["timed-out", "succeeded"]
        assert h.fakes.records[handle.id]["status"] == ProcessStatus.COMPLETED


async def test_without_a_heartbeat_timeout_silence_is_fine(time_env: WorkflowEnvironment) -> None:
    async with harness(time_env.client) as h:
        handle = await h.start()
        await h.approve(handle)
        await h.wait_sent(handle)
        # 30 minutes of silence, then a heartbeat (shown, but not required) and the callbacks,
        # at their workflow times (Harness.downstream). Sent by the test after an advance, they
        # landed as late as the clock ran on: with the client's lock 0.3 s late, past the hour's
        # callback wait (docs/testing.md).
        silence = timedelta(minutes=30)
        await h.downstream(
            handle,
            heartbeat(CommandName.ONE, {"step": "copying"}, after=silence),
            callback(CommandName.ONE),
            callback(CommandName.TWO),
        )
        await handle.result()
        one = (await h.state(handle)).commands[CommandName.ONE]
        assert (one.heartbeats, one.progress, one.heartbeat_deadline) == (
            1,
            {"step": "copying"},
            None,
        )
        assert one.sent_at is not None and one.last_heartbeat_at is not None
        assert one.last_heartbeat_at - one.sent_at >= silence  # the silence was kept
        assert h.fakes.commands[(handle.id, CommandName.ONE)].heartbeat_timeout is None
