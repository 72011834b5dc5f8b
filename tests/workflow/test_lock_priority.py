"""One lock per resource, with priorities, on the time-skipping server.

Different resources have different mutexes, so their processes run at the same time. Within a
resource the queue is ordered by priority (1 first), then first come, first served; priority
never preempts the holder, and the order survives the mutex's continue-as-new.
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

from temporalio.client import WorkflowHandle
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment

from tests.workflow.fakes import eventually
from tests.workflow.harness import PATIENT, Harness, harness
from workflows.messages import (
    CommandName,
    LockRelease,
    MutexInput,
    MutexOptions,
    mutex_workflow_id,
)
from workflows.mutex import MutexWorkflow


async def _queued_at(h: Harness, process_id: str) -> bool:
    try:
        state = await h.mutex_state()
    except RPCError:  # the first request has not started the mutex yet
        return False
    holder = state.holder.holder_workflow_id if state.holder else None
    return holder == process_id or any(r.requester_workflow_id == process_id for r in state.queue)


async def _join(h: Harness, name: str, priority: int | None = None, **options: Any) -> Any:
    """A process, approved, whose lock request has reached the mutex (so arrival order is ours)."""
    if priority is not None:
        options["lock_priority"] = priority
    handle = await h.start(requested_by=name, **PATIENT, **options)
    await h.approve(handle)
    await eventually(lambda: _queued_at(h, handle.id), what=f"{name} known to the mutex")
    return handle


async def _finish(h: Harness, handle: WorkflowHandle[Any, Any]) -> None:
    await h.wait_sent(handle)
    await h.call_back(handle, CommandName.ONE)
    await h.call_back(handle, CommandName.TWO)
    await handle.result()


async def _waiting(h: Harness) -> list[str]:
    return [r.requester_workflow_id for r in (await h.mutex_state()).queue]


async def _granted_in_order(h: Harness, handles: list[WorkflowHandle[Any, Any]]) -> list[int]:
    """Finish each process in turn; their lease ids, counted from the first one's (0, 1, ...).

    Lease ids only grow, one per grant, so 0, 1, 2, ... says they were granted in this order.
    """
    leases = []
    for handle in handles:
        await _finish(h, handle)
        lease = (await h.state(handle)).lock.lease_id
        assert lease is not None
        leases.append(lease)
    return [lease - leases[0] for lease in leases]


async def test_processes_on_two_resources_hold_their_locks_at_once(
    time_env: WorkflowEnvironment,
) -> None:
    async with harness(time_env.client) as h:
        other = f"res-{uuid.uuid4().hex[:8]}"
        first = await h.start(requested_by="first", **PATIENT)
        second = await h.start(requested_by="second", lock_resource=other, **PATIENT)
        for handle in (first, second):
            await h.approve(handle)
        await h.wait_sent(first)
        await h.wait_sent(second)

        states = [await h.state(first), await h.state(second)]
        assert [s.lock.status for s in states] == ["held", "held"]
        assert {s.lock.resource for s in states} == {h.resource, other}
        holders = [
            (await h.client.get_workflow_handle(mutex_workflow_id(r)).query(MutexWorkflow.state))
            for r in (h.resource, other)
        ]
        assert [m.holder.holder_workflow_id for m in holders if m.holder] == [first.id, second.id]
        await _finish(h, first)
        await _finish(h, second)


async def test_a_priority_1_request_overtakes_queued_priority_3_ones_but_never_preempts(
    time_env: WorkflowEnvironment,
) -> None:
    async with harness(time_env.client) as h:
        holder = await _join(h, "holder", priority=3)
        await h.wait_sent(holder)
        first = await _join(h, "first", priority=3)
        second = await _join(h, "second", priority=3)
        low = await _join(h, "low", priority=5)
        urgent = await _join(h, "urgent", priority=1)

        assert await _waiting(h) == [urgent.id, first.id, second.id, low.id]
        # Never preempted: the holder keeps the lock, the urgent one waits its turn.
        await h.advance(timedelta(minutes=30))
        mutex = await h.mutex_state()
        assert mutex.holder is not None and mutex.holder.holder_workflow_id == holder.id
        assert (await h.state(holder)).lock.status == "held"
        assert (await h.state(urgent)).lock.status == "requested"

        leases = await _granted_in_order(h, [holder, urgent, first, second, low])
        assert leases == [0, 1, 2, 3, 4]
        assert [r.priority for r in mutex.queue] == [1, 3, 3, 5]


async def test_equal_priorities_stay_first_come_first_served(
    time_env: WorkflowEnvironment,
) -> None:
    async with harness(time_env.client) as h:
        holder = await _join(h, "holder", priority=2)
        await h.wait_sent(holder)
        # An older sender's request carries no priority: it waits at the default, 3.
        waiters = [await _join(h, f"waiter-{n}", priority=p) for n, p in enumerate((2, 2, 3, 2))]
        expected = [waiters[0], waiters[1], waiters[3], waiters[2]]
        assert await _waiting(h) == [w.id for w in expected]
        assert await _granted_in_order(h, [holder, *expected]) == [0, 1, 2, 3, 4]


async def test_continue_as_new_keeps_the_order(time_env: WorkflowEnvironment) -> None:
    async with harness(time_env.client) as h:
        mutex_id = mutex_workflow_id(h.resource)
        first_run = await h.client.start_workflow(
            MutexWorkflow.run,
            MutexInput(resource=h.resource, options=MutexOptions(max_history_events=100)),
            id=mutex_id,
            task_queue=h.task_queue,
        )
        holder = await _join(h, "holder")
        await h.wait_sent(holder)
        normal = await _join(h, "normal", priority=3)
        low = await _join(h, "low", priority=4)
        urgent = await _join(h, "urgent", priority=1)
        before = await h.mutex_state()
        assert [r.requester_workflow_id for r in before.queue] == [urgent.id, normal.id, low.id]

        mutex = h.client.get_workflow_handle_for(MutexWorkflow.run, mutex_id)
        stale = LockRelease(request_id="nobody", lease_id=999)

        async def rolled_over() -> bool:
            # Stale releases change nothing but grow the history past max_history_events.
            await mutex.signal(MutexWorkflow.release, stale)
            return (await mutex.describe()).run_id != first_run.result_run_id

        await eventually(rolled_over, within=30, what="the mutex to continue as new")
        after = await h.mutex_state()
        assert after.queue == before.queue and after.holder == before.holder
        # The next run places a new request by its priority among those carried over.
        second = await _join(h, "second", priority=2)
        assert await _waiting(h) == [urgent.id, second.id, normal.id, low.id]
        leases = await _granted_in_order(h, [holder, urgent, second, normal, low])
        assert leases == [0, 1, 2, 3, 4]
