"""Approval pages, for people: open the mailed link, see the request, confirm a decision.

A GET never signals: mail scanners open links before people do. Only the form the page shows
records a decision, in post/redirect/get: the POST signals the decision at once (a signal needs
no worker and is durable once the server accepts it) and answers 303 to the link's page, marked
with a check that only this API can make after delivering that decision. The page reads the
process's ``state`` once and says what is true: recorded, already decided by someone else,
still being recorded (no worker answered), closed, unknown, or invalid. Refusals are pages too
(this sub-app's error middleware), since a person reads them.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from urllib.parse import parse_qs, urlencode

from aiohttp import web
from pydantic import ValidationError
from temporalio.client import WorkflowExecutionStatus

from callbacks_api import links, pages, problems
from callbacks_api.bodies import (
    LINE_BREAKS_AND_TABS,
    control_character,
    read_body,
    require_content_type,
)
from callbacks_api.deliveries import Delivered, Outcome, RecentDeliveries, digest_of
from callbacks_api.problems import Problem
from callbacks_api.processes import Processes
from common.closed import CLOSED_BY_TEMPORAL, temporal_status_name
from common.settings import Settings
from common.tokens import Purpose, SigningKey, fingerprint
from workflows.messages import (
    APPROVAL_CALLBACK,
    ApprovalDecision,
    ApproverState,
    FailureReason,
    ProcessState,
    Stage,
)

logger = logging.getLogger(__name__)

FORM_CONTENT_TYPE = "application/x-www-form-urlencoded"
# The query parameter of the page a decision redirects to.
SUBMITTED = "submitted"
# A decision can land before the workflow has marked itself as waiting (the mail goes out from
# the activity that precedes the wait), so "creating" still takes one.
APPROVAL_OPEN_STAGES = frozenset({Stage.CREATING, Stage.AWAITING_APPROVAL})


class Approvals:
    """The two handlers of ``/approvals/{token}``: show the page, take its form."""

    def __init__(
        self,
        settings: Settings,
        processes: Processes,
        deliveries: RecentDeliveries,
        decision_wait: timedelta,
    ) -> None:
        self._settings = settings
        self._processes = processes
        self._deliveries = deliveries
        self._decision_wait = decision_wait

    async def show(self, request: web.Request) -> web.Response:
        """The confirmation page, or after a decision its outcome. Reads state only: opening a
        link never decides anything."""
        token = request.match_info["token"]
        claims = links.verify(self._settings.signer, token, Purpose.APPROVAL)
        submitted = read_submitted(request.query.get(SUBMITTED), token, self._settings.signing_keys)
        if submitted is not None:
            return await self._outcome(claims.workflow_id, token, submitted, claims.approver)
        state = await self._processes.state(claims.workflow_id)
        refusal = approver_refusal(state, claims.approver) or approval_refusal(state)
        if refusal is not None:
            raise refusal
        logger.info(
            "Approval page shown token=%s",
            fingerprint(token),
            extra={"process_id": claims.workflow_id},
        )
        check = form_check(self._settings.signing_keys[0].secret, token)
        preselect = request.query.get("decision")
        return html(200, pages.confirmation_page(state, check, preselect, claims.approver))

    async def decide(self, request: web.Request) -> web.Response:
        """Signal the decision, then send the browser to the page that shows what came of it.

        Nothing is read before signalling: the workflow keeps the first decision and ignores
        the rest, so a signal is always safe. A second, different decision on a link this API
        already delivered one through is refused here (409) and not sent; a repeat of the
        delivered one is redirected like the first.
        """
        token = request.match_info["token"]
        claims = links.verify(self._settings.signer, token, Purpose.APPROVAL)
        process_id = claims.workflow_id
        require_content_type(request, FORM_CONTENT_TYPE)
        refuse_cross_site(request)
        body = await read_body(request, self._settings.max_callback_bytes)
        decision = read_decision(body, token, self._settings.signing_keys)
        if claims.approver is not None:
            # A named approver's own link: the token says whose decision this is, whatever the
            # form says (their page asks no name; the workflow names them from its policy).
            decision = decision.model_copy(
                update={"approver_id": claims.approver, "decided_by": claims.approver}
            )

        delivery = Delivered(digest_of(decision), describe_decision(decision), claims.expires_at)
        outcome, first = await self._deliveries.deliver(
            # One link per approver: each named approver's first decision is delivered.
            (process_id, APPROVAL_CALLBACK, claims.approver or ""),
            delivery,
            lambda: self._processes.signal(process_id, decision),
        )
        if outcome is Outcome.CONFLICT:
            once = "Each approver decides once" if claims.approver else "Only the first counts"
            raise Problem(
                409,
                "already-decided",
                "Already decided",
                f"A decision was already sent through this link: {first.label}. {once}; "
                "yours was not sent.",
                extra={"approver": claims.approver} if claims.approver else None,
            )
        if outcome is Outcome.SENT:
            logger.info(
                "Approval decision sent token=%s approved=%s decided_by=%r",
                fingerprint(token),
                decision.approved,
                decision.decided_by,
                extra={"process_id": process_id},
            )
        mark = submitted_mark(self._settings.signing_keys[0].secret, token, decision)
        # A reference relative to this URL: the same page, wherever a proxy mounts the API.
        # Returned, not raised, so the metrics middleware counts a 303.
        return web.Response(status=303, headers={"Location": f"?{urlencode({SUBMITTED: mark})}"})

    async def _outcome(
        self, process_id: str, token: str, submitted: Submitted, approver: str | None
    ) -> web.Response:
        """The page after a decision was delivered: read the state once and tell the outcome."""
        state = await self._read_after_decision(process_id)
        if state is None:
            # Delivered, and nothing handles it yet: it waits in the process's history and is
            # handled as soon as a worker runs.
            return html(202, pages.pending_page(None))
        if approver is not None:
            return self._approver_outcome(state, token, submitted, approver)
        refusal = approver_refusal(state, None)
        if refusal is not None:
            raise refusal
        if state.approval.decision is not None:
            if submitted.matches(token, recorded_decision(state)):
                return html(200, pages.recorded_page(state))
            refusal = approval_refusal(state, raced=True)
            assert refusal is not None  # a decision is recorded
            raise refusal
        refusal = approval_refusal(state)
        if refusal is not None:
            raise refusal
        return html(202, pages.pending_page(state))

    def _approver_outcome(
        self, state: ProcessState, token: str, submitted: Submitted, approver: str
    ) -> web.Response:
        """A named approver's decision counts on its own, settled or not: tell them theirs."""
        mine = state.approval.approver(approver)
        if mine is not None and mine.decision is not None:
            if submitted.matches(token, approver_decision(mine)):
                return html(200, pages.recorded_page(state, approver))
            refusal = approver_refusal(state, approver)
            assert refusal is not None  # they decided, and not this
            raise refusal
        refusal = approver_refusal(state, approver) or approval_refusal(state, raced=True)
        if refusal is not None:
            raise refusal
        return html(202, pages.pending_page(state))

    async def _read_after_decision(self, process_id: str) -> ProcessState | None:
        """The state once the worker has handled the decision, or None while no worker runs.

        The query (it needs a worker) and a look at whether any worker is there (the server
        answers that) start together. With no worker, the page says "being recorded" at once;
        with one, it waits up to ``decision_wait`` for the answer, as a client that signals and
        then queries would under a burst of decisions.
        """
        # Not explained: no answer here means "being recorded", whichever the reason.
        query = asyncio.ensure_future(
            self._processes.state(process_id, within=self._decision_wait, explain=False)
        )
        presence = asyncio.ensure_future(self._worker_present(process_id))
        try:
            await asyncio.wait({query, presence}, return_when=asyncio.FIRST_COMPLETED)
            if not query.done():
                present = await presence
                if present is False:
                    return None
                if present is None:  # ended meanwhile, and no worker can show how
                    raise outcome_unknown()
            return await query
        except Problem as problem:
            if problem.kind == "no-worker-answer":
                return None
            if problem.kind == "closed":
                raise  # Temporal closed it by itself: the decision changes nothing any more
            # The decision was delivered (the signal was accepted), whatever the read says: a
            # refused or failed read never means "nothing was recorded".
            raise outcome_unknown() from None
        finally:
            for task in (query, presence):
                task.cancel()
                # Whatever it raised, nobody needs it any more; do not log it as lost.
                task.add_done_callback(lambda done: done.cancelled() or done.exception())

    async def _worker_present(self, process_id: str) -> bool | None:
        """Whether a worker can answer for the process; None if it ended with none to show it.

        Processes run on the configured task queue, so a worker polling it answers at once,
        from a cached look shared by every page (a burst of 500 asks the server once, and no
        process is described). Otherwise the process's own description decides.
        """
        if await self._processes.polled(self._settings.task_queue):
            return True
        description = await self._processes.describe(process_id)
        if description.status in CLOSED_BY_TEMPORAL:
            # Terminated or timed out: whatever a worker would show, the decision changes nothing.
            raise problems.closed_by_temporal(temporal_status_name(description.status))
        if await self._processes.has_worker(description):
            return True
        return False if description.status == WorkflowExecutionStatus.RUNNING else None


