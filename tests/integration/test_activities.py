"""Activities against the AWS emulator running as a real server, and a real HTTP endpoint."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import subprocess
import sys
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from temporalio import activity
from temporalio.api.failure.v1 import Failure
from temporalio.converter import DataConverter
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.commands import CommandActivities
from activities.factory import build_activities
from activities.idempotency import IdempotencyStore
from activities.notifications import ApprovalNotifier
from activities.process_table import ProcessTableActivities
from common import tracing
from common.aws import AwsClients
from common.aws_resources import ProvisionedResources, ensure_resources
from common.settings import Settings
from common.tokens import Purpose
from tests.support.http import serving
from tests.support.moto_server import (
    MotoServer,
    free_loopback_port,
    moto_env,
    moto_settings,
    running_moto_server,
)
from tests.workflow.fakes import eventually
from workflows.messages import (
    APPROVAL_CALLBACK,
    Approver,
    CommandName,
    CreateProcessRecord,
    FailureReason,
    LinkTrace,
    NotifyApprovers,
    ProcessStatus,
    PublishApprovalRequest,
    SendCommand,
    UpdateProcessStatus,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="session")
def moto() -> Iterator[MotoServer]:
    with running_moto_server() as server:
        yield server


@dataclass
class Aws:
    settings: Settings
    clients: AwsClients
    resources: ProvisionedResources

    @property
    def idempotency(self) -> IdempotencyStore:
        return IdempotencyStore(self.clients.dynamodb, self.settings.idempotency_table)


@pytest.fixture(scope="session")
def clients(moto: MotoServer) -> AwsClients:
    return AwsClients.from_settings(moto_settings(moto))


@pytest.fixture
def aws(moto: MotoServer, clients: AwsClients) -> Aws:
    """Fresh tables, topic and queue for each test."""
    settings = moto_settings(moto, callback_base_url="https://approvals.example.test")
    return Aws(settings, clients, ensure_resources(settings, clients))


def _process_id() -> str:
    return f"process-{uuid.uuid4()}"


def _item(aws: Aws, process_id: str) -> dict[str, str]:
    response = aws.clients.dynamodb.get_item(
        TableName=aws.settings.process_table,
        Key={"process_id": {"S": process_id}},
        ConsistentRead=True,
    )
    return {name: value["S"] for name, value in response["Item"].items()}


def _queued(aws: Aws, queue_url: str) -> int:
    attributes = aws.clients.sqs.get_queue_attributes(
        QueueUrl=queue_url, AttributeNames=["ApproximateNumberOfMessages"]
    )["Attributes"]
    return int(attributes["ApproximateNumberOfMessages"])


# ---------------------------------------------------------------------------------------------
# Process table
# ---------------------------------------------------------------------------------------------


def _table(aws: Aws) -> ProcessTableActivities:
    return ProcessTableActivities(aws.clients.dynamodb, aws.settings.process_table)


def _create(aws: Aws, process_id: str, requested_by: str = "alice") -> None:
    record = CreateProcessRecord(
        process_id=process_id,
        requested_by=requested_by,
        description="deploy the thing",
        created_at=datetime(2030, 1, 1, 12, 0, tzinfo=UTC),
    )
    ActivityEnvironment().run(_table(aws).create_process, record)


def _update(aws: Aws, process_id: str, status: ProcessStatus, **fields: Any) -> tuple[bool, str]:
    update = UpdateProcessStatus(
        process_id=process_id,
        status=status,
        at=fields.pop("at", datetime(2030, 1, 1, 13, 0, tzinfo=UTC)),
        **fields,
    )
    result = ActivityEnvironment().run(_table(aws).update_process_status, update)
    return result.applied, result.status.value


def test_create_does_not_overwrite_an_existing_record(aws: Aws) -> None:
    process_id = _process_id()
    _create(aws, process_id)
    _update(aws, process_id, ProcessStatus.IN_PROGRESS)

    _create(aws, process_id, requested_by="mallory")  # a late retry of the first create

    item = _item(aws, process_id)
    assert item["requested_by"] == "alice"
    assert item["status"] == "in-progress"
    assert item["created_at"] == "2030-01-01T12:00:00+00:00"


def test_second_create_leaves_the_record_pending(aws: Aws) -> None:
    process_id = _process_id()
    _create(aws, process_id)
    _create(aws, process_id)
    item = _item(aws, process_id)
    assert item["status"] == "pending"
    assert item["updated_at"] == item["created_at"]


def test_completed_never_moves_back(aws: Aws) -> None:
    process_id = _process_id()
    _create(aws, process_id)
    assert _update(aws, process_id, ProcessStatus.IN_PROGRESS, approved_by="bob") == (
        True,
        "in-progress",
    )
    assert _update(aws, process_id, ProcessStatus.COMPLETED) == (True, "completed")

    assert _update(aws, process_id, ProcessStatus.IN_PROGRESS) == (False, "completed")
    assert _update(aws, process_id, ProcessStatus.FAILED, reason=FailureReason.ERROR) == (
        False,
        "completed",
    )
    item = _item(aws, process_id)
    assert item["status"] == "completed"
    assert item["approved_by"] == "bob"
    assert item["finished_at"] == "2030-01-01T13:00:00+00:00"
    assert "reason" not in item


def test_failed_never_moves(aws: Aws) -> None:
    process_id = _process_id()
    _create(aws, process_id)
    failed = {"reason": FailureReason.REJECTED, "message": "no thanks"}
    assert _update(aws, process_id, ProcessStatus.FAILED, **failed) == (True, "failed")

    assert _update(aws, process_id, ProcessStatus.COMPLETED) == (False, "failed")
    assert _update(aws, process_id, ProcessStatus.IN_PROGRESS) == (False, "failed")
    # Another writer's failure does not count as this update having been applied.
    assert _update(aws, process_id, ProcessStatus.FAILED, reason=FailureReason.ABANDONED) == (
        False,
        "failed",
    )
    item = _item(aws, process_id)
    assert (item["status"], item["reason"], item["message"]) == ("failed", "rejected", "no thanks")


def test_retry_of_an_applied_update_reports_applied(aws: Aws) -> None:
    process_id = _process_id()
    _create(aws, process_id)
    assert _update(aws, process_id, ProcessStatus.IN_PROGRESS) == (True, "in-progress")
    assert _update(aws, process_id, ProcessStatus.IN_PROGRESS) == (True, "in-progress")
    assert _update(aws, process_id, ProcessStatus.FAILED, reason=FailureReason.CANCELLED) == (
        True,
        "failed",
    )
    assert _update(aws, process_id, ProcessStatus.FAILED, reason=FailureReason.CANCELLED) == (
        True,
        "failed",
    )


def test_update_of_a_missing_record_is_not_retried(aws: Aws) -> None:
    process_id = _process_id()
    with pytest.raises(ApplicationError) as raised:
        _update(aws, process_id, ProcessStatus.IN_PROGRESS)
    assert raised.value.type == "ProcessNotFound"
    assert raised.value.non_retryable
    # What the workflow reports is the innermost cause of the failure Temporal records: it must
    # be this message, not DynamoDB's "The conditional request failed".
    assert raised.value.message == f"process record {process_id} does not exist"
    failure = Failure()
    converter = DataConverter.default
    converter.failure_converter.to_failure(raised.value, converter.payload_converter, failure)
    assert not failure.HasField("cause"), failure.cause.message


def test_skipping_a_step_is_refused(aws: Aws) -> None:
    process_id = _process_id()
    _create(aws, process_id)
    with pytest.raises(ApplicationError) as raised:
        _update(aws, process_id, ProcessStatus.COMPLETED)
    assert raised.value.type == "InvalidTransition"
    assert raised.value.non_retryable
    assert _item(aws, process_id)["status"] == "pending"


# ---------------------------------------------------------------------------------------------
# Idempotency store
# ---------------------------------------------------------------------------------------------


def test_idempotency_record_carries_a_ttl_and_expires_on_read(aws: Aws) -> None:
    now = 2_000_000_000.0
    store = IdempotencyStore(
        aws.clients.dynamodb, aws.settings.idempotency_table, clock=lambda: now
    )
    store.record("p:command-one", {"message_id": "m-1"})
    assert store.get("p:command-one") == {"message_id": "m-1"}
    assert store.get("p:command-two") is None

    item = aws.clients.dynamodb.get_item(
        TableName=aws.settings.idempotency_table, Key={"key": {"S": "p:command-one"}}
    )["Item"]
    assert int(item["expires_at"]["N"]) == int(now) + 24 * 3600

    later = IdempotencyStore(
        aws.clients.dynamodb,
        aws.settings.idempotency_table,
        clock=lambda: now + 24 * 3600,
    )
    assert later.get("p:command-one") is None  # expired, though TTL has not deleted it yet


# ---------------------------------------------------------------------------------------------
# Command one (SQS)
# ---------------------------------------------------------------------------------------------


def _command(command: CommandName, **fields: Any) -> SendCommand:
    deadline = datetime.now(UTC) + timedelta(hours=1)
    return SendCommand(process_id=_process_id(), command=command, deadline=deadline, **fields)


def _commands(
    aws: Aws,
    http: Any,
    command_url: str = "http://127.0.0.1:1/",
    executor: Executor | None = None,
) -> CommandActivities:
    return CommandActivities(
        aws.clients.sqs,
        aws.resources.queue_url,
        http,
        command_url,
        aws.settings.signer,
        aws.settings.callback_base_url,
        aws.idempotency,
        executor=executor,
    )


async def _send_one(activities: CommandActivities, command: SendCommand, attempt: int = 1) -> Any:
    env = ActivityEnvironment()
    env.info = replace(env.info, attempt=attempt)
    return await env.run(activities.send_command_one, command)


async def test_command_one_is_sent_once(aws: Aws) -> None:
    activities = _commands(aws, http=lambda: None)
    command = _command(CommandName.ONE)

    first = await _send_one(activities, command)
    second = await _send_one(activities, command, attempt=2)

    assert not first.duplicate
    assert second.duplicate
    assert second.attempt == 2
    assert first.idempotency_key == second.idempotency_key == f"{command.process_id}:command-one"
    assert second.detail == first.detail
    assert _queued(aws, aws.resources.queue_url) == 1

    message = aws.clients.sqs.receive_message(
        QueueUrl=aws.resources.queue_url, MessageAttributeNames=["All"]
    )["Messages"][0]
    assert message["MessageId"] == first.detail["message_id"]
    assert message["MessageAttributes"]["Idempotency-Key"]["StringValue"] == first.idempotency_key
    body = json.loads(message["Body"])
    assert body["process_id"] == command.process_id
    assert body["command"] == "command-one"
    assert body["idempotency_key"] == first.idempotency_key
    assert datetime.fromisoformat(body["deadline"]) == command.deadline
    prefix = "https://approvals.example.test/callbacks/"
    assert body["callback_url"].startswith(prefix)
    claims = aws.settings.signer.verify(body["callback_url"].removeprefix(prefix), Purpose.COMMAND)
    assert (claims.workflow_id, claims.callback) == (command.process_id, "command-one")


async def test_command_one_refuses_command_two(aws: Aws) -> None:
    activities = _commands(aws, http=lambda: None)
    with pytest.raises(ApplicationError) as raised:
        await _send_one(activities, _command(CommandName.TWO))
    assert raised.value.non_retryable
    assert _queued(aws, aws.resources.queue_url) == 0


# ---------------------------------------------------------------------------------------------
# Command two (HTTP)
# ---------------------------------------------------------------------------------------------


@dataclass
class CommandServer:
    """A tiny downstream system: ``POST /status/{code}[?retry_after=s][&big]`` answers ``code``."""

    base_url: str
    requests: list[tuple[dict[str, str], Any]] = field(default_factory=list)


@pytest.fixture
async def command_server() -> AsyncIterator[CommandServer]:
    server = CommandServer(base_url="")

    async def handle(request: web.Request) -> web.Response:
        server.requests.append((dict(request.headers), await request.json()))
        status = int(request.match_info["code"])
        headers = {}
        if "retry_after" in request.query:
            headers["Retry-After"] = request.query["retry_after"]
        if status == 200 and "big" in request.query:
            return web.json_response({"padding": "x" * 10_000})
        if status == 200:
            return web.json_response({"accepted": True, "ticket": 42}, headers=headers)
        return web.Response(status=status, text="nope", headers=headers)

    app = web.Application()
    app.router.add_post("/status/{code}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    server.base_url = f"http://{host}:{port}"
    try:
        yield server
    finally:
        await runner.cleanup()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def _send_two(activities: CommandActivities, command: SendCommand, attempt: int = 1) -> Any:
    env = ActivityEnvironment()
    env.info = replace(env.info, attempt=attempt)
    return await env.run(activities.send_command_two, command)


async def test_command_two_is_posted_once(
    aws: Aws, http: aiohttp.ClientSession, command_server: CommandServer
) -> None:
    activities = _commands(aws, http, f"{command_server.base_url}/status/200")
    command = _command(CommandName.TWO)

    first = await _send_two(activities, command)
    second = await _send_two(activities, command, attempt=2)

    assert len(command_server.requests) == 1
    assert (first.duplicate, second.duplicate) == (False, True)
    assert first.detail == {"status": 200, "response": {"accepted": True, "ticket": 42}}
    assert second.detail == first.detail
    headers, body = command_server.requests[0]
    assert headers["Idempotency-Key"] == f"{command.process_id}:command-two"
    assert body["idempotency_key"] == headers["Idempotency-Key"]
    assert body["command"] == "command-two"
    token = body["callback_url"].removeprefix("https://approvals.example.test/callbacks/")
    claims = aws.settings.signer.verify(token, Purpose.COMMAND)
    assert (claims.workflow_id, claims.callback) == (command.process_id, "command-two")


async def test_command_two_accepts_a_session_factory(
    aws: Aws, http: aiohttp.ClientSession, command_server: CommandServer
) -> None:
    activities = _commands(aws, lambda: http, f"{command_server.base_url}/status/200")
    result = await _send_two(activities, _command(CommandName.TWO))
    assert result.detail["status"] == 200


async def test_command_two_keeps_only_a_small_response(
    aws: Aws, http: aiohttp.ClientSession, command_server: CommandServer
) -> None:
    activities = _commands(aws, http, f"{command_server.base_url}/status/200?big")
    result = await _send_two(activities, _command(CommandName.TWO))
    assert result.detail == {"status": 200}


@pytest.mark.parametrize(
    ("path", "delay"),
    [
        ("/status/503", None),
        ("/status/503?retry_after=7", timedelta(seconds=7)),
        # More seconds than a timedelta holds: the longest wait allowed, not an OverflowError.
        ("/status/503?retry_after=99999999999999999999", timedelta(minutes=20)),
    ],
)
async def test_command_two_retryable_status(
    aws: Aws,
    http: aiohttp.ClientSession,
    command_server: CommandServer,
    path: str,
    delay: timedelta | None,
) -> None:
    url = f"{command_server.base_url}{path}"
    command = _command(CommandName.TWO)
    with pytest.raises(ApplicationError) as raised:
        await _send_two(_commands(aws, http, url), command)
    assert raised.value.type == "HttpStatusError"
    assert not raised.value.non_retryable
    assert raised.value.next_retry_delay == delay
    assert "503" in raised.value.message
    assert url in raised.value.message

    # Nothing was recorded, so the next attempt really sends.
    ok = _commands(aws, http, f"{command_server.base_url}/status/200")
    result = await _send_two(ok, command, attempt=2)
    assert not result.duplicate
    assert len(command_server.requests) == 2


@pytest.mark.parametrize(
    ("code", "retry_statuses"), [(400, (408, 429, 500, 502, 503, 504)), (429, (503,))]
)
async def test_command_two_other_status_is_final(
    aws: Aws,
    http: aiohttp.ClientSession,
    command_server: CommandServer,
    code: int,
    retry_statuses: tuple[int, ...],
) -> None:
    activities = _commands(aws, http, f"{command_server.base_url}/status/{code}")
    command = _command(CommandName.TWO, http_retry_statuses=retry_statuses)
    with pytest.raises(ApplicationError) as raised:
        await _send_two(activities, command)
    assert raised.value.type == "HttpStatusError"
    assert raised.value.non_retryable
    assert str(code) in raised.value.message
    assert len(command_server.requests) == 1


async def test_command_two_network_error_is_retryable(
    aws: Aws, http: aiohttp.ClientSession
) -> None:
    closed = f"http://127.0.0.1:{free_loopback_port()}/commands"
    with pytest.raises(aiohttp.ClientConnectionError):
        await _send_two(_commands(aws, http, closed), _command(CommandName.TWO))


# ---------------------------------------------------------------------------------------------
# The fence: resource and lease id on every command of a process that holds a lease
# ---------------------------------------------------------------------------------------------

FENCED = {"lock_resource": "approval-commands", "lease_id": 41}


async def test_command_one_carries_the_fence(aws: Aws) -> None:
    command = _command(CommandName.ONE, **FENCED)
    await _send_one(_commands(aws, http=lambda: None), command)
    message = aws.clients.sqs.receive_message(
        QueueUrl=aws.resources.queue_url, MessageAttributeNames=["All"]
    )["Messages"][0]
    attributes = message["MessageAttributes"]
    assert attributes["Lock-Resource"] == {"StringValue": "approval-commands", "DataType": "String"}
    assert attributes["Lock-Lease"] == {"StringValue": "41", "DataType": "Number"}
    body = json.loads(message["Body"])
    assert (body["lock_resource"], body["lease_id"]) == ("approval-commands", 41)


async def test_command_one_without_a_lease_carries_no_fence(aws: Aws) -> None:
    await _send_one(_commands(aws, http=lambda: None), _command(CommandName.ONE))
    message = aws.clients.sqs.receive_message(
        QueueUrl=aws.resources.queue_url, MessageAttributeNames=["All"]
    )["Messages"][0]
    assert set(message["MessageAttributes"]) == {"Idempotency-Key"}
    assert not {"lock_resource", "lease_id"} & set(json.loads(message["Body"]))


async def test_command_two_carries_the_fence(
    aws: Aws, http: aiohttp.ClientSession, command_server: CommandServer
) -> None:
    activities = _commands(aws, http, f"{command_server.base_url}/status/200")
    await _send_two(activities, _command(CommandName.TWO, **FENCED))
    ((headers, body),) = command_server.requests
    assert (headers["Lock-Resource"], headers["Lock-Lease"]) == ("approval-commands", "41")
    assert (body["lock_resource"], body["lease_id"]) == ("approval-commands", 41)


async def test_command_two_without_a_lease_carries_no_fence(
    aws: Aws, http: aiohttp.ClientSession, command_server: CommandServer
) -> None:
    activities = _commands(aws, http, f"{command_server.base_url}/status/200")
    await _send_two(activities, _command(CommandName.TWO))
    ((headers, body),) = command_server.requests
    assert not {"Lock-Resource", "Lock-Lease"} & set(headers)
    assert not {"lock_resource", "lease_id"} & set(body)


async def test_command_two_refused_by_the_fence_is_final(
    aws: Aws, http: aiohttp.ClientSession, command_server: CommandServer
) -> None:
    activities = _commands(aws, http, f"{command_server.base_url}/status/409")
    # Even a caller that lists 409 as retryable: a newer lease exists, no retry can help.
    command = _command(CommandName.TWO, http_retry_statuses=(409, 503), **FENCED)
    with pytest.raises(ApplicationError) as raised:
        await _send_two(activities, command)
    assert raised.value.type == "HttpStatusError"
    assert raised.value.non_retryable
    assert "409" in raised.value.message and "fenced" in raised.value.message
    assert "lease 41" in raised.value.message


# ---------------------------------------------------------------------------------------------
# Sends under cancellation, and on the worker's thread pool
# ---------------------------------------------------------------------------------------------


async def test_a_cancel_lets_the_request_in_flight_finish(
    aws: Aws, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    """Cancelled mid-POST, the send reports the cancel only once the POST has been answered."""
    arrived, answer = asyncio.Event(), asyncio.Event()
    seen: list[str] = []

    async def slow(request: web.Request) -> web.Response:
        await request.json()
        seen.append("request received")
        arrived.set()
        await answer.wait()
        seen.append("answered")
        return web.json_response({"accepted": True})

    app = web.Application()
    app.router.add_post("/commands", slow)
    async with serving(app) as base_url:
        activities = _commands(aws, http, f"{base_url}/commands")
        env = ActivityEnvironment()
        env.info = replace(env.info, heartbeat_timeout=timedelta(seconds=3))
        beats: list[Any] = []
        env.on_heartbeat = lambda *details: beats.append(details)
        with caplog.at_level(logging.INFO, logger="temporalio.activity"):
            send = asyncio.ensure_future(
                env.run(activities.send_command_two, _command(CommandName.TWO, **FENCED))
            )
            await asyncio.wait_for(arrived.wait(), timeout=10)
            env.cancel()
            await eventually(
                lambda: "letting the in-flight request finish" in caplog.text,
                what="the cancel to reach the send",
            )
            assert not send.done(), "the send gave up on its request in flight"
            answer.set()
            with pytest.raises(asyncio.CancelledError):
                await send
            seen.append("send ended")
    assert seen == ["request received", "answered", "send ended"]
    assert beats, "the send never heartbeated, so no cancel could have reached it"


class CountingExecutor(ThreadPoolExecutor):
    def __init__(self) -> None:
        super().__init__(2, thread_name_prefix="worker-pool")
        self.calls = 0
        self._lock = threading.Lock()

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            self.calls += 1
        return super().submit(fn, *args, **kwargs)


async def test_sends_run_their_blocking_calls_on_the_workers_pool(
    aws: Aws, http: aiohttp.ClientSession, command_server: CommandServer
) -> None:
    with CountingExecutor() as executor:
        activities = _commands(aws, http, f"{command_server.base_url}/status/200", executor)
        await _send_one(activities, _command(CommandName.ONE))
        assert executor.calls == 2  # SQS send, idempotency record (a first try reads nothing)
        await _send_two(activities, _command(CommandName.TWO), attempt=2)
        assert executor.calls == 4  # a retry's idempotency read, and the record after the POST


# ---------------------------------------------------------------------------------------------
# Approval request (SNS)
# ---------------------------------------------------------------------------------------------


def _notifier(aws: Aws) -> ApprovalNotifier:
    """The approval mailer as the worker builds it, on the emulator's topic."""
    return ApprovalNotifier(
        aws.clients.sns,
        aws.resources.topic_arn,
        aws.settings.signer,
        aws.settings.callback_base_url,
        aws.idempotency,
    )


