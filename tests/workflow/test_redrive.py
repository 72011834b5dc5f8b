"""Redrive on the time-skipping server, through the CLI's own code: a failed process runs again
from the step that failed, keeping its approval and what succeeded, under the same keys."""

from __future__ import annotations

import argparse
from typing import Any

import pytest
from temporalio.client import WorkflowExecutionStatus, WorkflowHandle
from temporalio.testing import WorkflowEnvironment

from cli import redrive
from cli.output import CliError
from cli.settings import CliSettings
from cli.status import successor
from tests.workflow.fakes import Fakes, HttpReply, eventually
from tests.workflow.harness import Harness, harness
from workflows.messages import (
    CommandName,
    FailureReason,
    ProcessResult,
    ProcessStatus,
    redrive_process_id,
)

ONE, TWO = CommandName.ONE, CommandName.TWO


async def run_redrive(h: Harness, process_id: str) -> dict[str, Any]:
    settings = CliSettings(task_queue=h.task_queue, inbox_url=None)
    args = argparse.Namespace(process_id=process_id, wait=0.0)
    document, _ = await redrive.run(args, h.client, settings)
    return document


async def failed(handle: WorkflowHandle[Any, Any]) -> None:
    """Wait until the process has closed as failed.

    By polling, not ``result()``: awaiting a result lets the time-skipping server skip to the
    next timer, and with nothing else waiting that is the mutex's ten-year run timeout.
    """

    await eventually(lambda: _closed(handle), what=f"{handle.id} closed")
    assert (await handle.describe()).status == WorkflowExecutionStatus.FAILED


async def command_two_failed(h: Harness) -> WorkflowHandle[Any, Any]:
    handle = await h.start()
    await h.approve(handle)
    await h.wait_sent(handle)
    await h.call_back(handle, ONE)
    await h.call_back(handle, TWO, status="failed")
    await failed(handle)
    return handle


async def test_a_redrive_keeps_the_approval_and_sends_only_what_did_not_succeed(
    time_env: WorkflowEnvironment,
) -> None:
    async with harness(time_env.client) as h:
        original = await command_two_failed(h)

        document = await run_redrive(h, original.id)
        new_id = document["process_id"]
        assert new_id == redrive_process_id(original.id, 1)
        assert document["approval_kept"] is True
        assert (document["commands_kept"], document["commands_sent_again"]) == (
            ["command-one"],
            ["command-two"],
        )
        again = h.client.get_workflow_handle(new_id, result_type=ProcessResult)
        await h.wait_sent(again, TWO)
        sent = h.fakes.commands[(new_id, TWO)]
        assert (sent.original_process_id, sent.redrive) == (original.id, 1)
        await h.call_back(again, TWO)
        result = await again.result()

        assert [(o.command, o.status) for o in result.commands] == [
            (ONE, "succeeded"),
            (TWO, "succeeded"),
        ]
        assert not h.fakes.sent(new_id, ONE)  # not asked twice
        assert new_id not in h.fakes.approvals and not h.fakes.notices[new_id]  # not asked again
        state = await h.state(again)
        assert (state.redriven_from, state.redrive_count) == (original.id, 1)
        assert state.commands[ONE].kept_from == original.id
        assert state.approval.decision == "approved" and state.approval.decided_by == "bob"
        first_lease = (await h.state(original)).lock.lease_id
        assert first_lease is not None and state.lock.lease_id == first_lease + 1  # queued again
        assert state.lock.status == "released"
        record = h.fakes.records[new_id]
        assert (record["status"], record["redriven_from"], record["redrive_count"]) == (
            ProcessStatus.COMPLETED,
            original.id,
            1,
        )
        assert h.fakes.records[original.id]["status"] is ProcessStatus.FAILED  # stays as it ended
        assert await successor(h.client, await h.state(original)) == new_id  # `status` says so
        assert await successor(h.client, state) is None


