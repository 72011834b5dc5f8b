"""Approval pages, for people: open the mailed link, see the request, confirm a decision.

A GET never signals: mail scanners open links before people do. Only the form the page shows
records a decision, and every answer is checked against the process's ``state`` query first, so
the page says what is true: recorded, already decided, closed, unknown, or invalid. Refusals are
pages too (this sub-app's error middleware), since a person reads them.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Sequence
from datetime import timedelta
from urllib.parse import parse_qs

from aiohttp import web
from pydantic import ValidationError

from callbacks_api import links, pages, problems
from callbacks_api.bodies import read_body, require_content_type
from callbacks_api.problems import Problem
from callbacks_api.processes import Processes
from common.settings import Settings
from common.tokens import Purpose, SigningKey, fingerprint
from workflows.messages import ApprovalDecision, FailureReason, ProcessState, Stage

logger = logging.getLogger(__name__)

FORM_CONTENT_TYPE = "application/x-www-form-urlencoded"
# A decision can land before the workflow has marked itself as waiting (the mail goes out from
# the activity that precedes the wait), so "creating" still takes one.
APPROVAL_OPEN_STAGES = frozenset({Stage.CREATING, Stage.AWAITING_APPROVAL})


class Approvals:
    """The two handlers of ``/approvals/{token}``: show the page, take its form."""

    def __init__(self, settings: Settings, processes: Processes, decision_wait: timedelta) -> None:
        self._settings = settings
        self._processes = processes
        self._decision_wait = decision_wait

    async def show(self, request: web.Request) -> web.Response:
        """The confirmation page. Reads state only: opening a link never decides anything."""
        token = request.match_info["token"]
        claims = links.verify(self._settings.signer, token, Purpose.APPROVAL)
        state = await self._processes.state(claims.workflow_id)
        refusal = approval_refusal(state)
        if refusal is not None:
            raise refusal
        logger.info(
            "Approval page shown token=%s",
            fingerprint(token),
            extra={"process_id": claims.workflow_id},
        )
        check = form_check(self._settings.signing_keys[0].secret, token)
        preselect = request.query.get("decision")
        return html(200, pages.confirmation_page(state, check, preselect))

    async def decide(self, request: web.Request) -> web.Response:
        """Record a decision, then report the decision that won.

        The state is read before signalling so a later click hears the truth (409, with the
        earlier decision). After signalling, the state is polled for up to ``decision_wait``
        until the workflow shows a decision: when two first clicks race, the workflow keeps one
        and this tells the loser so instead of claiming success. Unconfirmed by then: 202.
        """
        token = request.match_info["token"]
        claims = links.verify(self._settings.signer, token, Purpose.APPROVAL)
        process_id = claims.workflow_id
        require_content_type(request, FORM_CONTENT_TYPE)
        refuse_cross_site(request)
        body = await read_body(request, self._settings.max_callback_bytes)
        decision = read_decision(body, token, self._settings.signing_keys)

        state = await self._processes.state(process_id)
        if state.approval.decision is not None and _is_ours(state, decision):
            # The same decision again (a double click, a retry after a 503): it is the one
            # recorded, so say so rather than "someone else decided".
            return html(200, pages.recorded_page(state))
        refusal = approval_refusal(state)
        if refusal is not None:
            raise refusal
        # Only a process still open for a decision is signalled, so repeated posts cannot
        # grow its history.
        await self._processes.signal(process_id, decision, approval_refusal)
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
            return html(202, pages.pending_page(seen or state))
        if seen.approval.decision is not None and _is_ours(seen, decision):
            return html(200, pages.recorded_page(seen))
        refusal = approval_refusal(seen, raced=True)
        assert refusal is not None  # settled means a refusal exists
        raise refusal


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


def refuse_cross_site(request: web.Request) -> None:
    """Browsers say when a form was posted from another site; such a post decides nothing."""
    if request.headers.get("Sec-Fetch-Site") == "cross-site":
        raise Problem(
            403,
            "cross-site",
            "Decision refused",
            "Decisions are only taken from the approval page itself.",
        )


def read_decision(body: bytes, token: str, keys: Sequence[SigningKey]) -> ApprovalDecision:
    """The decision a posted form carries, once its check shows it came from this link's page."""
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
    # Any listed key, so pages rendered just before a key rotation still submit.
    if not any(hmac.compare_digest(form_check(key.secret, token), check) for key in keys):
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


def form_check(secret: str, token: str) -> str:
    """The approval form's hidden check for ``token`` under one signing key's secret.

    Only our page can produce it, tying a POST to the page for its link. The token in the path
    already authorises; this stops a bare POST to a harvested link (a scanner, a crafted form
    elsewhere) from deciding without the page ever being shown.
    """
    return hmac.new(
        secret.encode(), b"approval-form\x00" + token.encode(), hashlib.sha256
    ).hexdigest()


def _is_ours(state: ProcessState, decision: ApprovalDecision) -> bool:
    approval = state.approval
    return (
        approval.decision == ("approved" if decision.approved else "rejected")
        and approval.decided_by == decision.decided_by
        and approval.comment == decision.comment
    )


def _malformed_form(detail: str) -> Problem:
    return Problem(400, "malformed-form", "The form could not be used", detail)


def html(status: int, text: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, text=text, content_type="text/html", headers=headers)


def problem_page(problem: Problem) -> web.Response:
    """A refusal as a page: a person opened the link."""
    return html(problem.status, pages.problem_page(problem), problem.headers)


def approvals_app(
    settings: Settings, processes: Processes, decision_wait: timedelta
) -> web.Application:
    """The sub-app mounted at ``/approvals``; every refusal under it is a page."""
    approvals = Approvals(settings, processes, decision_wait)
    app = web.Application(middlewares=[problems.error_middleware(problem_page)])
    app.router.add_get("/{token}", approvals.show)
    app.router.add_post("/{token}", approvals.decide)
    return app
