"""MutexWorkflow against what operators and bad values do to it (time-skipping server): a cancel
mid-take-over, a run terminated mid-take-over, a closed run no worker can replay or answer for, a
terminate between ``request_lock``'s look at the mutex and its request, a DynamoDB outage at
continue-as-new, a request whose lease overflows a deadline.

Each test failed on the code before it: the mutex closed on the cancel and the next run granted a
second holder (patch ``mutex-take-over-ignores-cancel``); a run taking over from a run terminated
mid-take-over granted beside the old holder, and one that could not replay the closed run (or
reach a worker for it) waited forever (``recover_mutex``); a request started a run that knew of
no closed run and granted at once (``request_lock``); no grant went out until DynamoDB answered
(patch ``mutex-carries-abandon-marks``); one request failed every workflow task of the mutex, for
good (the clamp ``_later``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from temporalio import activity, workflow
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowHandle, WorkflowHistory
from temporalio.testing import ActivityEnvironment, WorkflowEnvironment
from temporalio.worker import (
    ExecuteWorkflowInput,
    Interceptor,
    Replayer,
    Worker,
    WorkflowInboundInterceptor,
    WorkflowInterceptorClassInput,
)

from activities import mutex as mutex_activities
from activities.mutex import closed_mutex_run
from activities.retry import LinearRetryInterceptor
from common.payloads import DATA_CONVERTER
from tests.workflow.fakes import Fakes, eventually
from tests.workflow.requester import Requester
from workflows.messages import (
    LOCK_GRANTED_SIGNAL,
    LOCK_RELEASE_SIGNAL,
    LOCK_REQUEST_SIGNAL,
    FailureReason,
    LockGranted,
    LockRelease,
    LockRequest,
    MutexInput,
    MutexOptions,
    ProcessStatus,
    RecoverMutex,
    RequestLock,
    StatusUpdateResult,
    UpdateProcessStatus,
    mutex_workflow_id,
)
from workflows.mutex import MutexWorkflow

HISTORIES = Path(__file__).resolve().parents[1] / "histories"


def _request(requester: str, request_id: str) -> LockRequest:
    return LockRequest(
        requester_workflow_id=requester,
        request_id=request_id,
        lease_timeout=timedelta(days=1),
        requested_at=datetime.now(UTC),
    )


async def _granted(handle: WorkflowHandle[Requester, None], request_id: str) -> bool:
    return request_id in await handle.query(Requester.grants)


def _without(fakes: Fakes, name: str) -> list[Callable[..., Any]]:
    return [a for a in fakes.activities() if getattr(a, "__name__", "") != name]


async def test_a_cancel_during_take_over_is_ignored_and_the_old_holder_keeps_the_lock(
    time_env: WorkflowEnvironment,
) -> None:
    """Run A grants H and is terminated; run B takes over from A, slowly; an operator cancels B
    meanwhile. B must keep running, adopt H, and grant nobody else while H holds the lock.

    Before the patch the cancel reached B's ``recover_mutex``, B closed cancelled having adopted
    nothing, and the next request's run took over from B (no holder) and granted W beside H."""
    # The closed run's replay is slow (recover_mutex held): the cancel lands meanwhile.
    fakes = Fakes(recover_gate=asyncio.Event())
    client = time_env.client
    resource, task_queue = f"res-{uuid.uuid4().hex[:8]}", f"tq-{uuid.uuid4()}"
    holder_id, waiter_id = f"holder-{uuid.uuid4()}", f"waiter-{uuid.uuid4()}"
    mutex_id = mutex_workflow_id(resource)
    with ThreadPoolExecutor(4) as executor:
        async with Worker(
            client,
            task_queue=task_queue,
            workflows=[MutexWorkflow, Requester],
            activities=fakes.activities(),
            activity_executor=executor,
        ):
            holder = await client.start_workflow(
                Requester.run, "h", id=holder_id, task_queue=task_queue
            )
            waiter = await client.start_workflow(
                Requester.run, "w", id=waiter_id, task_queue=task_queue
            )
            run_a = await client.start_workflow(
                MutexWorkflow.run,
                MutexInput(resource=resource),
                id=mutex_id,
                task_queue=task_queue,
                start_signal=LOCK_REQUEST_SIGNAL,
                start_signal_args=[_request(holder_id, "h")],
            )
            await eventually(lambda: _granted(holder, "h"), what="H granted by run A")
            await run_a.terminate("operator error")
            run_b = await client.start_workflow(
                MutexWorkflow.run,
                MutexInput(
                    resource=resource, previous_run_id=await closed_mutex_run(client, resource)
                ),
                id=mutex_id,
                task_queue=task_queue,
            )
            await eventually(lambda: fakes.recovering, what="run B reading run A")
            during = await run_b.query(MutexWorkflow.state)
            assert during.taking_over_from == run_a.result_run_id
            await run_b.cancel()
            # A request meanwhile (signal-with-start finds B running: no run C starts).
            await client.start_workflow(
                MutexWorkflow.run,
                MutexInput(resource=resource),
                id=mutex_id,
                task_queue=task_queue,
                start_signal=LOCK_REQUEST_SIGNAL,
                start_signal_args=[_request(waiter_id, "w")],
            )

            async def cancel_seen() -> bool:
                state = await run_b.query(MutexWorkflow.state)
                return state.counters.ignored_cancels == 1

            await eventually(cancel_seen, what="the cancel ignored during the take-over")
            assert fakes.recover_gate is not None
            fakes.recover_gate.set()

            async def taken_over() -> bool:
                state = await run_b.query(MutexWorkflow.state)
                return state.recovered_from == run_a.result_run_id

            await eventually(taken_over, what="run B to take over from run A")
            assert (await run_b.describe()).status == WorkflowExecutionStatus.RUNNING
            state = await run_b.query(MutexWorkflow.state)
            assert state.holder is not None and state.holder.holder_workflow_id == holder_id
            assert [r.request_id for r in state.queue] == ["w"]
            assert state.taking_over_from is None
            assert not await _granted(waiter, "w")
            # H lets go: now, and only now, W is granted.
            await holder.signal(Requester.let_go)
            await eventually(lambda: _granted(waiter, "w"), what="W granted after H released")


