"""Activities the mutex protocol needs from the Temporal client itself."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from temporalio import activity
from temporalio.api.common.v1 import Payloads
from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import (
    Client,
    WorkflowExecutionDescription,
    WorkflowExecutionStatus,
    WorkflowHandle,
    WorkflowQueryFailedError,
)
from temporalio.converter import PayloadConverter
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from common import tracing
from workflows.lock_queue import LockQueue
from workflows.messages import (
    LOCK_CANCEL_SIGNAL,
    LOCK_GRANTED_SIGNAL,
    LOCK_RELEASE_SIGNAL,
    LOCK_REQUEST_SIGNAL,
    LOCK_REVOKED_SIGNAL,
    STATE_QUERY,
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
    ProcessState,
    RecoverMutex,
    RequestLock,
    UpdateProcessStatus,
    mutex_workflow_id,
)

# The mutex is started by type name so this module never imports workflow code.
MUTEX_WORKFLOW_TYPE = "MutexWorkflow"
# The lease end the mutex gives where ``granted_at + lease_timeout`` overflows (its ``_later``).
END_OF_TIME = datetime.max.replace(tzinfo=UTC)

T = TypeVar("T")


@activity.defn(name="request_lock")
async def request_lock(request: RequestLock) -> None:
    """Join the resource's FIFO queue, starting the mutex workflow if it is not running."""
    # The mutex outlives every process: it stays out of this process's trace (the grant still
    # shows in it, as the process's HandleSignal:lock_granted).
    with tracing.outside_process_trace():
        await _join_queue(request)


async def _join_queue(request: RequestLock) -> None:
    lock_request = request.request
    if lock_request.requester_run_id is None:
        # The run that asks is the run the grant and the liveness checks must follow: a reset
        # replaces it under the same workflow id. The activity knows it without workflow code.
        lock_request = lock_request.model_copy(
            update={"requester_run_id": activity.info().workflow_run_id}
        )
    client = activity.client()
    mutex = client.get_workflow_handle(mutex_workflow_id(request.resource))
    while True:
        latest = await _latest_mutex_run(client, request.resource)
        if latest is not None and latest.status == WorkflowExecutionStatus.RUNNING:
            # A plain signal, which only a running run takes. Signal-with-start would start a
            # run that knows of no closed one if an operator terminated this one just now, and
            # that run would grant at once, beside the holder. Refused: look again.
            try:
                await mutex.signal(LOCK_REQUEST_SIGNAL, lock_request)
                return
            except RPCError as err:
                if err.status != RPCStatusCode.NOT_FOUND:
                    raise
                continue
        # Closed by an operator (the run this starts takes over from it), or never started.
        # Start arguments count only when signal-with-start starts a run.
        await client.start_workflow(
            MUTEX_WORKFLOW_TYPE,
            MutexInput(
                resource=request.resource,
                options=request.mutex_options,
                previous_run_id=latest.run_id if latest is not None else None,
            ),
            id=mutex_workflow_id(request.resource),
            task_queue=activity.info().task_queue,
            start_signal=LOCK_REQUEST_SIGNAL,
            start_signal_args=[lock_request],
        )
        return


async def closed_mutex_run(client: Client, resource: str) -> str | None:
    """The run id of the resource's latest mutex run if it is closed; None if it runs or never
    ran."""
    latest = await _latest_mutex_run(client, resource)
    if latest is None or latest.status == WorkflowExecutionStatus.RUNNING:
        return None
    return latest.run_id


async def _latest_mutex_run(client: Client, resource: str) -> WorkflowExecutionDescription | None:
    """The resource's latest mutex run; None if it never ran. ``describe`` without a run id
    answers for the latest run of the id, from the server's own records (no worker, no
    visibility); a run that continued as new is never the latest."""
    try:
        return await client.get_workflow_handle(mutex_workflow_id(resource)).describe()
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            return None
        raise


