"""Command callbacks, for programs: a downstream system posts the result of one command.

The token in the path names the process and the command, so the body carries only the result.
The result is signalled at once, with no look at the process first: a signal needs no worker, so
results keep arriving through a worker outage or a deploy, and the workflow (which keeps the
first result per command and ignores the rest) takes them when it runs again. Repeats on one link
are answered from ``RecentDeliveries`` without signalling again. Answers are JSON and refusals
``application/problem+json`` (this sub-app's error middleware).
"""

from __future__ import annotations

import logging
from typing import Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from callbacks_api import links, problems
from callbacks_api.bodies import (
    JSON_CONTENT_TYPE,
    FiniteJson,
    PlainText,
    invalid_body,
    read_body,
    require_content_type,
)
from callbacks_api.deliveries import Delivered, Outcome, RecentDeliveries, digest_of
from callbacks_api.heartbeats import CommandHeartbeats
from callbacks_api.problems import Problem
from callbacks_api.processes import Processes
from common.settings import Settings
from common.tokens import Purpose, fingerprint
from workflows.messages import CommandCallback, CommandName

logger = logging.getLogger(__name__)


class CallbackBody(BaseModel):
    """The body a downstream system posts; which command it answers comes from the token."""

    # Strict on purpose: it faces the outside, so a misspelt field is refused, not dropped.
    model_config = ConfigDict(frozen=True, extra="forbid")

    status: Literal["succeeded", "failed"]
    # Finite numbers only: the workflow must record the result that was sent, not null for NaN.
    result: dict[str, FiniteJson] | None = None
    # Shown to operators in a terminal: no escape sequences.
    error: PlainText | None = Field(None, max_length=4000)


class CommandCallbacks:
    """The handler of ``/callbacks/{token}``."""

    def __init__(
        self, settings: Settings, processes: Processes, deliveries: RecentDeliveries
    ) -> None:
        self._settings = settings
        self._processes = processes
        self._deliveries = deliveries

    async def report(self, request: web.Request) -> web.Response:
        """A downstream system's result for one command; 202 once the server holds it."""
        token = request.match_info["token"]
        claims = links.verify(self._settings.signer, token, Purpose.COMMAND)
        process_id = claims.workflow_id
        command = CommandName(claims.callback)
        require_content_type(request, JSON_CONTENT_TYPE)
        body = await read_body(request, self._settings.max_callback_bytes)
        try:
            payload = CallbackBody.model_validate_json(body)
        except ValidationError as err:
            raise invalid_body(err, "Invalid callback body", CALLBACK_SHAPE) from err

        callback = CommandCallback(
            command=command.value,
            status=payload.status,
            result=payload.result,
            error=payload.error,
        )
        delivery = Delivered(digest_of(callback), payload.status, claims.expires_at)
        try:
            outcome, first = await self._deliveries.deliver(
                (process_id, command.value),
                delivery,
                lambda: self._processes.signal(process_id, callback),
            )
        except Problem as problem:
            if problem.kind in ("closed", "unknown-process"):
                problem.extra["command"] = command.value
            raise
        accepted = {"status": "accepted", "process_id": process_id, "command": command.value}
        if outcome is Outcome.CONFLICT:
            raise already_reported(command, first)
        if outcome is Outcome.REPEAT:
            # A retry of the result already delivered gets the first answer again (idempotent).
            return web.json_response({**accepted, "duplicate": True}, status=202)
        logger.info(
            "Command callback sent token=%s command=%s status=%s",
            fingerprint(token),
            command.value,
            payload.status,
            extra={"process_id": process_id},
        )
        return web.json_response(accepted, status=202)


def already_reported(command: CommandName, first: Delivered) -> Problem:
    """A different result on a link that already delivered one: only the first counts."""
    return Problem(
        409,
        "already-reported",
        "Result already delivered",
        f"A different result for {command.value} ({first.label}) was already delivered through "
        "this link; only the first result counts, so this one was not sent.",
        extra={"command": command.value, "delivered_status": first.label},
    )


CALLBACK_SHAPE = 'Expected {"status": "succeeded" | "failed", "result": {...}, "error": "..."}.'


def callbacks_app(
    settings: Settings, processes: Processes, deliveries: RecentDeliveries
) -> web.Application:
    """The sub-app mounted at ``/callbacks``; every refusal under it is a problem document."""
    callbacks = CommandCallbacks(settings, processes, deliveries)
    heartbeats = CommandHeartbeats(settings, processes, deliveries)
    app = web.Application(middlewares=[problems.error_middleware(problems.problem_response)])
    app.router.add_post("/{token}", callbacks.report)
    app.router.add_post("/{token}/heartbeat", heartbeats.beat)
    return app
