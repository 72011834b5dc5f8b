"""How the supervisor knows a part is ready: one check each, polled against a deadline."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import aiohttp
from temporalio.api.operatorservice.v1 import ListSearchAttributesRequest
from temporalio.client import Client

from common.pollers import last_workflow_poll
from local_stack.children import Child, ChildFailed
from workflows.messages import PROCESS_STATUS_ATTRIBUTE

POLL_INTERVAL = 0.1


async def wait_until_ready(
    child: Child, check: Callable[[], Awaitable[bool]], what: str, within: float
) -> float:
    """Poll ``check`` until it holds; the seconds it took.

    A check that raises means "not ready yet" (a server still starting refuses connections);
    only the child's exit or the deadline ends the wait, each as a ``ChildFailed`` of one line.
    """
    started = time.monotonic()
    deadline = started + within
    last_error = ""
    while True:
        if child.returncode is not None:
            raise ChildFailed(
                child, f"{child.name} exited with code {child.returncode} while starting"
            )
        try:
            if await check():
                return time.monotonic() - started
        except Exception as err:
            first_line = next(iter(str(err).splitlines()), "")
            last_error = f" (last check: {type(err).__name__}: {first_line})"
        if time.monotonic() > deadline:
            raise ChildFailed(child, f"{what} was not ready within {within:g} s{last_error}")
        await asyncio.sleep(POLL_INTERVAL)


async def http_ok(http: aiohttp.ClientSession, url: str, any_status: bool = False) -> bool:
    try:
        async with http.get(url) as response:
            return any_status or response.status == 200
    except (aiohttp.ClientError, TimeoutError):
        return False


async def temporal_ready(client: Client) -> bool:
    """The namespace answers and the search attribute is registered."""
    response = await client.operator_service.list_search_attributes(
        ListSearchAttributesRequest(namespace=client.namespace)
    )
    return PROCESS_STATUS_ATTRIBUTE in response.custom_attributes


async def worker_polling(client: Client, task_queue: str, since: float) -> bool:
    """A worker polls the task queue (a poller seen after ``since``, not one from a past run)."""
    last = await last_workflow_poll(client, task_queue)
    return last is not None and int(last.timestamp()) >= int(since)
