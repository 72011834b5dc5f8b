"""The downstream simulator as ``make run`` runs it: a real process, a real queue, real HTTP.

It is the model of a well-behaved downstream system, so these are its promises seen from
outside: it refuses a command whose lease is below the highest seen for its resource (409 over
HTTP; a failed callback over SQS), answers a resend by its idempotency key before looking at the
fence, refuses a malformed fence with 400, and finishes the work it took even across kill -9.
"""

from __future__ import annotations

import json
import os
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import boto3
import pytest
from aiohttp import web

from local_stack.children import Child
from tests.support.http import serving
from tests.support.moto_server import (
    MotoServer,
    free_loopback_port,
    moto_env,
    running_moto_server,
)
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
OWN_PREFIXES = ("APPROVAL_", "SIMULATOR_", "AWS_")


@dataclass
class CallbackReceiver:
    """Stands in for the callbacks API: every POST to ``/callbacks/{token}``, answered 202."""

    base_url: str = ""
    received: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    async def handle(self, request: web.Request) -> web.Response:
        token = request.match_info["token"]
        self.received.setdefault(token, []).append(await request.json())
        return web.json_response({"status": "recorded"}, status=202)

    def calls(self, token: str) -> list[dict[str, Any]]:
        return self.received.get(token, [])


@pytest.fixture(scope="module")
async def receiver() -> AsyncIterator[CallbackReceiver]:
    receiver = CallbackReceiver()
    app = web.Application()
    app.router.add_post("/callbacks/{token}", receiver.handle)
    async with serving(app) as base_url:
        receiver.base_url = base_url
        yield receiver


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoServer]:
    with running_moto_server(export_env=False) as server:
        yield server


def new_queue(moto: MotoServer) -> str:
    """A command-one queue of its own, so no other simulator takes its messages."""
    return str(sqs_client(moto).create_queue(QueueName=unique("commands"))["QueueUrl"])


def sqs_client(moto: MotoServer) -> Any:
    env = moto_env(moto)
    return boto3.client(
        "sqs",
        endpoint_url=env["AWS_ENDPOINT_URL"],
        region_name=env["AWS_DEFAULT_REGION"],
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
    )


class Simulator:
    """``python -m simulator`` on a loopback port, with its journal in ``data_dir``."""

    def __init__(self, moto: MotoServer, queue_url: str, data_dir: Path, **settings: str) -> None:
        self.queue_url = queue_url
        self.port = free_loopback_port()
        self.log_path = data_dir / "simulator.log"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(OWN_PREFIXES)}
        self.env.update(moto_env(moto))
        self.env.update(
            {
                "SIMULATOR_HOST": "127.0.0.1",
                "SIMULATOR_PORT": str(self.port),
                "SIMULATOR_QUEUE_URL": queue_url,
                "SIMULATOR_STATE_PATH": str(data_dir / "simulator-journal.jsonl"),
                "SIMULATOR_MIN_DELAY": "0",
                "SIMULATOR_MAX_DELAY": "0",
                "SIMULATOR_CALLBACK_BACKOFF": "0.1",
                "PYTHONUNBUFFERED": "1",
                **settings,
            }
        )
        self.child: Child | None = None

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def start(self, http: aiohttp.ClientSession) -> None:
        self.child = Child(
            "simulator",
            [sys.executable, "-m", "simulator"],
            self.env,
            self.log_path,
            sys.stderr,
            echo=False,
        )
        child = self.child
        await child.start()

        async def healthy() -> bool:
            if child.returncode is not None:
                raise AssertionError(f"simulator exited:\n{self.log_path.read_text()}")
            try:
                async with http.get(self.url("/healthz")) as response:
                    return response.status == 200
            except aiohttp.ClientError:
                return False

        await eventually(healthy, "simulator answers /healthz")

    async def kill(self) -> None:
        assert self.child is not None
        self.child.kill()
        await self.child.exited()

    async def stop(self) -> None:
        if self.child is not None:
            await self.child.stop(grace=10)

    async def commands(self, http: aiohttp.ClientSession) -> dict[str, dict[str, Any]]:
        """``GET /commands`` by idempotency key."""
        async with http.get(self.url("/commands")) as response:
            listed = (await response.json())["commands"]
        return {c["idempotency_key"]: c for c in listed}


@pytest.fixture(scope="module")
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        yield session


@pytest.fixture(scope="module")
async def simulator(
    moto: MotoServer, http: aiohttp.ClientSession, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Simulator]:
    """One simulator for the fence tests; each test fences its own resource."""
    simulator = Simulator(moto, new_queue(moto), tmp_path_factory.mktemp("simulator"))
    try:
        await simulator.start(http)
        yield simulator
    finally:
        await simulator.stop()


