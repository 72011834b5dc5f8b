"""Asking for approval under a policy: mail the approvers, remind them, escalate, until settled.

The workflow side of ``workflows.approval``: the round decides what is due and this sends it,
one activity call per batch of mail, so every request, reminder and escalation is an event in the
process's history (activity ``notify_approvers``, its input naming the kind and the recipients).
Runs inside ``ProcessWorkflow`` from the ``approval-policy`` patch on; processes started before it
replay the original single request and wait.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.converter import PayloadConverter
from temporalio.exceptions import ActivityError, CancelledError

with workflow.unsafe.imports_passed_through():
    from activities.notifications import ApprovalNotifier
    from common.tracing import TEMPORAL_TRACE_HEADER, TRACEPARENT
    from workflows.approval import ApprovalRound, NoticeKind
    from workflows.messages import (
        ANYONE,
        Approver,
        LinkTrace,
        NotifyApprovers,
        ProcessInput,
        PublishApprovalRequest,
    )
    from workflows.waiting import wait_until

# Processes started from this patch on ask under their ApprovalPolicy (named approvers, quorum,
# reminders, escalation); older ones replay the original's one mail and one wait.
APPROVAL_POLICY_PATCH = "approval-policy"
# From this patch on every approval link carries the process's own trace context, so a decision
# made through any of them (a named approver's, a reminder's) lands in the process's trace.
# Before it, only the shared link of the first mail did (the publishing activity's), and named
# approvers' links carried none: their decisions were traces of their own.
APPROVAL_LINKS_TRACED_PATCH = "approval-links-traced"


def process_link_trace() -> LinkTrace:
    """The trace the process runs in, as its starter's tracing interceptor wrote it into the
    start's headers. Read from the history, so it is the same on every replay and for every
    notice: a reminder signs the very link the request did."""
    header = workflow.info().headers.get(TEMPORAL_TRACE_HEADER)
    if header is None:
        return LinkTrace()  # started untraced: nothing to continue
    try:
        carrier = PayloadConverter.default.from_payloads([header])[0]
    except Exception:  # a header of that name some other tool wrote: the links carry no trace
        return LinkTrace()
    value = carrier.get(TRACEPARENT) if isinstance(carrier, dict) else None
    return LinkTrace(traceparent=value if isinstance(value, str) else None)


class AskForApproval:
    """One process's approval request, from the first mail to a settled or expired round."""

    def __init__(
        self,
        round_: ApprovalRound,
        process_id: str,
        process_input: ProcessInput,
        requested_at: datetime,
        retry_policy: RetryPolicy,
        touch: Callable[[], None],
        wait: Callable[[Callable[[], bool], datetime], Awaitable[bool]] = wait_until,
        since: Callable[[str], bool] = workflow.patched,
    ) -> None:
        """``wait`` and ``since`` are the process's own: its timers, and whether it runs the
        code of a patch (a newer patch of the process can stand for this module's). ``since``
        answers only the patches above; a newer one calls ``workflow.patched`` itself."""
        self._round = round_
        self._process_id = process_id
        self._input = process_input
        self._requested_at = requested_at
        self._options = process_input.options
        self._retry = retry_policy
        self._touch = touch
        self._link_trace: LinkTrace | None = None
        self._wait = wait  # the process's own, sharing its timers (workflows/waiting.py)
        self._since = since

    async def run(self) -> None:
        """Return once the round is settled, or expired at its deadline."""
        round_ = self._round
        assert round_.deadline is not None, "open the round first"
        if self._since(APPROVAL_LINKS_TRACED_PATCH):
            self._link_trace = process_link_trace()
        await self._request()
        while not round_.settled:
            wake_at = round_.next_wakeup()
            assert wake_at is not None  # an unsettled round always has its deadline ahead
            if await self._wait(lambda: round_.settled, wake_at):
                return
            now = workflow.now()
            if now >= round_.deadline:
                round_.expire(now)
                self._touch()
                return
            if round_.escalation_due(now):
                added = round_.escalate(now)
                round_.invited([a.id for a in added], now)
                await self._mail("escalation", added, anyone=False, at=now)
            due = round_.reminders_due(now)
            if due:
                ids = [a.id for a in due]
                round_.reminded(ids, now)
                named = [Approver(id=a.id, name=a.name) for a in due if a.id != ANYONE]
                await self._mail("reminder", named, anyone=ANYONE in ids, at=now)

    async def _request(self) -> None:
        """The first mail; unlike a reminder, a process whose request cannot be sent fails."""
        now = workflow.now()
        policy = self._round.policy
        if policy.named:
            await self._mail("request", list(policy.approvers), anyone=False, at=now, must=True)
            self._round.invited([a.id for a in policy.approvers], now)
            return
        # The original's mail: the shared link to the whole topic.
        assert self._round.deadline is not None
        await workflow.execute_activity_method(
            ApprovalNotifier.publish_approval_request,
            PublishApprovalRequest(
                process_id=self._process_id,
                requested_by=self._input.requested_by,
                description=self._input.description,
                requested_at=self._requested_at,
                deadline=self._round.deadline,
                link_trace=self._link_trace,
            ),
            start_to_close_timeout=self._options.activity_attempt_timeout,
            retry_policy=self._retry,
        )
        self._round.invited([ANYONE], now)
        self._round.noted("request", [ANYONE], now)
        self._touch()

    async def _mail(
        self,
        kind: NoticeKind,
        to: list[Approver],
        *,
        anyone: bool,
        at: datetime,
        must: bool = False,
    ) -> None:
        """One ``notify_approvers`` call. A reminder or escalation that cannot be sent is noted
        and the wait goes on: the next reminder carries the same link, and the decision matters
        more than the mail."""
        round_ = self._round
        assert round_.deadline is not None
        recipients = [a.id for a in to] + ([ANYONE] if anyone else [])
        notice = NotifyApprovers(
            process_id=self._process_id,
            requested_by=self._input.requested_by,
            description=self._input.description,
            requested_at=self._requested_at,
            deadline=round_.deadline,
            kind=kind,
            sequence=len(round_.notices),
            to=tuple(to),
            anyone=anyone,
            summary=round_.summary() if kind != "request" else None,
            link_trace=self._link_trace,
        )
        try:
            await workflow.execute_activity_method(
                ApprovalNotifier.notify_approvers,
                notice,
                start_to_close_timeout=self._options.activity_attempt_timeout,
                retry_policy=self._retry,
            )
        except ActivityError as err:
            if must or isinstance(err.cause, CancelledError):
                raise
            workflow.logger.warning("approval %s to %s not sent: %s", kind, recipients, err.cause)
            round_.noted(kind, recipients, at, error=str(err.cause or err))
        else:
            round_.noted(kind, recipients, at)
        self._touch()
