"""Command heartbeats, for programs: a downstream system still at work on a command says so.

``POST /callbacks/{token}/heartbeat``, with the command's own callback token and optionally a
JSON body ``{"progress": ...}``, becomes the ``command_heartbeat`` signal. It resets the
command's heartbeat deadline (``ProcessOptions.command_heartbeat_timeout``, like Step Functions'
``HeartbeatSeconds``); the result still comes only through the callback, whose wait stays the
hard cap.

The token rules are the callback's: the heartbeat is signalled at once, with no look at the
process first (a signal needs no worker), and only a signal the server refuses as not found is
looked into with ``describe`` (410 closed, 404 unknown). A heartbeat after this API delivered the
command's result is refused with 409: the work is over. Every signal is an event in the process's
history, so one link is signalled at most once per ``heartbeat_min_interval``; a heartbeat that
comes sooner is answered 202 ``"coalesced": true`` and not sent (its progress is not recorded; the
deadline moved a moment ago).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from aiohttp import web
from cachetools import TTLCache
from pydantic import BaseModel, ConfigDict, ValidationError

from callbacks_api import links, problems
from callbacks_api.bodies import (
    JSON_CONTENT_TYPE,
    FiniteJson,
    invalid_body,
    read_body,
    require_content_type,
)
from callbacks_api.deliveries import DEFAULT_CAPACITY, Delivered, RecentDeliveries
from callbacks_api.problems import Problem
from callbacks_api.processes import Processes
from common.settings import Settings
from common.tokens import Purpose, fingerprint
from workflows.messages import CommandHeartbeat, CommandName

logger = logging.getLogger(__name__)

HEARTBEAT_SHAPE = 'Expected no body, or {"progress": <any JSON>}.'


class HeartbeatBody(BaseModel):
    """What a downstream system may say while it works; strict, as everything at the edge."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    progress: FiniteJson = None


class CommandHeartbeats:
    """The handler of ``/callbacks/{token}/heartbeat``."""

    def __init__(
        self,
        settings: Settings,
        processes: Processes,
        deliveries: RecentDeliveries,
        capacity: int = DEFAULT_CAPACITY,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._settings = settings
        self._processes = processes
        self._deliveries = deliveries
        # Links signalled within the last interval (bounded like the deliveries' memory).
        self._recent: TTLCache[tuple[str, str], bool] = TTLCache(
            capacity, ttl=settings.heartbeat_min_interval.total_seconds(), timer=clock
        )

    async def beat(self, request: web.Request) -> web.Response:
        """A downstream system is still at work; 202 once the server holds the heartbeat."""
        token = request.match_info["token"]
        claims = links.verify(self._settings.signer, token, Purpose.COMMAND)
        process_id = claims.workflow_id
        command = CommandName(claims.callback)
        payload = await self._read(request)
        link = (process_id, command.value)
        accepted = {"status": "accepted", "process_id": process_id, "command": command.value}

        delivered = self._deliveries.first(link)
        if delivered is not None:
            raise _after_the_result(command, delivered)
        if link in self._recent:
            return web.json_response({**accepted, "coalesced": True}, status=202)
        self._recent[link] = True  # before the await: heartbeats arriving together send one
        heartbeat = CommandHeartbeat(command=command.value, progress=payload.progress)
        try:
            await self._processes.signal(process_id, heartbeat)
        except Problem as problem:
            self._recent.pop(link, None)  # not sent: the next heartbeat tries again
            if problem.kind in ("closed", "unknown-process"):
                problem.extra["command"] = command.value
            raise
        logger.debug(
            "Command heartbeat sent token=%s command=%s",
            fingerprint(token),
            command.value,
            extra={"process_id": process_id},
        )
        return web.json_response(accepted, status=202)

    async def _read(self, request: web.Request) -> HeartbeatBody:
        """The optional body: none at all, or JSON within ``max_heartbeat_bytes``."""
        if not request.body_exists:
            return HeartbeatBody()
        require_content_type(request, JSON_CONTENT_TYPE)
        limit = self._settings.max_heartbeat_bytes
        body = await read_body(request, limit)
        if len(body) > limit:  # a chunked body declares no length; it is measured here
            raise problems.from_http_exception(
                web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=len(body))
            )
        if not body.strip():
            return HeartbeatBody()
        try:
            return HeartbeatBody.model_validate_json(body)
        except ValidationError as err:
            raise invalid_body(err, "Invalid heartbeat body", HEARTBEAT_SHAPE) from err


def _after_the_result(command: CommandName, first: Delivered) -> Problem:
    return Problem(
        409,
        "already-reported",
        "Result already delivered",
        f"The result of {command.value} ({first.label}) was already delivered through this "
        "link, so the work is over and heartbeats no longer count; this one was not sent.",
        extra={"command": command.value, "delivered_status": first.label},
    )