async def test_a_dynamodb_outage_holds_up_no_grant_at_continue_as_new(
    time_env: WorkflowEnvironment,
) -> None:
    """An abandoned holder's record cannot be marked (DynamoDB down) when the history calls for
    continue-as-new: the mutex continues as new anyway, carrying the mark, and grants the next
    request; the mark is written once DynamoDB answers.

    Before the patch continue-as-new waited for the mark, which retries until DynamoDB answers:
    nobody was granted the lock for the whole outage."""
    dynamodb_up = False
    attempts: list[UpdateProcessStatus] = []
    written: list[UpdateProcessStatus] = []

    @activity.defn(name="update_process_status")
    async def process_table(update: UpdateProcessStatus) -> StatusUpdateResult:
        attempts.append(update)
        if not dynamodb_up:
            raise RuntimeError("DynamoDB unavailable (scripted)")
        written.append(update)
        return StatusUpdateResult(applied=True, status=update.status)

    client: Client = time_env.client
    resource, task_queue = f"res-{uuid.uuid4().hex[:8]}", f"tq-{uuid.uuid4()}"
    holder_id, waiter_id = f"holder-{uuid.uuid4()}", f"waiter-{uuid.uuid4()}"
    async with Worker(
        client,
        task_queue=task_queue,
        workflows=[MutexWorkflow, Requester],
        activities=[*_without(Fakes(), "update_process_status"), process_table],
    ):
        mutex = await client.start_workflow(
            MutexWorkflow.run,
            MutexInput(resource=resource, options=MutexOptions(max_history_events=100)),
            id=mutex_workflow_id(resource),
            task_queue=task_queue,
        )
        holder = await client.start_workflow(
            Requester.run, "h", id=holder_id, task_queue=task_queue
        )
        waiter = await client.start_workflow(
            Requester.run, "w", id=waiter_id, task_queue=task_queue
        )
        await mutex.signal(LOCK_REQUEST_SIGNAL, _request(holder_id, "h"))
        await eventually(lambda: _granted(holder, "h"), what="H granted")
        await holder.terminate("operator killed it")
        await time_env.sleep(timedelta(minutes=1, seconds=5))  # past the next liveness check
        await eventually(lambda: len(attempts) >= 1, what="the abandon mark attempted")
        state = await mutex.query(MutexWorkflow.state)
        assert state.holder is None and state.counters.abandoned_holders == 1
        assert [m.process_id for m in state.abandoned] == [holder_id]

        # Stale releases (harmless) grow the history past max_history_events.
        async def history_long() -> bool:
            description = await mutex.describe()
            return description.raw_description.workflow_execution_info.history_length >= 100

        while not await history_long():
            await mutex.signal(LOCK_RELEASE_SIGNAL, LockRelease(request_id="x", lease_id=1))
        await mutex.signal(LOCK_REQUEST_SIGNAL, _request(waiter_id, "w"))
        await eventually(lambda: _granted(waiter, "w"), what="W granted during the outage")
        latest = client.get_workflow_handle(mutex_workflow_id(resource))
        assert (await latest.describe()).run_id != mutex.first_execution_run_id
        carried = await latest.query(MutexWorkflow.state)
        assert [m.process_id for m in carried.abandoned] == [holder_id]
        assert not written
        dynamodb_up = True

        async def marked() -> bool:
            return not (await latest.query(MutexWorkflow.state)).abandoned

        await eventually(marked, what="the carried mark written once DynamoDB answers")
        assert {(w.process_id, w.status, w.reason) for w in written} == {
            (holder_id, ProcessStatus.FAILED, FailureReason.ABANDONED)
        }
        # The time it was noticed, not when it was finally written.
        assert written[0].at == carried.abandoned[0].at


