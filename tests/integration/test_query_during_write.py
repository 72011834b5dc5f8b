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
import functools
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import botocore.exceptions
import pytest
from temporalio import activity, workflow
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
from tests.support.moto_server import (
    MotoServer,
    moto_settings,
    record_field,
    running_moto_server,
)
from tests.support.waiting import eventually
from tests.workflow.fakes import Fakes
from tests.workflow.harness import Harness
from workflows.messages import (
    LOCK_GRANTED_SIGNAL,
    CommandName,
    CreateProcessRecord,
    ProcessState,
    ProcessStatus,
    RetrySettings,
    Stage,
    UpdateProcessStatus,
)
from workflows.mutex import MutexWorkflow
from workflows.process import LOCAL_WRITE_TRY_TIMEOUT, ProcessWorkflow

pytestmark = pytest.mark.integration

UPDATE = "update_process_status"
CREATE = "create_process"
# Far beyond a try in the worker (2 s), far short of the ordinary client's 2 x 10 s read timeouts.
THREAD_DEADLINE = timedelta(seconds=8)


@pytest.fixture
def moto() -> Iterator[MotoServer]:
    """An emulator of this test's own: freezing it must not stall anyone else."""
    with running_moto_server() as server:
        yield server


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
    activities = fakes.activities_with_table(table)
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
            assert record_field(clients, settings.process_table, handle.id) == "pending"
            with moto.frozen():
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
                lambda: record_field(clients, settings.process_table, handle.id) == "in-progress",
                what="the in-progress record once the emulator answers",
            )
            assert record_field(clients, settings.process_table, handle.id, "approved_by") == "bob"
            await eventually(
                lambda: second.id in fakes.approvals, what="the second process's approval request"
            )
            assert record_field(clients, settings.process_table, second.id) == "pending"
            await second.terminate("test over")  # it would wait an hour for its approval
            await h.wait_send_started(handle)
            await h.call_back(handle, CommandName.ONE)
            await h.call_back(handle, CommandName.TWO)
            result = await handle.result()
            final = await h.state(handle)
    assert result.status == "success"
    assert final.status is ProcessStatus.COMPLETED and final.stage is Stage.COMPLETED
    assert record_field(clients, settings.process_table, handle.id) == ProcessStatus.COMPLETED.value


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
    env.info = dataclasses.replace(
        env.info,
        is_local=True,
        current_attempt_scheduled_time=datetime.now(UTC),
        schedule_to_close_timeout=LOCAL_WRITE_TRY_TIMEOUT,
    )
    update = UpdateProcessStatus(
        process_id=f"process-{uuid.uuid4()}", status=ProcessStatus.IN_PROGRESS, at=datetime.now(UTC)
    )
    loop = asyncio.get_running_loop()
    with ThreadPoolExecutor(1) as thread, moto.frozen():
        call = loop.run_in_executor(thread, env.run, table.update_process_status, update)
        done, _ = await asyncio.wait({call}, timeout=THREAD_DEADLINE.total_seconds())
        assert done, "the try's DynamoDB call still holds its thread"
        with pytest.raises(botocore.exceptions.ReadTimeoutError):
            call.result()  # an ordinary, retryable error: the write goes on as an activity


# Processes whose create tries queue for the worker's one local-activity slot.
QUEUED_TRIES = 5
# A try's first task open this long: its try, scheduled in that task, is past its 2 s.
OVERDUE = LOCAL_WRITE_TRY_TIMEOUT + timedelta(milliseconds=500)
# The longest the test lets the slot's holder hold it: the test releases it far sooner.
HOLD_LIMIT = timedelta(minutes=2)


@dataclasses.dataclass
class Tries:
    """What the worker's create tries did, seen around the activity (not from its code)."""

    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)
    local_ended: int = 0
    started_late: int = 0  # tries the worker started at or after their deadline
    late_calls: list[str] = dataclasses.field(default_factory=list)  # DynamoDB calls of those


def _past_deadline(info: activity.Info) -> bool:
    deadline = info.schedule_to_close_timeout or LOCAL_WRITE_TRY_TIMEOUT
    return datetime.now(UTC) - info.current_attempt_scheduled_time >= deadline


class WatchedDynamoDB:
    """The worker's local-try client, noting each write a try makes after its deadline."""

    def __init__(self, client: Any, tries: Tries) -> None:
        self._client = client
        self._tries = tries
        self.exceptions = client.exceptions

    def put_item(self, **kwargs: Any) -> Any:
        self._note("put_item", kwargs["Item"]["process_id"]["S"])
        return self._client.put_item(**kwargs)

    def update_item(self, **kwargs: Any) -> Any:
        self._note("update_item", kwargs["Key"]["process_id"]["S"])
        return self._client.update_item(**kwargs)

    def _note(self, call: str, process_id: str) -> None:
        info = activity.info()
        if info.is_local and _past_deadline(info):
            with self._tries.lock:
                self._tries.late_calls.append(f"{call} {process_id}")


