"""Command callbacks, for programs: a downstream system posts the result of one command.

The token in the path names the process and the command, so the body carries only the result.
Answers are JSON and refusals ``application/problem+json`` (this sub-app's error middleware);
a retry of a result already recorded gets the first answer again.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from callbacks_api import links, problems
from callbacks_api.bodies import read_body, require_content_type
from callbacks_api.problems import Problem
from callbacks_api.processes import Processes
from common.settings import Settings
from common.tokens import Purpose, fingerprint
from workflows.messages import CommandCallback, CommandName, ProcessState

logger = logging.getLogger(__name__)

JSON_CONTENT_TYPE = "application/json"
COMMAND_WAITING = frozenset({"sending", "sent"})
COMMAND_REPORTED = frozenset({"succeeded", "failed"})


class CallbackBody(BaseModel):
    """The body a downstream system posts; which command it answers comes from the token."""

    # Strict on purpose: it faces the outside, so a misspelt field is refused, not dropped.
    model_config = ConfigDict(frozen=True, extra="forbid")

    status: Literal["succeeded", "failed"]
    result: dict[str, Any] | None = None
    error: str | None = Field(None, max_length=4000)


class CommandCallbacks:
    """The handler of ``/callbacks/{token}``."""

    def __init__(self, settings: Settings, processes: Processes) -> None:
        self._settings = settings
        self._processes = processes

    async def report(self, request: web.Request) -> web.Response:
        """A downstream system's result for one command; 202 once the signal is delivered."""
        token = request.match_info["token"]
        claims = links.verify(self._settings.signer, token, Purpose.COMMAND)
        process_id = claims.workflow_id
        command = CommandName(claims.callback)
        require_content_type(request, JSON_CONTENT_TYPE)
        body = await read_body(request, self._settings.max_callback_bytes)
        try:
            payload = CallbackBody.model_validate_json(body)
        except ValidationError as err:
            raise _invalid_callback(err) from err

        callback = CommandCallback(
            command=command.value,
            status=payload.status,
            result=payload.result,
            error=payload.error,
        )
        accepted = {"status": "accepted", "process_id": process_id, "command": command.value}
        state = await self._processes.state(process_id)
        current = state.commands.get(command)
        if current is not None and (current.status, current.result, current.error) == (
            payload.status,
            payload.result,
            payload.error,
        ):
            # A retry of the result already recorded gets the first answer again (idempotent).
            return web.json_response({**accepted, "duplicate": True}, status=202)
        refusal = command_refusal(state, command)
        if refusal is not None:
            raise refusal
        await self._processes.signal(process_id, callback, lambda s: command_refusal(s, command))
        logger.info(
            "Command callback sent token=%s command=%s status=%s",
            fingerprint(token),
            command.value,
            payload.status,
            extra={"process_id": process_id},
        )
        return web.json_response(accepted, status=202)


def command_refusal(state: ProcessState, command: CommandName) -> Problem | None:
    """Why a command's result cannot be taken now, or None while the process waits for it."""
    current = state.commands.get(command)
    status = current.status if current is not None else "not-started"
    if status in COMMAND_REPORTED:
        return Problem(
            409,
            "already-reported",
            "Result already recorded",
            f"{command.value} already reported {status}; only the first result counts.",
            extra={"command": command.value, "recorded_status": status},
        )
    if state.status.is_final or status in ("timed-out", "send-failed"):
        return Problem(
            410,
            "closed",
            "No longer waiting",
            f"The process stopped waiting for {command.value} (command {status}, "
            f"process {state.status.value}).",
            extra={"command": command.value, "command_status": status},
        )
    if status not in COMMAND_WAITING:
        return Problem(
            409,
            "not-sent",
            "Command not sent",
            f"{command.value} has not been sent yet, so no result is expected.",
            extra={"command": command.value, "command_status": status},
        )
    return None


def _invalid_callback(err: ValidationError) -> Problem:
    invalid_json = any(error["type"] == "json_invalid" for error in err.errors())
    return Problem(
        400,
        "invalid-body",
        "Invalid callback body",
        "The body is not valid JSON."
        if invalid_json
        else 'Expected {"status": "succeeded" | "failed", "result": {...}, "error": "..."}.',
        # Locations and messages only: the input itself is never echoed back.
        extra={
            "errors": [
                {"loc": ".".join(str(part) for part in error["loc"]), "msg": error["msg"]}
                for error in err.errors(include_input=False, include_url=False)
            ]
        },
    )


def callbacks_app(settings: Settings, processes: Processes) -> web.Application:
    """The sub-app mounted at ``/callbacks``; every refusal under it is a problem document."""
    callbacks = CommandCallbacks(settings, processes)
    app = web.Application(middlewares=[problems.error_middleware(problems.problem_response)])
    app.router.add_post("/{token}", callbacks.report)
    return app