async def test_a_take_over_writes_the_abandon_marks_the_closed_run_had_pending(
    time_env: WorkflowEnvironment,
) -> None:
    """Run A noticed its holder H abandoned while DynamoDB was down (the mark pending, in A's
    state) and was terminated; run B takes over from A. Once DynamoDB answers, H's record must be
    marked abandoned, by B.

    Before (patch ``mutex-takes-over-abandon-marks``) the take-over adopted A's holder, queue and
    lease ids but not its pending marks: H's record stayed ``in-progress``."""
    dynamodb_up = False
    attempts: list[UpdateProcessStatus] = []
    written: list[UpdateProcessStatus] = []

    @activity.defn(name="update_process_status")
    async def process_table(update: UpdateProcessStatus) -> StatusUpdateResult:
        attempts.append(update)
        if not dynamodb_up:
            raise RuntimeError("DynamoDB unavailable (scripted)")
        written.append(update)
        return StatusUpdateResult(applied=True, status=update.status)

    client: Client = time_env.client
    resource, task_queue = f"res-{uuid.uuid4().hex[:8]}", f"tq-{uuid.uuid4()}"
    holder_id = f"holder-{uuid.uuid4()}"
    mutex_id = mutex_workflow_id(resource)
    async with Worker(
        client,
        task_queue=task_queue,
        workflows=[MutexWorkflow, Requester],
        activities=[*_without(Fakes(), "update_process_status"), process_table],
    ):
        run_a = await client.start_workflow(
            MutexWorkflow.run, MutexInput(resource=resource), id=mutex_id, task_queue=task_queue
        )
        holder = await client.start_workflow(
            Requester.run, "h", id=holder_id, task_queue=task_queue
        )
        await run_a.signal(LOCK_REQUEST_SIGNAL, _request(holder_id, "h"))
        await eventually(lambda: _granted(holder, "h"), what="H granted")
        await holder.terminate("operator killed it")
        await time_env.sleep(timedelta(minutes=1, seconds=5))  # past the next liveness check
        await eventually(lambda: len(attempts) >= 1, what="the abandon mark attempted")
        state = await run_a.query(MutexWorkflow.state)
        assert [m.process_id for m in state.abandoned] == [holder_id]
        await run_a.terminate("operator error")
        run_b = await client.start_workflow(
            MutexWorkflow.run,
            MutexInput(resource=resource, previous_run_id=run_a.result_run_id),
            id=mutex_id,
            task_queue=task_queue,
        )

        async def taken_over() -> bool:
            state = await run_b.query(MutexWorkflow.state)
            return state.recovered_from == run_a.result_run_id

        await eventually(taken_over, what="run B to take over from A")
        adopted = await run_b.query(MutexWorkflow.state)
        assert [m.process_id for m in adopted.abandoned] == [holder_id]
        dynamodb_up = True

        async def marked() -> bool:
            return not (await run_b.query(MutexWorkflow.state)).abandoned

        await eventually(marked, what="the adopted mark written once DynamoDB answers")
        assert {(w.process_id, w.status, w.reason) for w in written} == {
            (holder_id, ProcessStatus.FAILED, FailureReason.ABANDONED)
        }
        assert written[0].at == state.abandoned[0].at


