"""The order of a mutex's queue: the most urgent priority first, then first come, first served.

Pure: no Temporal, no clock. The mutex asks it where a new request goes; the CLI asks it the
same question to explain a queue. Priorities run from 1 (most urgent) to 5; a request from a
sender older than priorities has none and counts as the default, 3, which is also what
``start`` gives a process unless told otherwise.

The queue is a list kept in this order, so continue-as-new carries the order with it, and the
head is always the next to be granted. Priority orders only the waiting: the holder is never
preempted, whatever arrives.
"""

from __future__ import annotations

from collections.abc import Sequence

from workflows.messages import DEFAULT_LOCK_PRIORITY, HIGHEST_LOCK_PRIORITY, LOWEST_LOCK_PRIORITY
from workflows.messages import LockRequest as LockRequest


def urgency(request: LockRequest) -> int:
    """The priority the queue orders by: a value out of range counts as the nearest bound.

    Messages are lenient (an older or odd sender's signal must not be dropped), so the bound is
    applied here, where the order is decided.
    """
    return min(max(request.priority, HIGHEST_LOCK_PRIORITY), LOWEST_LOCK_PRIORITY)


def enqueue(queue: Sequence[LockRequest], request: LockRequest) -> list[LockRequest]:
    """``queue`` with ``request`` behind every request at least as urgent, ahead of the rest.

    A stable sort, so requests of one priority keep their arrival order. A queue written before
    priorities existed (arrival order, every request at the default) comes out unchanged, with
    the new request placed by its priority.
    """
    return sorted([*queue, request], key=urgency)


def position(queue: Sequence[LockRequest], request_id: str) -> int | None:
    """Where ``request_id`` waits, 1 for the next to be granted; None if it is not queued."""
    return next((i for i, r in enumerate(queue, start=1) if r.request_id == request_id), None)


def describe(priority: int) -> str:
    """A priority as operators read it: "1 (most urgent)", "3 (default)", "5 (least urgent)"."""
    notes = {
        HIGHEST_LOCK_PRIORITY: "most urgent",
        DEFAULT_LOCK_PRIORITY: "default",
        LOWEST_LOCK_PRIORITY: "least urgent",
    }
    note = notes.get(priority)
    return f"{priority} ({note})" if note else str(priority)
