"""Activities and local activities have threads of their own in the worker's pool.

The process table's writes are first tried as local activities (patch ``process-local-writes``),
which run their boto3 calls on the same pool as the activities. Sized for one kind only, a pool
that the other kind fills leaves nothing: a local write would wait in the pool's queue while its
attempt timeout runs out, then go on as an activity that needs a thread too. Each test here
fills every slot of one kind with activities that block until released, and a call of the other
kind must still complete on the worker ``build_worker`` configures, with ``activity_executor``.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import pytest
from temporalio import activity, workflow
from temporalio.client import Client
from temporalio.common import RetryPolicy
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from common.settings import Settings
from tests.support.waiting import eventually
from worker import activity_executor, build_worker

pytestmark = pytest.mark.integration

KEY = "k1:" + "s" * 40
# Long enough that no call times out (and is retried) while the test holds it: the test's own
# deadlines decide.
LONG = timedelta(minutes=5)
ONCE = RetryPolicy(maximum_attempts=1)
# What the SDK allows of each kind when the worker does not say.
SDK_DEFAULT_SLOTS = 100


@dataclass
class Blocking:
    """Sync activities, like the table's writes: ``hold`` keeps its thread until released."""

    release: threading.Event = field(default_factory=threading.Event)
    held: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    @activity.defn(name="hold")
    def hold(self) -> None:
        with self.lock:
            self.held += 1
        self.release.wait()

    @activity.defn(name="quick")
    def quick(self) -> str:
        return "done"


@workflow.defn(sandboxed=False)
class HoldAll:
    @workflow.run
    async def run(self, count: int, local: bool) -> None:
        if local:
            calls = [
                workflow.execute_local_activity(
                    "hold", start_to_close_timeout=LONG, retry_policy=ONCE
                )
                for _ in range(count)
            ]
        else:
            calls = [
                workflow.execute_activity("hold", start_to_close_timeout=LONG, retry_policy=ONCE)
                for _ in range(count)
            ]
        await asyncio.gather(*calls)


@workflow.defn(sandboxed=False)
class QuickOne:
    @workflow.run
    async def run(self, local: bool) -> str:
        if local:
            return str(
                await workflow.execute_local_activity(
                    "quick", start_to_close_timeout=LONG, retry_policy=ONCE
                )
            )
        return str(
            await workflow.execute_activity("quick", start_to_close_timeout=LONG, retry_policy=ONCE)
        )


@dataclass
class Running:
    client: Client
    task_queue: str
    blocking: Blocking
    activity_slots: int
    local_activity_slots: int


@pytest.fixture
async def running(
    dev_env: WorkflowEnvironment, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Running]:
    monkeypatch.setenv("APPROVAL_SIGNING_KEYS", KEY)
    # The worker build_worker makes is read, never run: on a task queue of its own, since the
    # SDK refuses two workers of one task queue in one process.
    monkeypatch.setenv("APPROVAL_TASK_QUEUE", f"tq-threads-model-{uuid.uuid4()}")
    task_queue = f"tq-threads-{uuid.uuid4()}"
    blocking = Blocking()
    with activity_executor() as executor:
        # The worker's own slots, interceptors and pool; these tests' workflows and activities.
        config: dict[str, Any] = dict(
            build_worker(dev_env.client, Settings(), [], executor).config()
        )
        config.update(
            task_queue=task_queue,
            workflows=[HoldAll, QuickOne],
            activities=[blocking.hold, blocking.quick],
            workflow_runner=UnsandboxedWorkflowRunner(),
            graceful_shutdown_timeout=timedelta(0),
        )
        async with Worker(**config):
            try:
                yield Running(
                    dev_env.client,
                    task_queue,
                    blocking,
                    config["max_concurrent_activities"] or SDK_DEFAULT_SLOTS,
                    config["max_concurrent_local_activities"] or SDK_DEFAULT_SLOTS,
                )
            finally:
                # Let the held threads go: the worker waits for its activities when it stops.
                blocking.release.set()


async def _fill_then_run(running: Running, fill_local: bool, slots: int) -> None:
    client, task_queue = running.client, running.task_queue
    holding = await client.start_workflow(
        HoldAll.run,
        args=[slots, fill_local],
        id=f"hold-{uuid.uuid4()}",
        task_queue=task_queue,
    )
    await eventually(lambda: running.blocking.held == slots, what=f"{slots} activities held")
    # Every slot of one kind is taken, each holding its thread: the other kind still runs.
    quick = await client.start_workflow(
        QuickOne.run, not fill_local, id=f"quick-{uuid.uuid4()}", task_queue=task_queue
    )
    result: list[str] = []

    async def finished() -> bool:
        with_result = await quick.describe()
        if with_result.status is not None and with_result.status.name == "COMPLETED":
            result.append(await quick.result())
            return True
        return False

    await eventually(finished, what="the other kind's call, while one kind fills its slots")
    assert result == ["done"]
    running.blocking.release.set()
    await holding.result()


async def test_full_activity_slots_leave_threads_for_local_activities(running: Running) -> None:
    await _fill_then_run(running, fill_local=False, slots=running.activity_slots)


async def test_full_local_activity_slots_leave_threads_for_activities(running: Running) -> None:
    await _fill_then_run(running, fill_local=True, slots=running.local_activity_slots)