def _inbox(aws: Aws) -> str:
    """An SQS queue subscribed to the topic: moto delivers each SNS message to it."""
    queue_url = aws.clients.sqs.create_queue(QueueName=f"inbox-{aws.settings.process_table}")[
        "QueueUrl"
    ]
    queue_arn = aws.clients.sqs.get_queue_attributes(
        QueueUrl=queue_url, AttributeNames=["QueueArn"]
    )["Attributes"]["QueueArn"]
    aws.clients.sns.subscribe(TopicArn=aws.resources.topic_arn, Protocol="sqs", Endpoint=queue_arn)
    return queue_url


def test_approval_mail_has_working_links_and_is_sent_once(aws: Aws) -> None:
    inbox = _inbox(aws)
    notifier = _notifier(aws)
    process_id = _process_id()
    request = PublishApprovalRequest(
        process_id=process_id,
        requested_by="alice@example.test",
        description="Rotate the production database credentials",
        requested_at=datetime(2030, 1, 1, 12, 0, tzinfo=UTC),
        deadline=datetime.now(UTC) + timedelta(hours=1),
    )

    message_id = ActivityEnvironment().run(notifier.publish_approval_request, request)
    again = ActivityEnvironment().run(notifier.publish_approval_request, request)

    assert again == message_id
    assert _queued(aws, inbox) == 1
    envelope = json.loads(aws.clients.sqs.receive_message(QueueUrl=inbox)["Messages"][0]["Body"])
    assert envelope["MessageId"] == message_id
    assert envelope["Subject"] == f"Approval requested: {process_id}"
    text = envelope["Message"]
    for expected in ("alice@example.test", request.description, process_id, "confirmation page"):
        assert expected in text

    links = re.findall(r"https?://\S+", text)
    assert len(links) == 2
    approve, reject = links
    page = re.fullmatch(r"https://approvals\.example\.test/approvals/([^/?]+)", approve)
    assert page is not None
    token = page.group(1)
    assert reject == f"{approve}?decision=reject"
    claims = aws.settings.signer.verify(token, Purpose.APPROVAL)
    assert (claims.workflow_id, claims.callback) == (process_id, APPROVAL_CALLBACK)
    assert claims.purpose is Purpose.APPROVAL
    assert text.count(token) == 2  # only inside the two links


