"""The API's memory of delivered signals per link: repeats answered, not signalled; bounded."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest

from callbacks_api.deliveries import (
    UNCONFIRMED_HOLD,
    Delivered,
    Outcome,
    RecentDeliveries,
    digest_of,
)
from callbacks_api.problems import (
    Problem,
    delivery_unknown,
    temporal_not_connected,
    too_large_for_temporal,
)
from workflows.messages import CommandCallback

LATER = datetime.now(UTC) + timedelta(hours=1)
too_large = too_large_for_temporal  # a refusal for good: nothing was recorded


class Sender:
    """Counts signals; the first ``failures`` calls fail as an unreachable server would."""

    def __init__(
        self,
        failures: int = 0,
        pause: float = 0.0,
        error: Callable[[], Exception] = lambda: ConnectionError("server away"),
    ) -> None:
        self.sent = 0
        self.calls = 0
        self.failures = failures
        self.pause = pause
        self.error = error

    async def __call__(self) -> None:
        self.calls += 1
        await asyncio.sleep(self.pause)
        if self.failures:
            self.failures -= 1
            raise self.error()
        self.sent += 1


def delivered(status: str = "succeeded", expires_at: datetime = LATER, **result: int) -> Delivered:
    callback = CommandCallback(command="command-one", status=status, result=result or None)
    return Delivered(digest_of(callback), status, expires_at)


async def test_a_repeat_is_answered_and_a_different_message_refused_without_signalling() -> None:
    memory, send = RecentDeliveries(), Sender()
    first = delivered(a=1, b=2)

    assert await memory.deliver(("process-1", "command-one"), first, send) == (Outcome.SENT, first)
    assert await memory.deliver(("process-1", "command-one"), delivered(b=2, a=1), send) == (
        Outcome.REPEAT,
        first,
    )
    assert await memory.deliver(("process-1", "command-one"), delivered("failed"), send) == (
        Outcome.CONFLICT,
        first,
    )
    assert send.sent == 1
    # Another link is its own.
    assert (await memory.deliver(("process-2", "command-one"), first, send))[0] is Outcome.SENT
    assert send.sent == 2


async def test_a_burst_on_one_link_sends_one_signal() -> None:
    memory, send = RecentDeliveries(), Sender(pause=0.01)

    outcomes = await asyncio.gather(
        *(memory.deliver(("process-1", "command-one"), delivered(), send) for _ in range(50))
    )

    assert send.sent == 1
    assert sorted(outcome for outcome, _ in outcomes).count(Outcome.SENT) == 1


async def test_posts_waiting_on_a_failed_send_get_its_failure_without_sending_in_turn() -> None:
    """A burst on one link during an outage: one send, and every post hears how it went.

    Before, each waiter sent again in turn after the one before it failed, so the last of N
    posts waited N call timeouts (5 s each against an unreachable Temporal).
    """
    memory, send = RecentDeliveries(), Sender(failures=100, pause=0.01)

    results = await asyncio.gather(
        *(memory.deliver(("process-1", "command-one"), delivered(), send) for _ in range(5)),
        return_exceptions=True,
    )

    assert all(isinstance(r, ConnectionError) for r in results), results
    assert send.calls == 1
    assert send.sent == 0


async def test_a_failed_send_is_not_remembered_so_the_next_post_tries_again() -> None:
    memory, send = RecentDeliveries(), Sender(failures=1)
    link = ("process-1", "command-one")

    with pytest.raises(ConnectionError):
        await memory.deliver(link, delivered(), send)

    assert (await memory.deliver(link, delivered(), send))[0] is Outcome.SENT
    assert (await memory.deliver(link, delivered(), send))[0] is Outcome.REPEAT
    assert (send.calls, send.sent) == (2, 1)


async def test_a_different_message_waiting_on_a_send_refused_for_good_is_sent_itself() -> None:
    """The refused send was not this message's, and recorded nothing: this one is tried."""
    memory, send = RecentDeliveries(), Sender(failures=1, pause=0.01, error=too_large)
    link = ("process-1", "command-one")

    first, second = await asyncio.gather(
        memory.deliver(link, delivered("failed"), send),
        memory.deliver(link, delivered("succeeded"), send),
        return_exceptions=True,
    )

    assert isinstance(first, Problem) and first.kind == "too-large"
    assert second == (Outcome.SENT, delivered("succeeded"))
    assert (send.calls, send.sent) == (2, 1)


