"""The aiohttp app: approval pages for people, command callbacks for downstream systems.

Both routes carry a signed token in the path (``common.tokens``) that names one process and one
callback; nothing else identifying is in the URL. A GET never signals: mail scanners open links
before people do. Every answer is checked against the process's ``state`` query first, so it says
what is true: recorded, already decided, expired or closed, unknown, or invalid.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
from collections.abc import Callable
from datetime import timedelta
from typing import Any, Literal
from urllib.parse import parse_qs

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from temporalio.client import Client

from callbacks_api import pages, problems
from callbacks_api.metrics import Handler, Metrics, route_name
from callbacks_api.problems import Problem
from callbacks_api.processes import APPROVAL_SIGNAL, COMMAND_SIGNAL, Processes
from common.settings import Settings
from common.tokens import Purpose, TokenClaims, TokenExpired, TokenInvalid, fingerprint
from workflows.messages import (
    APPROVAL_CALLBACK,
    PROCESS_ID_PREFIX,
    ApprovalDecision,
    CommandCallback,
    CommandName,
    FailureReason,
    ProcessState,
    Stage,
)

logger = logging.getLogger(__name__)

APPROVALS_PREFIX = "/approvals/"
FORM_CONTENT_TYPE = "application/x-www-form-urlencoded"
JSON_CONTENT_TYPE = "application/json"
# A decision can land before the workflow has marked itself as waiting (the mail goes out from
# the activity that precedes the wait), so "creating" still takes one.
APPROVAL_OPEN_STAGES = frozenset({Stage.CREATING, Stage.AWAITING_APPROVAL})
COMMAND_WAITING = frozenset({"sending", "sent"})
COMMAND_REPORTED = frozenset({"succeeded", "failed"})


class CallbackBody(BaseModel):
    """The body a downstream system posts; which command it answers comes from the token."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    status: Literal["succeeded", "failed"]
    result: dict[str, Any] | None = None
    error: str | None = Field(None, max_length=4000)