async def test_a_lease_timeout_past_the_end_of_time_is_clamped_and_wedges_nothing(
    time_env: WorkflowEnvironment,
) -> None:
    """A request with a lease of three million days (``now + lease_timeout`` overflows) is
    granted a lease to the end of time, and the next request is granted after it.

    Before the clamp the sum raised ``OverflowError`` in every attempt of the workflow task:
    nobody on the resource was granted the lock again, and no take-over could read the run."""
    client = time_env.client
    resource, task_queue = f"res-{uuid.uuid4().hex[:8]}", f"tq-{uuid.uuid4()}"
    holder_id, waiter_id = f"holder-{uuid.uuid4()}", f"waiter-{uuid.uuid4()}"
    async with Worker(
        client, task_queue=task_queue, workflows=[MutexWorkflow, Requester], activities=[]
    ):
        holder = await client.start_workflow(
            Requester.run, "h", id=holder_id, task_queue=task_queue
        )
        waiter = await client.start_workflow(
            Requester.run, "w", id=waiter_id, task_queue=task_queue
        )
        huge = _request(holder_id, "h").model_copy(
            update={"lease_timeout": timedelta(days=3_000_000)}
        )
        mutex = await client.start_workflow(
            MutexWorkflow.run,
            MutexInput(resource=resource),
            id=mutex_workflow_id(resource),
            task_queue=task_queue,
            start_signal=LOCK_REQUEST_SIGNAL,
            start_signal_args=[huge],
        )
        await eventually(lambda: _granted(holder, "h"), what="the huge lease granted")
        await mutex.signal(LOCK_REQUEST_SIGNAL, _request(waiter_id, "w"))
        state = await mutex.query(MutexWorkflow.state)
        assert state.holder is not None and state.holder.request_id == "h"
        assert state.holder.expires_at == datetime.max.replace(tzinfo=UTC)
        await holder.signal(Requester.let_go)
        await eventually(lambda: _granted(waiter, "w"), what="the next request granted")
        failed = [
            e
            async for e in mutex.fetch_history_events()
            if e.HasField("workflow_task_failed_event_attributes")
        ]
        assert not failed


async def test_a_run_terminated_mid_take_over_is_looked_through_to_the_run_it_was_reading(
    time_env: WorkflowEnvironment,
) -> None:
    """Run A grants H and is terminated; run B, still reading A (slowly), is terminated too, with
    W's request queued. Run C takes over from B, which adopted nothing: it must look through B to
    A, keep H as the holder and W waiting behind it.

    Before, C adopted B's empty state and granted W at once, beside H."""
    fakes = Fakes(recover_gate=asyncio.Event())
    client = time_env.client
    resource, task_queue = f"res-{uuid.uuid4().hex[:8]}", f"tq-{uuid.uuid4()}"
    holder_id, waiter_id = f"holder-{uuid.uuid4()}", f"waiter-{uuid.uuid4()}"
    mutex_id = mutex_workflow_id(resource)
    with ThreadPoolExecutor(4) as executor:
        async with Worker(
            client,
            task_queue=task_queue,
            workflows=[MutexWorkflow, Requester],
            activities=fakes.activities(),
            activity_executor=executor,
        ):
            holder = await client.start_workflow(
                Requester.run, "h", id=holder_id, task_queue=task_queue
            )
            waiter = await client.start_workflow(
                Requester.run, "w", id=waiter_id, task_queue=task_queue
            )
            run_a = await client.start_workflow(
                MutexWorkflow.run,
                MutexInput(resource=resource),
                id=mutex_id,
                task_queue=task_queue,
                start_signal=LOCK_REQUEST_SIGNAL,
                start_signal_args=[_request(holder_id, "h")],
            )
            await eventually(lambda: _granted(holder, "h"), what="H granted by run A")
            await run_a.terminate("operator error")
            run_b = await client.start_workflow(
                MutexWorkflow.run,
                MutexInput(resource=resource, previous_run_id=run_a.result_run_id),
                id=mutex_id,
                task_queue=task_queue,
                start_signal=LOCK_REQUEST_SIGNAL,
                start_signal_args=[_request(waiter_id, "w")],
            )
            await eventually(lambda: fakes.recovering, what="run B reading run A")
            await run_b.terminate("operator: the new run looks stuck")
            assert fakes.recover_gate is not None
            fakes.recover_gate.set()
            previous = await closed_mutex_run(client, resource)
            assert previous == run_b.result_run_id
            run_c = await client.start_workflow(
                MutexWorkflow.run,
                MutexInput(resource=resource, previous_run_id=previous),
                id=mutex_id,
                task_queue=task_queue,
            )

            async def taken_over() -> bool:
                state = await run_c.query(MutexWorkflow.state)
                return state.recovered_from == previous

            await eventually(taken_over, what="run C to take over")
            state = await run_c.query(MutexWorkflow.state)
            assert state.holder is not None and state.holder.holder_workflow_id == holder_id
            assert [r.request_id for r in state.queue] == ["w"]
            assert not await _granted(waiter, "w")
            await holder.signal(Requester.let_go)
            await eventually(lambda: _granted(waiter, "w"), what="W granted after H released")


