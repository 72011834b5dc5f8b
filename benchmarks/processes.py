"""Driving ProcessWorkflows as their users do: start them, wait until they are parked, decide."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import TypeVar

from temporalio.client import Client, WorkflowExecutionStatus, WorkflowHandle
from temporalio.service import RPCError

from workflows.messages import (
    PROCESS_ID_PREFIX,
    ApprovalDecision,
    ProcessInput,
    ProcessOptions,
    ProcessState,
)

T = TypeVar("T")
START_CONCURRENCY = 50  # starts and checks in flight at once (set-up, never a measurement)
APPROVE = ApprovalDecision(approved=True, decided_by="bench")
REJECT = ApprovalDecision(approved=False, decided_by="bench", comment="benchmark clean-up")


async def bounded(calls: Sequence[Callable[[], Awaitable[T]]], limit: int) -> list[T]:
    """Every call, at most ``limit`` in flight."""
    semaphore = asyncio.Semaphore(limit)

    async def one(call: Callable[[], Awaitable[T]]) -> T:
        async with semaphore:
            return await call()

    return await asyncio.gather(*(one(call) for call in calls))


async def start(
    client: Client, task_queue: str, count: int, options: ProcessOptions, label: str
) -> list[str]:
    """Start ``count`` processes (not waiting for anything); their ids."""
    ids = [f"{PROCESS_ID_PREFIX}{uuid.uuid4()}" for _ in range(count)]
    process_input = ProcessInput(requested_by="bench", description=label, options=options)
    starts = [
        partial(
            client.start_workflow,
            "ProcessWorkflow",
            process_input,
            id=pid,
            task_queue=task_queue,
        )
        for pid in ids
    ]
    await bounded(starts, START_CONCURRENCY)
    return ids


async def state(client: Client, process_id: str) -> ProcessState:
    result: ProcessState = await client.get_workflow_handle(process_id).query(
        "state", result_type=ProcessState
    )
    return result


async def idle(client: Client, workflow_id: str) -> bool:
    """True once the workflow waits for something from outside: nothing pending on the server.

    Read with ``describe`` (server-side only): no query, so no worker is asked and no evicted
    run is replayed just to find out.
    """
    try:
        description = await client.get_workflow_handle(workflow_id).describe()
    except RPCError:
        return False
    raw = description.raw_description
    return (
        description.status == WorkflowExecutionStatus.RUNNING
        and description.history_length > 3
        and not raw.pending_activities
        and not raw.HasField("pending_workflow_task")
    )


async def wait_idle(client: Client, ids: Sequence[str], within: float = 900) -> None:
    """Until every workflow in ``ids`` is idle (see ``idle``)."""
    waiting = list(ids)
    deadline = time.monotonic() + within
    while waiting:
        done = await bounded([partial(idle, client, wid) for wid in waiting], START_CONCURRENCY)
        waiting = [wid for wid, ok in zip(waiting, done, strict=True) if not ok]
        if not waiting:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{len(waiting)} workflows still busy after {within:.0f} s")
        # Each round describes every workflow still waiting: gently, when there are many.
        await asyncio.sleep(0.25 if len(waiting) <= START_CONCURRENCY else 1.0)


async def park(
    client: Client, task_queue: str, count: int, options: ProcessOptions, label: str
) -> list[str]:
    """Start ``count`` processes and return once every one waits for its approval."""
    ids = await start(client, task_queue, count, options, label)
    await wait_idle(client, ids)
    return ids


async def decide(client: Client, process_id: str, decision: ApprovalDecision) -> None:
    await client.get_workflow_handle(process_id).signal("approval_decision", decision)


def handle(client: Client, process_id: str) -> WorkflowHandle[object, object]:
    return client.get_workflow_handle(process_id)
