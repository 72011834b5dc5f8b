"""Heartbeats around an in-flight request: how a cancel reaches a send, and why it never half-sends.

A process gives its lock back only once every send it started has resolved (DESIGN.md, 6): when
its completion policy settles early, or it is cancelled, it cancels the sends still running and
waits for each (``ActivityCancellationType.WAIT_CANCELLATION_COMPLETED``). Temporal delivers a
cancel to an activity only in the answer to a heartbeat, so a send heartbeats while its request
is in flight; without heartbeats the workflow would wait the whole attempt timeout.

What a cancel must not do is cut the request itself short: a POST or an SQS send interrupted
half-way may or may not have reached the downstream system, and the process would release the
lock not knowing. So on cancel the request runs to its end (it is bounded by its own timeouts),
and only then does the activity report the cancel. The lock is released after the effect, never
during it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from datetime import timedelta
from typing import TypeVar

from temporalio import activity

T = TypeVar("T")

# Without a heartbeat timeout (sends of processes started before sends heartbeated) nobody waits
# on the heartbeats; they still carry a cancel, so send one now and then.
DEFAULT_INTERVAL = timedelta(seconds=10)


def heartbeat_interval() -> timedelta:
    """A third of the heartbeat timeout: two heartbeats may be lost before the server gives up."""
    timeout = activity.info().heartbeat_timeout
    return timeout / 3 if timeout else DEFAULT_INTERVAL


async def while_heartbeating(request: Awaitable[T]) -> T:
    """Await ``request``, heartbeating meanwhile; a cancel waits for it, then is raised.

    The request's own result or error is returned or raised when no cancel came. After a cancel
    the request's outcome is only logged: the caller asked to stop, and a cancelled activity has
    no result to give.
    """
    in_flight = asyncio.ensure_future(request)
    interval = heartbeat_interval().total_seconds()
    cancel: asyncio.CancelledError | None = None
    while not in_flight.done():
        activity.heartbeat()
        try:
            # asyncio.wait never cancels what it waits on: a cancel lands here, not in the request.
            await asyncio.wait({in_flight}, timeout=interval)
        except asyncio.CancelledError as err:
            if cancel is None:
                activity.logger.info("cancel requested: letting the in-flight request finish")
            cancel = err
    if cancel is None:
        return in_flight.result()
    if in_flight.exception() is not None:
        activity.logger.info("request ended in %r before the cancel", in_flight.exception())
    else:
        activity.logger.info("request completed before the cancel; reporting the cancel")
    raise cancel