class CallbacksApi:
    """Handlers and the policy they share; ``create_app`` wires them into an application."""

    def __init__(
        self,
        settings: Settings,
        processes: Processes,
        metrics: Metrics,
        decision_wait: timedelta,
    ) -> None:
        self._settings = settings
        self._processes = processes
        self._metrics = metrics
        self._decision_wait = decision_wait

    # -- approvals -----------------------------------------------------------------------------

    async def show_approval(self, request: web.Request) -> web.Response:
        """The confirmation page. Reads state only: opening a link never decides anything."""
        token = request.match_info["token"]
        claims = self._verify(token, Purpose.APPROVAL)
        state = await self._processes.state(claims.workflow_id)
        refusal = approval_refusal(state)
        if refusal is not None:
            raise refusal
        logger.info(
            "Approval page shown token=%s",
            fingerprint(token),
            extra={"process_id": claims.workflow_id},
        )
        check = self._form_check(token)
        preselect = request.query.get("decision")
        return _html(200, pages.confirmation_page(state, check, preselect))

    async def decide_approval(self, request: web.Request) -> web.Response:
        """Record a decision, then report the decision that won.

        The state is read before signalling so a later click hears the truth (409, with the
        earlier decision). After signalling, the state is polled for up to ``decision_wait``
        until the workflow shows a decision: when two first clicks race, the workflow keeps one
        and this tells the loser so instead of claiming success. Unconfirmed by then: 202.
        """
        token = request.match_info["token"]
        claims = self._verify(token, Purpose.APPROVAL)
        process_id = claims.workflow_id
        _require_content_type(request, FORM_CONTENT_TYPE)
        if request.headers.get("Sec-Fetch-Site") == "cross-site":
            raise Problem(
                403,
                "cross-site",
                "Decision refused",
                "Decisions are only taken from the approval page itself.",
            )
        decision = self._parse_decision(await _read_body(request, self._max_bytes), token)

        state = await self._processes.state(process_id)
        if state.approval.decision is not None and _is_ours(state, decision):
            # The same decision again (a double click, a retry after a 503): it is the one
            # recorded, so say so rather than "someone else decided".
            return _html(200, pages.recorded_page(state))
        refusal = approval_refusal(state)
        if refusal is not None:
            raise refusal
        # Only a process still open for a decision is signalled, so repeated posts cannot
        # grow its history.
        await self._signal(process_id, APPROVAL_SIGNAL, decision, approval_refusal)
        logger.info(
            "Approval decision sent token=%s approved=%s decided_by=%r",
            fingerprint(token),
            decision.approved,
            decision.decided_by,
            extra={"process_id": process_id},
        )

        seen, settled = await self._processes.wait_for(
            process_id, lambda s: approval_refusal(s) is not None, within=self._decision_wait
        )
        if seen is None or not settled:
            return _html(202, pages.pending_page(seen or state))
        if seen.approval.decision is not None and _is_ours(seen, decision):
            return _html(200, pages.recorded_page(seen))
        refusal = approval_refusal(seen, raced=True)
        assert refusal is not None  # settled means a refusal exists
        raise refusal

    def _parse_decision(self, body: bytes, token: str) -> ApprovalDecision:
        try:
            fields = parse_qs(body.decode("utf-8"), max_num_fields=20, strict_parsing=bool(body))
        except (UnicodeDecodeError, ValueError) as err:
            raise _malformed_form("The form could not be read.") from err
        if any(len(values) > 1 for values in fields.values()):
            raise _malformed_form("A field was sent more than once.")
        form = {name: values[0] for name, values in fields.items()}

        check = form.get("check")
        if check is None:
            raise _malformed_form("The form is incomplete; open the link again and resubmit.")
        if not self._check_matches(token, check):
            raise Problem(
                403,
                "invalid-form",
                "Decision refused",
                "The form does not belong to this link; open the link again and resubmit.",
            )
        choice = form.get("decision")
        if choice not in ("approve", "reject"):
            raise _malformed_form("Choose Approve or Reject.")
        # Collapse whitespace so a name cannot carry line breaks into logs or pages.
        name = " ".join(form.get("name", "").split()) or pages.DEFAULT_APPROVER
        comment = form.get("comment", "").strip() or None
        try:
            return ApprovalDecision(approved=choice == "approve", decided_by=name, comment=comment)
        except ValidationError as err:
            raise _malformed_form(
                "The name may have at most 200 characters and the comment at most 2000."
            ) from err

    def _form_check(self, token: str) -> str:
        """A hidden form value only our page can produce, tying a POST to the page for its link.

        The token in the path already authorises; this stops a bare POST to a harvested link
        (a scanner, a crafted form elsewhere) from deciding without the page ever being shown.
        """
        return form_check(self._settings.signing_keys[0].secret, token)

    def _check_matches(self, token: str, check: str) -> bool:
        # Any listed key, so pages rendered just before a key rotation still submit.
        return any(
            hmac.compare_digest(form_check(key.secret, token), check)
            for key in self._settings.signing_keys
        )

    # -- command callbacks ---------------------------------------------------------------------

    async def command_callback(self, request: web.Request) -> web.Response:
        """A downstream system's result for one command; 202 once the signal is delivered."""
        token = request.match_info["token"]
        claims = self._verify(token, Purpose.COMMAND)
        process_id = claims.workflow_id
        command = CommandName(claims.callback)
        _require_content_type(request, JSON_CONTENT_TYPE)
        body = await _read_body(request, self._max_bytes)
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
        await self._signal(
            process_id, COMMAND_SIGNAL, callback, lambda s: command_refusal(s, command)
        )
        logger.info(
            "Command callback sent token=%s command=%s status=%s",
            fingerprint(token),
            command.value,
            payload.status,
            extra={"process_id": process_id},
        )
        return web.json_response(accepted, status=202)

    # -- health and readiness ------------------------------------------------------------------

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(self, request: web.Request) -> web.Response:
        if await self._processes.ready():
            return web.json_response({"status": "ready"})
        raise problems.temporal_unavailable()

    # -- shared --------------------------------------------------------------------------------

    @property
    def _max_bytes(self) -> int:
        return self._settings.max_callback_bytes

    def _verify(self, token: str, purpose: Purpose) -> TokenClaims:
        try:
            claims = self._settings.signer.verify(token, purpose)
        except TokenExpired as err:
            logger.info("Expired %s token=%s", purpose.value, fingerprint(token))
            raise problems.expired_token() from err
        except TokenInvalid as err:
            logger.warning("Refused %s token=%s: %s", purpose.value, fingerprint(token), err)
            raise problems.invalid_token() from err
        # Well signed but naming something this route cannot signal: refused all the same.
        if purpose is Purpose.APPROVAL:
            known = claims.callback == APPROVAL_CALLBACK
        else:
            known = claims.callback in {name.value for name in CommandName}
        if not known or not claims.workflow_id.startswith(PROCESS_ID_PREFIX):
            logger.warning(
                "Refused %s token=%s naming callback %r",
                purpose.value,
                fingerprint(token),
                claims.callback,
                extra={"process_id": claims.workflow_id},
            )
            raise problems.invalid_token()
        return claims

    async def _signal(
        self,
        process_id: str,
        signal: str,
        message: ApprovalDecision | CommandCallback,
        refusal_for: Callable[[ProcessState], Problem | None],
    ) -> None:
        """Signal, telling "closed meanwhile" apart from "unknown" when the server refuses."""
        try:
            if isinstance(message, ApprovalDecision):
                await self._processes.signal_approval(process_id, message)
            else:
                await self._processes.signal_command(process_id, message)
        except Problem as problem:
            self._metrics.signals.labels(signal, problem.kind).inc()
            if problem.kind != "unknown-process":
                raise
            # The process closed between the state query and the signal (NOT_FOUND either way).
            state = await self._processes.state(process_id)
            raise refusal_for(state) or problem from None
        self._metrics.signals.labels(signal, "sent").inc()

    @web.middleware
    async def errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Every failure becomes a page or a problem document; no stack trace leaves the process."""
        try:
            return await handler(request)
        except Problem as problem:
            return _render(request, problem)
        except web.HTTPException as err:
            if err.status < 400:
                raise
            return _render(request, problems.from_http_exception(err))
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("Unhandled error on %s %s", request.method, route_name(request))
            return _render(request, problems.internal_error())


def approval_refusal(state: ProcessState, *, raced: bool = False) -> Problem | None:
    """Why a decision cannot be recorded now, or None while the process still takes one."""
    approval = state.approval
    if approval.decision is not None:
        who = approval.decided_by or "someone"
        decided = f"request was already {approval.decision} by {who}."
        told = f"Another decision arrived first: this {decided}" if raced else f"This {decided}"
        return Problem(
            409,
            "already-decided",
            "Already decided",
            f"{told} Only the first decision counts; yours was not recorded.",
            state=state,
            extra={
                "decision": approval.decision,
                "decided_by": approval.decided_by,
                "decided_at": approval.decided_at.isoformat() if approval.decided_at else None,
            },
        )
    if state.status.is_final or state.stage not in APPROVAL_OPEN_STAGES:
        if state.failure_reason is FailureReason.APPROVAL_TIMEOUT:
            detail = "The time to decide ran out before a decision arrived; nothing was recorded."
        else:
            detail = "The process is no longer waiting for a decision; nothing was recorded."
        return Problem(410, "closed", "This request is closed", detail, state=state)
    return None


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


def _is_ours(state: ProcessState, decision: ApprovalDecision) -> bool:
    approval = state.approval
    return (
        approval.decision == ("approved" if decision.approved else "rejected")
        and approval.decided_by == decision.decided_by
        and approval.comment == decision.comment
    )


def form_check(secret: str, token: str) -> str:
    """The approval form's hidden check for ``token`` under one signing key's secret."""
    return hmac.new(
        secret.encode(), b"approval-form\x00" + token.encode(), hashlib.sha256
    ).hexdigest()


def _require_content_type(request: web.Request, expected: str) -> None:
    if request.content_type != expected:
        raise Problem(
            415,
            "unsupported-media-type",
            "Unsupported content type",
            f"Send the body as {expected}.",
            headers={"Accept-Post": expected},
        )


async def _read_body(request: web.Request, limit: int) -> bytes:
    # Refuse a declared oversize body before reading it; read() enforces the same limit for
    # chunked bodies (client_max_size) and raises 413 itself.
    if request.content_length is not None and request.content_length > limit:
        raise problems.from_http_exception(
            web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=request.content_length)
        )
    return await request.read()


def _malformed_form(detail: str) -> Problem:
    return Problem(400, "malformed-form", "The form could not be used", detail)


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


def _html(status: int, text: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, text=text, content_type="text/html", headers=headers)


def _render(request: web.Request, problem: Problem) -> web.Response:
    if request.path.startswith(APPROVALS_PREFIX):
        return _html(problem.status, pages.problem_page(problem), problem.headers)
    return problems.problem_response(problem)


async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    for name, value in pages.SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)


class RedactingAccessLogger(AbstractAccessLogger):
    """Access log lines with the route pattern instead of the path, which holds the token."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        self.logger.info(
            "%s %s %s %s %.3fs",
            request.remote,
            request.method,
            route_name(request),
            response.status,
            time,
        )


def create_app(
    settings: Settings,
    client: Client,
    *,
    decision_wait: timedelta = timedelta(seconds=2),
    temporal_timeout: timedelta = timedelta(seconds=5),
) -> web.Application:
    """The application; ``client`` must use the pydantic data converter, as the worker does."""
    metrics = Metrics()
    api = CallbacksApi(settings, Processes(client, temporal_timeout), metrics, decision_wait)
    app = web.Application(
        middlewares=[metrics.middleware, api.errors],
        client_max_size=settings.max_callback_bytes,
    )
    app.on_response_prepare.append(_security_headers)
    app.router.add_get("/approvals/{token}", api.show_approval)
    app.router.add_post("/approvals/{token}", api.decide_approval)
    app.router.add_post("/callbacks/{token}", api.command_callback)
    app.router.add_get("/healthz", api.healthz)
    app.router.add_get("/readyz", api.readyz)
    app.router.add_get("/metrics", metrics.handle)
    return app