def command(receiver: CallbackReceiver, token: str, **fields: Any) -> dict[str, Any]:
    """A command body whose callback comes back to ``receiver`` under ``token``."""
    return {
        "process_id": f"process-{token}",
        "command": "command-two",
        "callback_url": f"{receiver.base_url}/callbacks/{token}",
        "idempotency_key": f"process-{token}:command-two",
        **fields,
    }


async def post(
    http: aiohttp.ClientSession,
    simulator: Simulator,
    body: dict[str, Any],
    fence: tuple[str, str] | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, Any]]:
    """POST command two; ``fence`` is (resource, lease) for the Lock-* headers."""
    sent = {"Idempotency-Key": body["idempotency_key"], **(headers or {})}
    if fence is not None:
        sent.update({"Lock-Resource": fence[0], "Lock-Lease": fence[1]})
    async with http.post(simulator.url("/commands/two"), json=body, headers=sent) as response:
        return response.status, await response.json(content_type=None)


def fenced(receiver: CallbackReceiver, token: str, resource: str, lease: int) -> dict[str, Any]:
    return command(receiver, token, lock_resource=resource, lease_id=lease)


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


async def test_http_command_below_the_highest_lease_is_refused_with_409(
    simulator: Simulator, receiver: CallbackReceiver, http: aiohttp.ClientSession
) -> None:
    resource, other = unique("resource"), unique("other")
    newer, older, same, unfenced, elsewhere = (unique(t) for t in ("l5", "l4", "l5b", "none", "b"))

    assert (await post(http, simulator, fenced(receiver, newer, resource, 5), (resource, "5")))[
        0
    ] == 202
    status, problem = await post(
        http, simulator, fenced(receiver, older, resource, 4), (resource, "4")
    )
    assert status == 409
    assert problem["status"] == 409 and problem["title"] == "Conflict"
    assert (problem["lock_resource"], problem["lease_id"], problem["highest_lease_id"]) == (
        resource,
        4,
        5,
    )
    assert "lease 4" in problem["detail"] and "5" in problem["detail"]
    # Equal is the current holder; no fence is a command from before fencing; leases are per
    # resource.
    assert (await post(http, simulator, fenced(receiver, same, resource, 5), (resource, "5")))[
        0
    ] == 202
    assert (await post(http, simulator, command(receiver, unfenced)))[0] == 202
    assert (await post(http, simulator, fenced(receiver, elsewhere, other, 1), (other, "1")))[
        0
    ] == 202

    accepted = (newer, same, unfenced, elsewhere)
    await eventually(
        lambda: all(receiver.calls(t) for t in accepted), "callbacks of the accepted commands"
    )
    assert all(receiver.calls(t)[0]["status"] == "succeeded" for t in accepted)
    assert receiver.calls(older) == []
    listed = await simulator.commands(http)
    assert f"process-{older}:command-two" not in listed  # refused: nothing was taken
    assert listed[f"process-{newer}:command-two"]["lease_id"] == 5


async def test_a_resend_gets_its_first_answer_before_the_fence_is_checked(
    simulator: Simulator, receiver: CallbackReceiver, http: aiohttp.ClientSession
) -> None:
    resource = unique("resource")
    first, newer, late = unique("first"), unique("newer"), unique("late")
    body = fenced(receiver, first, resource, 3)
    assert (await post(http, simulator, body, (resource, "3")))[0] == 202
    assert (await post(http, simulator, fenced(receiver, newer, resource, 7), (resource, "7")))[
        0
    ] == 202

    # Lease 3 is now below 7, but this key was accepted under it: the first answer again.
    status, answer = await post(http, simulator, body, (resource, "3"))
    assert (status, answer["duplicate"]) == (200, True)
    # A new key under lease 3 is refused.
    assert (await post(http, simulator, fenced(receiver, late, resource, 3), (resource, "3")))[
        0
    ] == 409
    await eventually(lambda: bool(receiver.calls(first)), "the first command's callback")
    assert len(receiver.calls(first)) == 1


