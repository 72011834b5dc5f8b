"""MutexWorkflow scenarios: real processes contend for a real mutex on the dev server.

Each scenario starts the resource's mutex itself, with a one-second liveness check where the
branch needs one, and saves the mutex's history once nobody holds or waits for the lock.
"""

from __future__ import annotations

import asyncio
import uuid
from concurrent.futures import ThreadPoolExecutor

from temporalio.api.common.v1 import WorkflowExecution
from temporalio.api.workflowservice.v1 import ResetWorkflowExecutionRequest
from temporalio.client import WorkflowHandle
from temporalio.worker import Worker

from activities.retry import LinearRetryInterceptor
from tests.workflow.fakes import Fakes, eventually
from tests.workflow.harness import Harness, harness
from tests.workflow.record_histories.recording import (
    PATIENCE,
    SECOND,
    E,
    History,
    Recording,
    queued,
    start,
)
from workflows.messages import (
    LOCK_RELEASE_SIGNAL,
    CommandName,
    FailureReason,
    LockCancel,
    LockRelease,
    MutexInput,
    MutexOptions,
    ProcessResult,
    mutex_workflow_id,
)
from workflows.mutex import MutexWorkflow
from workflows.process import ProcessWorkflow

ONE, TWO = CommandName.ONE, CommandName.TWO
COMPLETED = E.EVENT_TYPE_ACTIVITY_TASK_COMPLETED
ACTIVITY_FAILED = E.EVENT_TYPE_ACTIVITY_TASK_FAILED
# The liveness check follows the holder's run since the patch mutex-survives-operators.
DESCRIBE = "check_holder"


async def mutex_fifo_queue_liveness_alive(rec: Recording) -> None:
    """Three processes take the lock in arrival order; the first stays alive across checks."""
    async with harness(rec.client) as h:
        await rec.start_mutex(h, liveness_interval=SECOND)
        handles = [await _join(h, name) for name in ("first", "second", "third")]
        # A request delivered twice (a retried request_lock) keeps its first place.
        duplicate = (await h.mutex_state()).queue[0]
        mutex_handle = rec.client.get_workflow_handle_for(
            MutexWorkflow.run, mutex_workflow_id(h.resource)
        )
        await mutex_handle.signal(MutexWorkflow.request, duplicate)
        mutex = rec.client.get_workflow_handle(mutex_workflow_id(h.resource))
        await rec.until(
            mutex,
            "three liveness checks of a live holder",
            lambda history: history.closed_activities(DESCRIBE, COMPLETED) >= 3,
        )
        for handle in handles:
            await h.wait_sent(handle)
            await h.call_back(handle, ONE)
            await h.call_back(handle, TWO)
            await rec.completed(handle)
        leases = [(await h.state(handle)).lock.lease_id or 0 for handle in handles]
        assert leases == [leases[0], leases[0] + 1, leases[0] + 2]
        state, history = await rec.mutex_idle(h)
        counters = state.counters
        assert (counters.grants, counters.releases, counters.abandoned_holders) == (3, 3, 0)
        assert history.signals_sent("lock_granted") == 3
        assert history.signals_received("request") == 4
        rec.save("mutex_fifo_queue_liveness_alive", history)


async def mutex_abandoned_holder(rec: Recording) -> None:
    """The holder is terminated: the next check frees the lock and marks its record abandoned."""
    async with harness(rec.client) as h:
        await rec.start_mutex(h, liveness_interval=SECOND)
        holder = await start(h, requested_by="holder")
        await h.approve(holder)
        await h.wait_sent(holder)
        waiter = await start(h, requested_by="waiter")
        await h.approve(waiter)
        await eventually(lambda: queued(h, waiter.id), within=PATIENCE, what="waiter queued")
        mutex = rec.client.get_workflow_handle(mutex_workflow_id(h.resource))
        await rec.until(
            mutex,
            "a liveness check of the live holder",
            lambda history: history.closed_activities(DESCRIBE, COMPLETED) >= 1,
        )
        await holder.terminate("operator killed it")
        await h.wait_sent(waiter)
        await h.call_back(waiter, ONE)
        await h.call_back(waiter, TWO)
        await rec.completed(waiter)
        state, history = await rec.mutex_idle(h)
        assert (state.counters.abandoned_holders, state.counters.grants) == (1, 2)
        assert h.fakes.records[holder.id]["reason"] == FailureReason.ABANDONED
        assert history.closed_activities("update_process_status", COMPLETED) == 1
        rec.save("mutex_abandoned_holder", history)


