"""Every refusal the API gives, as one exception type rendered twice.

Handlers raise ``Problem``; each audience's error middleware renders it: an HTML page on the
approval routes (people read those), ``application/problem+json`` (RFC 9457) everywhere else
(programs read those).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Mapping
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Middleware

from callbacks_api.metrics import Handler, route_name
from workflows.messages import ProcessState

logger = logging.getLogger(__name__)

PROBLEM_CONTENT_TYPE = "application/problem+json"
# RFC 9457 wants an absolute URI; a tag URI names the kind without promising a page behind it.
PROBLEM_TYPE_PREFIX = "tag:approval-flow,2025:problem:"


class Problem(Exception):
    """A truthful refusal: an HTTP status, a stable ``kind`` and words for a person."""

    def __init__(
        self,
        status: int,
        kind: str,
        title: str,
        detail: str,
        *,
        state: ProcessState | None = None,
        extra: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        nothing_recorded: bool = False,
        close_connection: bool = False,
    ) -> None:
        super().__init__(f"{status} {kind}: {detail}")
        self.status = status
        self.kind = kind
        self.title = title
        self.detail = detail
        # The process as last seen, so an "already decided" page can say who decided what.
        self.state = state
        self.extra = dict(extra or {})
        self.headers = dict(headers or {})
        # A 503 that knows for sure its message was not recorded: no connection to Temporal was
        # made, or the server refused the signal. Any other 503 of a send may have landed
        # (``callbacks_api.deliveries`` holds its link as unconfirmed). 4xx and 500 are sure.
        self.nothing_recorded = nothing_recorded
        # The request left the connection unusable (its body could not be framed): answer, then
        # close it rather than read the next request from the remains.
        self.close_connection = close_connection

    def __reduce__(self) -> tuple[Any, ...]:
        # ``copy.copy`` (and pickle) rebuild from this: the one-string ``args`` would not do.
        return (
            _rebuild,
            (
                self.status,
                self.kind,
                self.title,
                self.detail,
                self.state,
                self.extra,
                self.headers,
                self.nothing_recorded,
                self.close_connection,
            ),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "type": PROBLEM_TYPE_PREFIX + self.kind,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
            **self.extra,
        }


def _rebuild(
    status: int,
    kind: str,
    title: str,
    detail: str,
    state: ProcessState | None,
    extra: Mapping[str, Any],
    headers: Mapping[str, str],
    nothing_recorded: bool,
    close_connection: bool,
) -> Problem:
    return Problem(
        status,
        kind,
        title,
        detail,
        state=state,
        extra=extra,
        headers=headers,
        nothing_recorded=nothing_recorded,
        close_connection=close_connection,
    )


def problem_response(problem: Problem) -> web.Response:
    return web.Response(
        status=problem.status,
        body=json.dumps(problem.to_json()).encode(),
        content_type=PROBLEM_CONTENT_TYPE,
        headers=problem.headers,
    )


# The refusals shared by both routes; each route adds its own (already decided, not waiting).


def invalid_token() -> Problem:
    return Problem(
        403,
        "invalid-token",
        "This link is not valid",
        "The link is damaged, was signed with a key we no longer accept, or belongs elsewhere.",
    )


def expired_token() -> Problem:
    return Problem(
        410,
        "expired",
        "This link has expired",
        "The wait it belonged to is over, so nothing can be recorded through it any more.",
    )


def unknown_process() -> Problem:
    return Problem(
        404,
        "unknown-process",
        "No such process",
        "The process this link names does not exist (it may have been purged).",
    )


def temporal_unavailable() -> Problem:
    return Problem(
        503,
        "temporal-unavailable",
        "Service temporarily unavailable",
        "The workflow service did not answer in time. Nothing was recorded; try again shortly.",
        headers={"Retry-After": "5"},
    )


def temporal_not_connected() -> Problem:
    """No connection to Temporal could be made, so no request left this API: nothing can have
    been recorded. (The SDK says so only for a client that never connected; one that was
    connected retries a refused connection inside the call, so an earlier try may have landed.)"""
    return Problem(
        503,
        "temporal-unavailable",
        "Service temporarily unavailable",
        "The workflow service could not be reached (no connection could be made), so nothing "
        "was sent. Nothing was recorded; try again shortly.",
        headers={"Retry-After": "5"},
        nothing_recorded=True,
    )


def no_worker_answer(why: str = "no worker answered in time", *, lasting: bool = False) -> Problem:
    """The server took the state query, but no worker answered it in time. ``why`` says what
    the server showed then (``common.unanswered``): none runs, or the one running is busy.
    ``lasting``: it lasts until an operator acts (the process's build runs nowhere), so the page
    does not say that trying again shortly helps."""
    then = "trying again helps only once they have" if lasting else "try again shortly"
    return Problem(
        503,
        "no-worker-answer",
        "Service temporarily unavailable",
        f"The process could not be read just now ({why}). Nothing was recorded; {then}.",
        headers={"Retry-After": "5"},
    )


def process_not_ready() -> Problem:
    """The server cannot have the process read yet: its workflow task keeps failing (a worker
    crashing or stopped, a bad deploy) or is not scheduled yet. It passes once a worker runs it."""
    return Problem(
        503,
        "not-ready",
        "Service temporarily unavailable",
        "The process cannot be read just now (it is not ready to answer). Try again shortly.",
        headers={"Retry-After": "5"},
    )


def process_closed(status: str) -> Problem:
    """The process has ended, so a signal to it was refused: nothing was recorded."""
    return Problem(
        410,
        "closed",
        "This process has ended",
        f"The process has ended (status {status}); nothing more can be recorded for it, "
        "and this was not recorded.",
        extra={"process_status": status},
    )


def closed_by_temporal(status: str) -> Problem:
    """Temporal closed the process by itself (terminated, timed out): none of its code ran to
    say so, so its own state still shows it waiting (``common.closed``)."""
    return Problem(
        410,
        "closed",
        "This process has ended",
        f"The process was closed in Temporal (status {status}) before it finished: it takes "
        "no decision or result any more, and nothing more will come of it.",
        extra={"process_status": status},
    )


def bad_request() -> Problem:
    """A request aiohttp could not parse: a request line or header over 8 KB, or not HTTP."""
    return Problem(
        400,
        "bad-request",
        "Bad request",
        "The request could not be read: its request line or a header is longer than 8 KB, "
        "or it is not valid HTTP.",
    )


def delivery_unknown() -> Problem:
    """A signal the server did not acknowledge in time: it may or may not have arrived."""
    return Problem(
        503,
        "temporal-unavailable",
        "Service temporarily unavailable",
        "The workflow service did not confirm it received this, so it may or may not have been "
        "recorded. Sending it again is safe: only the first one counts.",
        headers={"Retry-After": "5"},
    )


def earlier_message_unconfirmed() -> Problem:
    """A different message on a link whose earlier send may or may not have arrived."""
    return Problem(
        503,
        "earlier-message-unconfirmed",
        "Service temporarily unavailable",
        "An earlier, different message sent through this link may or may not have been "
        "recorded (the workflow service did not confirm it), and only the first one counts. "
        "Yours was not sent. Try again later: once the earlier one is sent again and confirmed "
        "you will be told which one counts; after two minutes without that, yours is sent.",
        headers={"Retry-After": "5"},
    )


def signal_limit() -> Problem:
    """Temporal takes no more signals for this run (its per-run limit): nothing more can land."""
    return Problem(
        409,
        "signal-limit",
        "This process takes no more messages",
        "The process has received as many messages as the workflow service allows one run, so "
        "this one was refused and not recorded. Sending it again will not help.",
    )


def too_large_for_temporal() -> Problem:
    """The workflow service's payload limit is below this API's body limit."""
    return Problem(
        413,
        "too-large",
        "Request body too large",
        "The workflow service refused this message as larger than its payload limit; nothing "
        "was recorded. Send a smaller one.",
    )


def temporal_refused() -> Problem:
    """The workflow service refused a signal for good, for a reason of ours (see the log)."""
    return Problem(
        500,
        "temporal-refused",
        "Something went wrong",
        "The workflow service refused the message, and would refuse it again; nothing was "
        "recorded. The service's log names the cause.",
    )


def temporal_refused_read() -> Problem:
    """The workflow service refused to read a process, for a reason of ours (see the log)."""
    return Problem(
        500,
        "temporal-refused",
        "Something went wrong",
        "The workflow service refused to read the process, and would refuse it again. The "
        "service's log names the cause.",
    )


def internal_error() -> Problem:
    return Problem(
        500,
        "internal-error",
        "Something went wrong",
        "The request could not be handled. Nothing is known to have been recorded.",
    )


def from_http_exception(err: web.HTTPException) -> Problem:
    """aiohttp's own refusals (405, 413, unknown path...) in our shape."""
    kinds = {
        404: ("not-found", "Not found", "There is nothing at this address."),
        405: (
            "method-not-allowed",
            "Method not allowed",
            "This address does not take that method.",
        ),
        413: (
            "too-large",
            "Request body too large",
            "The request body is larger than this service accepts.",
        ),
    }
    kind, title, detail = kinds.get(err.status, ("http-error", err.reason, err.reason))
    headers = {"Allow": err.headers["Allow"]} if "Allow" in err.headers else None
    return Problem(err.status, kind, title, detail, headers=headers)


def error_middleware(render: Callable[[Problem], web.Response]) -> Middleware:
    """Every failure becomes ``render(problem)``; no stack trace leaves the process.

    Each audience's sub-app passes its own ``render``, so people get a page and programs a
    problem document, whatever went wrong (aiohttp's own 404 and 405 included).
    """

    @web.middleware
    async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except Problem as problem:
            response = render(problem)
            if problem.close_connection:
                response.force_close()
            return response
        except web.HTTPException as err:
            if err.status < 400:
                raise
            return render(from_http_exception(err))
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("Unhandled error on %s %s", request.method, route_name(request))
            return render(internal_error())

    return errors
