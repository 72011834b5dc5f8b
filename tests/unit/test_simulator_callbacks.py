"""The simulator's callbacks: a key is done only once its result was delivered or refused for good.

Tries that run out (the callbacks API away, or answering 5xx) leave the result owed: a resend of
the key, a redrive or the next start calls back again. Over real HTTP on loopback.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import pytest

from simulator.downstream import Downstream
from simulator.work import DownstreamCommand, Job, WorkBook
from tests.unit.test_simulator import (
    CallbackReceiver,
    command,
    no_sleep,
    post_command,
    settings,
    simulator,
)
from tests.unit.test_simulator_operations import redrive_of


async def listed(http: aiohttp.ClientSession, base: str) -> dict[str, object]:
    async with http.get(f"{base}/commands") as response:
        [record] = (await response.json())["commands"]
    return dict(record)


async def test_a_resend_after_the_callback_gave_up_calls_back_again() -> None:
    receiver = CallbackReceiver(503, 503, 503)  # away for three tries, then back
    async with simulator(receiver, callback_attempts=3) as (downstream, base, callbacks, http):
        body = command(callbacks)
        await post_command(http, base, body)
        await downstream.drain()
        record = await listed(http, base)
        assert (record["callback_attempts"], record["gave_up"], record["done"]) == (3, True, False)

        # The sender's retry (or an operator) sends the key again: the same first answer, and
        # the result owed goes out, with a fresh budget of tries.
        status, answer = await post_command(http, base, body)
        assert (status, answer["duplicate"]) == (200, True)
        await downstream.drain()
        record = await listed(http, base)

    assert [c["status"] for c in receiver.received] == ["succeeded"] * 4
    assert (record["callback_status"], record["gave_up"], record["done"]) == (202, False, True)
    assert record["outcome"] == "succeeded"


async def test_a_restart_calls_back_again_what_gave_up_before(tmp_path: Path) -> None:
    state = tmp_path / "journal.jsonl"
    receiver = CallbackReceiver(503, 503)
    async with simulator(receiver, callback_attempts=2, state_path=state) as (
        downstream,
        base,
        callbacks,
        http,
    ):
        body = command(callbacks)
        await post_command(http, base, body)
        await downstream.drain()
        assert len(receiver.received) == 2
        assert downstream.book.jobs[body["idempotency_key"]].gave_up

        # Started again on the same journal (the receiver is back): the result goes out.
        again = Downstream(settings(callback_attempts=2, state_path=state), http, sleep=no_sleep)
        try:
            assert again.resume() == 1
            await again.drain()
            job = again.book.jobs[body["idempotency_key"]]
        finally:
            await again.close()

    assert len(receiver.received) == 3
    assert (job.callback_status, job.callback_attempts, job.done, job.gave_up) == (
        202,
        1,
        True,
        False,
    )
    # Done now: the next start has nothing to resume.
    book = WorkBook(state)
    assert list(book.unfinished()) == []
    book.close()


async def test_a_redrive_after_the_callback_gave_up_calls_the_new_link() -> None:
    receiver = CallbackReceiver(503)
    async with simulator(receiver, callback_attempts=1) as (downstream, base, callbacks, http):
        body = command(callbacks)
        await post_command(http, base, body)
        await downstream.drain()
        status, answer = await post_command(http, base, redrive_of(body, callbacks))
        assert (status, answer["redrive"]) == (202, 1)
        await downstream.drain()
        record = await listed(http, base)
    assert len(receiver.received) == 2
    assert (record["callback_status"], record["gave_up"], record["done"]) == (202, False, True)


@pytest.mark.parametrize("status", [404, 409, 410])
async def test_a_callback_refused_for_good_is_done(status: int, tmp_path: Path) -> None:
    state = tmp_path / "journal.jsonl"
    receiver = CallbackReceiver(status)
    async with simulator(receiver, state_path=state) as (downstream, base, callbacks, http):
        body = command(callbacks)
        await post_command(http, base, body)
        await downstream.drain()
        record = await listed(http, base)
        assert (record["callback_status"], record["done"], record["gave_up"]) == (
            status,
            True,
            False,
        )
        # A resend is a repeat of a key that is done: nothing is sent again.
        await post_command(http, base, body)
        await downstream.drain()
    assert len(receiver.received) == 1
    book = WorkBook(state)
    assert list(book.unfinished()) == []
    book.close()


async def test_408_and_429_are_retried_as_not_now() -> None:
    receiver = CallbackReceiver(429, 408)
    async with simulator(receiver) as (downstream, base, callbacks, http):
        await post_command(http, base, command(callbacks))
        await downstream.drain()
        record = await listed(http, base)
    assert len(receiver.received) == 3
    assert (record["callback_status"], record["done"]) == (202, True)


def test_a_key_that_gave_up_is_kept_until_long_after_its_deadline(tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl"
    book = WorkBook(path)
    for key, days in (("old:command-two", -8), ("recent:command-two", -6)):
        body = {**command("http://api", key), "deadline": datetime.now(UTC) + timedelta(days=days)}
        book.take(
            Job(
                command=DownstreamCommand.model_validate(body),
                via="http",
                received_at=datetime.now(UTC),
            )
        )
        book.worked(key, {"status": "succeeded"})
        book.attempted(key, None)
        book.gave_up(key)
    book.close()

    again = WorkBook(path)  # opening compacts
    assert [(j.key, j.gave_up) for j in again.unfinished()] == [("recent:command-two", True)]
    again.close()
