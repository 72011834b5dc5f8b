"""``approval-flow status`` answers while DynamoDB hangs on a process's write.

A process's table write is first tried inside the workflow task (a local activity), and a query
that reaches a workflow while one of its workflow tasks is open waits for that task to finish.
So the try must be short: here the emulator is frozen (SIGSTOP: it accepts connections and
answers nothing, as in a network partition) while a process writes ``in-progress`` with the
production attempt timeout, and the ``state`` query, asked through the CLI's own code path and
its own deadline, must still answer: the process still ``pending``, the write retried as an
activity that ``describe`` (the Temporal UI) shows. A process started meanwhile, whose first
task hangs on its create write, answers too. Once the emulator answers again (SIGCONT) the
records are written and the first process completes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import signal
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import botocore.exceptions
import pytest
from temporalio.api.enums.v1 import EventType, PendingWorkflowTaskState
from temporalio.client import WorkflowExecutionDescription, WorkflowHandle
from temporalio.testing import ActivityEnvironment, WorkflowEnvironment
from temporalio.worker import Worker

from activities.process_table import ProcessTableActivities
from activities.retry import LinearRetryInterceptor
from callbacks_api.processes import Processes
from cli.queries import query_state
from common.aws import AwsClients
from common.aws_resources import ensure_resources
from tests.support.moto_server import MotoServer, moto_settings, running_moto_server
from tests.support.waiting import eventually
from tests.workflow.fakes import Fakes
from tests.workflow.harness import Harness
from workflows.messages import (
    LOCK_GRANTED_SIGNAL,
    CommandName,
    ProcessState,
    ProcessStatus,
    RetrySettings,
    Stage,
    UpdateProcessStatus,
)
from workflows.mutex import MutexWorkflow
from workflows.process import ProcessWorkflow

pytestmark = pytest.mark.integration

UPDATE = "update_process_status"
# Far beyond a try in the worker (2 s), far short of the ordinary client's 2 x 10 s read timeouts.
THREAD_DEADLINE = timedelta(seconds=8)


@pytest.fixture
def moto() -> Iterator[MotoServer]:
    """An emulator of this test's own: freezing it must not stall anyone else."""
    with running_moto_server() as server:
        yield server


@contextmanager
def frozen(server: MotoServer) -> Iterator[None]:
    """The emulator stopped (SIGSTOP) for the block: it accepts connections, answers nothing."""
    server.process.send_signal(signal.SIGSTOP)
    try:
        yield
    finally:
        server.process.send_signal(signal.SIGCONT)


@pytest.mark.duration(15)
async def test_state_query_answers_while_the_in_progress_write_hangs(
    dev_env: WorkflowEnvironment, moto: MotoServer
) -> None:
    settings = moto_settings(moto)
    clients = AwsClients.from_settings(settings)
    ensure_resources(settings, clients)
    table = ProcessTableActivities(
        clients.dynamodb, settings.process_table, clients.dynamodb_local_try
    )
    fakes = Fakes()  # approval mail, the lock's activities and the sends; the table is real
    activities = [
        table.create_process,
        table.update_process_status,
        *(a for a in fakes.activities() if a.__name__ not in ("create_process", UPDATE)),
    ]
    task_queue = f"query-during-write-{uuid.uuid4()}"
    with ThreadPoolExecutor(16) as executor:
        async with Worker(
            dev_env.client,
            task_queue=task_queue,
            workflows=[ProcessWorkflow, MutexWorkflow],
            activities=activities,
            activity_executor=executor,
            interceptors=[LinearRetryInterceptor()],
        ):
            h = Harness(dev_env.client, task_queue, fakes, resource=f"qdw-{uuid.uuid4().hex[:8]}")
            # The production attempt timeout (30 s), so the test sees what an operator would;
            # the ordinary retries are cut to seconds.
            handle = await h.start(aws_retry=RetrySettings(max_attempts=3, delay=timedelta(0)))
            await eventually(lambda: handle.id in fakes.approvals, what="the approval request")
            assert _record(clients, settings.process_table, handle.id) == "pending"
            with frozen(moto):
                await h.approve(handle)  # the grant follows: its task writes ``in-progress``
                await eventually(
                    lambda: _writing_after_grant(handle),
                    what="the workflow task that took the grant to be running",
                )
                # What the approval page asks, with its deadline (callbacks_api Processes, 5 s):
                # before the fix it answered 503 "no worker answered" (the query waited ~8 s).
                page = await Processes(dev_env.client).state(handle.id)
                assert page.status is ProcessStatus.PENDING  # not yet written: not in progress
                assert page.lock.status == "held"
                # What ``approval-flow status`` asks, with its own deadline (cli/queries.py).
                state, problem = await query_state(handle, ProcessState)
                assert problem is None, problem
                assert isinstance(state, ProcessState)
                assert state.status is ProcessStatus.PENDING
                # The write went on as an activity: the Temporal UI and ``describe`` show it.
                description = await handle.describe()
                assert UPDATE in _pending_activities(description)
                # The same for a process started now: its first task hangs on the create write.
                second = await h.start(aws_retry=RetrySettings(max_attempts=3, delay=timedelta(0)))
                await eventually(
                    lambda: _task_running(second), what="the second process's first task to run"
                )
                page = await Processes(dev_env.client).state(second.id)
                assert (page.status, page.stage) == (ProcessStatus.PENDING, Stage.CREATING)
                assert "create_process" in _pending_activities(await second.describe())
            await eventually(
                lambda: _record(clients, settings.process_table, handle.id) == "in-progress",
                what="the in-progress record once the emulator answers",
            )
            assert _record(clients, settings.process_table, handle.id, "approved_by") == "bob"
            await eventually(
                lambda: second.id in fakes.approvals, what="the second process's approval request"
            )
            assert _record(clients, settings.process_table, second.id) == "pending"
            await second.terminate("test over")  # it would wait an hour for its approval
            await h.wait_send_started(handle)
            await h.call_back(handle, CommandName.ONE)
            await h.call_back(handle, CommandName.TWO)
            result = await handle.result()
            final = await h.state(handle)
    assert result.status == "success"
    assert final.status is ProcessStatus.COMPLETED and final.stage is Stage.COMPLETED
    assert _record(clients, settings.process_table, handle.id) == ProcessStatus.COMPLETED.value


