"""The simulator as a downstream system operators can lean on: it heartbeats while it works, and
answers a redrive (the same idempotency key sent again with a higher ``redrive``) without
redoing work that succeeded. Over real HTTP on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from pydantic import ValidationError

from simulator.downstream import Downstream, DownstreamCommand, create_app
from simulator.settings import SimulatorSettings
from simulator.work import WorkBook
from tests.support.http import serving
from tests.support.waiting import eventually
from tests.unit.test_simulator import command, no_sleep, post_command, settings


class DownstreamPeer:
    """Stands in for the callbacks API: records callbacks and heartbeats, per token."""

    def __init__(
        self,
        heartbeat_status: int = 202,
        statuses: dict[str, int] | None = None,
        holds: dict[str, asyncio.Event] | None = None,
    ) -> None:
        self.callbacks: list[tuple[str, dict[str, Any]]] = []
        self.heartbeats: list[tuple[str, dict[str, Any]]] = []
        self.heartbeat_status = heartbeat_status
        # Per token: the status a callback gets (else 202), and an event its answer waits for.
        self.statuses = statuses or {}
        self.holds = holds or {}

    async def callback(self, request: web.Request) -> web.Response:
        token = request.match_info["token"]
        self.callbacks.append((token, await request.json()))
        if token in self.holds:
            await self.holds[token].wait()
        return web.json_response({"status": "seen"}, status=self.statuses.get(token, 202))

    async def heartbeat(self, request: web.Request) -> web.Response:
        self.heartbeats.append((request.match_info["token"], await request.json()))
        return web.json_response({"status": "seen"}, status=self.heartbeat_status)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/callbacks/{token}", self.callback)
        app.router.add_post("/callbacks/{token}/heartbeat", self.heartbeat)
        return app


@asynccontextmanager
async def simulator(
    peer: DownstreamPeer, sleep: Any = no_sleep, state_path: Path | None = None, **overrides: Any
) -> AsyncIterator[tuple[Downstream, str, str, aiohttp.ClientSession]]:
    async with aiohttp.ClientSession() as http, serving(peer.app()) as callbacks:
        values = {"state_path": state_path, **overrides}
        downstream = Downstream(settings(**values), http, sleep=sleep)
        async with serving(create_app(downstream, "/commands/two")) as base:
            try:
                yield downstream, base, callbacks, http
            finally:
                await downstream.close()


def redrive_of(body: dict[str, Any], callbacks: str, redrive: int = 1) -> dict[str, Any]:
    """The same command, sent again by a redriven process: same key, a new callback link."""
    return {
        **body,
        "process_id": f"process-1-redrive-{redrive}",
        "callback_url": f"{callbacks}/callbacks/token-redrive-{redrive}",
        "redrive": redrive,
    }


async def test_it_heartbeats_with_its_progress_while_it_works() -> None:
    peer = DownstreamPeer()
    pauses: list[float] = []
    started: list[Downstream] = []
    beats = 4

    async def sleep(seconds: float) -> None:
        # A minute of work, ended after four pauses: each pause is a heartbeat's interval, so
        # the count does not depend on how fast a loaded machine runs (real 0.3 s of work once
        # fitted a single heartbeat at load 10). Ending it means the job was taken a minute ago.
        pauses.append(seconds)
        await asyncio.sleep(0)
        if len(pauses) == beats:
            [job] = started[0].book.jobs.values()
            job.received_at -= timedelta(seconds=job.delay)

    overrides: dict[str, Any] = {"min_delay": 60, "max_delay": 60, "heartbeat_interval": 0.05}
    async with simulator(peer, sleep, **overrides) as (downstream, base, callbacks, http):
        started.append(downstream)
        body = command(callbacks)
        await post_command(http, base, body)
        await downstream.drain()
        [record] = (await (await http.get(f"{base}/commands")).json())["commands"]

    assert len(peer.callbacks) == 1
    # The first as the work starts, one after each pause but the last (then the work is due).
    assert len(peer.heartbeats) == beats
    token = body["callback_url"].rsplit("/", 1)[-1]
    assert {t for t, _ in peer.heartbeats} == {token}
    percents = [beat["progress"]["percent"] for _, beat in peer.heartbeats]
    assert percents == sorted(percents) and percents[0] < 50
    assert all(pause <= 0.05 for pause in pauses)
    assert record["heartbeats"] == len(peer.heartbeats)


async def test_a_refused_heartbeat_stops_the_heartbeats_not_the_work() -> None:
    peer = DownstreamPeer(heartbeat_status=409)
    overrides: dict[str, Any] = {"min_delay": 0.2, "max_delay": 0.2, "heartbeat_interval": 0.02}
    async with simulator(peer, **overrides) as (downstream, base, callbacks, http):
        await post_command(http, base, command(callbacks))
        await downstream.drain()
    assert len(peer.heartbeats) == 1
    assert [c["status"] for _, c in peer.callbacks] == ["succeeded"]


async def test_a_redrive_runs_failed_work_again_under_the_same_key() -> None:
    peer = DownstreamPeer()
    async with simulator(peer, fail_once="command-two") as (downstream, base, callbacks, http):
        body = command(callbacks)
        await post_command(http, base, body)
        await downstream.drain()
        # A plain resend is still a repeat: the first answer, nothing run again.
        status, answer = await post_command(http, base, body)
        assert (status, answer["duplicate"]) == (200, True)
        await downstream.drain()
        assert [c["status"] for _, c in peer.callbacks] == ["failed"]
        assert "SIMULATOR_FAIL_ONCE=command-two" in peer.callbacks[0][1]["error"]

        status, answer = await post_command(http, base, redrive_of(body, callbacks))
        assert (status, answer["redrive"]) == (202, 1)
        await downstream.drain()
        [record] = (await (await http.get(f"{base}/commands")).json())["commands"]

    assert [(t, c["status"]) for t, c in peer.callbacks] == [
        (body["callback_url"].rsplit("/", 1)[-1], "failed"),
        ("token-redrive-1", "succeeded"),
    ]
    assert (record["redrives"], record["outcome"], record["process_id"]) == (
        1,
        "succeeded",
        "process-1-redrive-1",
    )


async def test_a_failure_resumed_after_a_restart_names_the_setting_it_was_planned_under(
    tmp_path: Path,
) -> None:
    # Taken under SIMULATOR_FAIL_ONCE, stopped before the work ends, started again without it:
    # the plan (fail) is kept, and so is its reason; today's settings say a rate of 0.
    state = tmp_path / "journal.jsonl"
    peer = DownstreamPeer()
    never = asyncio.Event()

    async def forever(_: float) -> None:
        await never.wait()

    async with aiohttp.ClientSession() as http, serving(peer.app()) as callbacks:
        planned = settings(state_path=state, fail_once="command-two", min_delay=60, max_delay=60)
        first = Downstream(planned, http, sleep=forever)
        async with serving(create_app(first, "/commands/two")) as base:
            await post_command(http, base, command(callbacks))
        await first.close()  # the stop: the job stays in the journal, unfinished

        again = Downstream(settings(state_path=state), http, sleep=no_sleep)
        try:
            assert again.resume() == 1
            await again.drain()
        finally:
            await again.close()

    [(_, callback)] = peer.callbacks
    assert callback["status"] == "failed"
    assert "SIMULATOR_FAIL_ONCE=command-two" in callback["error"], callback


async def test_a_redrive_of_work_that_succeeded_delivers_the_result_without_redoing_it() -> None:
    peer = DownstreamPeer()
    async with simulator(peer) as (downstream, base, callbacks, http):
        body = command(callbacks)
        await post_command(http, base, body)
        await downstream.drain()
        await post_command(http, base, redrive_of(body, callbacks))
        await downstream.drain()
        # The same redrive again (an activity retry) is a plain repeat.
        status, answer = await post_command(http, base, redrive_of(body, callbacks))
        assert (status, answer["duplicate"]) == (200, True)
        await downstream.drain()

    [(_, first), (token, again)] = peer.callbacks
    assert token == "token-redrive-1"
    assert again == first  # the same result, executed once
    assert again["result"]["executed_at"] == first["result"]["executed_at"]


async def test_a_redrive_of_work_under_way_reports_to_the_new_callback(tmp_path: Path) -> None:
    peer = DownstreamPeer()
    gate = asyncio.Event()

    async def held(seconds: float) -> None:  # the work waits for the test
        await gate.wait()

    state = tmp_path / "journal.jsonl"
    overrides: dict[str, Any] = {"min_delay": 5, "max_delay": 5}
    async with simulator(peer, held, state, **overrides) as (downstream, base, callbacks, http):
        body = command(callbacks)
        await post_command(http, base, body)
        await post_command(http, base, redrive_of(body, callbacks))
        gate.set()
        await downstream.drain()
    assert [t for t, _ in peer.callbacks] == ["token-redrive-1"]
    # The journal holds the redrive: a restart knows the key, its redrive and where it reported.
    book = WorkBook(state)
    job = book.jobs[body["idempotency_key"]]
    assert (job.redrives, job.command.redrive, job.done) == (1, 1, True)
    book.close()


def token_of(body: dict[str, Any]) -> str:
    return str(body["callback_url"]).rsplit("/", 1)[-1]


async def test_a_redrive_between_two_tries_sends_the_result_to_the_new_callback() -> None:
    """The old callback fails (the redriven run's API refuses or is away); between two tries
    the redrive arrives. The result must go to the new callback, the one its new run waits on."""
    gate = asyncio.Event()

    async def paused(seconds: float) -> None:  # the pause between two tries waits for the test
        await gate.wait()

    body = command("")
    peer = DownstreamPeer(statuses={token_of(body): 503})
    async with simulator(peer, paused) as (downstream, base, callbacks, http):
        body = command(callbacks)
        await post_command(http, base, body)
        await eventually(lambda: len(peer.callbacks) == 1, "the first try at the old callback")
        status, answer = await post_command(http, base, redrive_of(body, callbacks))
        assert (status, answer["redrive"]) == (202, 1)
        gate.set()
        await downstream.drain()
        [record] = (await (await http.get(f"{base}/commands")).json())["commands"]

    assert [t for t, _ in peer.callbacks] == [token_of(body), "token-redrive-1"]
    assert peer.callbacks[1][1]["status"] == "succeeded"
    assert (record["callback_status"], record["redrives"]) == (202, 1)


async def test_a_redrive_while_the_old_callback_is_being_posted_sends_the_result_again() -> None:
    """The redrive lands while the POST to the old callback is on the wire: whatever the old
    callback answers, the new run's callback gets the result too."""
    body = command("")
    answer_old = asyncio.Event()
    peer = DownstreamPeer(holds={token_of(body): answer_old})
    async with simulator(peer) as (downstream, base, callbacks, http):
        body = command(callbacks)
        await post_command(http, base, body)
        await eventually(lambda: len(peer.callbacks) == 1, "the POST to the old callback")
        await post_command(http, base, redrive_of(body, callbacks))
        answer_old.set()
        await downstream.drain()

    assert [t for t, _ in peer.callbacks] == [token_of(body), "token-redrive-1"]
    first, again = (c for _, c in peer.callbacks)
    assert again == first  # the same result, not run again


async def test_a_command_can_be_given_its_own_delay(monkeypatch: pytest.MonkeyPatch) -> None:
    # As an operator sets it: command two slow, the rest at the common delay.
    monkeypatch.setenv("SIMULATOR_MIN_DELAY", "0.1")
    monkeypatch.setenv("SIMULATOR_MAX_DELAY", "0.2")
    monkeypatch.setenv("SIMULATOR_COMMAND_DELAYS", '{"command-two": [40, 40]}')
    read = SimulatorSettings()
    assert read.delays("command-two") == (40, 40)
    assert read.delays("command-one") == (0.1, 0.2)
    async with aiohttp.ClientSession() as http:
        downstream = Downstream(read, http, sleep=no_sleep)
        try:
            taken = downstream.take(DownstreamCommand.model_validate(command("http://api")), "http")
            other = command("http://api", key="process-1:command-one")
            taken_one = downstream.take(DownstreamCommand.model_validate(other), "sqs")
        finally:
            await downstream.close()
    assert taken.job is not None and taken.job.delay == 40
    assert taken_one.job is not None and 0.1 <= taken_one.job.delay <= 0.2


@pytest.mark.parametrize("delays", ['{"command-two": [5, 4]}', '{"command-two": [-1, 4]}'])
def test_a_command_delay_out_of_order_is_refused(
    monkeypatch: pytest.MonkeyPatch, delays: str
) -> None:
    monkeypatch.setenv("SIMULATOR_COMMAND_DELAYS", delays)
    with pytest.raises(ValidationError, match="command-two's delays must be"):
        SimulatorSettings()


async def test_a_command_picked_up_when_already_due_still_heartbeats_once() -> None:
    # No delay at all: the job is due as it is received. A system that heartbeats says it
    # started even so (tracing relies on it: each command's heartbeat continues its trace).
    peer = DownstreamPeer()
    overrides: dict[str, Any] = {"min_delay": 0, "max_delay": 0, "heartbeat_interval": 1}
    async with simulator(peer, **overrides) as (downstream, base, callbacks, http):
        await post_command(http, base, command(callbacks))
        await downstream.drain()
    assert len(peer.heartbeats) == 1
    assert [c["status"] for _, c in peer.callbacks] == ["succeeded"]
