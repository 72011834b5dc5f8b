"""MutexWorkflow on the time-skipping server: FIFO, fencing, stale requests, abandoned holders."""

from __future__ import annotations

import asyncio
import itertools
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowFailureError
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from tests.workflow.fakes import Fakes, eventually
from tests.workflow.harness import PATIENT, Harness, harness
from tests.workflow.requester import Requester
from workflows.messages import (
    CommandCallback,
    CommandName,
    LockRelease,
    LockRequest,
    MutexInput,
    MutexOptions,
    ProcessStatus,
    Stage,
    mutex_workflow_id,
)
from workflows.mutex import MutexWorkflow
from workflows.process import LOCK_TIMEOUT_MESSAGE, ProcessWorkflow


async def _hold_lock(h: Harness):
    """A process that takes the lock and then waits (for hours) on its commands' callbacks."""
    holder = await h.start(requested_by="holder", **PATIENT)
    await h.approve(holder)
    await h.wait_sent(holder)
    return holder


async def test_twenty_processes_run_one_after_another_in_request_order(
    time_env: WorkflowEnvironment,
) -> None:
    async with harness(time_env.client) as h:
        # The last one waits 19 turns, the clock running on after each awaited result.
        handles = [await h.start(requested_by=f"user-{i}", **PATIENT) for i in range(20)]
        await eventually(lambda: len(h.fakes.approvals) == 20, what="20 approval requests")
        await asyncio.gather(*(h.approve(handle) for handle in handles))
        # The order the mutex received the requests in (concurrent activities may deliver
        # their signal-with-start in any order): nobody finishes before we call back, so
        # holder + queue is every request, in arrival order.
        await _until_known_to_mutex(h, 20)
        snapshot = await h.mutex_state()
        assert snapshot.holder is not None
        arrival = [snapshot.holder.holder_workflow_id] + [
            r.requester_workflow_id for r in snapshot.queue
        ]
        by_id = {handle.id: handle for handle in handles}
        ran: list[str] = []
        for _ in handles:
            # Exactly one process may be in its command phase; finish it and look again.
            await eventually(
                lambda: len(_running(h, ran)) == 1 and _all_sent(h, _running(h, ran)[0]),
                what="the next process in its command phase",
            )
            running = _running(h, ran)
            assert len(running) == 1, f"more than one process in its command phase: {running}"
            ran.append(running[0])
            handle = by_id[running[0]]
            # Called back once the process has seen its sends' results, not only the fakes
            # called (Harness.wait_sent): once in 33 loaded runs, the test server wedged on
            # "ACTIVITY_UNKNOWN" and this process's result never came.
            await h.wait_sent(handle)
            await h.call_back(handle, CommandName.ONE)
            await h.call_back(handle, CommandName.TWO)
            await handle.result()
        assert ran == arrival  # granted in the order the lock was asked for
        states = [await h.state(by_id[process_id]) for process_id in ran]
        for earlier, later in itertools.pairwise(states):
            assert earlier.lock.released_at is not None and later.lock.granted_at is not None
            assert earlier.lock.released_at <= later.lock.granted_at
        first = states[0].lock.lease_id
        assert first is not None
        assert [s.lock.lease_id for s in states] == list(range(first, first + 20))
        mutex = await h.mutex_state()
        assert mutex.holder is None and mutex.queue == []
        assert mutex.counters.grants == 20 and mutex.counters.releases == 20


async def _until_known_to_mutex(h: Harness, count: int) -> None:
    """Wait until ``count`` requests reached the mutex, letting workflow time pass if needed.

    Under load (CI, load 8) the time-skipping server answered one of 20 concurrent
    signal-with-starts WorkflowAlreadyStarted although the mutex ran (the dev server does not):
    the request_lock activity then retries, as designed, after its retry interval, which is
    workflow time that only passes here when the test lets it.
    """
    for _ in range(5):
        try:
            await eventually(lambda: _known_to_mutex(h, count), what=f"{count} requests")
            return
        except AssertionError:
            await h.advance(timedelta(minutes=3))
    await eventually(lambda: _known_to_mutex(h, count), what=f"{count} requests at the mutex")


async def _known_to_mutex(h: Harness, count: int) -> bool:
    try:
        state = await h.mutex_state()
    except RPCError:
        return False  # not started yet
    return (state.holder is not None) + len(state.queue) == count


def _running(h: Harness, finished: list[str]) -> list[str]:
    sent = {process_id for (process_id, _), attempts in h.fakes.sends.items() if attempts}
    return sorted(sent - set(finished))


def _all_sent(h: Harness, process_id: str) -> bool:
    return all(h.fakes.sent(process_id, command) for command in CommandName)