async def mutex_bookkeeping_failures(rec: Recording) -> None:
    """Liveness unknown (describe fails): the lock stays held; later an abandoned holder whose
    record cannot be marked still frees the lock."""
    fakes = Fakes(describe_down=True)
    async with harness(rec.client, fakes) as h:
        await rec.start_mutex(h, liveness_interval=SECOND)
        holder = await start(h, requested_by="holder")
        await h.approve(holder)
        await h.wait_sent(holder)
        mutex = rec.client.get_workflow_handle(mutex_workflow_id(h.resource))
        # Five attempts, 1 + 2 + 4 + 8 s apart: the slowest scenario of the recording.
        await rec.until(
            mutex,
            "a liveness check that gave up",
            lambda history: history.closed_activities(DESCRIBE, ACTIVITY_FAILED) == 1,
        )
        assert (await h.mutex_state()).holder is not None
        fakes.describe_down = False
        del fakes.records[holder.id]
        await holder.terminate("operator killed it")
        state, history = await rec.mutex_idle(h)
        assert state.counters.abandoned_holders == 1
        assert history.closed_activities("update_process_status", ACTIVITY_FAILED) == 1
        rec.save("mutex_liveness_unknown_and_unmarkable", history)


async def mutex_revoked_holder_gone(rec: Recording) -> None:
    """The lease expired after its holder closed: the revoke is noticed, telling it fails."""
    async with harness(rec.client) as h:
        await rec.start_mutex(h, liveness_interval=3 * SECOND)
        holder = await start(h, requested_by="holder", lease_timeout=SECOND)
        await h.approve(holder)
        await h.wait_sent(holder)
        await holder.terminate("operator killed it")
        state, history = await rec.mutex_idle(h)
        assert (state.counters.expired_leases, state.counters.abandoned_holders) == (1, 0)
        assert history.signals_sent("lock_revoked") == 1
        assert len(history.of(E.EVENT_TYPE_SIGNAL_EXTERNAL_WORKFLOW_EXECUTION_FAILED)) == 1
        rec.save("mutex_revoked_holder_gone", history)


async def mutex_failed_grant(rec: Recording) -> None:
    """The next in line closed before its turn: the grant fails and the lock passes on."""
    async with harness(rec.client) as h:
        holder = await start(h, requested_by="holder")
        await h.approve(holder)
        await h.wait_sent(holder)
        gone = await start(h, requested_by="gone")
        await h.approve(gone)
        await eventually(lambda: queued(h, gone.id), within=PATIENCE, what="gone queued")
        after = await start(h, requested_by="after")
        await h.approve(after)
        await eventually(lambda: queued(h, after.id), within=PATIENCE, what="after queued")
        await gone.terminate("closed while queued")
        for handle in (holder, after):
            await h.wait_sent(handle)
            await h.call_back(handle, ONE)
            await h.call_back(handle, TWO)
            await rec.completed(handle)
        state, history = await rec.mutex_idle(h)
        assert (state.counters.failed_grants, state.counters.grants) == (1, 2)
        assert len(history.of(E.EVENT_TYPE_SIGNAL_EXTERNAL_WORKFLOW_EXECUTION_FAILED)) == 1
        rec.save("mutex_failed_grant", history)