@activity.defn(name="recover_mutex")
async def recover_mutex(recover: RecoverMutex) -> MutexState | None:
    """The last state of a closed mutex run: holder, queue, lease ids. None if it is gone.

    A query on a closed run is answered by a worker replaying its history (this worker polls the
    mutex's task queue): the replay every recorded history gets in ``make test``. A run past its
    retention is gone, and so is any holder it had. A run whose query keeps failing, whatever the
    error (no worker can replay it, or nothing polls its task queue any more), is read from its
    events from attempt ``READ_EVENTS_FROM_ATTEMPT`` on (``state_from_events``).

    A run that was closed while it was still taking over (an operator terminated it too) adopted
    nothing yet: its holder is the one of the run it was reading. So the answer follows
    ``taking_over_from`` back to a run that finished its take-over (or never had one), with what
    reached the later runs meanwhile queued behind (``adopted``).
    """
    run_id = recover.run_id
    # Once one run of the chain could not be queried, neither can the runs before it (same task
    # queue, same build): they are read from their events at once, within this attempt.
    reader = _StateReader(recover.resource)
    state = await reader.last_state(run_id)
    followed = 0
    while state is not None and state.taking_over_from is not None:
        if followed == MAX_TAKE_OVER_CHAIN:
            # Not reachable but by a loop of run ids, which the server never makes.
            raise ApplicationError(f"take-over chain longer than {MAX_TAKE_OVER_CHAIN} runs")
        activity.logger.warning(
            "closed mutex run %s was still taking over from %s; following it",
            run_id,
            state.taking_over_from,
        )
        run_id = state.taking_over_from
        earlier = await reader.last_state(run_id)
        state = adopted(state, earlier)
        followed += 1
    return state


# How many runs closed mid-take-over ``recover_mutex`` follows back (each was terminated by hand).
MAX_TAKE_OVER_CHAIN = 20


# From this attempt on, a closed run whose query keeps failing is read from its events instead.
READ_EVENTS_FROM_ATTEMPT = 3
# The share of an attempt's time the query may take from that attempt on: the rest is for reading
# the events, so the attempt ends with an answer rather than timing out the same way every time.
QUERY_SHARE_OF_ATTEMPT = 4
# The query's limit where the activity has no attempt timeout (the mutex always sets one).
QUERY_TIMEOUT_FALLBACK = timedelta(seconds=10)


class _StateReader:
    """Reads closed runs of one mutex for one attempt of ``recover_mutex``."""

    def __init__(self, resource: str) -> None:
        self._resource = resource
        info = activity.info()
        self._may_read_events = info.attempt >= READ_EVENTS_FROM_ATTEMPT
        self._query_timeout: timedelta | None = None
        if self._may_read_events:
            attempt_timeout = info.start_to_close_timeout or info.schedule_to_close_timeout
            self._query_timeout = (
                attempt_timeout / QUERY_SHARE_OF_ATTEMPT
                if attempt_timeout
                else QUERY_TIMEOUT_FALLBACK
            )
        self._read_events = False

    async def last_state(self, run_id: str) -> MutexState | None:
        handle = activity.client().get_workflow_handle(
            mutex_workflow_id(self._resource), run_id=run_id
        )
        if self._read_events:
            return await self._from_events(handle, run_id)
        try:
            state: MutexState = await handle.query(
                STATE_QUERY, result_type=MutexState, rpc_timeout=self._query_timeout
            )
        except RPCError as err:
            if err.status == RPCStatusCode.NOT_FOUND:
                activity.logger.warning("closed mutex run %s is gone; nothing to take over", run_id)
                return None
            # Whatever else: most often nothing polls the run's task queue any more (its build
            # retired, or this worker listens elsewhere), and the query times out every time
            # ("Timeout expired", DEADLINE_EXCEEDED). Retrying it alone would wait forever.
            if not self._may_read_events:
                raise
            activity.logger.error(
                "closed mutex run %s does not answer its query (%s); taking over from its events",
                run_id,
                err,
            )
        except WorkflowQueryFailedError as err:
            # The worker could not replay the run (a nondeterminism, or a task that failed every
            # time, as a lease past the year 9999 did before it was clamped). Retrying the query
            # would wait forever, and the new run grants nothing meanwhile: after a few attempts
            # (a replay can fail once under load), read the run's events instead.
            if not self._may_read_events:
                raise
            activity.logger.error(
                "closed mutex run %s cannot be replayed (%s); taking over from its events",
                run_id,
                err,
            )
        else:
            return state
        self._read_events = True
        return await self._from_events(handle, run_id)

    async def _from_events(
        self, handle: WorkflowHandle[Any, Any], run_id: str
    ) -> MutexState | None:
        try:
            events = [event async for event in handle.fetch_history_events()]
        except RPCError as err:
            if err.status == RPCStatusCode.NOT_FOUND:
                activity.logger.warning("closed mutex run %s is gone; nothing to take over", run_id)
                return None
            raise
        return state_from_events(self._resource, events, activity.payload_converter())