def test_each_named_approver_gets_their_own_link_and_reminders_repeat_it(aws: Aws) -> None:
    inbox = _inbox(aws)
    notifier = _notifier(aws)
    process_id = _process_id()
    request = NotifyApprovers(
        process_id=process_id,
        requested_by="grace@example.test",
        description="Rotate the production database credentials",
        requested_at=datetime(2030, 1, 1, 12, 0, tzinfo=UTC),
        deadline=datetime.now(UTC) + timedelta(hours=1),
        kind="request",
        sequence=0,
        to=(Approver(id="alice@example.test", name="Alice"), Approver(id="bob@example.test")),
    )

    first = ActivityEnvironment().run(notifier.notify_approvers, request)
    again = ActivityEnvironment().run(notifier.notify_approvers, request)  # a retry
    reminder = request.model_copy(
        update={"kind": "reminder", "sequence": 1, "to": request.to[1:], "summary": "0 of 1"}
    )
    ActivityEnvironment().run(notifier.notify_approvers, reminder)

    assert again == first
    assert set(first.message_ids) == {"alice@example.test", "bob@example.test"}
    mails = _received(aws, inbox, 3)
    by_id = {m["MessageId"]: m for m in mails}
    links: dict[str, list[str]] = {}
    for approver_id, message_id in first.message_ids.items():
        mail = by_id.pop(message_id)
        assert mail["MessageAttributes"]["approver"]["Value"] == approver_id
        assert mail["Subject"] == f"Approval requested: {process_id}"
        text = mail["Message"]
        assert text.startswith(
            "To: Alice <alice@example.test>" if approver_id.startswith("alice") else "To: bob@"
        )
        links[approver_id] = re.findall(r"https?://\S+", text)
    (reminded,) = by_id.values()
    assert reminded["Subject"] == f"Reminder: Approval requested: {process_id}"
    assert reminded["MessageAttributes"]["kind"]["Value"] == "reminder"
    assert "Where it stands: 0 of 1" in reminded["Message"]
    # The reminder carries Bob's very link; Alice's link is another, bound to Alice.
    assert re.findall(r"https?://\S+", reminded["Message"]) == links["bob@example.test"]
    for approver_id, (approve, _) in links.items():
        token = approve.rsplit("/", 1)[1]
        claims = aws.settings.signer.verify(token, Purpose.APPROVAL)
        assert (claims.workflow_id, claims.approver) == (process_id, approver_id)