@pytest.mark.parametrize(
    ("headers", "fields"),
    [
        pytest.param({"Lock-Resource": "r", "Lock-Lease": "abc"}, {}, id="lease-not-a-number"),
        pytest.param({"Lock-Resource": "r", "Lock-Lease": "-1"}, {}, id="lease-negative"),
        pytest.param({"Lock-Resource": "r", "Lock-Lease": "1.5"}, {}, id="lease-fraction"),
        pytest.param({"Lock-Resource": "r"}, {}, id="resource-without-lease"),
        pytest.param({"Lock-Lease": "2"}, {}, id="lease-without-resource"),
        pytest.param({"Lock-Resource": " ", "Lock-Lease": "2"}, {}, id="resource-blank"),
        pytest.param({}, {"lock_resource": "r", "lease_id": "2"}, id="body-lease-a-string"),
        pytest.param({}, {"lock_resource": "r", "lease_id": True}, id="body-lease-a-boolean"),
        pytest.param(
            {"Lock-Resource": "r", "Lock-Lease": "2"},
            {"lock_resource": "r", "lease_id": 3},
            id="header-and-body-disagree",
        ),
    ],
)
async def test_a_malformed_fence_is_refused_with_400(
    simulator: Simulator,
    receiver: CallbackReceiver,
    http: aiohttp.ClientSession,
    headers: dict[str, str],
    fields: dict[str, Any],
) -> None:
    body = command(receiver, unique("malformed"), **fields)
    status, problem = await post(http, simulator, body, headers=headers)
    assert status == 400
    assert problem["detail"].startswith("malformed fence: ")
    assert body["idempotency_key"] not in await simulator.commands(http)


async def test_sqs_command_below_the_highest_lease_gets_a_failed_callback(
    simulator: Simulator,
    receiver: CallbackReceiver,
    http: aiohttp.ClientSession,
    moto: MotoServer,
) -> None:
    sqs, queue_url = sqs_client(moto), simulator.queue_url
    resource = unique("resource")
    newer, older, malformed = unique("sqs-l9"), unique("sqs-l8"), unique("sqs-bad")

    def send(token: str, lease: str, data_type: str = "Number") -> None:
        body = command(receiver, token, command="command-one")
        body["idempotency_key"] = f"process-{token}:command-one"
        sqs.send_message(
            QueueUrl=queue_url,
            MessageBody=json.dumps(body),
            MessageAttributes={
                "Idempotency-Key": {"DataType": "String", "StringValue": body["idempotency_key"]},
                "Lock-Resource": {"DataType": "String", "StringValue": resource},
                "Lock-Lease": {"DataType": data_type, "StringValue": lease},
            },
        )

    send(newer, "9")
    await eventually(lambda: bool(receiver.calls(newer)), "the lease-9 command's callback")
    send(newer, "9")  # SQS delivers at least once: a redelivery runs nothing again
    send(older, "8")
    send(malformed, "9", data_type="String")
    await eventually(
        lambda: bool(receiver.calls(older) and receiver.calls(malformed)),
        "the failed callbacks of the refused commands",
    )

    [refused] = receiver.calls(older)
    assert refused["status"] == "failed"
    assert refused["error"].startswith("fenced: lease 8 ")
    assert "lease seen, 9" in refused["error"]
    [bad] = receiver.calls(malformed)
    assert bad["status"] == "failed" and bad["error"].startswith("malformed fence: ")
    listed = await simulator.commands(http)
    assert listed[f"process-{older}:command-one"]["outcome"] == "fenced"

    async def redelivery_seen() -> bool:
        listed = await simulator.commands(http)
        return bool(listed[f"process-{newer}:command-one"]["duplicates"] == 1)

    await eventually(redelivery_seen, "the redelivery noticed")
    assert [c["status"] for c in receiver.calls(newer)] == ["succeeded"]


async def test_work_taken_before_a_kill_is_finished_after_a_restart(
    receiver: CallbackReceiver,
    http: aiohttp.ClientSession,
    moto: MotoServer,
    tmp_path: Path,
) -> None:
    # Long enough that the kill lands while both commands are still being worked on.
    slow = {"SIMULATOR_MIN_DELAY": "3", "SIMULATOR_MAX_DELAY": "3"}
    queue_url = new_queue(moto)
    simulator = Simulator(moto, queue_url, tmp_path, **slow)
    over_http, over_sqs = unique("kill-http"), unique("kill-sqs")
    body = command(receiver, over_http)
    queued = command(receiver, over_sqs, command="command-one")
    queued["idempotency_key"] = f"process-{over_sqs}:command-one"
    try:
        await simulator.start(http)
        assert (await post(http, simulator, body))[0] == 202
        sqs_client(moto).send_message(QueueUrl=queue_url, MessageBody=json.dumps(queued))

        async def both_taken() -> bool:
            listed = await simulator.commands(http)
            return queued["idempotency_key"] in listed and body["idempotency_key"] in listed

        await eventually(both_taken, "both commands taken")
        listed = await simulator.commands(http)
        assert {
            listed[k]["outcome"] for k in (queued["idempotency_key"], body["idempotency_key"])
        } == {"pending"}
        await simulator.kill()
        assert receiver.calls(over_http) == [] and receiver.calls(over_sqs) == []

        await simulator.start(http)
        # A resend of a key held but unfinished is answered as a repeat, and the work goes on.
        status, answer = await post(http, simulator, body)
        assert (status, answer["duplicate"]) == (200, True)
        await eventually(
            lambda: bool(receiver.calls(over_http) and receiver.calls(over_sqs)),
            "both callbacks after the restart",
        )
        assert [c["status"] for c in receiver.calls(over_http)] == ["succeeded"]
        assert [c["status"] for c in receiver.calls(over_sqs)] == ["succeeded"]
        log = simulator.log_path.read_text()
        assert "resumed 2 unfinished command(s)" in log
    finally:
        await simulator.stop()


