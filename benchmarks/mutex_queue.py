"""A mutex queue of thousands of waiters: grant order, and what continue-as-new carries.

A ``LockHolder`` takes the lock of a fresh resource; then ``waiters`` lock requests join the
project's ``MutexWorkflow`` by signal-with-start, as the ``request_lock`` activity sends them.
Their requesters are ``LockSink`` workflows that give each grant back at once. The queue as the
mutex's ``state`` query shows it is the order the mutex received them; once the holder lets go,
every grant must follow that order (lease ids are monotonic), across the continue-as-new runs the
drain causes. The payload continue-as-new would carry with the whole queue is measured against
Temporal's 2 MB limit for one payload (the server warns from 512 KB).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial

from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowHandle
from temporalio.contrib.pydantic import pydantic_data_converter

from benchmarks import processes
from benchmarks.figures import Figure
from benchmarks.stack import Part
from workflows.messages import (
    LockRequest,
    MutexInput,
    MutexOptions,
    MutexState,
    mutex_workflow_id,
)

PAYLOAD_LIMIT_KB = 2048.0
WAITERS_PER_SINK = 250  # keeps each sink's history short


async def _mutex_state(client: Client, resource: str) -> MutexState:
    state: MutexState = await client.get_workflow_handle(mutex_workflow_id(resource)).query(
        "state", result_type=MutexState
    )
    return state


async def _request(
    client: Client, worker: Part, resource: str, requester: str, request_id: str
) -> None:
    """What ``activities.mutex.request_lock`` sends: signal-with-start of the resource's mutex."""
    await client.start_workflow(
        "MutexWorkflow",
        MutexInput(resource=resource),
        id=mutex_workflow_id(resource),
        task_queue=worker.task_queue or "",
        start_signal="request",
        start_signal_args=[
            LockRequest(
                requester_workflow_id=requester,
                request_id=request_id,
                lease_timeout=timedelta(hours=3),
                requested_at=time_now(),
            )
        ],
    )


def time_now() -> datetime:
    """Timezone-aware, as ``workflow.now()`` is in the ``request_lock`` activity's caller."""
    return datetime.now(UTC)


