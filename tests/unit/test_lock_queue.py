"""The mutex's queue order, as a pure function: priority first, then first come, first served."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from workflows.lock_queue import describe, enqueue, position
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
