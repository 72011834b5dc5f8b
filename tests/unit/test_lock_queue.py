"""The mutex's queue order, as a pure function: priority first, then first come, first served."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from workflows import lock_queue
from workflows.lock_queue import LockQueue, describe, enqueue, position, urgency
from workflows.messages import LockRequest

T0 = datetime(2026, 1, 2, tzinfo=UTC)


def request(name: str, priority: int | None = None) -> LockRequest:
    fields: dict[str, object] = {
        "requester_workflow_id": f"process-{name}",
        "request_id": name,
        "lease_timeout": timedelta(hours=3),
        "requested_at": T0,
    }
    if priority is not None:
        fields["priority"] = priority
    return LockRequest.model_validate(fields)


def queued(*arrivals: LockRequest) -> list[str]:
    queue: list[LockRequest] = []
    for arrival in arrivals:
        queue = enqueue(queue, arrival)
    return [r.request_id for r in queue]


def test_equal_priorities_are_first_come_first_served() -> None:
    assert queued(request("a"), request("b", 3), request("c")) == ["a", "b", "c"]
    assert queued(*(request(f"p{n}", 2) for n in range(6))) == [f"p{n}" for n in range(6)]


def test_a_more_urgent_request_overtakes_the_less_urgent_ones_only() -> None:
    arrivals = [request("a", 3), request("b", 3), request("urgent", 1), request("c", 2)]
    assert queued(*arrivals) == ["urgent", "c", "a", "b"]
    assert queued(request("low", 5), request("a"), request("low2", 5)) == ["a", "low", "low2"]


def test_an_older_sender_waits_at_the_default_and_odd_priorities_count_as_the_bounds() -> None:
    assert request("old").priority == 3
    assert queued(request("a", 4), request("old"), request("b", 2)) == ["b", "old", "a"]
    assert queued(request("a", 1), request("zero", 0), request("nine", 9), request("b", 5)) == [
        "a",
        "zero",  # counts as 1: after a, which came first
        "nine",  # counts as 5: before b, which came later
        "b",
    ]


def test_a_queue_kept_in_arrival_order_before_priorities_is_put_in_order_by_the_next_arrival() -> (
    None
):
    before = [request("x", 4), request("y", 2)]  # appended by a mutex that knew no priorities
    assert [r.request_id for r in enqueue(before, request("z", 3))] == ["y", "z", "x"]


def test_position_and_description() -> None:
    queue = [request("a"), request("b")]
    assert (position(queue, "b"), position(queue, "nope")) == (2, None)
    assert [describe(p) for p in (1, 2, 3, 5)] == [
        "1 (most urgent)",
        "2",
        "3 (default)",
        "5 (least urgent)",
    ]


def test_the_lock_queue_keeps_the_order_the_list_operations_gave() -> None:
    """LockQueue is a faster representation, not a new behaviour: a mutex replaying its history
    must queue exactly as before. Random runs of every operation the mutex makes, against the
    list code it replaced (a whole-list ``enqueue``, ``append``, ``insert(0)``, ``pop(0)``, a
    filter for cancels, a set of ids for duplicates)."""
    for seed in range(300):
        rng = random.Random(seed)
        reference: list[LockRequest] = []
        queue = LockQueue()
        names = [f"r{n}" for n in range(12)]
        for _ in range(60):
            op = rng.choice(["enqueue", "enqueue", "append", "first", "pop", "remove"])
            name = rng.choice(names)
            if op in ("enqueue", "append", "first"):
                arrival = request(name, rng.choice([None, 0, 1, 2, 3, 4, 5, 9]))
                if arrival.request_id in {r.request_id for r in reference}:
                    assert arrival.request_id in queue
                    continue
                assert arrival.request_id not in queue
                if op == "enqueue":
                    reference = enqueue(reference, arrival)
                    queue.enqueue(arrival)
                elif op == "append":
                    reference.append(arrival)
                    queue.append(arrival)
                else:
                    reference.insert(0, arrival)
                    queue.put_first(arrival)
            elif op == "pop" and reference:
                assert queue.pop_next() == reference.pop(0)
            elif op == "remove":
                kept = [r for r in reference if r.request_id != name]
                assert queue.remove(name) == len(reference) - len(kept)
                reference = kept
            assert queue.as_list() == reference, f"seed {seed}"
            assert len(queue) == len(reference)
            assert all(r.request_id in queue for r in reference)


def test_a_queue_carried_out_of_order_is_sorted_by_the_next_arrival_as_before() -> None:
    queue = LockQueue([request("x", 4), request("y", 2)])
    queue.enqueue(request("z", 3))
    assert [r.request_id for r in queue] == ["y", "z", "x"]


def test_a_burst_of_thousands_costs_no_pass_over_the_queue(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each arrival looks at O(log n) requests, counted as calls of the order's key: the list
    code it replaced looked at every queued request (and built a set of their ids) each time."""
    looked_at = 0

    def counted(request: LockRequest) -> int:
        nonlocal looked_at
        looked_at += 1
        return urgency(request)

    monkeypatch.setattr(lock_queue, "urgency", counted)
    arrivals = [request(f"r{n}", 1 if n % 1000 == 0 else 3) for n in range(20_000)]
    queue = LockQueue()
    for arrival in arrivals:
        if arrival.request_id not in queue:
            queue.enqueue(arrival)
    assert len(queue) == 20_000
    assert [r.request_id for r in queue][:3] == ["r0", "r1000", "r2000"]
    assert looked_at <= 20_000 * 20  # log2(20,000) ~ 15 a request; quadratic: ~10,000 each
