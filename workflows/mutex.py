"""MutexWorkflow: one per resource; a lock with fencing leases, replacing the polling scan.

Requesters join by signal-with-start and wait in a queue ordered by priority, then first come,
first served (``workflows/lock_queue.py``). Each is granted the lock by a ``lock_granted`` signal
that carries a fresh, monotonic lease id; priority never preempts the holder. A release frees the
lock only when it carries the current lease id. A lease that outlives its timeout is revoked and
its holder told; a holder that closed without releasing is noticed by a periodic liveness check,
its record marked ``abandoned``.

Since the patch ``mutex-survives-operators`` (issue 8 §5) the mutex also:
- ignores a cancel request (logged and counted): cancelling it would close it with its holder
  and queue, and the next request would start a fresh mutex that grants at once;
- starts its lease ids above any a predecessor could have granted (see ``_lease_floor``), so
  that after an operator terminated it the fence still refuses the old holder's late commands;
- follows the holder's run, not only its workflow id: a holder reset into a new run gets its
  lease moved to that run (fresh lease id), instead of being marked abandoned or ignored;
- sends grants and runs liveness checks and record-keeping beside the queue, as background
  tasks, so a slow signal or a DynamoDB outage never holds up the next grant or a release;
- marks an abandoned holder's record with retries that never give up (capped interval).

Since the patch ``mutex-priority`` (issue 11 §3) the queue is ordered by priority, then first come,
first served; before it, by arrival alone.

Since the patch ``mutex-takes-over`` (issue 8 §5) a run started afresh after an operator
terminated the last one takes over that run's last state (its ``state`` query, answered by
replaying it) before it grants anything: the old holder keeps the lock, so no second holder runs
beside it. And a holder reset to after its grant, whose new run holds the very lease, keeps it.

Since the patch ``mutex-one-liveness-timer`` (issue 12) the liveness check keeps its schedule on
one timer of its own, and the loop waits without a timeout: requests and releases no longer
cancel and restart a timer each (40 timers for 20 requests and 20 handoffs before; one now).

Since the patch ``mutex-take-over-ignores-cancel`` the take-over runs as a task beside the loop,
which a cancel request does not reach: the mutex ignores a cancel while it takes over too. Before
it, the cancel reached the ``recover_mutex`` activity and closed the run before it had adopted
anything, and the next run, taking over from that empty run, granted a second holder.

Since the patch ``mutex-carries-abandon-marks`` an abandoned holder's record mark that DynamoDB
has not taken yet no longer holds up continue-as-new: it goes to the next run in its input
(``MutexState.abandoned``), which retries it. Before it, an outage stopped every grant once the
history called for continue-as-new.

Since the patch ``mutex-defers-from-first-task`` a run started to take over defers releases and
cancels from its first task (the SDK runs that task's signal handlers before ``run``); before
it, a release that reached the run before it ever ran was dropped as stale, and the holder it then
adopted kept the lock until its lease ended. Since ``mutex-takes-over-abandon-marks`` a take-over
also starts the abandon marks the closed run had pending; before it they were dropped.

A deadline computed from a request (``lease_timeout``) or the options is clamped to the end of
time instead of overflowing (``_later``): no request can fail the mutex's workflow task.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from datetime import UTC, datetime, timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import FailureError

with workflow.unsafe.imports_passed_through():
    from activities.mutex import check_holder, describe_workflow, recover_mutex
    from activities.process_table import ProcessTableActivities
    from workflows.lock_queue import LockQueue
    from workflows.messages import (
        LOCK_CANCEL_SIGNAL,
        LOCK_GRANTED_SIGNAL,
        LOCK_RELEASE_SIGNAL,
        LOCK_REQUEST_SIGNAL,
        LOCK_REVOKED_SIGNAL,
        STATE_QUERY,
        AbandonedMark,
        CheckHolder,
        FailureReason,
        HolderLiveness,
        Lease,
        LockCancel,
        LockGranted,
        LockRelease,
        LockRequest,
        LockRevoked,
        MutexCounters,
        MutexInput,
        MutexState,
        ProcessStatus,
        RecoverMutex,
        UpdateProcessStatus,
    )

# Every behaviour change since the first release is behind this patch: the mutex never ends and
# auto-upgrades, so its running histories must replay on every new build.
OPERATORS_PATCH = "mutex-survives-operators"
# From this patch on (only with the one above): a fresh run after an operator terminated the
# mutex takes over the closed run's holder, queue and lease ids before it grants anything, so no
# second holder runs beside the old one; and a reset holder whose new run believes it holds the
# lease (reset to after its grant, or the grant reapplied) keeps it rather than being re-granted.
TAKE_OVER_PATCH = "mutex-takes-over"
# From this patch on the queue is ordered by priority, then FIFO. The mutex auto-upgrades, so a
# running mutex meets this code mid-history: what it queued before stays in order, and the next
# request is placed by priority.
PRIORITY_PATCH = "mutex-priority"
# From this patch on (only with the two first ones) the liveness check keeps its schedule on one
# timer of its own (``_watch_holder``), and the loop waits without a timeout. Before it, every
# request or release that woke the loop cancelled the loop's timer and started another: two
# commands, two history events and a server timer for each message, in the handoff's own task.
ONE_TIMER_PATCH = "mutex-one-liveness-timer"
# From this patch on (only with the ones above) the take-over is a task of its own beside the
# loop, which waits for it. A cancel request cancels only the run's own task (the loop), and the
# mutex ignores it there; before it, the cancel reached the ``recover_mutex`` activity the loop
# was awaiting, came back as an ``ActivityError`` and closed the mutex mid-take-over.
SHIELDED_TAKE_OVER_PATCH = "mutex-take-over-ignores-cancel"
# From this patch on (only with the ones above) an abandoned holder's record mark runs as a task
# continue-as-new does not wait for: a mark still pending then is carried to the next run in its
# input and started again there (the write is idempotent: a final record never moves). Before
# it, continue-as-new waited for the mark, which retries until DynamoDB answers: an outage
# stopped every grant once the history was long enough.
CARRIED_MARKS_PATCH = "mutex-carries-abandon-marks"
# From this patch on (asked only by a run started to take over) such a run defers releases and
# cancels from its very first task. The SDK runs signal handlers before ``run`` in a run's first
# task: a release that reached the run before it ever ran was judged against no holder, dropped as
# stale, and the holder the run then adopted kept the lock until its lease ended.
EARLY_DEFER_PATCH = "mutex-defers-from-first-task"
# From this patch on (asked only by a run that took over a run with marks pending) a take-over
# starts the abandon marks the closed run had not written yet (``MutexState.abandoned``). Before
# it, they were dropped: the abandoned holder's record stayed ``in-progress``.
ADOPTED_MARKS_PATCH = "mutex-takes-over-abandon-marks"

_BOOKKEEPING_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(minutes=1),
    maximum_attempts=5,
)
# An abandoned holder's record is final bookkeeping: it retries until DynamoDB answers, so an
# outage never leaves a closed process ``in-progress``. It runs beside the queue, blocking no one.
_FINAL_WRITE_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(minutes=1),
    maximum_attempts=0,
)


# What a deadline becomes when ``now + span`` would pass the last moment a datetime can hold.
_END_OF_TIME = datetime.max.replace(tzinfo=UTC)
_START_OF_TIME = datetime.min.replace(tzinfo=UTC)


def _later(now: datetime, span: timedelta) -> datetime:
    """``now + span``, or the end (start) of time where the sum would overflow.

    A request's ``lease_timeout`` of three million days made ``now + lease_timeout`` raise
    ``OverflowError``: the workflow task failed and was retried forever, so nobody was granted
    the lock again, and a take-over could not read the run either (its state query replays the
    same failure). The mutex must never fail a task on a request's values.

    No patch needed: for every span whose sum did not overflow this is the very same datetime,
    so every history that completed a task replays as it was recorded; a sum that overflowed
    failed its task every time, so no completed task of any history depends on it.
    """
    try:
        return now + span
    except OverflowError:
        return _END_OF_TIME if span > timedelta(0) else _START_OF_TIME


def _lease_floor(now: datetime) -> int:
    """The first lease id of a mutex started afresh: the start time in milliseconds.

    A mutex carries its counter across continue-as-new, but a run started after an operator
    terminated the last one knows nothing of it. Leases from the clock are above every lease an
    earlier run granted (one grant takes far longer than a millisecond), so downstream systems
    keep refusing the old holder's late commands. Within a run the counter still adds one.
    """
    return int(now.timestamp() * 1000)


@workflow.defn
class MutexWorkflow:
    @workflow.init
    def __init__(self, input: MutexInput) -> None:
        self._options = input.options
        state = input.state or MutexState(resource=input.resource)
        self._resource = state.resource
        self._holder: Lease | None = state.holder
        self._queue = LockQueue(state.queue)
        self._next_lease_id = state.next_lease_id
        self._counters = state.counters.model_dump()
        self._changed = False
        self._next_check_at = _later(workflow.now(), self._options.liveness_interval)
        self._v2 = False
        # Grants, liveness checks and record-keeping in flight beside the queue (v2).
        self._background: set[asyncio.Task[None]] = set()
        self._checking = False
        self._takes_over = False
        self._one_timer = False
        self._watcher: asyncio.Task[None] | None = None  # the liveness schedule (one timer)
        self._recovered_from = state.recovered_from
        # The closed run to take over from, until it has been (a fresh run's input names it).
        self._take_over_from = input.previous_run_id if input.state is None else None
        # Releases and cancels wait while this is set: they may name the closed run's holder.
        # ``__init__`` runs before the first task's signal handlers, ``run`` after them: a run
        # that takes over must defer from here (EARLY_DEFER_PATCH). Only such a run asks; a new
        # one takes every patch, so ``run`` goes on to take over and apply what was deferred.
        self._recovering = self._take_over_from is not None and workflow.patched(EARLY_DEFER_PATCH)
        self._deferred: list[LockRelease | LockCancel] = []
        self._shields_take_over = False
        self._take_over_task: asyncio.Task[None] | None = None
        self._carries_marks = False
        # Abandoned holders' records being marked, by process and lease (CARRIED_MARKS_PATCH):
        # what continue-as-new hands to the next run if DynamoDB has not taken them yet.
        self._marks: dict[tuple[str, int], AbandonedMark] = {}
        self._mark_tasks: set[asyncio.Task[None]] = set()
        self._carried = list(state.abandoned)

    @workflow.run
    async def run(self, input: MutexInput) -> None:
        self._v2 = workflow.patched(OPERATORS_PATCH)
        self._takes_over = self._v2 and workflow.patched(TAKE_OVER_PATCH)
        self._one_timer = self._takes_over and workflow.patched(ONE_TIMER_PATCH)
        self._shields_take_over = self._one_timer and workflow.patched(SHIELDED_TAKE_OVER_PATCH)
        self._carries_marks = self._one_timer and workflow.patched(CARRIED_MARKS_PATCH)
        if self._v2 and input.state is None:
            self._next_lease_id = max(self._next_lease_id, _lease_floor(workflow.now()))
        if self._one_timer:
            # Not one of the background tasks continue-as-new waits for: it never ends, and its
            # timer is simply dropped with the run. A cancel of the mutex does not reach it.
            self._watcher = asyncio.create_task(self._watch_holder())
        if self._carries_marks:
            for mark in self._carried:
                self._start_mark(mark)
        if self._shields_take_over and self._take_over_from is not None:
            # Not the run's own task, so a cancel request does not reach it (see _serve).
            self._take_over_task = asyncio.create_task(self._take_over(self._take_over_from))
        while True:
            try:
                await self._serve(input)
            except asyncio.CancelledError:
                if not self._v2:
                    raise
                # Why not stop: a cancelled mutex closes with its holder and queue, and the next
                # request would start a new one that grants at once while the holder still runs.
                workflow.logger.warning(
                    "cancel request for mutex %s ignored: it serves %s holder and %d waiting; "
                    "see `approval-flow lock` to inspect it",
                    self._resource,
                    "a" if self._holder else "no",
                    len(self._queue),
                )
                self._count("ignored_cancels")

    async def _serve(self, input: MutexInput) -> None:
        if self._take_over_task is not None:
            # A cancel interrupts only this wait: run() ignores it and comes back to wait again.
            await workflow.wait_condition(self._take_over_task.done)
            if not self._take_over_task.cancelled() and self._take_over_task.exception():
                # Not expected (recover_mutex retries until it answers). Granting without the
                # closed run's state could make two holders: fail the task, visibly, instead.
                raise RuntimeError(
                    f"take-over from {self._take_over_from} failed"
                ) from self._take_over_task.exception()
        elif self._takes_over and self._take_over_from is not None:
            await self._take_over(self._take_over_from)
        while True:
            if self._holder is None and self._queue:
                await self._grant_next()
                continue
            if self._should_continue_as_new():
                await workflow.wait_condition(self._settled)
                workflow.continue_as_new(
                    MutexInput(resource=self._resource, options=self._options, state=self.state())
                )
            self._changed = False
            if self._holder is None or self._one_timer:
                await workflow.wait_condition(self._woken)
                continue
            # The check runs on a fixed schedule: signals that wake the loop do not postpone it.
            until_check = self._next_check_at - workflow.now()
            if until_check <= timedelta(0):
                self._next_check_at = _later(workflow.now(), self._options.liveness_interval)
                if self._v2:
                    if not self._checking:
                        self._checking = True
                        self._beside(self._check_holder_v2())
                else:
                    await self._check_holder()
                continue
            with contextlib.suppress(TimeoutError):
                await workflow.wait_condition(self._woken, timeout=until_check)

    # -- signals --------------------------------------------------------------------------------

    @workflow.signal(name=LOCK_REQUEST_SIGNAL)
    def request(self, request: LockRequest) -> None:
        """Join the queue behind every request at least as urgent; a repeated request (an
        activity retry) keeps its first place. The holder is never preempted."""
        holder = self._holder
        if self._v2 and holder is not None and _reset(holder, request):
            # The holder was reset to before its request and asks again from its new run: the
            # old run is closed, so the lease moves to the new one without waiting in line.
            workflow.logger.warning(
                "holder %s asks again from run %s; moving lease %s to it",
                holder.holder_workflow_id,
                request.requester_run_id,
                holder.lease_id,
            )
            self._move_lease(holder, request.requester_run_id)
            return
        # O(1) however long the queue: a burst of thousands lands in one workflow task, which
        # must end within the deadlock timeout (see LockQueue).
        if request.request_id in self._queue or (
            holder is not None and holder.request_id == request.request_id
        ):
            workflow.logger.info("duplicate lock request %s ignored", request.request_id)
            return
        if workflow.patched(PRIORITY_PATCH):
            self._queue.enqueue(request)
        else:
            self._queue.append(request)
        self._changed = True

    @workflow.signal(name=LOCK_CANCEL_SIGNAL)
    async def cancel(self, cancel: LockCancel) -> None:
        """The requester stopped waiting: drop its request, or take back a grant that raced."""
        if self._recovering:
            self._deferred.append(cancel)  # it may name a request of the run being taken over
            return
        if self._queue.remove(cancel.request_id):
            self._count("cancelled_requests")
        elif self._holder is not None and self._holder.request_id == cancel.request_id:
            workflow.logger.info("grant %s raced a cancel; releasing", self._holder.lease_id)
            self._count("cancelled_requests")
            self._free()
        self._changed = True

    @workflow.signal(name=LOCK_RELEASE_SIGNAL)
    def release(self, release: LockRelease) -> None:
        """Free the lock, but only for the current lease: a stale lease id frees nothing."""
        if self._recovering:
            self._deferred.append(release)  # it may free the holder of the run being taken over
            return
        holder = self._holder
        if (
            holder is None
            or holder.lease_id != release.lease_id
            or holder.request_id != release.request_id
        ):
            workflow.logger.warning(
                "stale release of lease %s ignored (current %s)",
                release.lease_id,
                holder.lease_id if holder else None,
            )
            self._count("stale_releases")
            return
        self._count("releases")
        self._free()
        self._changed = True

    @workflow.query(name=STATE_QUERY)
    def state(self) -> MutexState:
        return MutexState(
            resource=self._resource,
            holder=self._holder,
            queue=self._queue.as_list(),
            next_lease_id=self._next_lease_id,
            counters=MutexCounters(**self._counters),
            recovered_from=self._recovered_from,
            abandoned=list(self._marks.values()),
            # Only while this run has not read the run it takes over from (see MutexState).
            taking_over_from=self._take_over_from if self._takes_over else None,
            # What waits for that take-over: the next run applies it if this one never does.
            deferred_releases=[m for m in self._deferred if isinstance(m, LockRelease)],
            deferred_cancels=[m for m in self._deferred if isinstance(m, LockCancel)],
        )

    # -- steps ----------------------------------------------------------------------------------

    async def _grant_next(self) -> None:
        request = self._queue.pop_next()
        now = workflow.now()
        lease = Lease(
            request_id=request.request_id,
            holder_workflow_id=request.requester_workflow_id,
            lease_id=self._next_lease_id,
            granted_at=now,
            expires_at=_later(now, request.lease_timeout),
            holder_run_id=request.requester_run_id if self._v2 else None,
        )
        self._next_lease_id += 1
        self._holder = lease
        self._next_check_at = _later(now, self._options.liveness_interval)
        if self._v2:
            # The grant is sent beside the queue: the loop goes back to waiting at once, and a
            # grant that fails frees the lock from its own task.
            self._beside(self._send_grant(request, lease))
            return
        try:
            await workflow.get_external_workflow_handle(request.requester_workflow_id).signal(
                LOCK_GRANTED_SIGNAL,
                LockGranted(
                    resource=self._resource, request_id=request.request_id, lease_id=lease.lease_id
                ),
            )
        except FailureError as err:
            # The requester is gone (closed or never existed): nobody holds the lock.
            workflow.logger.warning(
                "grant to %s failed (%s); passing the lock on", request.requester_workflow_id, err
            )
            self._count("failed_grants")
            if self._holder is lease:
                self._free()
            return
        self._count("grants")

    async def _send_grant(self, request: LockRequest, lease: Lease) -> None:
        grant = LockGranted(
            resource=self._resource, request_id=request.request_id, lease_id=lease.lease_id
        )
        try:
            # To the workflow id, not the run: a run that was reset meanwhile gets it, and its
            # handler hands back a grant it did not wait for.
            await workflow.get_external_workflow_handle(request.requester_workflow_id).signal(
                LOCK_GRANTED_SIGNAL, grant
            )
        except FailureError as err:
            workflow.logger.warning(
                "grant to %s failed (%s); passing the lock on", request.requester_workflow_id, err
            )
            self._count("failed_grants")
            if self._holder is lease:
                self._free()
            return
        self._count("grants")

    async def _watch_holder(self) -> None:
        """Check the holder on a fixed schedule, one timer at a time (``ONE_TIMER_PATCH``).

        A grant sets the next check one interval ahead; if it moved while the timer ran, the
        timer's end finds it still ahead and sleeps the rest. So a busy mutex starts about two
        timers per interval, not two per message, and an idle one (no holder) none.
        """
        while True:
            await workflow.wait_condition(self._held)
            until_check = self._next_check_at - workflow.now()
            if until_check > timedelta(0):
                await workflow.sleep(until_check)
                continue
            self._next_check_at = _later(workflow.now(), self._options.liveness_interval)
            if not self._checking:
                self._checking = True
                self._beside(self._check_holder_v2())

    async def _check_holder_v2(self) -> None:
        try:
            holder = self._holder
            if holder is None:
                return
            if workflow.now() >= holder.expires_at:
                await self._revoke(holder)
                return
            try:
                liveness: HolderLiveness = await workflow.execute_activity(
                    check_holder,
                    CheckHolder(
                        workflow_id=holder.holder_workflow_id,
                        run_id=holder.holder_run_id,
                        with_lock=self._takes_over,
                    ),
                    start_to_close_timeout=self._options.activity_attempt_timeout,
                    retry_policy=_BOOKKEEPING_RETRY,
                )
            except FailureError as err:
                # Not knowing is no reason to free the lock: try again at the next check.
                workflow.logger.warning(
                    "liveness of %s unknown: %s", holder.holder_workflow_id, err
                )
                return
            if liveness.running or self._holder is not holder:
                return
            lock = liveness.current_lock
            if (
                liveness.current_run_id is not None
                and lock is not None
                and lock.status == "held"
                and lock.lease_id == holder.lease_id
            ):
                # Reset to after its grant (or the grant reapplied): the new run holds this very
                # lease. Granting it another, which it would hand back, would free the lock under
                # it: it keeps this one.
                workflow.logger.warning(
                    "holder %s was reset: run %s took over and holds lease %s; it keeps it",
                    holder.holder_workflow_id,
                    liveness.current_run_id,
                    holder.lease_id,
                )
                self._count("moved_leases")
                self._holder = holder.model_copy(update={"holder_run_id": liveness.current_run_id})
                return
            if liveness.current_run_id is not None:
                workflow.logger.warning(
                    "holder %s was reset: run %s is %s, run %s took over; moving lease %s",
                    holder.holder_workflow_id,
                    holder.holder_run_id,
                    liveness.status,
                    liveness.current_run_id,
                    holder.lease_id,
                )
                self._move_lease(holder, liveness.current_run_id)
                return
            workflow.logger.warning(
                "holder %s is %s without releasing lease %s; freeing the lock",
                holder.holder_workflow_id,
                liveness.status,
                holder.lease_id,
            )
            self._count("abandoned_holders")
            self._free()
        finally:
            self._checking = False
        if self._carries_marks:
            mark = AbandonedMark(
                process_id=holder.holder_workflow_id,
                lease_id=holder.lease_id,
                status=liveness.status,
                at=workflow.now(),
            )
            self._start_mark(mark)
            return
        await self._mark_abandoned(holder, liveness.status, _FINAL_WRITE_RETRY)

    async def _take_over(self, previous_run_id: str) -> None:
        """Adopt the last state of the closed run before this one: its holder still holds the
        lock, its waiters still wait, its lease ids were handed out. Nothing is granted until
        this is done; releases and cancels that arrive meanwhile are applied after it."""
        self._recovering = True
        try:
            recovered: MutexState | None = await workflow.execute_activity(
                recover_mutex,
                RecoverMutex(resource=self._resource, run_id=previous_run_id),
                start_to_close_timeout=self._options.activity_attempt_timeout,
                # Granting without the old state could make two holders: wait it out.
                retry_policy=_FINAL_WRITE_RETRY,
            )
        finally:
            self._recovering = False
        self._take_over_from = None
        self._recovered_from = previous_run_id
        if recovered is not None:
            queue = LockQueue(recovered.queue)
            held = recovered.holder.request_id if recovered.holder is not None else None
            # What arrived here meanwhile and the closed run did not have, behind its queue.
            arrived = [r for r in self._queue if r.request_id not in queue and r.request_id != held]
            for request in arrived:
                if workflow.patched(PRIORITY_PATCH):
                    queue.enqueue(request)
                else:
                    queue.append(request)
            self._queue = queue
            self._holder = recovered.holder
            self._next_lease_id = max(self._next_lease_id, recovered.next_lease_id)
            for name, value in recovered.counters.model_dump().items():
                self._counters[name] = self._counters.get(name, 0) + value
            self._next_check_at = workflow.now()  # the adopted holder may be long gone
            if (
                recovered.abandoned
                and self._carries_marks
                and workflow.patched(ADOPTED_MARKS_PATCH)
            ):
                # Records the closed run had not marked yet: nobody else will.
                for mark in recovered.abandoned:
                    self._start_mark(mark)
            workflow.logger.warning(
                "took over from closed run %s: holder %s, %d waiting",
                previous_run_id,
                recovered.holder.holder_workflow_id if recovered.holder else "nobody",
                len(recovered.queue),
            )
        deferred, self._deferred = self._deferred, []
        for message in deferred:
            if isinstance(message, LockRelease):
                self.release(message)
            else:
                await self.cancel(message)
        self._changed = True

    def _move_lease(self, holder: Lease, run_id: str | None) -> None:
        """Grant the holder's request again, to its new run, with a fresh (higher) lease id."""
        self._count("moved_leases")
        self._free()
        again = LockRequest(
            requester_workflow_id=holder.holder_workflow_id,
            request_id=holder.request_id,
            lease_timeout=holder.expires_at - holder.granted_at,
            requested_at=holder.granted_at,
            requester_run_id=run_id,
        )
        self._queue.put_first(again)

    async def _check_holder(self) -> None:
        holder = self._holder
        if holder is None:
            return
        if workflow.now() >= holder.expires_at:
            await self._revoke(holder)
            return
        try:
            liveness: HolderLiveness = await workflow.execute_activity(
                describe_workflow,
                holder.holder_workflow_id,
                start_to_close_timeout=self._options.activity_attempt_timeout,
                retry_policy=_BOOKKEEPING_RETRY,
            )
        except FailureError as err:
            # Not knowing is no reason to free the lock, nor to fail the mutex and lose the
            # queue: try again at the next check.
            workflow.logger.warning("liveness of %s unknown: %s", holder.holder_workflow_id, err)
            return
        if liveness.running or self._holder is not holder:
            return
        workflow.logger.warning(
            "holder %s is %s without releasing lease %s; freeing the lock",
            holder.holder_workflow_id,
            liveness.status,
            holder.lease_id,
        )
        self._count("abandoned_holders")
        self._free()
        await self._mark_abandoned(holder, liveness.status)

    async def _revoke(self, holder: Lease) -> None:
        workflow.logger.warning(
            "lease %s of %s expired at %s; revoking",
            holder.lease_id,
            holder.holder_workflow_id,
            holder.expires_at,
        )
        self._count("expired_leases")
        self._free()
        try:
            await workflow.get_external_workflow_handle(holder.holder_workflow_id).signal(
                LOCK_REVOKED_SIGNAL,
                LockRevoked(
                    resource=self._resource,
                    request_id=holder.request_id,
                    lease_id=holder.lease_id,
                    reason=f"lease expired at {holder.expires_at.isoformat()}",
                ),
            )
        except FailureError as err:
            workflow.logger.warning("could not tell %s: %s", holder.holder_workflow_id, err)

    async def _mark_abandoned(
        self, holder: Lease, status: str, retry: RetryPolicy = _BOOKKEEPING_RETRY
    ) -> None:
        try:
            await workflow.execute_activity_method(
                ProcessTableActivities.update_process_status,
                _abandoned(holder.holder_workflow_id, status, holder.lease_id, workflow.now()),
                start_to_close_timeout=self._options.activity_attempt_timeout,
                retry_policy=retry,
            )
        except FailureError as err:
            # The lock is already free; a record we cannot mark must not stop the queue.
            workflow.logger.error("could not mark %s abandoned: %s", holder.holder_workflow_id, err)

    def _start_mark(self, mark: AbandonedMark) -> None:
        """Mark ``mark``'s record abandoned in a task continue-as-new does not wait for: it
        retries until DynamoDB answers, and an outage must not stop the queue. If the run
        continues as new first, the mark goes with it (``state().abandoned``)."""
        key = (mark.process_id, mark.lease_id)
        if key in self._marks:
            return
        self._marks[key] = mark
        task = asyncio.create_task(self._write_mark(key, mark))
        self._mark_tasks.add(task)
        task.add_done_callback(self._mark_tasks.discard)

    async def _write_mark(self, key: tuple[str, int], mark: AbandonedMark) -> None:
        try:
            await workflow.execute_activity_method(
                ProcessTableActivities.update_process_status,
                _abandoned(mark.process_id, mark.status, mark.lease_id, mark.at),
                start_to_close_timeout=self._options.activity_attempt_timeout,
                retry_policy=_FINAL_WRITE_RETRY,
            )
        except FailureError as err:
            # Only a non-retryable failure ends the retries: nothing to carry on with.
            workflow.logger.error("could not mark %s abandoned: %s", mark.process_id, err)
        finally:
            del self._marks[key]

    # -- helpers --------------------------------------------------------------------------------

    def _free(self) -> None:
        self._holder = None
        self._changed = True

    def _beside(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` as a task beside the queue; continue-as-new waits for it to finish.

        Tasks other than the run's own are not cancelled when a cancel is requested, so a grant
        in flight is never withdrawn half-way.
        """
        task = asyncio.create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _held(self) -> bool:
        return self._holder is not None

    def _settled(self) -> bool:
        return workflow.all_handlers_finished() and not self._background

    def _count(self, name: str) -> None:
        self._counters[name] += 1

    def _woken(self) -> bool:
        """Something to act on: a change of holder or queue, or a history grown too long."""
        return self._changed or self._should_continue_as_new()

    def _should_continue_as_new(self) -> bool:
        info = workflow.info()
        return (
            info.is_continue_as_new_suggested()
            or info.get_current_history_length() >= self._options.max_history_events
        )


def _reset(holder: Lease, request: LockRequest) -> bool:
    """``request`` is the holder's own, sent again from a new run of the holder."""
    return (
        request.request_id == holder.request_id
        and request.requester_workflow_id == holder.holder_workflow_id
        and request.requester_run_id is not None
        and holder.holder_run_id is not None
        and request.requester_run_id != holder.holder_run_id
    )


def _abandoned(process_id: str, status: str, lease_id: int, at: datetime) -> UpdateProcessStatus:
    """The record update that marks a holder which closed holding its lease as abandoned."""
    return UpdateProcessStatus(
        process_id=process_id,
        status=ProcessStatus.FAILED,
        reason=FailureReason.ABANDONED,
        message=f"closed ({status}) while holding lease {lease_id}",
        at=at,
    )