async def test_processes_that_never_finish_fail_the_waiter_after_100_minutes(
    time_env: WorkflowEnvironment,
) -> None:
    """The original's "check for running processes" bound, and no late grant afterwards."""
    async with harness(time_env.client) as h:
        holder = await _hold_lock(h)
        waiter = await h.start(requested_by="waiter")
        await h.approve(waiter)
        await eventually(lambda: len(h.fakes.lock_requests) == 2, what="waiter queued")
        with pytest.raises(WorkflowFailureError) as failure:
            await waiter.result()
        error = failure.value.cause
        assert isinstance(error, ApplicationError)
        assert error.type == "lock-timeout"
        assert error.message == LOCK_TIMEOUT_MESSAGE
        state = await h.state(waiter)
        assert state.lock.status == "cancelled"
        assert state.lock.requested_at is not None and state.finished_at is not None
        waited = state.finished_at - state.lock.requested_at
        assert timedelta(minutes=100) <= waited < timedelta(minutes=101)
        assert h.fakes.records[waiter.id]["reason"] == "lock-timeout"
        assert not h.fakes.sent(waiter.id, CommandName.ONE)

        # The holder finishes; the timed-out request must not be granted the lock now.
        await h.call_back(holder, CommandName.ONE)
        await h.call_back(holder, CommandName.TWO)
        await holder.result()
        mutex = await h.mutex_state()
        assert mutex.holder is None and mutex.queue == []
        assert mutex.counters.grants == 1
        assert mutex.counters.cancelled_requests == 1


async def test_terminated_holder_frees_the_lock_within_the_liveness_interval(
    time_env: WorkflowEnvironment,
) -> None:
    async with harness(time_env.client) as h:
        holder = await _hold_lock(h)
        waiter = await h.start(requested_by="waiter")
        await h.approve(waiter)
        await eventually(lambda: len(h.fakes.lock_requests) == 2, what="waiter queued")
        await holder.terminate("operator killed it")
        # Let workflow time pass by one liveness interval (1 min by default), plus a little.
        await time_env.sleep(timedelta(minutes=1, seconds=5))
        await h.wait_sent(waiter)
        state = await h.state(waiter)
        assert state.lock.status == "held"
        assert state.lock.granted_at is not None and state.lock.requested_at is not None
        assert state.lock.granted_at - state.lock.requested_at <= timedelta(minutes=2)
        record = h.fakes.records[holder.id]
        assert record["status"] is ProcessStatus.FAILED
        assert record["reason"] == "abandoned"
        mutex = await h.mutex_state()
        assert mutex.counters.abandoned_holders == 1
        assert mutex.holder is not None and mutex.holder.holder_workflow_id == waiter.id
        await h.call_back(waiter, CommandName.ONE)
        await h.call_back(waiter, CommandName.TWO)
        await waiter.result()


async def test_release_with_a_stale_lease_frees_nothing(time_env: WorkflowEnvironment) -> None:
    async with harness(time_env.client) as h:
        holder = await _hold_lock(h)
        before = await h.mutex_state()
        assert before.holder is not None
        mutex = h.client.get_workflow_handle_for(MutexWorkflow.run, f"mutex-{h.resource}")
        await mutex.signal(
            MutexWorkflow.release,
            LockRelease(request_id=before.holder.request_id, lease_id=before.holder.lease_id + 7),
        )
        await eventually(lambda: _stale_releases(h, 1), what="the stale release to be counted")
        after = await h.mutex_state()
        assert after.holder == before.holder
        await h.call_back(holder, CommandName.ONE)
        await h.call_back(holder, CommandName.TWO)
        await holder.result()
        assert (await h.mutex_state()).holder is None


async def _stale_releases(h: Harness, count: int) -> bool:
    return (await h.mutex_state()).counters.stale_releases == count


async def test_expired_lease_is_revoked_and_the_holder_told(time_env: WorkflowEnvironment) -> None:
    async with harness(time_env.client) as h:
        holder = await h.start(
            requested_by="slow",
            command_timeout=timedelta(hours=10),
            lease_timeout=timedelta(hours=2),
        )
        await h.approve(holder)
        await h.wait_sent(holder)
        with pytest.raises(WorkflowFailureError) as failure:
            await holder.result()
        error = failure.value.cause
        assert isinstance(error, ApplicationError) and error.type == "error"
        assert "revoked" in error.message
        state = await h.state(holder)
        assert state.stage is Stage.FAILED and state.lock.status == "revoked"
        mutex = await h.mutex_state()
        assert mutex.holder is None and mutex.counters.expired_leases == 1


