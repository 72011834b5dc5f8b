"""``Deadlines``: waits share timers, never cancel them, and never end before their deadline.

On the time-skipping server, with workflow time: what each wait returned and when (workflow
time, deterministic), and the timers the history shows.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta

from temporalio import workflow
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowHandle
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from workflows.waiting import Deadlines

E = EventType


@workflow.defn(sandboxed=False)
class Waits:
    """Waits in the order given, each for a condition only the ``done`` signal makes true, with
    its deadline ``hours`` after the start; returns (held, hours waited) per wait."""

    def __init__(self) -> None:
        self._done = False

    @workflow.signal
    def done(self) -> None:
        self._done = True

    @workflow.run
    async def run(self, hours: list[float]) -> list[tuple[bool, float]]:
        deadlines = Deadlines()
        start = workflow.now()

        async def wait(after: float) -> tuple[bool, float]:
            held = await deadlines.wait_until(lambda: self._done, start + timedelta(hours=after))
            return held, (workflow.now() - start) / timedelta(hours=1)

        waits = []
        for after in hours:
            waits.append(asyncio.ensure_future(wait(after)))
            await asyncio.sleep(0)  # each wait takes its timer before the next one starts
        return list(await asyncio.gather(*waits))


async def _run(
    env: WorkflowEnvironment, hours: list[float], signal_after: timedelta | None = None
) -> tuple[list[tuple[bool, float]], list[EventType.ValueType]]:
    task_queue = f"tq-waiting-{uuid.uuid4()}"
    async with Worker(
        env.client,
        task_queue=task_queue,
        workflows=[Waits],
        workflow_runner=UnsandboxedWorkflowRunner(),
    ):
        handle: WorkflowHandle[Waits, list[tuple[bool, float]]] = await env.client.start_workflow(
            Waits.run, hours, id=f"waits-{uuid.uuid4()}", task_queue=task_queue
        )
        if signal_after is not None:
            await env.sleep(signal_after)
            await handle.signal(Waits.done)
        result = await handle.result()
        events = [e.event_type async for e in handle.fetch_history_events()]
    return [(bool(held), float(waited)) for held, waited in result], events


async def test_two_waits_share_one_timer_and_cancel_none(time_env: WorkflowEnvironment) -> None:
    # The second wait's deadline comes after the first's: the first wait's timer guards both.
    results, events = await _run(time_env, [1.0, 2.0], signal_after=timedelta(minutes=10))
    assert [held for held, _ in results] == [True, True]
    assert events.count(E.EVENT_TYPE_TIMER_STARTED) == 1
    assert events.count(E.EVENT_TYPE_TIMER_CANCELED) == 0


async def test_a_wait_never_ends_before_its_deadline(time_env: WorkflowEnvironment) -> None:
    # The 1 h timer fires first and wakes the 2 h wait too: it starts its own and goes on.
    results, events = await _run(time_env, [1.0, 2.0])
    (first_held, first_at), (second_held, second_at) = results
    assert not first_held and not second_held
    assert first_at >= 1.0
    assert second_at >= 2.0
    assert events.count(E.EVENT_TYPE_TIMER_STARTED) == 2


async def test_an_earlier_deadline_gets_a_timer_of_its_own(time_env: WorkflowEnvironment) -> None:
    # A running timer that fires after a deadline cannot guard it: the wait would end late.
    results, events = await _run(time_env, [2.0, 1.0])
    (first_held, first_at), (second_held, second_at) = results
    assert not first_held and not second_held
    assert 1.0 <= second_at < 2.0
    assert first_at >= 2.0
    assert events.count(E.EVENT_TYPE_TIMER_STARTED) == 2