def test_a_filter_policy_on_approver_routes_each_mail_to_its_approver_alone(aws: Aws) -> None:
    """What docs/approvals.md tells a deployment to do: one subscription per approver."""
    queues = {}
    for approver in ("alice@example.test", "bob@example.test"):
        name = f"mail-{approver.split('@')[0]}-{uuid.uuid4().hex[:6]}"
        url = aws.clients.sqs.create_queue(QueueName=name)["QueueUrl"]
        arn = aws.clients.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])[
            "Attributes"
        ]["QueueArn"]
        aws.clients.sns.subscribe(
            TopicArn=aws.resources.topic_arn,
            Protocol="sqs",
            Endpoint=arn,
            Attributes={"FilterPolicy": json.dumps({"approver": [approver]})},
        )
        queues[approver] = url
    notifier = _notifier(aws)
    notice = NotifyApprovers(
        process_id=_process_id(),
        requested_by="grace",
        description="",
        requested_at=datetime.now(UTC),
        deadline=datetime.now(UTC) + timedelta(hours=1),
        kind="request",
        sequence=0,
        to=(Approver(id="alice@example.test"), Approver(id="bob@example.test")),
    )
    sent = ActivityEnvironment().run(notifier.notify_approvers, notice)

    for approver, url in queues.items():
        (mail,) = _received(aws, url, 1)
        assert mail["MessageId"] == sent.message_ids[approver]
        assert mail["Message"].startswith(f"To: {approver}")