async def mutex_cancel_races_grant(rec: Recording) -> None:
    """A cancel for a request the mutex already granted frees the lock; the late release is stale.

    A requester that stops waiting just as its grant is sent cancels after the grant; that
    order cannot be timed from outside, so the recorder sends the holder's cancel itself.
    """
    async with harness(rec.client) as h:
        holder = await start(h, requested_by="holder")
        await h.approve(holder)
        await h.wait_sent(holder)
        request_id = (await h.state(holder)).lock.request_id
        assert request_id is not None
        mutex = rec.client.get_workflow_handle_for(MutexWorkflow.run, mutex_workflow_id(h.resource))
        await mutex.signal(MutexWorkflow.cancel, LockCancel(request_id=request_id))
        await h.call_back(holder, ONE)
        await h.call_back(holder, TWO)
        await rec.completed(holder)
        state, history = await rec.mutex_idle(h)
        counters = state.counters
        assert (counters.cancelled_requests, counters.stale_releases, counters.releases) == (
            1,
            1,
            0,
        )
        rec.save("mutex_cancel_races_grant", history)


async def mutex_continue_as_new(rec: Recording) -> None:
    """The mutex continues as new while one process holds the lock and two wait; every run saved."""
    async with harness(rec.client) as h:
        first_run = await rec.start_mutex(h, max_history_events=100)
        handles = [await _join(h, name) for name in ("holder", "first-waiter", "second-waiter")]
        mutex = rec.client.get_workflow_handle_for(MutexWorkflow.run, mutex_workflow_id(h.resource))
        stale = LockRelease(request_id="nobody", lease_id=999)

        async def rolled_over() -> bool:
            # Stale releases change nothing but grow the history past max_history_events.
            await mutex.signal(MutexWorkflow.release, stale)
            return (await mutex.describe()).run_id != first_run

        await eventually(rolled_over, within=PATIENCE, what="the mutex to continue as new")
        for handle in handles:
            await h.wait_sent(handle)
            await h.call_back(handle, ONE)
            await h.call_back(handle, TWO)
            await rec.completed(handle)
        state, _ = await rec.mutex_idle(h)
        assert (state.counters.grants, state.counters.releases) == (3, 3)
        runs = await _chain(rec, mutex_workflow_id(h.resource), first_run)
        assert len(runs) == 2, f"{len(runs)} runs"
        carried = runs[0].continued_as_new_with().state
        assert carried is not None and carried.holder is not None
        assert carried.holder.holder_workflow_id == handles[0].id
        assert [r.requester_workflow_id for r in carried.queue] == [h.id for h in handles[1:]]
        for number, history in enumerate(runs, start=1):
            rec.save(f"mutex_continue_as_new_run{number}", history)


async def _chain(rec: Recording, workflow_id: str, run_id: str | None) -> list[History]:
    """Every run of a continue-as-new chain, first to last."""
    runs = []
    while run_id is not None:
        history = await rec.history(workflow_id, run_id)
        runs.append(history)
        run_id = history.next_run_id()
    return runs


async def _join(h: Harness, requested_by: str) -> WorkflowHandle[ProcessWorkflow, ProcessResult]:
    """An approved process, once it holds or waits for the lock (so arrival order is known)."""
    handle = await start(h, requested_by=requested_by)
    await h.approve(handle)

    async def in_line() -> bool:
        state = await h.mutex_state()
        holder = state.holder.holder_workflow_id if state.holder else None
        return holder == handle.id or await queued(h, handle.id)

    await eventually(in_line, within=PATIENCE, what=f"{requested_by} in line")
    return handle


async def mutex_cancel_ignored(rec: Recording) -> None:
    """A cancel request reaches the mutex: logged and ignored, holder and queue stay."""
    async with harness(rec.client) as h:
        await rec.start_mutex(h, liveness_interval=SECOND)
        holder = await _join(h, "holder")
        await h.wait_sent(holder)
        mutex = rec.client.get_workflow_handle(mutex_workflow_id(h.resource))
        await mutex.cancel()

        async def ignored() -> bool:
            return (await h.mutex_state()).counters.ignored_cancels == 1

        await eventually(ignored, within=PATIENCE, what="the cancel to be ignored")
        await h.call_back(holder, ONE)
        await h.call_back(holder, TWO)
        await rec.completed(holder)
        state, history = await rec.mutex_idle(h)
        assert (state.counters.grants, state.counters.releases) == (1, 1)
        assert len(history.of(E.EVENT_TYPE_WORKFLOW_EXECUTION_CANCEL_REQUESTED)) == 1
        rec.save("mutex_cancel_ignored", history)


