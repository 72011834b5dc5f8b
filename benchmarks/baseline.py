"""Bare Temporal workflows, the yardsticks every figure is divided by.

``python -m benchmarks.baseline ADDRESS TASK_QUEUE`` runs them on a worker of their own, with the
SDK's defaults (the sandbox included), as a separate process like the project's worker:

- ``Echo`` and ``Pinger``: a signal round trip between two workflows (the lock handoff's yardstick:
  the release and the grant are two signal hops as well);
- ``OneActivity``: one activity that does nothing (the critical section's and the mutex
  throughput's yardstick);
- ``Parked``: a workflow waiting for a signal (the memory yardstick);
- ``LockSink``: a stand-in requester for the mutex queue figure; it takes each grant and gives it
  back at once, recording the order of its leases; ``LockHolder`` keeps the lock until stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from datetime import timedelta
from functools import partial

from temporalio import activity, workflow
from temporalio.client import Client
from temporalio.common import RetryPolicy
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Worker

with workflow.unsafe.imports_passed_through():
    from workflows.messages import LockGranted, LockRelease, mutex_workflow_id

PONG = "pong"


@activity.defn
async def nothing() -> None:
    """The cheapest activity there is: what scheduling one costs, and nothing else."""


@workflow.defn
class Echo:
    """Answers every ``ping`` with a ``pong`` to the sender, in the same workflow task."""

    def __init__(self) -> None:
        self._stopped = False

    @workflow.run
    async def run(self) -> None:
        await workflow.wait_condition(lambda: self._stopped)
        await workflow.wait_condition(workflow.all_handlers_finished)

    @workflow.signal
    async def ping(self, sender: str) -> None:
        await workflow.get_external_workflow_handle(sender).signal(PONG)

    @workflow.signal
    def stop(self) -> None:
        self._stopped = True


@workflow.defn
class Pinger:
    """Pings ``echo_id`` ``rounds`` times, one at a time; returns each round trip in ms.

    Both ends are workflow times (the start of the task that sent, of the task that received),
    as the handoff is measured on the process records.
    """

    def __init__(self) -> None:
        self._pongs = 0

    @workflow.run
    async def run(self, echo_id: str, rounds: int) -> list[float]:
        echo = workflow.get_external_workflow_handle(echo_id)
        trips: list[float] = []
        for expected in range(1, rounds + 1):
            sent = workflow.now()
            await echo.signal("ping", workflow.info().workflow_id)
            await workflow.wait_condition(partial(self._answered, expected))
            trips.append((workflow.now() - sent).total_seconds() * 1000)
        return trips

    @workflow.signal
    def pong(self) -> None:
        self._pongs += 1

    def _answered(self, rounds: int) -> bool:
        return self._pongs >= rounds


@workflow.defn
class OneActivity:
    @workflow.run
    async def run(self) -> None:
        await workflow.execute_activity(
            nothing,
            start_to_close_timeout=timedelta(seconds=30),
            retry_policy=RetryPolicy(maximum_attempts=3),
        )


@workflow.defn
class Parked:
    def __init__(self) -> None:
        self._released = False

    @workflow.run
    async def run(self) -> None:
        await workflow.wait_condition(lambda: self._released)

    @workflow.signal
    def release(self) -> None:
        self._released = True

    @workflow.query
    def parked(self) -> bool:
        return True


@workflow.defn
class LockSink:
    """Requester of many lock requests: gives every grant back at once, keeps the lease order."""

    def __init__(self) -> None:
        self._grants: list[tuple[int, str]] = []
        self._stopped = False

    @workflow.run
    async def run(self) -> None:
        await workflow.wait_condition(lambda: self._stopped)
        await workflow.wait_condition(workflow.all_handlers_finished)

    @workflow.signal
    async def lock_granted(self, grant: LockGranted) -> None:
        self._grants.append((grant.lease_id, grant.request_id))
        await workflow.get_external_workflow_handle(mutex_workflow_id(grant.resource)).signal(
            "release", LockRelease(request_id=grant.request_id, lease_id=grant.lease_id)
        )

    @workflow.signal
    def stop(self) -> None:
        self._stopped = True

    @workflow.query
    def grants(self) -> list[tuple[int, str]]:
        return list(self._grants)


@workflow.defn
class LockHolder:
    """Takes the lock and keeps it until stopped: what keeps a queue from draining."""

    def __init__(self) -> None:
        self._grant: LockGranted | None = None
        self._stopped = False

    @workflow.run
    async def run(self) -> None:
        await workflow.wait_condition(lambda: self._stopped)
        if self._grant is not None:
            await workflow.get_external_workflow_handle(
                mutex_workflow_id(self._grant.resource)
            ).signal(
                "release",
                LockRelease(request_id=self._grant.request_id, lease_id=self._grant.lease_id),
            )

    @workflow.signal
    def lock_granted(self, grant: LockGranted) -> None:
        self._grant = grant

    @workflow.signal
    def stop(self) -> None:
        self._stopped = True

    @workflow.query
    def holds(self) -> bool:
        return self._grant is not None


WORKFLOWS = [Echo, Pinger, OneActivity, Parked, LockSink, LockHolder]


async def run(address: str, task_queue: str) -> None:
    client = await Client.connect(address, data_converter=pydantic_data_converter)
    worker = Worker(client, task_queue=task_queue, workflows=WORKFLOWS, activities=[nothing])
    await worker.run()


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run(sys.argv[1], sys.argv[2]))
