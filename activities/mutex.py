"""Activities the mutex protocol needs from the Temporal client itself."""

from __future__ import annotations

from temporalio import activity
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from common import tracing
from workflows.lock_queue import LockQueue
from workflows.messages import (
    LOCK_REQUEST_SIGNAL,
    STATE_QUERY,
    CheckHolder,
    HolderLiveness,
    MutexCounters,
    MutexInput,
    MutexState,
    ProcessState,
    RecoverMutex,
    RequestLock,
    mutex_workflow_id,
)

# The mutex is started by type name so this module never imports workflow code.
MUTEX_WORKFLOW_TYPE = "MutexWorkflow"


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
    # If an operator closed the mutex, the run this may start takes over from the closed one.
    # (Start arguments count only when signal-with-start starts a run.)
    previous = await closed_mutex_run(client, request.resource)
    await client.start_workflow(
        MUTEX_WORKFLOW_TYPE,
        MutexInput(
            resource=request.resource, options=request.mutex_options, previous_run_id=previous
        ),
        id=mutex_workflow_id(request.resource),
        task_queue=activity.info().task_queue,
        start_signal=LOCK_REQUEST_SIGNAL,
        start_signal_args=[lock_request],
    )


async def closed_mutex_run(client: Client, resource: str) -> str | None:
    """The run id of the resource's latest mutex run if it is closed; None if it runs or never
    ran. ``describe`` without a run id answers for the latest run of the id, from the server's
    own records (no worker, no visibility); a run that continued as new is never the latest."""
    try:
        latest = await client.get_workflow_handle(mutex_workflow_id(resource)).describe()
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            return None
        raise
    if latest.status == WorkflowExecutionStatus.RUNNING:
        return None
    return latest.run_id


@activity.defn(name="recover_mutex")
async def recover_mutex(recover: RecoverMutex) -> MutexState | None:
    """The last state of a closed mutex run: holder, queue, lease ids. None if it is gone.

    A query on a closed run is answered by a worker replaying its history (this worker polls the
    mutex's task queue): the replay every recorded history gets in ``make test``. A run past its
    retention is gone, and so is any holder it had.

    A run that was closed while it was still taking over (an operator terminated it too) adopted
    nothing yet: its holder is the one of the run it was reading. So the answer follows
    ``taking_over_from`` back to a run that finished its take-over (or never had one), with what
    reached the later runs meanwhile queued behind (``adopted``).
    """
    state = await _last_state(recover.resource, recover.run_id)
    followed = 0
    while state is not None and state.taking_over_from is not None:
        if followed == MAX_TAKE_OVER_CHAIN:
            # Not reachable but by a loop of run ids, which the server never makes.
            raise ApplicationError(f"take-over chain longer than {MAX_TAKE_OVER_CHAIN} runs")
        activity.logger.warning(
            "closed mutex run %s was still taking over from %s; following it",
            recover.run_id,
            state.taking_over_from,
        )
        earlier = await _last_state(recover.resource, state.taking_over_from)
        state = adopted(state, earlier)
        followed += 1
    return state


# How many runs closed mid-take-over ``recover_mutex`` follows back (each was terminated by hand).
MAX_TAKE_OVER_CHAIN = 20


async def _last_state(resource: str, run_id: str) -> MutexState | None:
    handle = activity.client().get_workflow_handle(mutex_workflow_id(resource), run_id=run_id)
    try:
        state: MutexState = await handle.query(STATE_QUERY, result_type=MutexState)
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            activity.logger.warning("closed mutex run %s is gone; nothing to take over", run_id)
            return None
        raise
    return state


def adopted(later: MutexState, earlier: MutexState | None) -> MutexState:
    """What ``later``, closed while taking over from the run ``earlier`` stands for, would have
    had: ``earlier``'s holder, queue and lease ids, and behind them the requests that reached
    ``later`` meanwhile (as the mutex itself merges them when its take-over ends).

    A run taking over grants nothing (its holder is None), so ``earlier``'s holder stands.
    ``earlier`` None: that run is gone, and so is any holder it had.
    """
    if earlier is None:
        return later.model_copy(update={"taking_over_from": None})
    queue = LockQueue(earlier.queue)
    held = earlier.holder.request_id if earlier.holder is not None else None
    for request in later.queue:
        if request.request_id not in queue and request.request_id != held:
            queue.enqueue(request)
    counters = earlier.counters.model_dump()
    for name, value in later.counters.model_dump().items():
        counters[name] = counters.get(name, 0) + value
    return earlier.model_copy(
        update={
            "queue": queue.as_list(),
            "next_lease_id": max(earlier.next_lease_id, later.next_lease_id),
            "counters": MutexCounters(**counters),
            "abandoned": [*earlier.abandoned, *later.abandoned],
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