def test_every_link_carries_the_trace_the_process_chose(aws: Aws) -> None:
    """The workflow names the trace every approval link continues (its start's, patch
    approval-links-traced); the activity's own span, current while it runs, is not used."""
    inbox = _inbox(aws)
    notifier = _notifier(aws)
    process_trace = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    chosen, untraced = LinkTrace(traceparent=process_trace), LinkTrace()
    deadline = datetime.now(UTC) + timedelta(hours=1)
    shared = PublishApprovalRequest(
        process_id=_process_id(),
        requested_by="grace",
        description="",
        requested_at=datetime.now(UTC),
        deadline=deadline,
        link_trace=chosen,
    )
    request = NotifyApprovers(
        process_id=_process_id(),
        requested_by="grace",
        description="",
        requested_at=datetime.now(UTC),
        deadline=deadline,
        kind="request",
        sequence=0,
        to=(Approver(id="alice@example.test"),),
        link_trace=chosen,
    )
    reminder = request.model_copy(update={"kind": "reminder", "sequence": 1})
    not_traced = request.model_copy(update={"process_id": _process_id(), "link_trace": untraced})
    traced = tracing.from_environment(
        "test", processors=(SimpleSpanProcessor(InMemorySpanExporter()),)
    )
    assert traced.tracer is not None
    with traced.tracer.start_as_current_span("RunActivity"):  # as the worker's interceptor does
        assert tracing.current_traceparent() not in (None, process_trace)
        for notice in (shared, request, reminder, not_traced):
            run = (
                notifier.publish_approval_request if notice is shared else notifier.notify_approvers
            )
            ActivityEnvironment().run(run, notice)  # type: ignore[arg-type]
    traced.shutdown()

    tokens: dict[str, list[str]] = {}
    for mail in _received(aws, inbox, 4):
        approve = re.findall(r"https?://\S+", mail["Message"])[0]
        token = approve.rsplit("/", 1)[1]
        claims = aws.settings.signer.verify(token, Purpose.APPROVAL)
        tokens.setdefault(claims.workflow_id, []).append(token)
        expected = None if claims.workflow_id == not_traced.process_id else process_trace
        assert claims.trace_parent == expected
    first, again = tokens[request.process_id]
    assert first == again  # the reminder mails the very link the request did