async def _until(check: Callable[[], Awaitable[bool]], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not await check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not happen within {within:.0f} s")
        await asyncio.sleep(0.25)


@dataclass
class QueueResult:
    figures: list[Figure]
    expected: int
    granted_in_order: int


async def hold_lock(
    client: Client, worker: Part, baseline: Part, label: str
) -> tuple[str, WorkflowHandle[object, object]]:
    """A fresh resource whose lock a ``LockHolder`` holds until signalled ``stop``."""
    resource = f"bench-{label}-{uuid.uuid4().hex[:8]}"
    holder = await client.start_workflow(
        "LockHolder", id=f"lock-holder-{uuid.uuid4()}", task_queue=baseline.task_queue or ""
    )
    await _request(client, worker, resource, holder.id, f"holder-{uuid.uuid4()}")

    async def held() -> bool:
        return bool(await holder.query("holds"))

    # A hang guard, not a figure: one grant takes well under a second on a quiet machine, but
    # the quick run's workers may still be warming up at a load of 10-20 (see READY_TIMEOUT).
    await _until(held, 180, "the holder's grant")
    return resource, holder


async def run(
    client: Client, worker: Part, baseline: Part, waiters: int, drain: int
) -> QueueResult:
    """Queue ``waiters``; let the first ``drain`` of them through (all, if ``drain >= waiters``).

    The ``drain``-th request sent (when there is one) comes from a second ``LockHolder``, which
    stops the queue where it arrived, so what is still queued can be compared with what arrived.
    Requests go out 50 at a time, so the mutex may queue them in another order than they were
    sent: its own queue, read once all arrived, is the order every grant must follow.
    """
    resource, holder = await hold_lock(client, worker, baseline, "queue")
    base_queue = baseline.task_queue or ""
    sinks = [
        await client.start_workflow(
            "LockSink", id=f"lock-sink-{uuid.uuid4()}", task_queue=base_queue
        )
        for _ in range(max(1, -(-min(drain, waiters) // WAITERS_PER_SINK)))
    ]
    stopper = await client.start_workflow(
        "LockHolder", id=f"lock-stopper-{uuid.uuid4()}", task_queue=base_queue
    )

    def requester(i: int) -> str:
        return stopper.id if i == drain else sinks[i % len(sinks)].id

    def new_request_id(i: int) -> str:
        return f"{i:05d}-{uuid.uuid4()}"

    began = time.perf_counter()
    await processes.bounded(
        [
            partial(_request, client, worker, resource, requester(i), new_request_id(i))
            for i in range(waiters)
        ],
        processes.START_CONCURRENCY,
    )

    async def all_queued() -> bool:
        return len((await _mutex_state(client, resource)).queue) == waiters

    await _until(all_queued, 300, f"{waiters} requests queued")
    enqueue_seconds = time.perf_counter() - began
    queued = await _mutex_state(client, resource)
    arrival = [r.request_id for r in queued.queue]
    carried = MutexInput(resource=resource, options=MutexOptions(), state=queued)
    payload = pydantic_data_converter.payload_converter.to_payloads([carried])[0]
    payload_kb = payload.ByteSize() / 1024

    began = time.perf_counter()
    await holder.signal("stop")
    # Where the stopper's request arrived: everything before it is let through.
    stops = [n for n, r in enumerate(queued.queue) if r.requester_workflow_id == stopper.id]
    let_through = stops[0] if stops else waiters

    async def drained() -> bool:
        state = await _mutex_state(client, resource)
        if let_through == waiters:
            return state.holder is None and not state.queue
        return state.holder is not None and state.holder.holder_workflow_id == stopper.id

    await _until(drained, 180 + let_through * 0.5, f"{let_through} grants")
    drain_seconds = time.perf_counter() - began
    remaining = [r.request_id for r in (await _mutex_state(client, resource)).queue]

    grants: list[tuple[int, str]] = []
    for sink in sinks:
        grants += [(lease, request) for lease, request in await sink.query("grants")]
        await sink.signal("stop")
    granted = [request_id for _, request_id in sorted(grants)]
    expected_granted = arrival[:let_through]
    expected_remaining = arrival[let_through + 1 :]
    in_order = granted == expected_granted and remaining == expected_remaining
    runs, largest_kb = await _continue_as_new_runs(client, resource)
    rest = (
        f"; the other {len(remaining)} still queued "
        f"{'in arrival order' if remaining == expected_remaining else 'OUT OF ORDER'}"
        if let_through < waiters
        else ""
    )
    figures = [
        Figure(
            "mutex_queue_grant_order_kept",
            1.0 if in_order else 0.0,
            None,
            "all in order",
            ">= 1",
            n=waiters,
            note=f"{len(granted)} of {waiters} let through, "
            f"{'in' if granted == expected_granted else 'NOT in'} the order queued{rest}; "
            f"queued in {enqueue_seconds:.1f} s, {len(granted)} handoffs in "
            f"{drain_seconds:.1f} s ({len(granted) / drain_seconds:.1f}/s); the mutex ran as "
            f"{runs} run(s) (continue-as-new)",
        ),
        Figure(
            "mutex_queue_can_payload_kb",
            payload_kb,
            PAYLOAD_LIMIT_KB,
            "kB",
            "<= 0.25",
            n=waiters,
            note=f"continue-as-new input with all {waiters} waiters queued "
            f"({payload.ByteSize() / waiters:.0f} B each), against the 2 MB payload limit "
            f"(the server warns from 512 KB); largest carried in this run: {largest_kb:.0f} kB",
        ),
    ]
    return QueueResult(figures, waiters, waiters if in_order else 0)


async def _continue_as_new_runs(client: Client, resource: str) -> tuple[int, float]:
    """How many runs the mutex had, and the largest continue-as-new input among them (kB)."""
    runs = 0
    largest = 0.0
    async for execution in client.list_workflows(f"WorkflowId = '{mutex_workflow_id(resource)}'"):
        runs += 1
        history = await client.get_workflow_handle(
            execution.id, run_id=execution.run_id
        ).fetch_history()
        last = history.events[-1]
        if last.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW:
            size = last.workflow_execution_continued_as_new_event_attributes.input.ByteSize()
            largest = max(largest, size / 1024)
    return runs, largest
