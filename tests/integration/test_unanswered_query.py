"""An unanswered ``state`` query says why, as the server shows it: no worker, or a busy one.

Before, ``approval-flow status`` said "no worker answered the state query (is the worker
running?)" and the approval page "no worker answered in time" whenever the query timed out,
also while the worker ran and only this workflow's task was slow. Here, on the dev server: a
worker runs and holds the workflow's task (a local activity the test releases at the end: a
query waits for the task), a task queue no worker ever polled, and a process pinned (Worker
Versioning) to a build no worker runs any more while another build's worker polls.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

import pytest
from temporalio import activity, workflow
from temporalio.api.enums.v1 import PendingWorkflowTaskState
from temporalio.api.workflowservice.v1 import SetWorkerDeploymentCurrentVersionRequest
from temporalio.client import Client, WorkflowHandle
from temporalio.common import VersioningBehavior, WorkerDeploymentVersion
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker, WorkerDeploymentConfig

import cli.queries
from callbacks_api.problems import Problem
from callbacks_api.processes import Processes
from cli.queries import query_state
from common.unanswered import pinned_build, server_saw_no_poller
from tests.support.waiting import eventually
from workflows.messages import STATE_QUERY, ProcessState

pytestmark = pytest.mark.integration

# Far below sdk-core's workflow task heartbeat (80 % of this), which would let a query through.
TASK_TIMEOUT = timedelta(minutes=2)
RELEASES: dict[str, asyncio.Event] = {}


@activity.defn
async def held_step(key: str) -> None:
    """A step that takes until the test lets it go (a write waiting on a frozen store)."""
    await RELEASES[key].wait()


@workflow.defn(sandboxed=False)
class HeldWorkflow:
    """Runs one local activity inside its first workflow task, which stays open meanwhile."""

    @workflow.run
    async def run(self, key: str) -> None:
        await workflow.execute_local_activity(held_step, key, start_to_close_timeout=TASK_TIMEOUT)

    @workflow.query(name=STATE_QUERY)
    def state(self) -> str:
        return "answered"


@workflow.defn(sandboxed=False)
class ParkedWorkflow:
    """Waits for ever (a process waiting for its approval) and answers ``state``."""

    @workflow.run
    async def run(self, _: str) -> None:
        await workflow.wait_condition(lambda: False)

    @workflow.query(name=STATE_QUERY)
    def state(self) -> str:
        return "answered"


def versioned_worker(client: Client, task_queue: str, deployment: str, build_id: str) -> Worker:
    """A worker as worker.py builds one under Worker Versioning: it pins what it starts."""
    return Worker(
        client,
        task_queue=task_queue,
        workflows=[ParkedWorkflow],
        deployment_config=WorkerDeploymentConfig(
            version=WorkerDeploymentVersion(deployment_name=deployment, build_id=build_id),
            use_worker_versioning=True,
            default_versioning_behavior=VersioningBehavior.PINNED,
        ),
    )


async def make_current(client: Client, deployment: str, build_id: str) -> bool:
    """``temporal worker deployment set-current-version``; refused until the build has polled."""
    request = SetWorkerDeploymentCurrentVersionRequest(
        namespace=client.namespace, deployment_name=deployment, build_id=build_id
    )
    try:
        await client.workflow_service.set_worker_deployment_current_version(request)
    except RPCError:
        return False
    return True


@asynccontextmanager
async def held_task(client: Client) -> AsyncIterator[WorkflowHandle[HeldWorkflow, None]]:
    """A workflow whose workflow task a running worker holds until the block ends."""
    task_queue = f"held-task-{uuid.uuid4()}"
    key = str(uuid.uuid4())
    RELEASES[key] = asyncio.Event()
    try:
        async with Worker(
            client,
            task_queue=task_queue,
            workflows=[HeldWorkflow],
            activities=[held_step],
        ):
            handle = await client.start_workflow(
                HeldWorkflow.run,
                key,
                id=f"held-{uuid.uuid4()}",
                task_queue=task_queue,
                task_timeout=TASK_TIMEOUT,
            )
            await eventually(lambda: _task_started(handle), what="the held workflow task")
            try:
                yield handle
            finally:
                RELEASES[key].set()
                await handle.result()
    finally:
        del RELEASES[key]


async def _task_started(handle: WorkflowHandle[HeldWorkflow, None]) -> bool:
    task = (await handle.describe()).raw_description.pending_workflow_task
    return task.state == PendingWorkflowTaskState.PENDING_WORKFLOW_TASK_STATE_STARTED


@pytest.fixture
def short_cli_query(monkeypatch: pytest.MonkeyPatch) -> timedelta:
    """The CLI's query deadline cut to 2 s: the wait itself is not what is tested."""
    deadline = timedelta(seconds=2)
    monkeypatch.setattr(cli.queries, "QUERY_TIMEOUT", deadline)
    return deadline


@pytest.mark.duration(8)
async def test_a_query_held_by_a_busy_worker_says_the_worker_is_busy_not_absent(
    dev_env: WorkflowEnvironment, short_cli_query: timedelta
) -> None:
    async with held_task(dev_env.client) as handle:
        # The approval page's read: still 503 no-worker-answer, now saying why.
        with pytest.raises(Problem) as unanswered:
            await Processes(dev_env.client, call_timeout=timedelta(seconds=2)).state(handle.id)
        assert (unanswered.value.status, unanswered.value.kind) == (503, "no-worker-answer")
        assert unanswered.value.headers == {"Retry-After": "5"}
        detail = unanswered.value.detail
        assert "still busy with a step of this process" in detail, detail
        assert "no worker is running" not in detail

        # ``approval-flow status``: the operator is told the task is running, not to start one.
        state, problem = await query_state(handle, ProcessState, dev_env.client)
        assert state is None and problem is not None
        assert "did not answer the state query within 2 s" in problem, problem
        assert "running the process's workflow task for" in problem, problem
        assert "is the worker running?" not in problem