async def mutex_takeover_terminated(rec: Recording) -> None:
    """An operator terminates the mutex under a holder and a waiter; the next request starts a
    run that takes over the closed run's state (recover_mutex) before it grants anything."""
    async with harness(rec.client) as h:
        closed_run = await rec.start_mutex(h, liveness_interval=SECOND)
        holder = await start(h, requested_by="holder")
        await h.approve(holder)
        await h.wait_sent(holder)
        waiter = await _join(h, "waiter")
        mutex = rec.client.get_workflow_handle(mutex_workflow_id(h.resource))
        await mutex.terminate("operator error")
        late = await start(h, requested_by="late")
        await h.approve(late)

        async def taken_over() -> bool:
            state = await h.mutex_state()
            return state.recovered_from == closed_run and len(state.queue) == 2

        await eventually(taken_over, within=PATIENCE, what="the new run to take over")
        for handle in (holder, waiter, late):
            await h.wait_sent(handle)
            await h.call_back(handle, ONE)
            await h.call_back(handle, TWO)
            await rec.completed(handle)
        state, history = await rec.mutex_idle(h)
        assert history.closed_activities("recover_mutex", COMPLETED) == 1
        assert (state.counters.grants, state.counters.releases) == (3, 3)
        rec.save("mutex_takeover_terminated", history)


async def mutex_takeover_reset_keeps_lease(rec: Recording) -> None:
    """The holder is reset to after its grant: its new run holds the lease, and keeps it."""
    async with harness(rec.client) as h:
        await rec.start_mutex(h, liveness_interval=SECOND)
        holder = await start(h, requested_by="holder")
        await h.approve(holder)
        await h.wait_sent(holder)
        waiter = await _join(h, "waiter")
        history = await rec.history(holder.id)
        (sending,) = [
            e.activity_task_scheduled_event_attributes.workflow_task_completed_event_id
            for e in history.of(E.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED)
            if e.activity_task_scheduled_event_attributes.activity_type.name == "send_command_one"
        ]
        first_run = (await holder.describe()).run_id
        client = rec.client
        reset = await client.workflow_service.reset_workflow_execution(
            ResetWorkflowExecutionRequest(
                namespace=client.namespace,
                workflow_execution=WorkflowExecution(workflow_id=holder.id, run_id=first_run),
                reason="recording: reset the holder to after its grant",
                workflow_task_finish_event_id=sending,
                request_id=str(uuid.uuid4()),
            )
        )

        async def followed() -> bool:
            held = (await h.mutex_state()).holder
            return held is not None and held.holder_run_id == reset.run_id

        await eventually(followed, within=PATIENCE, what="the lease to follow the new run")
        latest = client.get_workflow_handle(holder.id)
        for handle in (latest, waiter):
            await h.wait_sent(handle)
            await h.call_back(handle, ONE)
            await h.call_back(handle, TWO)
            await rec.completed(handle)
        state, mutex = await rec.mutex_idle(h)
        assert state.counters.moved_leases == 1 and state.counters.grants == 2
        rec.save("mutex_takeover_reset_keeps_lease", mutex)