@workflow.defn(sandboxed=False)
class HoldLocalSlot:
    """Takes the worker's one local-activity slot until the test lets it go."""

    @workflow.run
    async def run(self) -> None:
        await workflow.execute_local_activity(
            "hold_local_slot", schedule_to_close_timeout=HOLD_LIMIT
        )


@pytest.mark.duration(15)
async def test_a_try_started_after_its_deadline_does_not_write(
    dev_env: WorkflowEnvironment, moto: MotoServer
) -> None:
    """Processes' create tries queue for the worker's one local-activity slot while DynamoDB
    is frozen, until each is past its 2 s. sdk-core does not time a try out while it waits: it
    starts it once the slot frees, with nothing telling it that it is late. Such a try must not
    write (on the old code each did, its thread outliving the slot it freed, and the workflow
    then wrote the same as an activity); its workflow writes as an activity, and every record
    is written once DynamoDB answers."""
    settings = moto_settings(moto)
    clients = AwsClients.from_settings(settings)
    ensure_resources(settings, clients)
    tries = Tries()
    table = ProcessTableActivities(
        clients.dynamodb,
        settings.process_table,
        cast(Any, WatchedDynamoDB(clients.dynamodb_local_try, tries)),
    )
    holding, released = threading.Event(), threading.Event()

    @activity.defn(name="hold_local_slot")
    def hold_local_slot() -> None:
        holding.set()
        released.wait(HOLD_LIMIT.total_seconds())

    @activity.defn(name=CREATE)
    def create_process(record: CreateProcessRecord) -> None:
        info = activity.info()
        if info.is_local and _past_deadline(info):
            with tries.lock:
                tries.started_late += 1
        try:
            table.create_process(record)
        finally:
            if info.is_local:
                with tries.lock:
                    tries.local_ended += 1

    fakes = Fakes()
    activities = [
        create_process,
        table.update_process_status,
        hold_local_slot,
        *(a for a in fakes.activities() if a.__name__ not in (CREATE, UPDATE)),
    ]
    task_queue = f"late-try-{uuid.uuid4()}"
    handles: list[WorkflowHandle[ProcessWorkflow, Any]] = []
    with ThreadPoolExecutor(16) as executor:
        async with Worker(
            dev_env.client,
            task_queue=task_queue,
            workflows=[ProcessWorkflow, MutexWorkflow, HoldLocalSlot],
            activities=activities,
            activity_executor=executor,
            max_concurrent_local_activities=1,
            interceptors=[LinearRetryInterceptor()],
        ):
            try:
                # By name, not ``HoldLocalSlot.run``: mypy 2.4 then solved the SDK's generic
                # handle types as Never for other typed handles in the same run
                # (test_mutex_dev_server.py's ``get_workflow_handle_for(MutexWorkflow.run)``).
                holder = await dev_env.client.start_workflow(
                    "HoldLocalSlot", id=f"hold-{uuid.uuid4()}", task_queue=task_queue
                )
                await eventually(holding.is_set, what="the local-activity slot to be taken")
                h = Harness(
                    dev_env.client, task_queue, fakes, resource=f"lt-{uuid.uuid4().hex[:8]}"
                )
                retry = RetrySettings(max_attempts=3, delay=timedelta(0))
                with moto.frozen():
                    for _ in range(QUEUED_TRIES):
                        handles.append(await h.start(aws_retry=retry))
                    for handle in handles:
                        # Its first task (which schedules the try) has run past the try's time.
                        await eventually(
                            functools.partial(_task_running_past, handle, OVERDUE),
                            what=f"{handle.id}'s create try to be overdue in the slot's queue",
                        )
                    released.set()
                    await eventually(
                        lambda: tries.local_ended == QUEUED_TRIES,
                        what="every queued try to have started and ended",
                    )
                assert tries.started_late == QUEUED_TRIES  # each of which the old code wrote
                assert tries.late_calls == []
                for handle in handles:
                    await eventually(
                        functools.partial(fakes.approvals.__contains__, handle.id),
                        what=f"{handle.id}'s approval request once the emulator answers",
                    )
                    assert record_field(clients, settings.process_table, handle.id) == "pending"
                await holder.result()
            finally:
                released.set()
                for handle in handles:
                    await handle.terminate("test over")  # each waits an hour for its approval


async def _task_running_past(handle: WorkflowHandle[Any, Any], age: timedelta) -> bool:
    """Whether a workflow task of ``handle`` has run for ``age`` (by the server's clock, here
    the same machine's)."""
    task = (await handle.describe()).raw_description.pending_workflow_task
    if task.state != PendingWorkflowTaskState.PENDING_WORKFLOW_TASK_STATE_STARTED:
        return False
    return datetime.now(UTC) - task.started_time.ToDatetime(tzinfo=UTC) >= age