@pytest.mark.duration(6)
async def test_a_query_no_worker_polls_for_says_so_and_names_the_task_queue(
    dev_env: WorkflowEnvironment, short_cli_query: timedelta
) -> None:
    task_queue = f"never-polled-{uuid.uuid4()}"
    handle = await dev_env.client.start_workflow(
        HeldWorkflow.run, "unused", id=f"unpolled-{uuid.uuid4()}", task_queue=task_queue
    )
    try:
        with pytest.raises(Problem) as unanswered:
            await Processes(dev_env.client, call_timeout=timedelta(seconds=2)).state(handle.id)
        assert (unanswered.value.status, unanswered.value.kind) == (503, "no-worker-answer")
        assert "no worker is running to answer for it" in unanswered.value.detail

        state, problem = await query_state(handle, ProcessState, dev_env.client)
        assert state is None
        assert problem == (
            f"no worker is polling task queue {task_queue} (no poll in the last 70 s): "
            "is the worker running?"
        )
    finally:
        await handle.terminate("test over")


async def refused_for_no_poller(handle: WorkflowHandle[Any, Any]) -> bool:
    try:
        await handle.query(STATE_QUERY, rpc_timeout=timedelta(seconds=2))
    except RPCError as err:
        return server_saw_no_poller(err)
    raise AssertionError("a worker of build local-2 answered for a process pinned to local")


@pytest.mark.duration(25)
async def test_a_process_pinned_to_a_build_no_worker_runs_names_the_build_and_the_way_out(
    dev_env: WorkflowEnvironment, short_cli_query: timedelta
) -> None:
    """``make run`` again as build ``local-2``: the processes pinned to ``local`` wait.

    Before, the server's refusal ("no poller seen for task queue recently", FAILED_PRECONDITION)
    reached the operator as "state query failed: ..." and the page as 503 ``not-ready``, "try
    again shortly", although a worker polled (of the other build) and trying again could not help.
    """
    client = dev_env.client
    task_queue = f"pinned-{uuid.uuid4()}"
    deployment = f"deployment-{uuid.uuid4()}"
    async with versioned_worker(client, task_queue, deployment, "local"):
        await eventually(lambda: make_current(client, deployment, "local"), what="build local")
        handle = await client.start_workflow(
            ParkedWorkflow.run, "parked", id=f"pinned-{uuid.uuid4()}", task_queue=task_queue
        )

        async def pinned() -> bool:
            return pinned_build(await handle.describe()) is not None

        await eventually(pinned, what="the process pinned to build local")
    try:
        async with versioned_worker(client, task_queue, deployment, "local-2"):
            await eventually(lambda: make_current(client, deployment, "local-2"), what="local-2")
            # The server refuses once build local has not polled for a while (about 20 s on the
            # 1.32 dev server; before, the query times out and a stopped worker's last poll,
            # listed for 70 s, cannot be told from an idle one's).
            await eventually(
                lambda: refused_for_no_poller(handle), what="the server's refusal", within=60
            )

            state, problem = await query_state(handle, ProcessState, client)
            assert state is None and problem is not None
            assert problem.startswith(
                f"the process is pinned to build local of deployment {deployment} (Worker "
                f"Versioning), and no worker of that build polled task queue {task_queue} in the "
                "last 70 s (build local-2 does): start a worker of build local"
            ), problem
            assert (
                f"temporal workflow update-options --workflow-id {handle.id} "
                "--versioning-override-behavior pinned --versioning-override-deployment-name "
                f"{deployment} --versioning-override-build-id local-2 (docs/upgrades.md, step 5)"
            ) in problem, problem

            with pytest.raises(Problem) as unanswered:
                await Processes(client, call_timeout=timedelta(seconds=2)).state(handle.id)
            assert (unanswered.value.status, unanswered.value.kind) == (503, "no-worker-answer")
            detail = unanswered.value.detail
            assert "the version of this service it was started on" in detail, detail
            assert "trying again helps only once they have" in detail, detail
            assert "try again shortly" not in detail
    finally:
        await handle.terminate("test over")


@pytest.mark.duration(3)
async def test_status_says_no_worker_polls_without_waiting_for_the_query(
    dev_env: WorkflowEnvironment, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before, ``approval-flow status`` waited the query's whole deadline (10 s) to say that no
    worker polls, which the server showed from the start: now it looks meanwhile."""
    monkeypatch.setattr(cli.queries, "QUERY_TIMEOUT", timedelta(minutes=10))
    task_queue = f"never-polled-{uuid.uuid4()}"
    handle = await dev_env.client.start_workflow(
        HeldWorkflow.run, "unused", id=f"unpolled-{uuid.uuid4()}", task_queue=task_queue
    )
    try:
        # A deadline far below the query's: what is tested is that it is not waited for.
        async with asyncio.timeout(60):
            state, problem = await query_state(handle, ProcessState, dev_env.client)
        assert state is None
        assert problem is not None and problem.startswith(
            f"no worker is polling task queue {task_queue}"
        ), problem
    finally:
        await handle.terminate("test over")
