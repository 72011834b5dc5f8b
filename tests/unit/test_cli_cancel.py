"""``approval-flow cancel``: its answers and exit codes (a time-skipping server answers the RPCs;
no worker runs, so processes stay where they were started)."""

from __future__ import annotations

import io
import json
import uuid
from typing import Any

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowHandle
from temporalio.testing import WorkflowEnvironment

from cli.cancel import DEFAULT_WAIT
from cli.main import build_parser, execute
from cli.output import EXIT_FAILED, CliError, Output
from cli.settings import CliSettings
from starter import PROCESS_WORKFLOW
from workflows.messages import ProcessInput


async def cancel(env: WorkflowEnvironment, *argv: str) -> str:
    out = io.StringIO()
    args = build_parser().parse_args(["cancel", *argv])
    await execute(args, env.client, CliSettings(inbox_url=None), Output(args.json, out))
    return out.getvalue()


async def parked_process(env: WorkflowEnvironment) -> WorkflowHandle[Any, Any]:
    """A running process that no worker will ever pick up."""
    return await env.client.start_workflow(
        PROCESS_WORKFLOW,
        ProcessInput(requested_by="tester"),
        id=f"process-{uuid.uuid4()}",
        task_queue=f"no-worker-{uuid.uuid4()}",
    )


def test_wait_is_optional_and_has_a_default() -> None:
    parser = build_parser()
    assert parser.parse_args(["cancel", "process-1"]).wait is None
    assert parser.parse_args(["cancel", "process-1", "--wait"]).wait == DEFAULT_WAIT
    assert parser.parse_args(["cancel", "process-1", "--wait", "5", "--json"]).wait == 5.0


async def test_a_running_process_gets_a_cancellation_request(
    time_env: WorkflowEnvironment,
) -> None:
    handle = await parked_process(time_env)
    bare_uuid = handle.id.removeprefix("process-")
    assert await cancel(time_env, bare_uuid) == f"{handle.id}: cancellation requested\n"
    # A second request (an operator who is not sure the first went through) says the same.
    assert json.loads(await cancel(time_env, handle.id, "--json")) == {
        "process_id": handle.id,
        "outcome": "cancel-requested",
    }
    events = [event.event_type async for event in handle.fetch_history_events()]
    assert EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CANCEL_REQUESTED in events
    await handle.terminate("test cleanup")


async def test_a_closed_process_has_nothing_to_cancel(time_env: WorkflowEnvironment) -> None:
    handle = await parked_process(time_env)
    await handle.terminate("operator")
    with pytest.raises(CliError) as error:
        await cancel(time_env, handle.id)
    assert str(error.value) == f"{handle.id} is already closed (TERMINATED): nothing to cancel"
    assert error.value.code == EXIT_FAILED


async def test_an_unknown_process_is_a_clear_error(time_env: WorkflowEnvironment) -> None:
    with pytest.raises(CliError) as error:
        await cancel(time_env, "process-does-not-exist")
    assert str(error.value) == "no process with id process-does-not-exist"
    assert error.value.code == EXIT_FAILED


async def test_only_processes_are_cancelled_here(time_env: WorkflowEnvironment) -> None:
    other = await time_env.client.start_workflow(
        "MutexWorkflow", id=f"mutex-{uuid.uuid4()}", task_queue=f"no-worker-{uuid.uuid4()}"
    )
    with pytest.raises(CliError) as error:
        await cancel(time_env, other.id)
    assert str(error.value) == f"{other.id} is a MutexWorkflow, not a process"
    events = [event.event_type async for event in other.fetch_history_events()]
    assert EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CANCEL_REQUESTED not in events
    await other.terminate("test cleanup")


async def test_waiting_with_no_worker_to_close_it_says_so(time_env: WorkflowEnvironment) -> None:
    handle = await parked_process(time_env)
    with pytest.raises(CliError) as error:
        await cancel(time_env, handle.id, "--wait", "0.5")
    assert str(error.value) == (
        f"{handle.id}: cancellation requested, but the process did not close within 0.5 s "
        "(is the worker running?)"
    )
    await handle.terminate("test cleanup")