def _pending_activities(description: WorkflowExecutionDescription) -> set[str]:
    return {a.activity_type.name for a in description.raw_description.pending_activities}


async def _task_running(handle: WorkflowHandle[Any, Any]) -> bool:
    task = (await handle.describe()).raw_description.pending_workflow_task
    return task.state == PendingWorkflowTaskState.PENDING_WORKFLOW_TASK_STATE_STARTED


async def _writing_after_grant(handle: WorkflowHandle[Any, Any]) -> bool:
    """Whether the workflow task that took the lock grant is running (its write hangs)."""
    granted_at = scheduled_at = 0
    async for event in handle.fetch_history_events():
        if event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_SCHEDULED:
            scheduled_at = event.event_id
        elif (
            event.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED
            and event.workflow_execution_signaled_event_attributes.signal_name
            == LOCK_GRANTED_SIGNAL
        ):
            granted_at = event.event_id
    return bool(granted_at) and scheduled_at > granted_at and await _task_running(handle)


def _record(clients: AwsClients, table: str, process_id: str, field: str = "status") -> str:
    item = clients.dynamodb.get_item(
        TableName=table, Key={"process_id": {"S": process_id}}, ConsistentRead=True
    )["Item"]
    return item[field]["S"]


async def test_a_write_tried_in_the_worker_gives_its_thread_back(moto: MotoServer) -> None:
    """The SDK cuts a try in the worker off after 2 s, but cannot stop its thread: the call must
    end by itself, or in an outage such threads fill the worker's pool (worker.py). With the
    ordinary client (2 x 10 s read timeouts) it still hangs at the deadline."""
    settings = moto_settings(moto)
    clients = AwsClients.from_settings(settings)
    ensure_resources(settings, clients)
    table = ProcessTableActivities(
        clients.dynamodb, settings.process_table, clients.dynamodb_local_try
    )
    env = ActivityEnvironment()
    env.info = dataclasses.replace(env.info, is_local=True)
    update = UpdateProcessStatus(
        process_id=f"process-{uuid.uuid4()}", status=ProcessStatus.IN_PROGRESS, at=datetime.now(UTC)
    )
    loop = asyncio.get_running_loop()
    with ThreadPoolExecutor(1) as thread, frozen(moto):
        call = loop.run_in_executor(thread, env.run, table.update_process_status, update)
        done, _ = await asyncio.wait({call}, timeout=THREAD_DEADLINE.total_seconds())
        assert done, "the try's DynamoDB call still holds its thread"
        with pytest.raises(botocore.exceptions.ReadTimeoutError):
            call.result()  # an ordinary, retryable error: the write goes on as an activity
