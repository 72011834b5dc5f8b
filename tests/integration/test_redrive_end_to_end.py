"""Redrive end to end, through ``make run``'s stack (every part a real process, on free ports).

The simulator fails command two the first time (``SIMULATOR_FAIL_ONCE``), so the process fails
with command one done. ``approval-flow redrive`` then runs it again from there: the approval is
kept, only command two is sent again (same idempotency key), the simulator runs it again and
the redriven process completes. What an outsider checks: the simulator's list of the commands it
received, the process table, and the CLI's answers. The simulator heartbeats while it works and
the processes ask for heartbeats, so the state shows them too.

Command two is the slow one (``SIMULATOR_COMMAND_DELAYS``), so its failure comes after command
one's callback. A process stops waiting for its commands once the completion policy is decided:
a command one still at work then would end "not-awaited" and be sent again by the redrive, as it
should (under its key, and the simulator answers with its result without redoing it:
tests/unit/test_simulator_operations.py). That is another story than this test's.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from temporalio.client import WorkflowExecutionStatus

from tests.integration.test_end_to_end import (
    FLOW_TIMEOUT,
    RunningStack,
    approve,
    cli,
    local_stack,
    start_through_cli,
)
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration


async def received(http: aiohttp.ClientSession, stack: RunningStack, process_id: str) -> Any:
    """The simulator's record of each command it received for ``process_id``'s keys."""
    async with http.get(stack.url("SIMULATOR", "/commands")) as response:
        commands = (await response.json())["commands"]
    return {c["command"]: c for c in commands if c["idempotency_key"].startswith(f"{process_id}:")}


async def closed(stack: RunningStack, process_id: str) -> WorkflowExecutionStatus | None:
    client = await stack.client()
    handle = client.get_workflow_handle(process_id)

    async def done() -> bool:
        return (await handle.describe()).status != WorkflowExecutionStatus.RUNNING

    await eventually(done, f"{process_id} closed", FLOW_TIMEOUT)
    return (await handle.describe()).status


@pytest.mark.duration(25)
async def test_a_failed_command_is_redriven_and_the_one_that_succeeded_is_not_sent_again(
    tmp_path: Path,
) -> None:
    settings = {
        "LOCAL_STACK_DEMO": "false",
        "SIMULATOR_FAIL_ONCE": "command-two",
        # Command one done in well under a second; command two fails seconds later (above).
        "SIMULATOR_MIN_DELAY": "0.2",
        "SIMULATOR_MAX_DELAY": "0.5",
        "SIMULATOR_COMMAND_DELAYS": '{"command-two": [10, 10]}',
        "SIMULATOR_HEARTBEAT_INTERVAL": "0.2",
        "APPROVAL_PROCESS__COMMAND_HEARTBEAT_TIMEOUT": "PT1M",
    }
    async with local_stack(tmp_path, **settings) as stack, aiohttp.ClientSession() as http:
        process_id = (await start_through_cli(stack, "redrive end to end"))["process_id"]
        await approve(http, stack, process_id)
        assert await closed(stack, process_id) == WorkflowExecutionStatus.FAILED
        before = await received(http, stack, process_id)
        assert (before["command-one"]["outcome"], before["command-two"]["outcome"]) == (
            "succeeded",
            "failed",
        )
        assert stack.table_item(process_id)["reason"] == "command-failed"
        code, out, err = await cli(stack, "status", process_id, "--json")
        assert code == 0, err
        commands = json.loads(out)["state"]["commands"]
        assert (commands["command-one"]["status"], commands["command-two"]["status"]) == (
            "succeeded",
            "failed",
        ), "command one's callback should have come before command two failed"

        code, out, err = await cli(stack, "redrive", process_id, "--json")
        assert code == 0, err
        redriven = json.loads(out)
        new_id = redriven["process_id"]
        assert new_id == f"{process_id}-redrive-1"
        assert redriven["approval_kept"] is True
        assert redriven["commands_sent_again"] == ["command-two"]

        client = await stack.client()
        result = await asyncio.wait_for(client.get_workflow_handle(new_id).result(), FLOW_TIMEOUT)
        assert result["status"] == "success"

        after = await received(http, stack, process_id)
        one, two = after["command-one"], after["command-two"]
        # Command one was not sent again: no repeat, no redrive of its key.
        assert (one["duplicates"], one["redrives"], one["process_id"]) == (0, 0, process_id)
        assert (two["redrives"], two["outcome"], two["process_id"]) == (1, "succeeded", new_id)
        assert two["callback_status"] == 202 and two["heartbeats"] >= 1

        record = stack.table_item(new_id)
        assert (record["status"], record["redriven_from"]) == ("completed", process_id)
        assert record["approved_by"] == "e2e approver"  # the approval kept
        assert stack.table_item(process_id)["status"] == "failed"  # stays as it ended

        code, out, err = await cli(stack, "status", new_id, "--json")
        assert code == 0, err
        state = json.loads(out)["state"]
        assert (state["redriven_from"], state["redrive_count"]) == (process_id, 1)
        assert state["commands"]["command-one"]["kept_from"] == process_id
        assert state["commands"]["command-two"]["heartbeats"] >= 1
        code, out, err = await cli(stack, "status", new_id)
        assert f"1 of {process_id}" in out and "kept, not sent again" in out
        code, out, err = await cli(stack, "status", process_id, "--json")
        assert json.loads(out)["redriven_as"] == new_id  # the failed one points to its redrive

        # A second redrive of the same failure, and a redrive of what completed: one line each.
        code, out, err = await cli(stack, "redrive", process_id)
        assert (code, out) == (1, "")
        assert err.startswith(f"approval-flow: {process_id} was already redriven as {new_id} (")
        assert len(err.strip().splitlines()) == 1
        code, out, err = await cli(stack, "redrive", new_id)
        assert (code, out, err.strip()) == (
            1,
            "",
            f"approval-flow: {new_id} completed: nothing to redrive",
        )

        # Every resource's lock: here the one make run uses, free again.
        code, out, err = await cli(stack, "lock", "--json")
        assert code == 0, err
        locks = {r["resource"]: r for r in json.loads(out)["resources"]}
        assert locks["approval-commands"]["state"]["holder"] is None
