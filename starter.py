"""Start a ProcessWorkflow, and find the approval link it mails: what every starter shares.

Used by ``approval-flow start`` and by ``make run``'s demo process. A real deployment starts
processes from its own code the same way: a pydantic ``ProcessInput`` on the worker's task queue,
under a fresh ``process-<uuid>`` workflow id.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, TypeVar

from temporalio.client import Client, WorkflowHandle

from common.settings import Settings
from workflows.messages import (
    PROCESS_ID_PREFIX,
    InvalidProcessOptions,
    ProcessInput,
    ProcessOptions,
)

PROCESS_WORKFLOW = "ProcessWorkflow"
T = TypeVar("T")


class StarterSettings(Settings):
    """The shared settings plus what only a starter reads: the options each process carries.

    One variable each, e.g. APPROVAL_PROCESS__APPROVAL_TIMEOUT=PT2H. The worker never reads
    them: a process keeps the values it was started with, in its input.
    """

    process: ProcessOptions = ProcessOptions()


@dataclass(frozen=True)
class Started:
    process_id: str
    run_id: str | None
    approve_url: str | None = None
    reject_url: str | None = None
    # Named approvers' own links, by approver id.
    approver_links: dict[str, str] = field(default_factory=dict)


async def start_process(
    client: Client,
    settings: StarterSettings,
    requested_by: str,
    description: str,
    options: ProcessOptions | None = None,
) -> Started:
    """Start one ProcessWorkflow; the process id is the workflow id (``process-<uuid>``).

    ``options`` replaces the settings' process options (the CLI's flags have been merged in).
    Options a process cannot live with (a lease shorter than it may hold the lock) raise
    ``InvalidProcessOptions`` with a one-line reason, and nothing is started.
    """
    process_input = ProcessInput(
        requested_by=requested_by,
        description=description,
        options=options if options is not None else settings.process,
    )
    check_options(process_input.options, settings)
    process_id = f"{PROCESS_ID_PREFIX}{uuid.uuid4()}"
    handle: WorkflowHandle[Any, Any] = await client.start_workflow(
        PROCESS_WORKFLOW,
        process_input,
        id=process_id,
        task_queue=settings.task_queue,
    )
    return Started(process_id=process_id, run_id=handle.result_run_id)


def check_options(options: ProcessOptions, settings: StarterSettings) -> None:
    """Raise ``InvalidProcessOptions`` (one line) for options no process could live with.

    Needs no server: the CLI asks before it connects, so bad options are said as such even
    when Temporal is down."""
    options.check()
    check_heartbeat_timeout(options, settings.heartbeat_min_interval)


def check_heartbeat_timeout(options: ProcessOptions, min_interval: timedelta) -> None:
    """Refuse a heartbeat timeout no downstream system could be sure to meet.

    The callbacks API passes one link's heartbeats on at most once per ``min_interval``
    (``APPROVAL_HEARTBEAT_MIN_INTERVAL``) and drops (coalesces) the ones between, so a heartbeat
    the system sends may reach the workflow up to ``min_interval`` after the one before it
    would have. With a timeout shorter than twice that interval, heartbeats that keep the
    documented cadence (every timeout minus the interval) still reach the workflow a full
    timeout apart, and commands time out (seen with 6 s and 7 s against the 5 s interval).
    """
    timeout = options.command_heartbeat_timeout
    shortest = 2 * min_interval
    if timeout is not None and timeout < shortest:
        raise InvalidProcessOptions(
            f"command_heartbeat_timeout {timeout} is shorter than {shortest}, twice "
            f"APPROVAL_HEARTBEAT_MIN_INTERVAL {min_interval} (the callbacks API passes one "
            "command's heartbeats on at most that often and drops the ones between): commands "
            "would time out although their systems heartbeat; raise command_heartbeat_timeout "
            "to a few times that interval"
        )


class InboxUnreachable(Exception):
    """The local inbox refused the connection (or its host is unknown): nobody listens there."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"cannot reach the inbox at {url}: {reason}")
        self.url = url
        self.reason = reason


async def wait_for_approval_link(
    inbox_url: str,
    process_id: str,
    wait: float,
    poll_interval: float = 0.2,
    *,
    patient: bool = True,
) -> tuple[str, str | None] | None:
    """The approve and reject links the workflow mailed, read from the local inbox.

    None when the mail did not arrive in time (or, ``patient``, the inbox could not be reached
    meanwhile). Not ``patient``, an inbox that refuses the connection raises
    ``InboxUnreachable`` at once: see ``_read_inbox``.
    """

    def links(messages: list[dict[str, Any]]) -> tuple[str, str | None] | None:
        for message in messages:
            if message.get("approve_url"):
                return message["approve_url"], message.get("reject_url")
        return None

    return await _read_inbox(inbox_url, process_id, wait, poll_interval, links, patient)


async def wait_for_approver_links(
    inbox_url: str,
    process_id: str,
    approvers: Sequence[str],
    wait: float,
    poll_interval: float = 0.2,
    *,
    patient: bool = True,
) -> dict[str, str]:
    """Each named approver's own approve link, read from their mail in the local inbox.

    Returns the links that arrived within ``wait`` seconds (all of them, or fewer); not
    ``patient``, raises ``InboxUnreachable`` as ``wait_for_approval_link`` does.
    """
    found: dict[str, str] = {}

    def all_found(messages: list[dict[str, Any]]) -> dict[str, str] | None:
        for message in messages:
            approver = message.get("approver")
            if isinstance(approver, str) and approver in approvers and message.get("approve_url"):
                found.setdefault(approver, message["approve_url"])
        return found if set(approvers) <= set(found) else None

    await _read_inbox(inbox_url, process_id, wait, poll_interval, all_found, patient)
    return {a: found[a] for a in approvers if a in found}


async def _read_inbox(
    inbox_url: str,
    process_id: str,
    wait: float,
    poll_interval: float,
    done: Callable[[list[dict[str, Any]]], T | None],
    patient: bool,
) -> T | None:
    """Read the process's mail from the inbox until ``done`` says it is all there, or ``wait``.

    A refused connection is waited out when ``patient`` (``make run``'s inbox may still be
    starting); otherwise it is said at once: nobody listens at that address, so waiting the
    whole ``wait`` for mail would only blame the worker (the CLI, issue: 15 s then "is the
    worker running?" while the worker was fine and the inbox URL wrong).
    """
    import aiohttp  # here: of the CLI's commands only start needs it (0.2 s of CPU to import)

    url = f"{inbox_url.rstrip('/')}/messages.json"
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
        while True:
            try:
                async with http.get(url, params={"process_id": process_id}) as response:
                    if response.status == 200:
                        result = done((await response.json()).get("messages", []))
                        if result is not None:
                            return result
            except aiohttp.ClientConnectorError as err:
                if not patient:
                    raise InboxUnreachable(inbox_url, _connect_failure(err)) from err
            except (aiohttp.ClientError, TimeoutError, ValueError):
                pass  # a slow or odd answer: the deadline decides
            if loop.time() + poll_interval > deadline:
                return None
            await asyncio.sleep(poll_interval)


def _connect_failure(err: OSError) -> str:
    """ "connection refused", or what the system said (an unknown host, no route)."""
    cause = getattr(err, "os_error", err)
    if isinstance(cause, ConnectionRefusedError):
        return "connection refused"
    return cause.strerror or str(cause) if isinstance(cause, OSError) else str(cause)
