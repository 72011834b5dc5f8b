"""boto3 clients and a way to long-poll SQS without holding up shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import boto3
from botocore.config import Config

if TYPE_CHECKING:
    from mypy_boto3_sns import SNSClient
    from mypy_boto3_sqs import SQSClient
    from mypy_boto3_sqs.type_defs import MessageTypeDef

T = TypeVar("T")
log = logging.getLogger("simulator.aws")

# A receive blocks for up to this long when the queue is empty (SQS allows 20 at most).
LONG_POLL_SECONDS = 10


def clients(region: str, endpoint_url: str | None) -> tuple[SQSClient, SNSClient]:
    session = boto3.session.Session(region_name=region)
    # The read timeout must outlast a long poll.
    config = Config(connect_timeout=3, read_timeout=LONG_POLL_SECONDS + 10)
    sqs = session.client("sqs", endpoint_url=endpoint_url, config=config)
    sns = session.client("sns", endpoint_url=endpoint_url, config=config)
    return sqs, sns


async def in_daemon_thread(call: Callable[[], T]) -> T:
    """Run a blocking call in a daemon thread.

    ``asyncio.to_thread`` would do, but its pool threads are joined at exit, so a stop request
    would wait for the current long poll to end; a daemon thread is simply left behind.
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(outcome: Callable[[], Any]) -> None:
        if not future.done():
            outcome()

    def run() -> None:
        try:
            result = call()
        except BaseException as err:  # handed to the awaiting task, never lost
            error = err
            _call_soon(loop, lambda: settle(lambda: future.set_exception(error)))
        else:
            _call_soon(loop, lambda: settle(lambda: future.set_result(result)))

    threading.Thread(target=run, name="sqs-poll", daemon=True).start()
    return await future


def _call_soon(loop: asyncio.AbstractEventLoop, callback: Callable[[], None]) -> None:
    # The loop may have closed while we were blocked: then nobody is waiting any more.
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(callback)


async def consume_queue(
    sqs: SQSClient,
    queue_url: str,
    take: Callable[[MessageTypeDef], None],
    *,
    with_attributes: bool = False,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> None:
    """Long-poll ``queue_url`` until cancelled, handing each message to ``take``, then deleting it.

    A failing receive (the emulator restarting, a wrong URL) is logged and retried with a
    growing pause of at most 10 s; it never ends the loop.
    """
    failures = 0
    while True:
        try:
            response = await in_daemon_thread(
                lambda: sqs.receive_message(
                    QueueUrl=queue_url,
                    MaxNumberOfMessages=10,
                    WaitTimeSeconds=LONG_POLL_SECONDS,
                    MessageAttributeNames=["All"] if with_attributes else [],
                )
            )
        except Exception as err:
            failures += 1
            log.warning("cannot receive from %s: %s", queue_url, err)
            await sleep(min(0.5 * 2**failures, 10.0))
            continue
        failures = 0
        for message in response.get("Messages", []):
            take(message)
            receipt = message["ReceiptHandle"]
            await in_daemon_thread(
                lambda receipt=receipt: sqs.delete_message(  # type: ignore[misc]
                    QueueUrl=queue_url, ReceiptHandle=receipt
                )
            )
