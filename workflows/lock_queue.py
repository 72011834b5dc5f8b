"""The order of a mutex's queue: the most urgent priority first, then first come, first served.

Pure: no Temporal, no clock. The mutex asks it where a new request goes; the CLI asks it the
same question to explain a queue. Priorities run from 1 (most urgent) to 5; a request from a
sender older than priorities has none and counts as the default, 3, which is also what
``start`` gives a process unless told otherwise.

The queue is a list kept in this order, so continue-as-new carries the order with it, and the
head is always the next to be granted. Priority orders only the waiting: the holder is never
preempted, whatever arrives. The mutex keeps it in a ``LockQueue``, which answers "is this
request queued?" and "where does this one go?" without a pass over the whole queue.
"""

from __future__ import annotations

import bisect
import itertools
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence

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


class LockQueue:
    """The waiting requests in grant order, with their ids at hand.

    Why not a bare list: a burst of requests can reach the mutex in one workflow task (2,000 did
    in a benchmark), and the task must finish within the SDK's deadlock timeout (2 s, TMPRL1101);
    a task that runs past it fails and is retried with even more signals, so the queue stops for
    good. Scanning the queue for every request (its ids, then a sort) made that burst quadratic.
    Here an id is looked up in a counter kept beside the list, and a request is placed by a binary
    search on urgency (the list insert moves pointers in C): no Python loop over the queue.

    The order is exactly what ``enqueue`` and ``list.append`` gave before, so a mutex replaying
    its history takes the same decisions: when the list is in priority order (always, once a
    request was placed by priority), inserting after the last request at least as urgent is what
    the stable sort does; when it is not (a queue appended in arrival order before priorities,
    or a lease moved back to the head), the next ``enqueue`` sorts the whole list, as before.
    """

    def __init__(self, requests: Iterable[LockRequest] = ()) -> None:
        self._requests = list(requests)
        self._ids = Counter(r.request_id for r in self._requests)
        self._in_order = all(
            urgency(a) <= urgency(b) for a, b in itertools.pairwise(self._requests)
        )

    def __len__(self) -> int:
        return len(self._requests)

    def __iter__(self) -> Iterator[LockRequest]:
        return iter(self._requests)

    def __contains__(self, request_id: object) -> bool:
        """Whether a request with this id waits (O(1))."""
        return request_id in self._ids

    def as_list(self) -> list[LockRequest]:
        return list(self._requests)

    def enqueue(self, request: LockRequest) -> None:
        """Place ``request`` behind every request at least as urgent (see ``enqueue``)."""
        if not self._in_order:
            self._requests = enqueue(self._requests, request)
            self._in_order = True
        else:
            at = bisect.bisect_right(self._requests, urgency(request), key=urgency)
            self._requests.insert(at, request)
        self._ids[request.request_id] += 1

    def append(self, request: LockRequest) -> None:
        """Arrival order alone, as the mutex queued before priorities existed."""
        if self._requests and urgency(self._requests[-1]) > urgency(request):
            self._in_order = False
        self._requests.append(request)
        self._ids[request.request_id] += 1

    def put_first(self, request: LockRequest) -> None:
        """Ahead of everyone, whatever its priority (a lease moved to its holder's new run)."""
        if self._requests and urgency(request) > urgency(self._requests[0]):
            self._in_order = False
        self._requests.insert(0, request)
        self._ids[request.request_id] += 1

    def pop_next(self) -> LockRequest:
        """The head: the next to be granted."""
        request = self._requests.pop(0)
        self._forget(request.request_id)
        return request

    def remove(self, request_id: str) -> int:
        """Drop every request with this id; how many there were (0 costs nothing)."""
        if request_id not in self._ids:
            return 0
        before = len(self._requests)
        self._requests = [r for r in self._requests if r.request_id != request_id]
        del self._ids[request_id]
        return before - len(self._requests)

    def _forget(self, request_id: str) -> None:
        self._ids[request_id] -= 1
        if self._ids[request_id] <= 0:
            del self._ids[request_id]


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
