"""Waiting in workflow code for a condition until a deadline, with as few timers as will do.

``workflow.wait_condition(..., timeout=...)`` starts a timer for each wait and cancels it when
the condition comes first: two events (started, cancelled) for every wait that ends early, and
on the happy path every wait does (the approval, the lock, each command's callback). Their
deadlines are far off (an hour or more), so a timer still running from an earlier wait can often
stand guard for a later deadline too.

So from the patch ``process-local-writes`` on, a process waits with one ``Deadlines``: a wait
uses a running timer that fires at or before its deadline (the latest such), or starts one for
its deadline when every running timer fires after it; timers are never cancelled. The deadlines
do not always come in order: the callbacks' (1 h after the sends) comes before the lock's (100
min after the request) when the lock is granted at once. So the happy path has one or two
timers, not one: ``tests/histories/v4/process_completed.json`` has two (the lock wait's, and the
callbacks' that the lock's timer, firing later, could not guard; the approval came before its
wait needed one). The price, when a process outlives a deadline it no longer waits for: that
timer fires and wakes the workflow for a task that finds nothing due, and a wait still going
then starts the next timer (one event and a workflow task more than a cancel would have cost;
an hour into a process).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime, timedelta

from temporalio import workflow


class Deadlines:
    """One process's waits, sharing timers that nobody cancels. Workflow state: deterministic."""

    def __init__(self) -> None:
        # (when it fires, the sleeping task) of each timer started and not yet fired.
        self._timers: list[tuple[datetime, asyncio.Task[None]]] = []

    async def wait_until(self, condition: Callable[[], bool], deadline: datetime) -> bool:
        """Wait for ``condition`` until ``deadline``; False once the deadline has passed."""
        while not condition():
            fires_at, timer = self._timer_by(deadline)
            if timer is None:
                return False
            await workflow.wait_condition(_either(condition, timer.done))
            if timer.done() and fires_at >= deadline and not condition():
                return False  # this deadline's own timer fired
        return True

    def _timer_by(self, deadline: datetime) -> tuple[datetime, asyncio.Task[None] | None]:
        """The running timer that fires last but no later than ``deadline``, else a new one
        for ``deadline``; None when the deadline has passed."""
        self._timers = [(at, t) for at, t in self._timers if not t.done()]
        remaining = deadline - workflow.now()
        if remaining <= timedelta(0):
            return deadline, None
        guards = [(at, t) for at, t in self._timers if at <= deadline]
        if guards:
            return max(guards, key=lambda guard: guard[0])
        timer = asyncio.ensure_future(asyncio.sleep(remaining.total_seconds()))
        self._timers.append((deadline, timer))
        return deadline, timer


def _either(first: Callable[[], bool], second: Callable[[], bool]) -> Callable[[], bool]:
    return lambda: first() or second()


async def wait_until(condition: Callable[[], bool], deadline: datetime) -> bool:
    """Wait for ``condition`` until ``deadline`` with a timer of its own, cancelled when the
    condition comes first (processes started before ``process-local-writes``). False on
    timeout (never an untyped error)."""
    if condition():
        return True
    remaining = deadline - workflow.now()
    if remaining <= timedelta(0):
        return False
    try:
        await workflow.wait_condition(condition, timeout=remaining)
    except TimeoutError:
        return bool(condition())
    return True
