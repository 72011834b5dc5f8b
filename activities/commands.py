"""The two long-running commands: command one over SQS, command two over HTTP.

Each send carries a signed callback URL the downstream system answers on, and an idempotency key.
A send is recorded once it succeeded, so a retried activity does not send again.

Each send also carries the fence (docs/downstream.md): the lock resource it runs under and its
lease id, a fencing token that only grows. A downstream system keeps the highest lease it has
seen per resource and refuses a lower one, so a send from a holder whose lease was revoked cannot
land after the next holder's. Over HTTP the fence is in the ``Lock-Resource`` and ``Lock-Lease``
headers, over SQS in message attributes of the same names, and in both bodies as
``lock_resource`` and ``lease_id``. A send of a process started before the fence existed carries
none of them. Both sends heartbeat, so a cancel reaches them (activities/heartbeat.py).

A redriven process (``approval-flow redrive``) sends the commands that did not succeed again
under the original process's idempotency key, so a downstream system that did finish the work
recognises it; the body's ``redrive`` (1, 2, ...) tells it this is a deliberate second try, and
the new ``callback_url`` is where the result now goes. Each body also names the command's
``heartbeat_url`` and, when the process wants heartbeats, ``heartbeat_timeout`` in seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
from collections.abc import Callable, Mapping
from concurrent.futures import Executor
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any, TypeVar

import aiohttp
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.heartbeat import while_heartbeating
from activities.idempotency import IdempotencyStore
from common import tracing
from common.tokens import Purpose, TokenSigner
from workflows.messages import CommandName, SendCommand, SendResult

T = TypeVar("T")

if TYPE_CHECKING:
    from mypy_boto3_sqs import SQSClient
    from mypy_boto3_sqs.type_defs import MessageAttributeValueTypeDef, SendMessageRequestTypeDef

IDEMPOTENCY_HEADER = "Idempotency-Key"
# The fence, as HTTP headers and SQS message attributes (String and Number).
LOCK_RESOURCE_HEADER = "Lock-Resource"
LOCK_LEASE_HEADER = "Lock-Lease"
# What a downstream system answers to a send whose lease is older than one it has seen.
FENCED_STATUS = 409
# Response bodies up to this size are kept in the result (and the workflow's history).
MAX_RESPONSE_DETAIL_BYTES = 4096
# Below the 30 s activity attempt timeout, so a hung server fails as a retryable network error.
DEFAULT_HTTP_TIMEOUT = aiohttp.ClientTimeout(total=20, sock_connect=5)


# The longest delay ``retry_after`` reports. RFC 9110 sets no bound, and a header may say
# 99999999999999999999 (more seconds than a timedelta holds) or a date in the year 9999; the
# send then waits ``max_retry_after`` (20 min by default), which this is far above, as the
# callback link and lock lease are sized for that. A day keeps the delay a plain number.
RETRY_AFTER_CAP = timedelta(days=1)


def retry_after(value: str | None, now: datetime | None = None) -> timedelta | None:
    """A ``Retry-After`` header (delay seconds or HTTP-date) as a delay; None if absent or bad.

    The delay is at least one second: a zero delay would read as "no delay given" to Temporal;
    and at most ``RETRY_AFTER_CAP``: a longer one says "much later", never an error.
    """
    if value is None:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():  # not "²", which isdigit() takes and int() does not
        cap = int(RETRY_AFTER_CAP.total_seconds())
        # Compared as text first: int() refuses more than 4300 digits.
        delay = timedelta(seconds=int(value) if len(value) <= len(str(cap)) else cap)
    else:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        delay = when - (now or datetime.now(UTC))
    return min(max(delay, timedelta(seconds=1)), RETRY_AFTER_CAP)


class CommandActivities:
    def __init__(
        self,
        sqs: SQSClient,
        queue_url: str,
        http: aiohttp.ClientSession | Callable[[], aiohttp.ClientSession],
        command_url: str,
        signer: TokenSigner,
        callback_base_url: str,
        idempotency: IdempotencyStore,
        http_timeout: aiohttp.ClientTimeout = DEFAULT_HTTP_TIMEOUT,
        executor: Executor | None = None,
    ) -> None:
        """``http`` is a session made inside the worker's event loop, or a factory for one.

        ``executor`` runs the blocking boto3 calls: the worker's sized thread pool, whose size
        the boto3 connection pools match (None: the event loop's default pool, for tests).
        """
        self._sqs = sqs
        self._queue_url = queue_url
        self._http = http
        self._command_url = command_url
        self._signer = signer
        self._base_url = callback_base_url.rstrip("/")
        self._idempotency = idempotency
        self._http_timeout = http_timeout
        self._executor = executor

    @activity.defn(name="send_command_one")
    async def send_command_one(self, command: SendCommand) -> SendResult:
        """Send command one as an SQS message, once; a cancel waits for the send in flight."""
        _expect(command, CommandName.ONE)
        return await while_heartbeating(self._send_one(command))

    @activity.defn(name="send_command_two")
    async def send_command_two(self, command: SendCommand) -> SendResult:
        """POST command two, once; only the statuses the caller lists are retried."""
        _expect(command, CommandName.TWO)
        return await while_heartbeating(self._send_two(command))

    async def _send_one(self, command: SendCommand) -> SendResult:
        key = idempotency_key(command)
        done = await self._sent_before(command)
        if done is not None:
            return _result(command, key, duplicate=True, detail=done)
        attributes: dict[str, MessageAttributeValueTypeDef] = {
            IDEMPOTENCY_HEADER: {"DataType": "String", "StringValue": key},
            **tracing.sqs_attributes(),  # traceparent, as W3C propagation over SQS
        }
        lease = fence(command)
        if lease is not None:
            attributes[LOCK_RESOURCE_HEADER] = {"DataType": "String", "StringValue": lease[0]}
            attributes[LOCK_LEASE_HEADER] = {"DataType": "Number", "StringValue": str(lease[1])}
        message: SendMessageRequestTypeDef = {
            "QueueUrl": self._queue_url,
            "MessageBody": json.dumps(self._payload(command, key)),
            "MessageAttributes": attributes,
        }
        if self._queue_url.endswith(".fifo"):
            # A FIFO queue itself drops a resend that comes within 5 minutes.
            message["MessageGroupId"] = command.process_id
            message["MessageDeduplicationId"] = key
        response = await self._blocking(functools.partial(self._sqs.send_message, **message))
        detail = {"message_id": response["MessageId"]}
        await self._blocking(self._idempotency.record, sent_record_key(command), detail)
        return _result(command, key, duplicate=False, detail=detail)

    async def _send_two(self, command: SendCommand) -> SendResult:
        key = idempotency_key(command)
        done = await self._sent_before(command)
        if done is not None:
            return _result(command, key, duplicate=True, detail=done)
        headers = {IDEMPOTENCY_HEADER: key, **tracing.carrier()}
        lease = fence(command)
        if lease is not None:
            headers[LOCK_RESOURCE_HEADER] = lease[0]
            headers[LOCK_LEASE_HEADER] = str(lease[1])
        async with self._session().post(
            self._command_url,
            json=self._payload(command, key),
            headers=headers,  # + traceparent
            timeout=self._http_timeout,
            allow_redirects=False,
        ) as response:
            status = response.status
            if not 200 <= status < 300:
                raise _status_error(command, status, self._command_url, response.headers)
            body = None
            if response.content_type == "application/json":
                body = await _small_body(response, MAX_RESPONSE_DETAIL_BYTES)
        detail: dict[str, Any] = {"status": status}
        if body:
            with contextlib.suppress(ValueError):  # a malformed body is just not kept
                detail["response"] = json.loads(body)
        await self._blocking(self._idempotency.record, sent_record_key(command), detail)
        return _result(command, key, duplicate=False, detail=detail)

    async def _sent_before(self, command: SendCommand) -> dict[str, Any] | None:
        """What an earlier attempt of this send recorded, or None: then it must be sent.

        Only a retry reads the record. An attempt numbered 1 is, but for an operator's reset,
        the first time this run of the process sends the command. A record under its key then
        comes from a ``temporal workflow reset`` (an earlier run of the same process id) or a
        ``temporal activity reset`` (which numbers the next attempt 1 again): in both, sending
        again under the same ``Idempotency-Key`` is what every downstream system already dedups
        (docs/downstream.md), as it does after a crash between a send and its record. The record
        spares a retried send a resend; it was never the once-only guarantee, the key is.
        Skipping the read takes one DynamoDB call off each send, inside the lock (issue 12).
        """
        if activity.info().attempt <= 1:
            return None
        return await self._blocking(self._idempotency.get, sent_record_key(command))

    async def _blocking(self, call: Callable[..., T], *args: Any) -> T:
        """Run a blocking (boto3) call on the worker's thread pool."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(call, *args))

    def _payload(self, command: SendCommand, key: str) -> dict[str, Any]:
        token = self._signer.sign(
            command.process_id,
            command.command.value,
            Purpose.COMMAND,
            command.deadline,
            trace_parent=tracing.current_traceparent(),  # the callback continues this trace
        )
        deadline = command.deadline
        if deadline.tzinfo is None:
            deadline = deadline.replace(tzinfo=UTC)
        callback_url = f"{self._base_url}/callbacks/{token}"
        payload: dict[str, Any] = {
            "process_id": command.process_id,
            "command": command.command.value,
            "callback_url": callback_url,
            "heartbeat_url": f"{callback_url}/heartbeat",
            "idempotency_key": key,
            "deadline": deadline.astimezone(UTC).isoformat(),
        }
        if command.heartbeat_timeout is not None:
            payload["heartbeat_timeout"] = command.heartbeat_timeout.total_seconds()
        if command.redrive:
            payload["redrive"] = command.redrive
        lease = fence(command)
        if lease is not None:
            payload["lock_resource"], payload["lease_id"] = lease
        return payload

    def _session(self) -> aiohttp.ClientSession:
        if not isinstance(self._http, aiohttp.ClientSession):
            self._http = self._http()
        return self._http


def idempotency_key(command: SendCommand) -> str:
    """What the downstream system dedups on: the original process's, across every redrive."""
    return f"{command.original_process_id or command.process_id}:{command.command.value}"


def sent_record_key(command: SendCommand) -> str:
    """Where this send is remembered as done, so a retried attempt does not send again.

    Per redrive: a redrive must send again what an earlier run sent, under the same
    idempotency key, and only its own retries may skip the send.
    """
    key = idempotency_key(command)
    return f"{key}#redrive-{command.redrive}" if command.redrive else key


def fence(command: SendCommand) -> tuple[str, int] | None:
    """The resource and lease id a send carries; None for a process from before the fence."""
    if command.lease_id is None or command.lock_resource is None:
        return None
    return command.lock_resource, command.lease_id


async def _small_body(response: aiohttp.ClientResponse, limit: int) -> bytes | None:
    """The body when it has at most ``limit`` bytes; None (the rest unread) when larger."""
    body = b""
    while len(body) <= limit:
        chunk = await response.content.read(limit + 1 - len(body))
        if not chunk:
            return body
        body += chunk
    return None


def _expect(command: SendCommand, name: CommandName) -> None:
    if command.command != name:
        raise ApplicationError(
            f"{command.command.value} sent to the activity for {name.value}",
            type="InvalidCommand",
            non_retryable=True,
        )


def _result(
    command: SendCommand, key: str, *, duplicate: bool, detail: dict[str, Any]
) -> SendResult:
    return SendResult(
        command=command.command,
        idempotency_key=key,
        attempt=activity.info().attempt,
        duplicate=duplicate,
        detail=detail,
    )


def _status_error(
    command: SendCommand, status: int, url: str, headers: Mapping[str, str]
) -> ApplicationError:
    """Retryable for the listed statuses (honouring ``Retry-After``); final for any other.

    A 409 to a fenced send means "fenced": the downstream system has seen a newer lease for the
    resource, so this holder's lease is no longer the current one and no retry can change that.
    """
    message = f"HTTP {status} from POST {url}"
    lease = fence(command)
    if status == FENCED_STATUS and lease is not None:
        message += f": fenced (lease {lease[1]} on {lease[0]} is older than one it has seen)"
        return ApplicationError(message, status, type="HttpStatusError", non_retryable=True)
    if status in command.http_retry_statuses:
        delay = retry_after(headers.get("Retry-After"))
        if delay is not None:
            # Honoured, but bounded: the callback token and the lock lease are sized for it.
            delay = min(delay, command.max_retry_after)
        return ApplicationError(message, status, type="HttpStatusError", next_retry_delay=delay)
    return ApplicationError(message, status, type="HttpStatusError", non_retryable=True)