def state_from_events(
    resource: str, events: Sequence[HistoryEvent], converter: PayloadConverter
) -> MutexState:
    """A closed run's last state from its events alone, for a run no worker can replay.

    What it must assume: every grant the run sent (a ``lock_granted`` signal) holds the lock
    until the history shows it ended, by a matching release, a cancel of its request, a grant
    that failed, a revocation, or the holder's record marked abandoned; a grant a failed task
    only meant to send was never sent, so nobody holds it. Whatever it cannot tell errs on the
    side of a holder: a lease whose request it cannot find never expires. Releases and cancels
    that reached the run while it took over are applied once it adopted the state, as the mutex
    applies them (a build before ``mutex-defers-from-first-task`` dropped those of its first task
    instead; its holder had let go all the same). The liveness check frees such a holder
    once its run has closed, so the cost is a wait, never a second holder.

    Not read from the events: what the run counted, and abandon marks it started itself (the
    ones it was handed at its start are kept), so such a record may stay ``in-progress``.
    """

    def decode(payloads: Payloads, kind: type[T]) -> T:
        value: T = converter.from_payloads(list(payloads.payloads), [kind])[0]
        return value

    state = MutexState(resource=resource)
    queue = LockQueue()
    holder: Lease | None = None
    requests: dict[str, LockRequest] = {}  # the last request seen for each id
    grants: dict[int, Lease] = {}  # by the event that sent the grant
    recovering: set[int] = set()  # recover_mutex scheduled (this run took over from another)
    deferred: list[LockRelease | LockCancel] = []  # releases and cancels while taking over
    next_lease_id = 1
    for event in events:
        kind = event.event_type
        if kind == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED:
            started = decode(event.workflow_execution_started_event_attributes.input, MutexInput)
            if started.state is not None:
                state = started.state
                queue = LockQueue(state.queue)
                holder = state.holder
                next_lease_id = state.next_lease_id
                requests.update((r.request_id, r) for r in state.queue)
            elif started.previous_run_id is not None:
                # Still taking over until recover_mutex's answer or a grant shows up below.
                state = state.model_copy(update={"taking_over_from": started.previous_run_id})
        elif kind == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED:
            signaled = event.workflow_execution_signaled_event_attributes
            if signaled.signal_name == LOCK_REQUEST_SIGNAL:
                request = decode(signaled.input, LockRequest)
                requests[request.request_id] = request
                held = holder is not None and holder.request_id == request.request_id
                if request.request_id not in queue and not held:
                    queue.enqueue(request)
            elif signaled.signal_name in (LOCK_RELEASE_SIGNAL, LOCK_CANCEL_SIGNAL):
                message: LockRelease | LockCancel = (
                    decode(signaled.input, LockRelease)
                    if signaled.signal_name == LOCK_RELEASE_SIGNAL
                    else decode(signaled.input, LockCancel)
                )
                if state.taking_over_from is not None:
                    # As the mutex does: it may name the holder of the run being taken over.
                    deferred.append(message)
                else:
                    holder = _applied(message, queue, holder)
        elif kind == EventType.EVENT_TYPE_SIGNAL_EXTERNAL_WORKFLOW_EXECUTION_INITIATED:
            sent = event.signal_external_workflow_execution_initiated_event_attributes
            if sent.signal_name == LOCK_GRANTED_SIGNAL:
                # A run taking over grants nothing until it has adopted the closed run's state:
                # a grant shows that this run is not taking over (any more). Its start may still
                # name a previous run it never read: a build before the patch mutex-takes-over
                # ran its first task. Following that run back would adopt its holder and drop
                # this grant, and the lock would go to another beside this holder.
                state = state.model_copy(update={"taking_over_from": None})
                for message in deferred:  # such a run took them as they came
                    holder = _applied(message, queue, holder)
                deferred.clear()
                grant = decode(sent.input, LockGranted)
                queue.remove(grant.request_id)
                asked = requests.get(grant.request_id)
                granted_at = event.event_time.ToDatetime(tzinfo=UTC)
                holder = Lease(
                    request_id=grant.request_id,
                    holder_workflow_id=sent.workflow_execution.workflow_id,
                    lease_id=grant.lease_id,
                    granted_at=granted_at,
                    expires_at=_expiry(granted_at, asked.lease_timeout) if asked else END_OF_TIME,
                    holder_run_id=asked.requester_run_id if asked else None,
                )
                grants[event.event_id] = holder
                next_lease_id = max(next_lease_id, grant.lease_id + 1)
            elif sent.signal_name == LOCK_REVOKED_SIGNAL:
                revoked = decode(sent.input, LockRevoked)
                if holder is not None and holder.lease_id == revoked.lease_id:
                    holder = None
        elif kind == EventType.EVENT_TYPE_SIGNAL_EXTERNAL_WORKFLOW_EXECUTION_FAILED:
            failed = event.signal_external_workflow_execution_failed_event_attributes
            if holder is not None and grants.get(failed.initiated_event_id) is holder:
                holder = None
        elif kind == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            scheduled = event.activity_task_scheduled_event_attributes
            if scheduled.activity_type.name == "recover_mutex":
                recovering.add(event.event_id)
            elif scheduled.activity_type.name == "update_process_status" and holder is not None:
                update = decode(scheduled.input, UpdateProcessStatus)
                if (
                    update.reason == FailureReason.ABANDONED
                    and update.process_id == holder.holder_workflow_id
                    and (update.message or "").endswith(f"lease {holder.lease_id}")
                ):
                    holder = None
        elif kind == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED:
            completed = event.activity_task_completed_event_attributes
            if completed.scheduled_event_id in recovering:
                arrived = state.model_copy(
                    update={"holder": None, "queue": queue.as_list(), "taking_over_from": None}
                )
                answer = completed.result.payloads
                recovered = (
                    None
                    if not answer or answer[0].data == b"null"
                    else decode(completed.result, MutexState)
                )
                state = adopted(arrived, recovered)
                queue = LockQueue(state.queue)
                holder = state.holder
                for message in deferred:  # applied once the closed run's state is adopted
                    holder = _applied(message, queue, holder)
                deferred.clear()
                next_lease_id = max(next_lease_id, state.next_lease_id)
                requests.update((r.request_id, r) for r in state.queue)
    return state.model_copy(
        update={
            "holder": holder,
            "queue": queue.as_list(),
            "next_lease_id": next_lease_id,
            # Left only by a run closed while still taking over: the next one applies them.
            "deferred_releases": [m for m in deferred if isinstance(m, LockRelease)],
            "deferred_cancels": [m for m in deferred if isinstance(m, LockCancel)],
        }
    )