def _received(aws: Aws, queue_url: str, count: int) -> list[dict[str, Any]]:
    """``count`` SNS envelopes from the inbox queue (it holds no more)."""
    envelopes: list[dict[str, Any]] = []
    while len(envelopes) < count:
        response = aws.clients.sqs.receive_message(
            QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=1
        )
        envelopes += [json.loads(m["Body"]) for m in response.get("Messages", [])]
        assert response.get("Messages"), f"only {len(envelopes)} of {count} mails arrived"
    assert len(envelopes) == count
    assert not aws.clients.sqs.receive_message(QueueUrl=queue_url).get("Messages")
    return envelopes


def test_approval_subject_stays_within_sns_limits(aws: Aws) -> None:
    notifier = _notifier(aws)
    request = PublishApprovalRequest(
        process_id="process-" + "x" * 120,
        requested_by="alice",
        description="",
        requested_at=datetime.now(UTC),
        deadline=datetime.now(UTC) + timedelta(hours=1),
    )
    # SNS itself refuses a subject over 100 characters.
    assert ActivityEnvironment().run(notifier.publish_approval_request, request)


# ---------------------------------------------------------------------------------------------
# Provisioning and wiring
# ---------------------------------------------------------------------------------------------


def test_ensure_resources_is_idempotent(moto: MotoServer, clients: AwsClients) -> None:
    settings = moto_settings(moto)

    first = ensure_resources(settings, clients)
    second = ensure_resources(settings, clients)

    assert len(first.created) == 3
    assert second.created == ()
    assert (second.topic_arn, second.queue_url) == (first.topic_arn, first.queue_url)
    assert first.topic_arn == settings.approval_topic_arn
    ttl = clients.dynamodb.describe_time_to_live(TableName=settings.idempotency_table)
    assert ttl["TimeToLiveDescription"] == {
        "TimeToLiveStatus": "ENABLED",
        "AttributeName": "expires_at",
    }
    for table in (settings.process_table, settings.idempotency_table):
        assert clients.dynamodb.describe_table(TableName=table)["Table"]["TableStatus"] == "ACTIVE"