async def mutex_takeover_cancel_ignored(rec: Recording) -> None:
    """The mutex is terminated under a holder; the next run's take-over is slow, and an operator
    cancels that run meanwhile: the cancel is ignored, and the run takes over and serves on
    (patch mutex-take-over-ignores-cancel)."""
    fakes = Fakes(recover_gate=asyncio.Event())
    async with harness(rec.client, fakes) as h:
        await rec.start_mutex(h, liveness_interval=SECOND)
        holder = await start(h, requested_by="holder")
        await h.approve(holder)
        await h.wait_sent(holder)
        mutex = rec.client.get_workflow_handle(mutex_workflow_id(h.resource))
        await mutex.terminate("operator error")
        late = await start(h, requested_by="late")
        await h.approve(late)
        await eventually(lambda: fakes.recovering, within=PATIENCE, what="the take-over to start")
        await rec.client.get_workflow_handle(mutex_workflow_id(h.resource)).cancel()

        async def ignored() -> bool:
            return (await h.mutex_state()).counters.ignored_cancels == 1

        await eventually(ignored, within=PATIENCE, what="the cancel to be ignored")
        assert fakes.recover_gate is not None
        fakes.recover_gate.set()
        for handle in (holder, late):
            await h.wait_sent(handle)
            await h.call_back(handle, ONE)
            await h.call_back(handle, TWO)
            await rec.completed(handle)
        state, history = await rec.mutex_idle(h)
        assert history.closed_activities("recover_mutex", COMPLETED) == 1
        assert len(history.of(E.EVENT_TYPE_WORKFLOW_EXECUTION_CANCEL_REQUESTED)) == 1
        assert not history.of(E.EVENT_TYPE_ACTIVITY_TASK_CANCEL_REQUESTED)
        assert (state.counters.grants, state.counters.releases) == (2, 2)
        rec.save("mutex_takeover_cancel_ignored", history)


async def mutex_abandon_mark_carried(rec: Recording) -> None:
    """An abandoned holder's record cannot be marked yet (DynamoDB holds the write) when the
    mutex continues as new: the mark goes to the next run, which writes it, and the waiter is
    granted meanwhile (patch mutex-carries-abandon-marks). Both runs saved."""
    fakes = Fakes(fail_gate=asyncio.Event())
    async with harness(rec.client, fakes) as h:
        first_run = await rec.start_mutex(h, liveness_interval=SECOND, max_history_events=100)
        holder = await start(h, requested_by="holder")
        await h.approve(holder)
        await h.wait_sent(holder)
        await holder.terminate("operator killed it")
        await eventually(
            lambda: holder.id in fakes.fail_waiting, within=PATIENCE, what="the mark held"
        )
        mutex = rec.client.get_workflow_handle_for(MutexWorkflow.run, mutex_workflow_id(h.resource))
        stale = LockRelease(request_id="nobody", lease_id=999)

        async def rolled_over() -> bool:
            await mutex.signal(MutexWorkflow.release, stale)
            return (await mutex.describe()).run_id != first_run

        await eventually(rolled_over, within=PATIENCE, what="the mutex to continue as new")
        waiter = await start(h, requested_by="waiter")
        await h.approve(waiter)
        await h.wait_sent(waiter)  # granted while the mark still waits on DynamoDB
        assert fakes.fail_gate is not None
        fakes.fail_gate.set()
        await h.call_back(waiter, ONE)
        await h.call_back(waiter, TWO)
        await rec.completed(waiter)

        async def marked() -> bool:
            return not (await h.mutex_state()).abandoned

        await eventually(marked, within=PATIENCE, what="the carried mark written")
        await rec.mutex_idle(h)
        assert h.fakes.records[holder.id]["reason"] == FailureReason.ABANDONED
        runs = await _chain(rec, mutex_workflow_id(h.resource), first_run)
        assert len(runs) == 2, f"{len(runs)} runs"
        carried = runs[0].continued_as_new_with().state
        assert carried is not None and [m.process_id for m in carried.abandoned] == [holder.id]
        assert runs[1].closed_activities("update_process_status", COMPLETED) == 1
        for number, history in enumerate(runs, start=1):
            rec.save(f"mutex_abandon_mark_carried_run{number}", history)