async def test_a_rejected_process_is_asked_again_when_redriven(
    time_env: WorkflowEnvironment,
) -> None:
    async with harness(time_env.client) as h:
        original = await h.start()
        await h.approve(original, approved=False)
        await failed(original)

        document = await run_redrive(h, original.id)
        assert document["approval_kept"] is False
        again = h.client.get_workflow_handle(document["process_id"])
        await h.approve(again)  # waits for the new approval request
        await h.wait_sent(again)
        for name in CommandName:
            sent = h.fakes.commands[(again.id, name)]
            assert (sent.original_process_id, sent.redrive) == (original.id, 1)
            await h.call_back(again, name)
        await again.result()


async def test_a_redrive_of_a_redrive_keeps_the_original_keys_and_counts_on(
    time_env: WorkflowEnvironment,
) -> None:
    fakes = Fakes()
    async with harness(time_env.client, fakes) as h:
        original = await command_two_failed(h)
        first = h.client.get_workflow_handle((await run_redrive(h, original.id))["process_id"])
        await h.wait_sent(first, TWO)
        await h.call_back(first, TWO, status="failed")
        await failed(first)

        document = await run_redrive(h, first.id)
        assert document["process_id"] == redrive_process_id(original.id, 2)
        second = h.client.get_workflow_handle(document["process_id"])
        await h.wait_sent(second, TWO)
        sent = h.fakes.commands[(second.id, TWO)]
        assert (sent.original_process_id, sent.redrive) == (original.id, 2)
        await h.call_back(second, TWO)
        await second.result()
        state = await h.state(second)
        assert (state.redriven_from, state.redrive_count) == (first.id, 2)
        assert state.commands[ONE].kept_from == original.id  # where it really succeeded


async def test_a_send_that_failed_and_a_command_not_awaited_are_sent_again(
    time_env: WorkflowEnvironment,
) -> None:
    async with harness(time_env.client) as h:
        original = await h.start()
        h.fakes.http_replies[original.id] = [HttpReply(400)]  # final: the send itself failed
        await h.approve(original)
        await failed(original)
        commands = (await h.state(original)).commands
        assert (commands[ONE].status, commands[TWO].status) == ("not-awaited", "send-failed")

        again = h.client.get_workflow_handle((await run_redrive(h, original.id))["process_id"])
        await h.wait_sent(again)
        await h.call_back(again, ONE)
        await h.call_back(again, TWO)
        await again.result()
        assert [h.fakes.commands[(again.id, n)].original_process_id for n in CommandName] == [
            original.id,
            original.id,
        ]


async def test_running_completed_and_already_redriven_processes_are_refused(
    time_env: WorkflowEnvironment,
) -> None:
    async with harness(time_env.client) as h:
        running = await h.start()
        with pytest.raises(CliError) as refused:
            await run_redrive(h, running.id)
        assert str(refused.value).startswith(
            f"{running.id} is still running: only a process that failed can be redriven"
        )
        await h.approve(running)
        await h.wait_sent(running)
        await h.call_back(running, ONE)
        await h.call_back(running, TWO)
        await running.result()
        with pytest.raises(CliError) as refused:
            await run_redrive(h, running.id)
        assert str(refused.value) == f"{running.id} completed: nothing to redrive"

        original = await command_two_failed(h)
        first = (await run_redrive(h, original.id))["process_id"]
        with pytest.raises(CliError) as refused:
            await run_redrive(h, original.id)
        assert str(refused.value).startswith(f"{original.id} was already redriven as {first} (")
        assert "\n" not in str(refused.value)


async def test_a_cancelled_process_can_be_redriven(time_env: WorkflowEnvironment) -> None:
    async with harness(time_env.client) as h:
        original = await h.start()
        await h.approve(original)
        await h.wait_sent(original)
        await h.call_back(original, ONE)
        await original.cancel()
        await eventually(lambda: _closed(original), what="the cancelled process closed")
        assert h.fakes.records[original.id]["reason"] == FailureReason.CANCELLED

        again = h.client.get_workflow_handle((await run_redrive(h, original.id))["process_id"])
        await h.wait_sent(again, TWO)
        await h.call_back(again, TWO)
        await again.result()
        assert not h.fakes.sent(again.id, ONE)


async def _closed(handle: WorkflowHandle[Any, Any]) -> bool:
    return (await handle.describe()).status != WorkflowExecutionStatus.RUNNING