def test_provisioning_command_runs_twice(moto: MotoServer) -> None:
    settings = moto_settings(moto)
    env = {
        **os.environ,
        **moto_env(moto),
        "APPROVAL_PROCESS_TABLE": settings.process_table,
        "APPROVAL_IDEMPOTENCY_TABLE": settings.idempotency_table,
        "APPROVAL_TOPIC_ARN": settings.approval_topic_arn,
        "APPROVAL_COMMAND_QUEUE_URL": settings.command_queue_url,
    }
    env.pop("APPROVAL_SIGNING_KEYS", None)  # provisioning needs no signing key
    command = [sys.executable, "-m", "common.aws_resources"]

    first = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    second = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)

    assert (first.returncode, first.stderr) == (0, "")
    assert f"created table {settings.process_table}" in first.stdout
    assert (second.returncode, second.stderr) == (0, "")
    assert "created" not in second.stdout
    assert f"topic {settings.approval_topic_arn}" in second.stdout


async def test_factory_registers_every_activity(aws: Aws, http: aiohttp.ClientSession) -> None:
    with ThreadPoolExecutor(1) as executor:
        registered = build_activities(aws.settings, aws.clients, http, executor)
    names = {activity._Definition.must_from_callable(fn).name for fn in registered}
    assert names == {
        "create_process",
        "update_process_status",
        "publish_approval_request",
        "notify_approvers",
        "send_command_one",
        "send_command_two",
        "request_lock",
        "describe_workflow",
        "check_holder",
        "recover_mutex",
    }