def _applied(
    message: LockRelease | LockCancel, queue: LockQueue, holder: Lease | None
) -> Lease | None:
    """The holder once ``message`` is applied as the mutex applies it (``queue`` is changed in
    place): a release frees the current lease only, a cancel drops its request or its grant."""
    if isinstance(message, LockRelease):
        if (
            holder is not None
            and holder.lease_id == message.lease_id
            and holder.request_id == message.request_id
        ):
            return None
        return holder
    queue.remove(message.request_id)
    if holder is not None and holder.request_id == message.request_id:
        return None
    return holder


def adopted(later: MutexState, earlier: MutexState | None) -> MutexState:
    """What ``later``, closed while taking over from the run ``earlier`` stands for, would have
    had: ``earlier``'s holder, queue and lease ids, and behind them the requests that reached
    ``later`` meanwhile (as the mutex itself merges them when its take-over ends); then the
    releases and cancels ``later`` deferred meanwhile, applied as the mutex applies them.

    A run taking over grants nothing (its holder is None), so ``earlier``'s holder stands, unless
    a deferred release or cancel ended its lease; a ``later`` with a holder was not taking over,
    and is returned as it is. ``earlier`` None: that run is gone, and so is any holder it had.
    ``earlier`` itself still taking over: the deferred messages wait with its own, for the run
    further back.
    """
    if later.holder is not None:
        # ``later`` granted, so it was not taking over after all: its own holder stands.
        return later.model_copy(update={"taking_over_from": None})
    if earlier is None:
        merged = later.model_copy(update={"taking_over_from": None})
    else:
        queue = LockQueue(earlier.queue)
        held = earlier.holder.request_id if earlier.holder is not None else None
        for request in later.queue:
            if request.request_id not in queue and request.request_id != held:
                queue.enqueue(request)
        counters = earlier.counters.model_dump()
        for name, value in later.counters.model_dump().items():
            counters[name] = counters.get(name, 0) + value
        merged = earlier.model_copy(
            update={
                "queue": queue.as_list(),
                "next_lease_id": max(earlier.next_lease_id, later.next_lease_id),
                "counters": MutexCounters(**counters),
                "abandoned": [*earlier.abandoned, *later.abandoned],
                "deferred_releases": [*earlier.deferred_releases, *later.deferred_releases],
                "deferred_cancels": [*earlier.deferred_cancels, *later.deferred_cancels],
            }
        )
    if merged.taking_over_from is not None:
        return merged
    queue = LockQueue(merged.queue)
    holder = merged.holder
    pending: list[LockRelease | LockCancel] = [*merged.deferred_releases, *merged.deferred_cancels]
    for message in pending:
        holder = _applied(message, queue, holder)
    return merged.model_copy(
        update={
            "holder": holder,
            "queue": queue.as_list(),
            "deferred_releases": [],
            "deferred_cancels": [],
        }
    )