async def test_mutex_state_query_shows_holder_and_queue(time_env: WorkflowEnvironment) -> None:
    async with harness(time_env.client) as h:
        holder = await _hold_lock(h)
        waiter = await h.start(requested_by="waiter")
        await h.approve(waiter)
        await eventually(lambda: len(h.fakes.lock_requests) == 2, what="waiter queued")
        await eventually(lambda: _queue_length(h, 1), what="waiter in the queue")
        state = await h.mutex_state()
        assert state.holder is not None and state.holder.holder_workflow_id == holder.id
        assert [r.requester_workflow_id for r in state.queue] == [waiter.id]
        await waiter.cancel()
        await eventually(lambda: _queue_length(h, 0), what="cancelled waiter leaves the queue")
        assert (await h.state(waiter)).failure_reason == "cancelled"
        await holder.signal(ProcessWorkflow.command_callback, _ok(CommandName.ONE))
        await holder.signal(ProcessWorkflow.command_callback, _ok(CommandName.TWO))
        await holder.result()


async def _queue_length(h: Harness, length: int) -> bool:
    return len((await h.mutex_state()).queue) == length


def _ok(command: CommandName) -> CommandCallback:
    return CommandCallback(command=command.value, status="succeeded")


async def test_failing_liveness_check_keeps_the_mutex_and_its_queue(
    time_env: WorkflowEnvironment,
) -> None:
    async with harness(time_env.client) as h:
        holder = await _hold_lock(h)
        h.fakes.describe_down = True
        await h.advance(timedelta(minutes=5))  # several checks fail, each after retries
        state = await h.mutex_state()
        assert state.holder is not None and state.holder.holder_workflow_id == holder.id
        h.fakes.describe_down = False
        await h.call_back(holder, CommandName.ONE)
        await h.call_back(holder, CommandName.TWO)
        await holder.result()
        assert (await h.mutex_state()).holder is None


async def _no_holder(h: Harness) -> bool:
    return (await h.mutex_state()).holder is None


async def test_requests_and_releases_start_no_timer_of_their_own(
    time_env: WorkflowEnvironment,
) -> None:
    """The liveness check keeps one timer; messages that wake the mutex do not restart it.

    Before ``mutex-one-liveness-timer`` every request and release cancelled a timer and started
    another in the handoff's own workflow task. Here 20 requests reach a held lock one task at a
    time, then the 20 handoffs follow: one timer is all the check needs.

    The check runs every 6 hours here: the time-skipping server lets time run in real time while
    signals and queries are in flight, so on a loaded machine the test may take longer than the
    default minute, and a second timer would be the check's own, started when the first fired.
    """
    client = time_env.client
    resource = f"res-{uuid.uuid4().hex[:8]}"
    task_queue = f"tq-{uuid.uuid4()}"
    holder, waiter = f"holder-{uuid.uuid4()}", f"waiter-{uuid.uuid4()}"
    async with Worker(
        client,
        task_queue=task_queue,
        workflows=[MutexWorkflow, Requester],
        activities=Fakes().activities(),
    ):
        keeper = await client.start_workflow(
            Requester.run, "held", id=holder, task_queue=task_queue
        )
        taker = await client.start_workflow(Requester.run, "", id=waiter, task_queue=task_queue)
        mutex = await client.start_workflow(
            MutexWorkflow.run,
            MutexInput(
                resource=resource, options=MutexOptions(liveness_interval=timedelta(hours=6))
            ),
            id=mutex_workflow_id(resource),
            task_queue=task_queue,
        )

        async def queued(count: int) -> bool:
            state = await mutex.query(MutexWorkflow.state)
            return state.holder is not None and len(state.queue) == count

        await mutex.signal(MutexWorkflow.request, _lock_request(holder, "held"))
        for n in range(20):
            await mutex.signal(MutexWorkflow.request, _lock_request(waiter, f"w{n}"))
            await eventually(lambda n=n: queued(n + 1), what=f"request {n} queued")
        await keeper.signal(Requester.let_go)

        async def drained() -> bool:
            return len(await taker.query(Requester.grants)) == 20

        await eventually(drained, what="20 handoffs")
        assert await taker.query(Requester.grants) == [f"w{n}" for n in range(20)]
        history = await mutex.fetch_history()
    timers = [e for e in history.events if e.event_type == EventType.EVENT_TYPE_TIMER_STARTED]
    cancelled = [e for e in history.events if e.event_type == EventType.EVENT_TYPE_TIMER_CANCELED]
    assert (len(timers), len(cancelled)) == (1, 0)


def _lock_request(requester: str, request_id: str) -> LockRequest:
    return LockRequest(
        requester_workflow_id=requester,
        request_id=request_id,
        lease_timeout=timedelta(hours=1),
        requested_at=datetime.now(UTC),
    )