async def test_only_a_retry_reads_the_sent_record(
    aws: Aws, http: aiohttp.ClientSession, command_server: CommandServer
) -> None:
    activities = _commands(aws, http, f"{command_server.base_url}/status/200")
    command = _command(CommandName.TWO)

    await _send_two(activities, command)
    # A first attempt again: the same process id sending anew (a reset run). It does not read
    # the record (one DynamoDB call less inside the lock): it sends, under the same key.
    again = await _send_two(activities, command)
    # A retry reads the record and sends nothing.
    retried = await _send_two(activities, command, attempt=2)

    assert (again.duplicate, retried.duplicate) == (False, True)
    assert [h["Idempotency-Key"] for h, _ in command_server.requests] == [
        f"{command.process_id}:command-two"
    ] * 2


async def test_a_redrive_posts_again_under_the_original_key_once_per_redrive(
    aws: Aws, http: aiohttp.ClientSession, command_server: CommandServer
) -> None:
    activities = _commands(aws, http, f"{command_server.base_url}/status/200")
    original = _command(CommandName.TWO)
    redrive = _command(
        CommandName.TWO,
        original_process_id=original.process_id,
        redrive=1,
        heartbeat_timeout=timedelta(minutes=2),
    )

    await _send_two(activities, original)
    first = await _send_two(activities, redrive)
    retried = await _send_two(activities, redrive, attempt=2)

    # The original's send does not stop the redrive's; the redrive's own retry sends nothing.
    assert (first.duplicate, retried.duplicate) == (False, True)
    assert len(command_server.requests) == 2
    (_, sent), (headers, again) = command_server.requests
    key = f"{original.process_id}:command-two"
    assert headers["Idempotency-Key"] == again["idempotency_key"] == sent["idempotency_key"] == key
    assert (again["redrive"], again["process_id"]) == (1, redrive.process_id)
    assert "redrive" not in sent and "heartbeat_timeout" not in sent
    assert again["heartbeat_timeout"] == 120.0
    assert again["heartbeat_url"] == again["callback_url"] + "/heartbeat"
    token = again["callback_url"].removeprefix("https://approvals.example.test/callbacks/")
    claims = aws.settings.signer.verify(token, Purpose.COMMAND)
    assert claims.workflow_id == redrive.process_id  # the result goes to the redriven process


def test_a_redriven_record_says_where_it_came_from(aws: Aws) -> None:
    original, redriven = _process_id(), _process_id()
    record = CreateProcessRecord(
        process_id=redriven,
        requested_by="alice",
        description="deploy the thing",
        created_at=datetime(2030, 1, 1, 12, 0, tzinfo=UTC),
        redriven_from=original,
        redrive_count=2,
    )
    ActivityEnvironment().run(_table(aws).create_process, record)
    item = aws.clients.dynamodb.get_item(
        TableName=aws.settings.process_table, Key={"process_id": {"S": redriven}}
    )["Item"]
    assert item["redriven_from"] == {"S": original}
    assert item["redrive_count"] == {"N": "2"}
    assert item["status"] == {"S": "pending"}