def outcome_unknown() -> Problem:
    """A delivered decision whose outcome cannot be read right now."""
    return Problem(
        503,
        "outcome-unknown",
        "Decision sent",
        "Your decision was delivered, but what became of it cannot be read right now. "
        "Open this link again in a minute to see the outcome.",
        headers={"Retry-After": "5"},
    )


def approval_refusal(state: ProcessState, *, raced: bool = False) -> Problem | None:
    """Why a decision cannot be recorded now, or None while the process still takes one."""
    approval = state.approval
    if approval.decision is not None:
        # Rejected with nobody named: the deadline passed under on_timeout "reject".
        by = f" by {approval.decided_by}" if approval.decided_by else " when its time ran out"
        decided = f"request was already {approval.decision}{by}."
        told = f"Another decision arrived first: this {decided}" if raced else f"This {decided}"
        named = any(a.role != "anyone" for a in approval.approvers)
        counts = "It is settled" if named else "Only the first decision counts"
        # Only a visitor who sent a decision (raced) has one that was not recorded.
        ours = "; yours was not recorded." if raced else "."
        return Problem(
            409,
            "already-decided",
            "Already decided",
            f"{told} {counts}{ours}",
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


def approver_refusal(state: ProcessState, approver: str | None) -> Problem | None:
    """Why a link cannot decide for its approver: none of this process's, or decided already.

    A link without an approver (the shared kind) has no say once a process names approvers.
    """
    if approver is None:
        if any(a.role != "anyone" for a in state.approval.approvers):
            return Problem(
                403,
                "not-an-approver",
                "This link cannot decide",
                "This request is decided by its named approvers, each through their own link; "
                "nothing was recorded.",
            )
        return None
    mine = state.approval.approver(approver)
    if mine is None:
        return Problem(
            403,
            "not-an-approver",
            "This link cannot decide",
            "The link names an approver this process does not have; nothing was recorded.",
        )
    if mine.decision is None:
        return None
    when = mine.decided_at.strftime("%Y-%m-%d %H:%M UTC") if mine.decided_at else "earlier"
    return Problem(
        409,
        "already-decided",
        "Already decided",
        f"You already {mine.decision} this request ({when}). Each approver decides once; "
        "this decision was not recorded.",
        state=state,
        extra={
            "approver": approver,
            "decision": mine.decision,
            "decided_by": mine.decided_by,
            "decided_at": mine.decided_at.isoformat() if mine.decided_at else None,
        },
    )


def approver_decision(approver: ApproverState) -> ApprovalDecision | None:
    """A named approver's recorded decision, as the API signalled it (``decided_by``: their id)."""
    if approver.decision is None:
        return None
    return ApprovalDecision(
        approved=approver.decision == "approved",
        decided_by=approver.id,
        comment=approver.comment,
        approver_id=approver.id,
    )


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
        # errors="strict": percent-encoded bytes that are not UTF-8 (%ff) are refused as raw
        # ones are, not recorded as U+FFFD in place of what the person typed.
        fields = parse_qs(
            body.decode("utf-8"), max_num_fields=20, strict_parsing=bool(body), errors="strict"
        )
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
    # Both are printed in operators' terminals (``approval-flow status``): an escape sequence
    # there could rewrite or hide what they read, so it is refused, not recorded. A comment
    # keeps its line breaks (a textarea sends CR LF).
    for field, text, allowed in (("name", name, ""), ("comment", comment, LINE_BREAKS_AND_TABS)):
        found = control_character(text or "", allowed)
        if found is not None:
            raise _malformed_form(
                f"The {field} contains a control character ({found}), such as a terminal "
                "escape; remove it and resubmit."
            )
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


def describe_decision(decision: ApprovalDecision) -> str:
    return f"{'approved' if decision.approved else 'rejected'} by {decision.decided_by}"


def recorded_decision(state: ProcessState) -> ApprovalDecision | None:
    """The decision the process recorded, as the signal that carried it."""
    approval = state.approval
    if approval.decision is None:
        return None
    return ApprovalDecision(
        approved=approval.decision == "approved",
        decided_by=approval.decided_by or pages.DEFAULT_APPROVER,
        comment=approval.comment,
    )


def _mac(secret: str, purpose: bytes, *parts: str) -> str:
    message = b"\x00".join([purpose, *(part.encode() for part in parts)])
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()[:32]


def submitted_mark(secret: str, token: str, decision: ApprovalDecision) -> str:
    """The mark on the page a delivered decision redirects to: ``<decision>.<delivered>``.

    The first half is a keyed digest of the decision, so the page can tell whether the one the
    process recorded is this one without the name or comment in the URL. The second half vouches
    that this API delivered it, so a hand-made URL cannot make the page say "being recorded".
    """
    content = json.dumps([decision.approved, decision.decided_by, decision.comment])
    ours = _mac(secret, b"approval-decision", token, content)
    return f"{ours}.{_mac(secret, b'approval-delivered', token, ours)}"


@dataclass(frozen=True)
class Submitted:
    """A verified mark: this API delivered a decision through the link, under ``secret``."""

    secret: str
    mark: str

    def matches(self, token: str, decision: ApprovalDecision | None) -> bool:
        if decision is None:
            return False
        return hmac.compare_digest(submitted_mark(self.secret, token, decision), self.mark)


def read_submitted(mark: str | None, token: str, keys: Sequence[SigningKey]) -> Submitted | None:
    """The mark if one of our keys vouches for it; anything else shows the plain page."""
    if not mark or mark.count(".") != 1:
        return None
    ours, delivered = mark.split(".")
    for key in keys:  # any listed key: a redirect may straddle a key rotation
        if hmac.compare_digest(_mac(key.secret, b"approval-delivered", token, ours), delivered):
            return Submitted(key.secret, mark)
    return None


def _malformed_form(detail: str) -> Problem:
    return Problem(400, "malformed-form", "The form could not be used", detail)


def html(status: int, text: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, text=text, content_type="text/html", headers=headers)


def problem_page(problem: Problem) -> web.Response:
    """A refusal as a page: a person opened the link (a named approver's: "you" on it)."""
    approver = problem.extra.get("approver")
    page = pages.problem_page(problem, approver if isinstance(approver, str) else None)
    return html(problem.status, page, problem.headers)


def approvals_app(
    settings: Settings,
    processes: Processes,
    deliveries: RecentDeliveries,
    decision_wait: timedelta,
) -> web.Application:
    """The sub-app mounted at ``/approvals``; every refusal under it is a page."""
    approvals = Approvals(settings, processes, deliveries, decision_wait)
    app = web.Application(middlewares=[problems.error_middleware(problem_page)])
    app.router.add_get("/{token}", approvals.show)
    app.router.add_post("/{token}", approvals.decide)
    return app
