"""The API's memory of delivered signals per link: repeats answered, not signalled; bounded."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from callbacks_api.deliveries import Delivered, Outcome, RecentDeliveries, digest_of
from workflows.messages import CommandCallback

LATER = datetime.now(UTC) + timedelta(hours=1)


class Sender:
    """Counts signals; the first ``failures`` calls fail as an unreachable server would."""

    def __init__(self, failures: int = 0, pause: float = 0.0) -> None:
        self.sent = 0
        self.calls = 0
        self.failures = failures
        self.pause = pause

    async def __call__(self) -> None:
        self.calls += 1
        await asyncio.sleep(self.pause)
        if self.failures:
            self.failures -= 1
            raise ConnectionError("server away")
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


async def test_a_different_message_waiting_on_a_failed_send_is_sent_itself() -> None:
    """The failed send was not this message's: it was never tried, so it is."""
    memory, send = RecentDeliveries(), Sender(failures=1, pause=0.01)
    link = ("process-1", "command-one")

    first, second = await asyncio.gather(
        memory.deliver(link, delivered("failed"), send),
        memory.deliver(link, delivered("succeeded"), send),
        return_exceptions=True,
    )

    assert isinstance(first, ConnectionError)
    assert second == (Outcome.SENT, delivered("succeeded"))
    assert (send.calls, send.sent) == (2, 1)


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