@pytest.mark.parametrize("uncertain", [delivery_unknown, lambda: ConnectionError("away")])
async def test_after_an_uncertain_send_a_different_message_is_503_until_the_first_is_sure(
    uncertain: Callable[[], Exception],
) -> None:
    """X's send may have landed (the workflow then keeps X): Y must not be told 202.

    Before, Y was sent, answered "delivered" and remembered, and X's retry was then told
    "Y was delivered" (409), while the workflow kept X: both answers wrong.
    """
    memory, send = RecentDeliveries(), Sender(failures=1, error=uncertain)
    link = ("process-1", "command-one")
    x, y = delivered("succeeded"), delivered("failed")

    with pytest.raises((Problem, ConnectionError)):
        await memory.deliver(link, x, send)
    for _ in range(2):  # and again: nothing is sent for Y meanwhile
        with pytest.raises(Problem) as held:
            await memory.deliver(link, y, send)
        assert (held.value.status, held.value.kind) == (503, "earlier-message-unconfirmed")
        assert held.value.headers == {"Retry-After": "5"}
    assert send.calls == 1

    # X's retry is confirmed: X is first, and Y is told so.
    assert await memory.deliver(link, x, send) == (Outcome.SENT, x)
    assert await memory.deliver(link, y, send) == (Outcome.CONFLICT, x)
    assert (send.calls, send.sent) == (2, 1)


async def test_a_send_that_never_left_leaves_nothing_unconfirmed() -> None:
    """No connection to Temporal could be made: X was answered "nothing was recorded", so Y is
    sent, not held back as if X might have landed (before: 503 for Y, two minutes long)."""
    memory, send = RecentDeliveries(), Sender(failures=2, error=temporal_not_connected)
    link = ("process-1", "command-one")
    x, y = delivered("succeeded"), delivered("failed")

    with pytest.raises(Problem) as first:
        await memory.deliver(link, x, send)
    assert "Nothing was recorded" in first.value.detail
    with pytest.raises(Problem) as second:  # Y tried, and met the same outage
        await memory.deliver(link, y, send)
    assert (second.value.kind, second.value.nothing_recorded) == ("temporal-unavailable", True)
    assert await memory.deliver(link, y, send) == (Outcome.SENT, y)
    assert (send.calls, send.sent) == (3, 1)


async def test_an_uncertain_send_holds_a_different_message_back_for_two_minutes_only() -> None:
    """X's sender may have given up after its uncertain send, and X may never have landed.

    Holding Y back until the link expires would then lose the only result the process can
    still get; after ``UNCONFIRMED_HOLD`` Y is sent, and the workflow keeps whichever came first.
    """
    clock = [datetime.now(UTC).timestamp()]
    memory = RecentDeliveries(clock=lambda: clock[0])
    send = Sender(failures=1, error=delivery_unknown)
    link = ("process-1", "command-one")
    x, y = delivered("succeeded"), delivered("failed")

    with pytest.raises(Problem):
        await memory.deliver(link, x, send)
    clock[0] += UNCONFIRMED_HOLD - 1
    with pytest.raises(Problem) as held:
        await memory.deliver(link, y, send)
    assert held.value.kind == "earlier-message-unconfirmed"

    clock[0] += 2
    assert await memory.deliver(link, y, send) == (Outcome.SENT, y)
    assert (send.calls, send.sent) == (2, 1)


async def test_a_waiter_with_another_message_on_an_uncertain_send_is_503_not_sent() -> None:
    memory, send = RecentDeliveries(), Sender(failures=1, pause=0.01, error=delivery_unknown)
    link = ("process-1", "command-one")

    first, second = await asyncio.gather(
        memory.deliver(link, delivered("succeeded"), send),
        memory.deliver(link, delivered("failed"), send),
        return_exceptions=True,
    )

    assert isinstance(first, Problem) and first.kind == "temporal-unavailable"
    assert isinstance(second, Problem) and second.kind == "earlier-message-unconfirmed"
    assert send.calls == 1


