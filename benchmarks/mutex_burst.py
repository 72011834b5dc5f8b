"""How large a burst of lock requests one workflow task of the mutex can take.

``python -m benchmarks.mutex_burst 5000 5000``: 5,000 requests, then 5,000 of them again (as
retried ``request_lock`` activities send them), all while no worker polls, so the mutex's next
workflow task gets every signal at once. A worker then runs that task; the script prints how it
ended (completed, or failed and by what) and when, counted from the worker's start, for each
try, until one completes or ``--tries`` tasks have failed.

Why it matters: the SDK fails a workflow task whose code runs 2 s without yielding (TMPRL1101,
"potential deadlock"), and the retry has the same signals and more, so a burst past what one task
can do stops the queue. Most of that work is the SDK's own (one handler task per signal), not the
queue's: the figures say what a burst costs on this machine, under its load at the time.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import uuid
from datetime import UTC, datetime, timedelta

from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowHandle
from temporalio.worker import Worker

from tests.support.temporal import start_time_skipping
from workflows.messages import LOCK_REQUEST_SIGNAL, LockRequest, MutexInput, mutex_workflow_id
from workflows.mutex import MutexWorkflow

E = EventType


def _request(n: int) -> LockRequest:
    return LockRequest(
        requester_workflow_id=f"requester-{n}",
        request_id=f"{n:06d}-{uuid.uuid4().hex[:8]}",
        lease_timeout=timedelta(hours=1),
        requested_at=datetime.now(UTC),
    )


async def measure(requests: int, duplicates: int, tries: int) -> None:
    async with await start_time_skipping() as env:
        client = env.client
        resource = f"burst-{uuid.uuid4().hex[:8]}"
        task_queue = f"burst-{uuid.uuid4()}"
        burst = [_request(n) for n in range(requests)]
        mutex = await client.start_workflow(
            MutexWorkflow.run,
            MutexInput(resource=resource),
            id=mutex_workflow_id(resource),
            task_queue=task_queue,
            start_signal=LOCK_REQUEST_SIGNAL,
            start_signal_args=[burst[0]],
        )
        limit = asyncio.Semaphore(64)

        async def send(request: LockRequest) -> None:
            async with limit:
                await mutex.signal(MutexWorkflow.request, request)

        await asyncio.gather(*(send(r) for r in burst[1:] + burst[:duplicates]))
        print(f"{requests} requests + {duplicates} duplicates sent; no worker polled yet")
        # No requester workflow exists: the grant's signal fails, which is after the measured task.
        worker = Worker(client, task_queue=task_queue, workflows=[MutexWorkflow])
        polling_since = datetime.now(UTC)
        running = asyncio.create_task(worker.run())
        try:
            await _report(mutex, tries, polling_since)
        finally:
            await asyncio.wait_for(worker.shutdown(), timeout=30)
            await running


async def _report(mutex: WorkflowHandle[MutexWorkflow, None], tries: int, since: datetime) -> None:
    # From the worker's start, not from the task's started event: the server writes that event
    # when the task ends, so their times are alike whatever the task took.
    seen = 0
    deadline = asyncio.get_running_loop().time() + 60 * tries
    while asyncio.get_running_loop().time() < deadline:
        ends: list[tuple[str, float]] = []
        for event in (await mutex.fetch_history()).events:
            took = (event.event_time.ToDatetime(tzinfo=UTC) - since).total_seconds()
            if event.event_type == E.EVENT_TYPE_WORKFLOW_TASK_COMPLETED:
                ends.append(("completed", took))
            elif event.event_type == E.EVENT_TYPE_WORKFLOW_TASK_FAILED:
                message = event.workflow_task_failed_event_attributes.failure.message[:100]
                ends.append((f"failed: {message}", took))
        for outcome, took in ends[seen:]:
            seen += 1
            print(f"task {seen}: {outcome}, {took:.2f} s after the worker started")
            if outcome == "completed" or seen >= tries:
                return
        await asyncio.sleep(0.5)  # polling the history, not waiting on the outcome
    print(f"no task ended within {60 * tries} s")


def main() -> None:
    # The grants that follow the measured task fail (no requester runs) and each logs a warning.
    logging.basicConfig(level=logging.ERROR)
    logging.getLogger("temporalio").setLevel(logging.ERROR)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("requests", type=int)
    parser.add_argument("duplicates", type=int, nargs="?", default=0)
    parser.add_argument("--tries", type=int, default=3)
    args = parser.parse_args()
    asyncio.run(measure(args.requests, args.duplicates, args.tries))


if __name__ == "__main__":
    main()