@workflow.defn(name="MutexWorkflow", sandboxed=False)
class _UnreadableMutex:
    """A mutex run today's ``MutexWorkflow`` cannot replay (as a run wedged by an older bug, or
    written by code since changed without a patch): it grants the first request it gets, a
    second later, with lease 7."""

    def __init__(self) -> None:
        self._requests: list[LockRequest] = []

    @workflow.run
    async def run(self, input: MutexInput) -> None:
        await workflow.wait_condition(lambda: bool(self._requests))
        # MutexWorkflow grants at once: the timer where its grant should be breaks its replay.
        await workflow.sleep(timedelta(seconds=1))
        first = self._requests[0]
        await workflow.get_external_workflow_handle(first.requester_workflow_id).signal(
            LOCK_GRANTED_SIGNAL,
            LockGranted(resource=input.resource, request_id=first.request_id, lease_id=7),
        )
        await workflow.wait_condition(lambda: False)

    @workflow.signal(name=LOCK_REQUEST_SIGNAL)
    def request(self, request: LockRequest) -> None:
        self._requests.append(request)


async def test_a_release_deferred_by_a_run_terminated_mid_take_over_reaches_the_next_run(
    time_env: WorkflowEnvironment,
) -> None:
    """Run A granted H and was terminated. Run B, taking over from A (slowly), deferred H's
    release, and was terminated too. Run C, which follows B back to A, must apply that release:
    W is granted.

    Before, B's ``state`` did not show what it deferred, and C adopted A's holder H, which had
    let go: W waited until the liveness check found H closed or its lease ended."""
    fakes = Fakes(recover_gate=asyncio.Event())
    client = time_env.client
    resource, task_queue = f"res-{uuid.uuid4().hex[:8]}", f"tq-{uuid.uuid4()}"
    holder_id, waiter_id = f"holder-{uuid.uuid4()}", f"waiter-{uuid.uuid4()}"
    mutex_id = mutex_workflow_id(resource)
    with ThreadPoolExecutor(4) as executor:
        async with Worker(
            client,
            task_queue=task_queue,
            workflows=[MutexWorkflow, Requester],
            activities=fakes.activities(),
            activity_executor=executor,
        ):
            holder = await client.start_workflow(
                Requester.run, "h", id=holder_id, task_queue=task_queue
            )
            waiter = await client.start_workflow(
                Requester.run, "w", id=waiter_id, task_queue=task_queue
            )
            run_a = await client.start_workflow(
                MutexWorkflow.run,
                MutexInput(resource=resource),
                id=mutex_id,
                task_queue=task_queue,
                start_signal=LOCK_REQUEST_SIGNAL,
                start_signal_args=[_request(holder_id, "h")],
            )
            await eventually(lambda: _granted(holder, "h"), what="H granted by run A")
            await run_a.terminate("operator error")
            run_b = await client.start_workflow(
                MutexWorkflow.run,
                MutexInput(resource=resource, previous_run_id=run_a.result_run_id),
                id=mutex_id,
                task_queue=task_queue,
            )
            await eventually(lambda: fakes.recovering, what="run B reading run A")
            await holder.signal(Requester.let_go)  # its release reaches B, which defers it

            async def deferred() -> bool:
                return bool((await run_b.query(MutexWorkflow.state)).deferred_releases)

            await eventually(deferred, what="H's release deferred by run B")
            await run_b.terminate("operator error again")
            assert fakes.recover_gate is not None
            fakes.recover_gate.set()
            run_c = await client.start_workflow(
                MutexWorkflow.run,
                MutexInput(resource=resource, previous_run_id=run_b.result_run_id),
                id=mutex_id,
                task_queue=task_queue,
                start_signal=LOCK_REQUEST_SIGNAL,
                start_signal_args=[_request(waiter_id, "w")],
            )
            await eventually(lambda: _granted(waiter, "w"), what="W granted: H had let go")
            state = await run_c.query(MutexWorkflow.state)
            assert state.recovered_from == run_b.result_run_id
            assert state.holder is not None and state.holder.holder_workflow_id == waiter_id
            assert not state.deferred_releases