async def test_each_waiter_on_a_failed_send_raises_its_own_copy() -> None:
    """One object raised in N tasks grows its traceback N times and holds the sender's frames."""
    memory, send = RecentDeliveries(), Sender(failures=1, pause=0.01, error=delivery_unknown)
    link = ("process-1", "command-one")

    results = await asyncio.gather(
        *(memory.deliver(link, delivered(), send) for _ in range(3)), return_exceptions=True
    )

    assert send.calls == 1
    assert len({id(result) for result in results}) == 3
    for result in results:
        assert isinstance(result, Problem)
        assert (result.status, result.kind, result.detail) == (
            503,
            "temporal-unavailable",
            delivery_unknown().detail,
        )
        assert result.headers == {"Retry-After": "5"}
        assert not result.nothing_recorded


async def test_a_copy_keeps_whether_nothing_was_recorded() -> None:
    memory, send = RecentDeliveries(), Sender(failures=1, pause=0.01, error=temporal_not_connected)
    results = await asyncio.gather(
        *(memory.deliver(("p", "c"), delivered(), send) for _ in range(2)), return_exceptions=True
    )
    assert all(isinstance(r, Problem) and r.nothing_recorded for r in results)


async def test_when_the_send_in_flight_is_cancelled_a_waiter_sends() -> None:
    """Its client went away mid-send: nothing failed, so the post waiting behind it sends."""
    memory, send = RecentDeliveries(), Sender()
    link = ("process-1", "command-one")
    stuck = asyncio.Event()

    async def never_answers() -> None:
        stuck.set()
        await asyncio.Event().wait()

    abandoned = asyncio.create_task(memory.deliver(link, delivered(), never_answers))
    await stuck.wait()
    waiting = asyncio.create_task(memory.deliver(link, delivered(), send))
    await asyncio.sleep(0)  # the waiter is now waiting on the send in flight
    abandoned.cancel()

    assert await waiting == (Outcome.SENT, delivered())
    assert send.sent == 1
    with pytest.raises(asyncio.CancelledError):
        await abandoned


async def test_the_memory_is_bounded_by_capacity_least_recently_used_first() -> None:
    memory, send = RecentDeliveries(capacity=100), Sender()

    for n in range(1000):
        await memory.deliver((f"process-{n}", "command-one"), delivered(), send)
        assert len(memory) <= 100

    assert len(memory) == 100
    assert (await memory.deliver(("process-999", "command-one"), delivered(), send))[
        0
    ] is Outcome.REPEAT
    # The oldest were forgotten: a post on one is sent again (the workflow ignores it).
    assert (await memory.deliver(("process-0", "command-one"), delivered(), send))[
        0
    ] is Outcome.SENT
    assert send.sent == 1001


async def test_a_link_is_forgotten_when_its_token_expires() -> None:
    now = datetime.now(UTC)
    clock = [now.timestamp()]
    memory, send = RecentDeliveries(clock=lambda: clock[0]), Sender()

    await memory.deliver(
        ("process-1", "command-one"), delivered(expires_at=now + timedelta(minutes=5)), send
    )
    await memory.deliver(
        ("process-3", "command-one"), delivered(expires_at=now + timedelta(hours=2)), send
    )
    clock[0] += timedelta(minutes=6).total_seconds()

    assert len(memory) == 1
    assert (await memory.deliver(("process-3", "command-one"), delivered(), send))[
        0
    ] is Outcome.REPEAT
    assert (await memory.deliver(("process-1", "command-one"), delivered(), send))[
        0
    ] is Outcome.SENT


async def test_each_entry_is_small() -> None:
    """What the docs promise: a full memory of the default size stays a few megabytes."""
    import tracemalloc

    capacity = 10_000
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    memory, send = RecentDeliveries(capacity), Sender()
    for n in range(capacity):
        decision = Delivered(
            digest_of(CommandCallback(command="c", status="failed")), "x" * 200, LATER
        )
        await memory.deliver((f"process-{n:036d}", "command-one"), decision, send)
    used = sum(s.size_diff for s in tracemalloc.take_snapshot().compare_to(before, "filename"))
    tracemalloc.stop()
    assert len(memory) == capacity
    assert used / capacity < 1024  # bytes per remembered link, label of 200 characters