async def test_a_message_nested_too_deeply_is_dropped_and_the_queue_goes_on(
    simulator: Simulator,
    receiver: CallbackReceiver,
    http: aiohttp.ClientSession,
    moto: MotoServer,
) -> None:
    sqs = sqs_client(moto)
    # 30 kB, but deeper than the JSON decoder's recursion allows: it once ended the process.
    sqs.send_message(QueueUrl=simulator.queue_url, MessageBody="[" * 30_000)
    token = unique("after-deep")
    body = command(receiver, token, command="command-one")
    body["idempotency_key"] = f"process-{token}:command-one"
    sqs.send_message(QueueUrl=simulator.queue_url, MessageBody=json.dumps(body))

    await eventually(lambda: bool(receiver.calls(token)), "the next message's callback")
    assert "the JSON is nested too deeply" in simulator.log_path.read_text()
    assert simulator.child is not None and simulator.child.returncode is None


def receiver_app(receiver: CallbackReceiver) -> web.Application:
    app = web.Application()
    app.router.add_post("/callbacks/{token}", receiver.handle)
    return app


async def test_a_callback_that_gave_up_is_delivered_after_a_resend_or_a_restart(
    http: aiohttp.ClientSession, moto: MotoServer, tmp_path: Path
) -> None:
    """The callbacks API is away for longer than the simulator's tries: both results are still
    owed. Once it is back, a resend of one key delivers that one; a restart (after kill -9)
    delivers the other."""
    port = free_loopback_port()
    late = CallbackReceiver(base_url=f"http://127.0.0.1:{port}")  # nothing listens there yet
    simulator = Simulator(moto, new_queue(moto), tmp_path, SIMULATOR_CALLBACK_ATTEMPTS="2")
    resent, restarted = unique("resent"), unique("restarted")
    bodies = {token: command(late, token) for token in (resent, restarted)}
    keys = {token: body["idempotency_key"] for token, body in bodies.items()}
    try:
        await simulator.start(http)
        for body in bodies.values():
            assert (await post(http, simulator, body))[0] == 202

        async def tries_spent(tokens: tuple[str, ...], status: int | None, tries: int) -> bool:
            listed = await simulator.commands(http)
            return all(
                keys[t] in listed
                and (listed[keys[t]]["callback_attempts"], listed[keys[t]]["callback_status"])
                == (tries, status)
                for t in tokens
            )

        await eventually(lambda: tries_spent((resent, restarted), None, 2), "both gave up")
        assert "gave up after 2 tries" in simulator.log_path.read_text()

        async with serving(receiver_app(late), port):
            # The sender's retry: a repeat, answered as such, and the result owed goes out.
            status, answer = await post(http, simulator, bodies[resent])
            assert (status, answer["duplicate"]) == (200, True)
            await eventually(lambda: bool(late.calls(resent)), "the resent key's callback")
            # Journaled as delivered before the kill, so the restart does not send it again.
            await eventually(lambda: tries_spent((resent,), 202, 1), "the callback journaled")

            await simulator.kill()
            assert late.calls(restarted) == []
            await simulator.start(http)
            await eventually(lambda: bool(late.calls(restarted)), "the callback after a restart")
            await eventually(lambda: tries_spent((restarted,), 202, 1), "the callback journaled")

        assert [c["status"] for c in late.calls(resent)] == ["succeeded"]
        assert [c["status"] for c in late.calls(restarted)] == ["succeeded"]
        assert "resumed 1 unfinished command(s)" in simulator.log_path.read_text()
    finally:
        await simulator.stop()