async def test_a_closed_run_no_worker_can_replay_is_taken_over_from_its_history(
    time_env: WorkflowEnvironment,
) -> None:
    """Run A, which today's code cannot replay, granted H and queued W, and was terminated. The
    next run cannot query A's state (the replay fails): it must still take over, from what A's
    history shows (H holds lease 7, W waits), and not grant W while H holds the lock.

    Before, ``recover_mutex`` retried the failing query forever and nothing was granted again."""
    client = time_env.client
    resource = f"res-{uuid.uuid4().hex[:8]}"
    mutex_queue, requester_queue = f"tq-{uuid.uuid4()}", f"tq-{uuid.uuid4()}"
    holder_id, waiter_id = f"holder-{uuid.uuid4()}", f"waiter-{uuid.uuid4()}"
    mutex_id = mutex_workflow_id(resource)
    async with Worker(client, task_queue=requester_queue, workflows=[Requester]):
        holder = await client.start_workflow(
            Requester.run, "h", id=holder_id, task_queue=requester_queue
        )
        waiter = await client.start_workflow(
            Requester.run, "w", id=waiter_id, task_queue=requester_queue
        )
        async with Worker(client, task_queue=mutex_queue, workflows=[_UnreadableMutex]):
            run_a = await client.start_workflow(
                "MutexWorkflow",
                MutexInput(resource=resource),
                id=mutex_id,
                task_queue=mutex_queue,
                start_signal=LOCK_REQUEST_SIGNAL,
                start_signal_args=[_request(holder_id, "h")],
            )
            await eventually(lambda: _granted(holder, "h"), what="H granted by run A")
            await run_a.signal(LOCK_REQUEST_SIGNAL, _request(waiter_id, "w"))
            await run_a.terminate("operator error")
        fakes = Fakes()
        with ThreadPoolExecutor(4) as executor:
            async with Worker(
                client,
                task_queue=mutex_queue,
                workflows=[MutexWorkflow],
                activities=fakes.activities(),
                activity_executor=executor,
            ):
                run_b = await client.start_workflow(
                    MutexWorkflow.run,
                    MutexInput(resource=resource, previous_run_id=run_a.result_run_id),
                    id=mutex_id,
                    task_queue=mutex_queue,
                )

                async def taken_over() -> bool:
                    state = await run_b.query(MutexWorkflow.state)
                    return state.recovered_from == run_a.result_run_id

                await eventually(taken_over, what="run B to take over from A's history")
                state = await run_b.query(MutexWorkflow.state)
                assert state.holder is not None
                assert (state.holder.holder_workflow_id, state.holder.lease_id) == (holder_id, 7)
                assert [r.request_id for r in state.queue] == ["w"]
                assert state.next_lease_id > 7
                assert not await _granted(waiter, "w")
                await holder.signal(Requester.let_go)  # releases lease 7
                await eventually(lambda: _granted(waiter, "w"), what="W granted after H")


