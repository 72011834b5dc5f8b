"""A deploy while processes and the mutex run, under Worker Versioning, on the dev server.

The story an operator lives through (docs/upgrades.md), with the real ``temporal`` CLI:

1. before versioning: an unversioned worker starts a process (the first versioned deploy
   inherits it);
2. build ``a`` (the code on disk) is made current; processes start on it and one holds the lock;
3. build ``b``, a next version of both workflows whose change is guarded by ``workflow.patched``
   (tests/integration/workflow_variants.py), replays every live history first (as
   ``approval-flow replay`` does), then starts beside ``a`` and is made current;
4. signals keep arriving for processes of both builds while the lock passes between them;
5. build ``a`` drains (the server says so) and stops;
6. a rollback to ``a``: the mutex, which ran ``b``'s patched branch, is pinned to ``b`` first.

Every process completes on the build it started on (pinned; the one from before versioning on the
first current build), the mutex moves to ``b`` and takes the patched branch from its next run on,
and every signal sent is in the history of the workflow it was sent to.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from temporalio import activity
from temporalio.api.enums.v1 import EventType, VersioningBehavior
from temporalio.client import Client, WorkflowHandle, WorkflowHistory
from temporalio.common import VersioningBehavior as Behavior
from temporalio.common import WorkerDeploymentVersion
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Replayer, Worker, WorkerDeploymentConfig

from activities.retry import LinearRetryInterceptor
from cli.replay import replay, replay_query
from local_stack.versioning import set_current_version
from tests.support.binaries import temporal_cli
from tests.support.temporal import start_dev_server
from tests.workflow.fakes import Fakes, eventually
from tests.workflow.harness import Harness
from tests.workflow.record_histories.recording import PATIENCE
from worker import WORKFLOWS
from workflows.messages import (
    CommandName,
    MutexOptions,
    MutexState,
    ProcessResult,
    RequestLock,
    mutex_workflow_id,
)
from workflows.mutex import MutexWorkflow
from workflows.process import ProcessWorkflow
from workflows.versioning import AutoUpgradeMutexWorkflow

from .workflow_variants import PATCH, PatchedMutexWorkflow, PatchedProcessWorkflow

pytestmark = pytest.mark.integration

# Drainage is refreshed every second here, not every 3 minutes. (A server-wide
# limit.historyCount.suggestContinueAsNew would roll the mutex over sooner, but it rolls the
# server's own deployment workflows over too, and drainage was then never reported.)
DEV_SERVER_ARGS = (
    "--dynamic-config-value",
    'matching.wv.VersionDrainageStatusRefreshInterval="1s"',
    "--dynamic-config-value",
    'matching.wv.VersionDrainageStatusVisibilityGracePeriod="1s"',
)


# The mutex checks its holder every second and continues as new after 100 events (the least it
# takes), so it rolls over during the test and its next run starts on the current build.
FAST_MUTEX = MutexOptions(liveness_interval=timedelta(seconds=1), max_history_events=100)


@dataclass
class UpgradeFakes(Fakes):
    @activity.defn(name="request_lock")
    async def request_lock(self, request: RequestLock) -> None:
        await super().request_lock(request.model_copy(update={"mutex_options": FAST_MUTEX}))


@pytest.fixture(scope="module")
async def server() -> AsyncIterator[WorkflowEnvironment]:
    async with await start_dev_server(*DEV_SERVER_ARGS) as env:
        yield env


@asynccontextmanager
async def running_worker(
    client: Client,
    task_queue: str,
    fakes: Fakes,
    workflows: Sequence[type],
    version: WorkerDeploymentVersion | None = None,
) -> AsyncIterator[Worker]:
    """A worker as worker.py builds one: unversioned, or a build pinning by default."""
    config = None
    if version is not None:
        config = WorkerDeploymentConfig(
            version=version,
            use_worker_versioning=True,
            default_versioning_behavior=Behavior.PINNED,
        )
    with ThreadPoolExecutor(8) as executor:
        worker = Worker(
            client,
            task_queue=task_queue,
            workflows=list(workflows),
            # One set of fakes for every build: they stand for the shared tables and systems.
            activities=fakes.activities(),
            activity_executor=executor,
            interceptors=[LinearRetryInterceptor()],
            deployment_config=config,
        )
        async with worker:
            yield worker


async def make_current(env: WorkflowEnvironment, version: WorkerDeploymentVersion) -> None:
    address = env.client.service_client.config.target_host
    await set_current_version(
        temporal_cli(), address, "default", version.deployment_name, version.build_id, PATIENCE
    )


async def temporal(env: WorkflowEnvironment, *args: str) -> Any:
    """Run the ``temporal`` CLI as an operator would; its JSON output."""
    address = env.client.service_client.config.target_host
    process = await asyncio.create_subprocess_exec(
        temporal_cli(),
        *args,
        "--address",
        address,
        "--output",
        "json",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), PATIENCE)
    assert process.returncode == 0, err.decode()
    return json.loads(out) if out.strip() else None


def _version_of(description: Any) -> tuple[int, str]:
    info = description.raw_description.workflow_execution_info.versioning_info
    return info.behavior, info.deployment_version.build_id


async def _signals(handle: WorkflowHandle[Any, Any]) -> dict[str, int]:
    return _signals_in(await handle.fetch_history())


async def _mutex_runs(client: Client, workflow_id: str) -> list[Any]:
    runs = [e async for e in client.list_workflows(f"WorkflowId = '{workflow_id}'")]
    return sorted(runs, key=lambda e: e.start_time)


@pytest.mark.duration(7)
async def test_rolling_upgrade_loses_no_process_and_no_signal(server: WorkflowEnvironment) -> None:
    client = server.client
    suffix = uuid.uuid4().hex[:8]
    task_queue = f"tq-upgrade-{suffix}"
    deployment = f"approval-flow-{suffix}"
    build_a = WorkerDeploymentVersion(deployment_name=deployment, build_id="a")
    build_b = WorkerDeploymentVersion(deployment_name=deployment, build_id="b")
    fakes = UpgradeFakes()
    h = Harness(client, task_queue, fakes, resource=f"res-{suffix}")
    mutex = client.get_workflow_handle(mutex_workflow_id(h.resource))

    async def queue(handle: WorkflowHandle[Any, Any]) -> None:
        """Approve it and wait until its lock request is in: the queue is FIFO by arrival."""
        await h.approve(handle)
        await eventually(lambda: handle.id in fakes.lock_requests, PATIENCE, "a lock request")

    async def finish(handle: WorkflowHandle[Any, Any]) -> ProcessResult:
        """Wait until it holds the lock and sent both commands; call back; its result."""
        await h.wait_sent(handle)
        for command in CommandName:
            await h.call_back(handle, command)
        result = await asyncio.wait_for(handle.result(), PATIENCE)
        assert isinstance(result, ProcessResult)
        return result

    # 1. Before versioning: an unversioned worker starts a process that waits for approval.
    async with running_worker(client, task_queue, fakes, WORKFLOWS):
        before = await h.start(requested_by="before-versioning")
        await eventually(lambda: before.id in fakes.approvals, PATIENCE, "the first approval mail")

    async with AsyncExitStack() as build_a_running:
        await build_a_running.enter_async_context(
            running_worker(client, task_queue, fakes, WORKFLOWS_A, build_a)
        )
        # 2. Build a is current: new processes are pinned to it; p1 holds the lock, p2 waits.
        await make_current(server, build_a)
        p1, p2, p3 = [await h.start(requested_by=f"on-a-{i}") for i in (1, 2, 3)]
        await queue(before)  # the process from before versioning now runs on build a
        await h.wait_sent(before)
        await queue(p1)
        await queue(p2)

        # 3. Before deploying b, its code replays every live history (approval-flow replay).
        replayer = Replayer(
            workflows=WORKFLOWS_B,
            data_converter=client.data_converter,
            interceptors=[LinearRetryInterceptor()],
        )
        replayed = await replay(client, replay_query(task_queue, None), 100, replayer)
        assert sorted(r.execution.id for r in replayed) == sorted(
            [mutex.id, *(p.id for p in (before, p1, p2, p3))]
        )
        assert [r.failure for r in replayed] == [None] * len(replayed)

        async with running_worker(client, task_queue, fakes, WORKFLOWS_B, build_b):
            # Build b starts beside a and becomes current.
            await make_current(server, build_b)
            switched_at = datetime.now(UTC)
            p4, p5 = [await h.start(requested_by=f"on-b-{i}") for i in (4, 5)]

            # 4. Signals for both builds while the lock passes from holder to holder.
            await queue(p3)
            await queue(p4)
            for handle in (before, p1, p2, p3):
                await finish(handle)
            await h.wait_sent(p4)

            # While p4 holds the lock, the mutex's liveness checks grow its history until it
            # continues as new: on build b, where the new run takes the patched branch.
            async def rolled_over_on_b() -> bool:
                runs = await _mutex_runs(client, mutex.id)
                return bool(runs[-1].start_time > switched_at)

            await eventually(rolled_over_on_b, PATIENCE, "the mutex's next run on build b")
            await queue(p5)
            await finish(p4)
            await finish(p5)

            # 5. Build a drains: no open workflow is pinned to it any more.
            async def drained() -> bool:
                described = await temporal(
                    server,
                    "worker",
                    "deployment",
                    "describe-version",
                    "--deployment-name",
                    deployment,
                    "--build-id",
                    "a",
                )
                return bool(described["drainageInfo"]["drainageStatus"] == "drained")

            await eventually(drained, PATIENCE, "build a to drain")
            await build_a_running.aclose()  # build a's worker stops; b carries on alone

            # Every process ran on the build it started on; the one from before versioning on a.
            pinned = VersioningBehavior.VERSIONING_BEHAVIOR_PINNED
            for handle, build in [
                (before, "a"),
                (p1, "a"),
                (p2, "a"),
                (p3, "a"),
                (p4, "b"),
                (p5, "b"),
            ]:
                assert _version_of(await handle.describe()) == (pinned, build), handle.id
                assert await _signals(handle) == {
                    "approval_decision": 1,
                    "lock_granted": 1,
                    "command_callback": 2,
                }, handle.id
            # Only processes that started on build b ran its code.
            for handle in (before, p1, p2, p3):
                assert await (await handle.describe()).memo() == {}, handle.id
            for handle in (p4, p5):
                assert await (await handle.describe()).memo_value("code") == "v2", handle.id

            # The mutex: on build b now, free, nobody queued, every request granted and released.
            description = await mutex.describe()
            assert _version_of(description) == (
                VersioningBehavior.VERSIONING_BEHAVIOR_AUTO_UPGRADE,
                "b",
            )
            state = await mutex.query(MutexWorkflow.state)
            assert isinstance(state, MutexState)
            assert state.holder is None and state.queue == []
            counters = state.counters
            assert (counters.grants, counters.releases) == (6, 6)
            assert (
                counters.stale_releases
                == counters.failed_grants
                == counters.expired_leases
                == counters.abandoned_holders
                == 0
            )
            # The patched branch: never in a run that began before the switch (the run that moved
            # to b replays a's history, so ``patched`` stays False in it to its end); in the run
            # that granted p5, begun on b.
            requests = releases = 0
            for run in await _mutex_runs(client, mutex.id):
                history = await client.get_workflow_handle(
                    run.id, run_id=run.run_id
                ).fetch_history()
                patched = _patch_marked(history)
                if run.start_time < switched_at:
                    assert not patched, run.run_id
                if p5.id in _granted_to(history):
                    assert patched, run.run_id
                signals = _signals_in(history)
                requests += signals.get("request", 0)
                releases += signals.get("release", 0)
                assert not signals.get("cancel"), run.run_id
            assert (requests, releases) == (6, 6)

            # 6. Roll back to a. Processes are pinned, so none moves; but the mutex follows the
            # current build, and a cannot replay the run in which b took the patched branch.
            replayer_a = Replayer(
                workflows=WORKFLOWS_A,
                data_converter=client.data_converter,
                interceptors=[LinearRetryInterceptor()],
            )
            replayed = await replay(client, replay_query(task_queue, None), 100, replayer_a)
            assert [(r.execution.id, r.failure is None) for r in replayed] == [(mutex.id, False)]
            # So the mutex is pinned to b first, then a is made current again.
            await temporal(
                server,
                "workflow",
                "update-options",
                "--workflow-id",
                mutex.id,
                "--versioning-override-behavior",
                "pinned",
                "--versioning-override-deployment-name",
                deployment,
                "--versioning-override-build-id",
                "b",
            )
            async with running_worker(client, task_queue, fakes, WORKFLOWS_A, build_a):
                await make_current(server, build_a)
                p6 = await h.start(requested_by="after-rollback")
                await queue(p6)
                await finish(p6)
                assert _version_of(await p6.describe()) == (pinned, "a")
                assert _version_of(await mutex.describe())[1] == "b"
                state = await mutex.query(MutexWorkflow.state)
                assert (state.counters.grants, state.counters.releases) == (7, 7)


def _patch_marked(history: WorkflowHistory) -> bool:
    """The run recorded the patch marker: it took the patched branch."""
    for event in history.events:
        if event.event_type == EventType.EVENT_TYPE_MARKER_RECORDED:
            details = event.marker_recorded_event_attributes.details.values()
            if any(PATCH.encode() in p.data for d in details for p in d.payloads):
                return True
    return False


def _granted_to(history: WorkflowHistory) -> set[str]:
    kind = EventType.EVENT_TYPE_SIGNAL_EXTERNAL_WORKFLOW_EXECUTION_INITIATED
    return {
        e.signal_external_workflow_execution_initiated_event_attributes.workflow_execution.workflow_id
        for e in history.events
        if e.event_type == kind
        and e.signal_external_workflow_execution_initiated_event_attributes.signal_name
        == "lock_granted"
    }


def _signals_in(history: WorkflowHistory) -> dict[str, int]:
    counts: dict[str, int] = {}
    for event in history.events:
        if event.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED:
            name = event.workflow_execution_signaled_event_attributes.signal_name
            counts[name] = counts.get(name, 0) + 1
    return counts


# What each build registers, as worker.workflows_for does for a versioned worker.
WORKFLOWS_A: list[type] = [ProcessWorkflow, AutoUpgradeMutexWorkflow]
WORKFLOWS_B: list[type] = [PatchedProcessWorkflow, PatchedMutexWorkflow]