async def mutex_takeover_adopts_marks(rec: Recording) -> None:
    """The mutex noticed its holder abandoned while DynamoDB held the record's write, and was
    terminated with the mark pending; the next request starts a run that takes over the mark and
    writes it (patch mutex-takes-over-abandon-marks). That run saved."""
    fakes = Fakes(fail_gate=asyncio.Event())
    async with harness(rec.client, fakes) as h:
        closed_run = await rec.start_mutex(h, liveness_interval=SECOND)
        holder = await start(h, requested_by="holder")
        await h.approve(holder)
        await h.wait_sent(holder)
        await holder.terminate("operator killed it")
        await eventually(
            lambda: holder.id in fakes.fail_waiting, within=PATIENCE, what="the mark held"
        )
        mutex = rec.client.get_workflow_handle(mutex_workflow_id(h.resource))
        await mutex.terminate("operator error")
        late = await start(h, requested_by="late")
        await h.approve(late)

        async def adopted() -> bool:
            state = await h.mutex_state()
            return state.recovered_from == closed_run and [
                m.process_id for m in state.abandoned
            ] == [holder.id]

        await eventually(adopted, within=PATIENCE, what="the new run to adopt the mark")
        assert fakes.fail_gate is not None
        fakes.fail_gate.set()
        await h.wait_sent(late)
        await h.call_back(late, ONE)
        await h.call_back(late, TWO)
        await rec.completed(late)

        async def marked() -> bool:
            return not (await h.mutex_state()).abandoned

        await eventually(marked, within=PATIENCE, what="the adopted mark written")
        _, history = await rec.mutex_idle(h)
        assert h.fakes.records[holder.id]["reason"] == FailureReason.ABANDONED
        assert history.closed_activities("recover_mutex", COMPLETED) == 1
        assert history.closed_activities("update_process_status", COMPLETED) == 1
        rec.save("mutex_takeover_adopts_marks", history)


async def mutex_takeover_release_before_first_task(rec: Recording) -> None:
    """The mutex is terminated under a holder; a run started to take over gets the holder's
    release before its first workflow task (nothing polls its task queue yet): it defers the
    release, takes over, then applies it (patch mutex-defers-from-first-task). That run saved."""
    fakes = Fakes()
    async with harness(rec.client, fakes) as h:
        closed_run = await rec.start_mutex(h, liveness_interval=SECOND)
        holder = await start(h, requested_by="holder")
        await h.approve(holder)
        await h.wait_sent(holder)
        mutex_id = mutex_workflow_id(h.resource)
        await rec.client.get_workflow_handle(mutex_id).terminate("operator error")
        later_queue = f"{h.task_queue}-later"
        await rec.client.start_workflow(
            MutexWorkflow.run,
            MutexInput(
                resource=h.resource,
                options=MutexOptions(liveness_interval=SECOND),
                previous_run_id=closed_run,
            ),
            id=mutex_id,
            task_queue=later_queue,
        )
        await h.call_back(holder, ONE)
        await h.call_back(holder, TWO)
        await rec.completed(holder)  # its release is in the new run's history, unread
        with ThreadPoolExecutor(4) as executor:
            async with Worker(
                rec.client,
                task_queue=later_queue,
                workflows=[MutexWorkflow],
                activities=fakes.activities(),
                activity_executor=executor,
                interceptors=[LinearRetryInterceptor()],
            ):
                state, history = await rec.mutex_idle(h)
        assert state.recovered_from == closed_run
        assert (state.counters.releases, state.counters.stale_releases) == (1, 0)
        assert history.closed_activities("recover_mutex", COMPLETED) == 1
        first_task = next(
            n
            for n, e in enumerate(history.events)
            if e.event_type == E.EVENT_TYPE_WORKFLOW_TASK_COMPLETED
        )
        assert [
            e
            for e in history.events[:first_task]
            if e.workflow_execution_signaled_event_attributes.signal_name == LOCK_RELEASE_SIGNAL
        ], "the release came after the first task"
        rec.save("mutex_takeover_release_before_first_task", history)


SCENARIOS = [
    mutex_cancel_ignored,
    mutex_fifo_queue_liveness_alive,
    mutex_abandoned_holder,
    mutex_bookkeeping_failures,
    mutex_revoked_holder_gone,
    mutex_failed_grant,
    mutex_cancel_races_grant,
    mutex_continue_as_new,
    mutex_takeover_terminated,
    mutex_takeover_reset_keeps_lease,
    mutex_takeover_cancel_ignored,
    mutex_abandon_mark_carried,
    mutex_takeover_adopts_marks,
    mutex_takeover_release_before_first_task,
]