async def test_a_closed_run_whose_task_queue_nobody_polls_is_taken_over_from_its_history(
    time_env: WorkflowEnvironment,
) -> None:
    """Run A granted H and was terminated; nothing polls A's task queue any more (its build
    retired). ``recover_mutex``, from attempt ``READ_EVENTS_FROM_ATTEMPT`` on, must answer from
    A's events: H holds the lock.

    Before, the query timed out (no worker to replay A: an ``RPCError``, not a failed query) and
    was retried forever: the new run granted nothing, and its history grew without bound."""
    client = time_env.client
    resource, task_queue = f"res-{uuid.uuid4().hex[:8]}", f"tq-{uuid.uuid4()}"
    holder_id = f"holder-{uuid.uuid4()}"
    async with Worker(client, task_queue=task_queue, workflows=[MutexWorkflow, Requester]):
        holder = await client.start_workflow(
            Requester.run, "h", id=holder_id, task_queue=task_queue
        )
        run_a = await client.start_workflow(
            MutexWorkflow.run,
            MutexInput(resource=resource),
            id=mutex_workflow_id(resource),
            task_queue=task_queue,
            start_signal=LOCK_REQUEST_SIGNAL,
            start_signal_args=[_request(holder_id, "h")],
        )
        await eventually(lambda: _granted(holder, "h"), what="H granted by run A")
        lease = (await run_a.query(MutexWorkflow.state)).holder
        await run_a.terminate("operator error")
    # The worker is gone: nothing answers a query on A now.
    env = ActivityEnvironment(client)
    # The worker's converter, as recover_mutex gets it there (the default one decodes the
    # state's pydantic models with pydantic's deprecated parse_obj).
    env.payload_converter = DATA_CONVERTER.payload_converter
    env.info = dataclasses.replace(
        env.info,
        attempt=mutex_activities.READ_EVENTS_FROM_ATTEMPT,
        start_to_close_timeout=timedelta(seconds=2),
    )
    state = await env.run(
        mutex_activities.recover_mutex,
        RecoverMutex(resource=resource, run_id=run_a.result_run_id or ""),
    )
    assert state is not None and state.holder is not None and lease is not None
    assert (state.holder.holder_workflow_id, state.holder.lease_id) == (holder_id, lease.lease_id)


async def test_a_release_that_reaches_a_taking_over_run_before_its_first_task_frees_the_lock(
    time_env: WorkflowEnvironment,
) -> None:
    """Run A granted H and was terminated. Run B, started to take over from A with W's request,
    gets H's release before its first workflow task: B must apply it once it adopted A's holder,
    and grant W.

    Before (patch ``mutex-defers-from-first-task``), the SDK ran the release handler before
    ``run`` had started the take-over: judged against no holder, it was dropped as stale, and W
    waited until H closed or its lease ended."""
    client = time_env.client
    resource, task_queue = f"res-{uuid.uuid4().hex[:8]}", f"tq-{uuid.uuid4()}"
    holder_id, waiter_id = f"holder-{uuid.uuid4()}", f"waiter-{uuid.uuid4()}"
    mutex_id = mutex_workflow_id(resource)
    fakes = Fakes()
    with ThreadPoolExecutor(4) as executor:
        async with Worker(
            client,
            task_queue=task_queue,
            workflows=[MutexWorkflow, Requester],
            activities=fakes.activities(),
            activity_executor=executor,
        ):
            holder = await client.start_workflow(
                Requester.run, "h", id=holder_id, task_queue=task_queue
            )
            waiter = await client.start_workflow(
                Requester.run, "w", id=waiter_id, task_queue=task_queue
            )
            run_a = await client.start_workflow(
                MutexWorkflow.run,
                MutexInput(resource=resource),
                id=mutex_id,
                task_queue=task_queue,
                start_signal=LOCK_REQUEST_SIGNAL,
                start_signal_args=[_request(holder_id, "h")],
            )
            await eventually(lambda: _granted(holder, "h"), what="H granted by run A")
            lease = (await run_a.query(MutexWorkflow.state)).holder
            assert lease is not None
            await run_a.terminate("operator error")
            # Nothing polls B's task queue yet: its start, W's request and H's release all land
            # in B's first workflow task.
            b_queue = f"{task_queue}-b"
            run_b = await client.start_workflow(
                MutexWorkflow.run,
                MutexInput(resource=resource, previous_run_id=run_a.result_run_id),
                id=mutex_id,
                task_queue=b_queue,
                start_signal=LOCK_REQUEST_SIGNAL,
                start_signal_args=[_request(waiter_id, "w")],
            )
            await run_b.signal(
                LOCK_RELEASE_SIGNAL, LockRelease(request_id="h", lease_id=lease.lease_id)
            )
            async with Worker(
                client,
                task_queue=b_queue,
                workflows=[MutexWorkflow],
                activities=fakes.activities(),
                activity_executor=executor,
            ):
                await eventually(lambda: _granted(waiter, "w"), what="W granted after H released")
                state = await run_b.query(MutexWorkflow.state)
                assert state.recovered_from == run_a.result_run_id
                assert state.holder is not None and state.holder.holder_workflow_id == waiter_id
                assert state.counters.releases == 1