@activity.defn(name="describe_workflow")
async def describe_workflow(workflow_id: str) -> HolderLiveness:
    """Whether a lock holder is still running; a closed or missing holder has left the lock."""
    try:
        description = await activity.client().get_workflow_handle(workflow_id).describe()
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            return HolderLiveness(workflow_id=workflow_id, running=False, status="NOT_FOUND")
        raise
    status = description.status
    return HolderLiveness(
        workflow_id=workflow_id,
        running=status == WorkflowExecutionStatus.RUNNING,
        status=status.name if status else "UNKNOWN",
    )


@activity.defn(name="check_holder")
async def check_holder(holder: CheckHolder) -> HolderLiveness:
    """Whether the run holding a lease still runs; if it closed, whether a newer run replaced it.

    Both answers come from the server (describe), so no worker of the holder is needed. A reset
    closes the holder's run and starts a new one under the same workflow id: the mutex then
    moves the lease to that run instead of marking the process abandoned.
    """
    client = activity.client()
    try:
        own = await client.get_workflow_handle(holder.workflow_id, run_id=holder.run_id).describe()
    except RPCError as err:
        if err.status != RPCStatusCode.NOT_FOUND:
            raise
        return HolderLiveness(workflow_id=holder.workflow_id, running=False, status="NOT_FOUND")
    status = own.status
    name = status.name if status else "UNKNOWN"
    if status == WorkflowExecutionStatus.RUNNING:
        return HolderLiveness(workflow_id=holder.workflow_id, running=True, status=name)
    if holder.run_id is not None:
        latest = await client.get_workflow_handle(holder.workflow_id).describe()
        if latest.run_id != holder.run_id and latest.status == WorkflowExecutionStatus.RUNNING:
            lock = None
            if holder.with_lock:
                # What the new run believes decides whether the lease stays with it. Not knowing
                # fails this check (it is retried at the next one); guessing could make two
                # holders.
                state = await client.get_workflow_handle(
                    holder.workflow_id, run_id=latest.run_id
                ).query(STATE_QUERY, result_type=ProcessState)
                lock = state.lock
            return HolderLiveness(
                workflow_id=holder.workflow_id,
                running=False,
                status=name,
                current_run_id=latest.run_id,
                current_lock=lock,
            )
    return HolderLiveness(workflow_id=holder.workflow_id, running=False, status=name)


def _expiry(granted_at: datetime, lease_timeout: timedelta) -> datetime:
    try:
        return granted_at + lease_timeout
    except OverflowError:
        return END_OF_TIME if lease_timeout > timedelta(0) else datetime.min.replace(tzinfo=UTC)