async def test_a_terminate_between_request_locks_look_and_its_request_is_taken_over(
    time_env: WorkflowEnvironment, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``request_lock`` finds the mutex running, and an operator terminates it right then. The
    request must still reach a run that takes over the terminated one: H keeps the lock.

    Before, the request's signal-with-start started a run that knew of no closed run (it had
    looked while the mutex still ran), and that run granted W at once, beside H."""
    client = time_env.client
    resource, task_queue = f"res-{uuid.uuid4().hex[:8]}", f"tq-{uuid.uuid4()}"
    holder_id, waiter_id = f"holder-{uuid.uuid4()}", f"waiter-{uuid.uuid4()}"
    mutex_id = mutex_workflow_id(resource)
    real_latest = mutex_activities._latest_mutex_run
    looks: list[str] = []

    async def terminated_right_after_the_look(client: Client, name: str) -> Any:
        latest = await real_latest(client, name)
        looks.append(latest.status.name if latest and latest.status else "none")
        if len(looks) == 1:
            await client.get_workflow_handle(mutex_id).terminate("operator error")
        return latest

    monkeypatch.setattr(mutex_activities, "_latest_mutex_run", terminated_right_after_the_look)
    with ThreadPoolExecutor(4) as executor:
        async with Worker(
            client,
            task_queue=task_queue,
            workflows=[MutexWorkflow, Requester],
            activities=Fakes().activities(),
            activity_executor=executor,
        ):
            holder = await client.start_workflow(
                Requester.run, "h", id=holder_id, task_queue=task_queue
            )
            waiter = await client.start_workflow(
                Requester.run, "w", id=waiter_id, task_queue=task_queue
            )
            run_a = await client.start_workflow(
                MutexWorkflow.run,
                MutexInput(resource=resource),
                id=mutex_id,
                task_queue=task_queue,
                start_signal=LOCK_REQUEST_SIGNAL,
                start_signal_args=[_request(holder_id, "h")],
            )
            await eventually(lambda: _granted(holder, "h"), what="H granted by run A")
            env = ActivityEnvironment(client)
            env.info = dataclasses.replace(
                env.info, task_queue=task_queue, workflow_id=waiter_id, workflow_run_id="w-run"
            )
            await env.run(
                mutex_activities.request_lock,
                RequestLock(resource=resource, request=_request(waiter_id, "w")),
            )
            assert looks[0] == "RUNNING"
            latest = client.get_workflow_handle(mutex_id)

            async def taken_over() -> bool:
                state = await latest.query(MutexWorkflow.state)
                return state.recovered_from == run_a.result_run_id

            await eventually(taken_over, what="the request's run to take over from run A")
            state = await latest.query(MutexWorkflow.state)
            assert state.holder is not None and state.holder.holder_workflow_id == holder_id
            assert [r.request_id for r in state.queue] == ["w"]
            assert not await _granted(waiter, "w")


_TASK_ERRORS: list[BaseException] = []


class _TaskErrors(Interceptor):
    """Notes every exception a workflow's run raises (a failed workflow task, which the replayer
    itself does not report: it reports nondeterminism only)."""

    def workflow_interceptor_class(
        self, input: WorkflowInterceptorClassInput
    ) -> type[WorkflowInboundInterceptor]:
        return _NoteTaskErrors


class _NoteTaskErrors(WorkflowInboundInterceptor):
    async def execute_workflow(self, input: ExecuteWorkflowInput) -> Any:
        try:
            return await super().execute_workflow(input)
        except Exception as err:
            _TASK_ERRORS.append(err)
            raise


async def test_a_mutex_wedged_by_an_overflowing_lease_before_the_clamp_heals_on_the_new_code() -> (
    None
):
    """The history of a mutex the code before the clamp wedged (recorded on the time-skipping
    server: its first task failed with ``OverflowError``, retried for ever until terminated): the
    retried task, on today's code, completes. Replayed on the code before the clamp, the same
    history fails its task again with ``OverflowError``."""
    path = HISTORIES / "v4" / "ts_mutex_wedged_by_overflowing_lease.json"
    history = WorkflowHistory.from_json(path.stem, path.read_text())
    failed = [e for e in history.events if e.HasField("workflow_task_failed_event_attributes")]
    assert failed[0].workflow_task_failed_event_attributes.failure.message == (
        "date value out of range"
    )
    _TASK_ERRORS.clear()
    replayer = Replayer(
        workflows=[MutexWorkflow],
        data_converter=DATA_CONVERTER,
        interceptors=[LinearRetryInterceptor(), _TaskErrors()],
    )
    result = await replayer.replay_workflow(history, raise_on_replay_failure=False)
    assert result.replay_failure is None
    assert not _TASK_ERRORS, _TASK_ERRORS
