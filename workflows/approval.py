"""The approval policy at work: who may decide, who has, and whether that is enough.

Pure: no Temporal, no I/O and no clock of its own (every method is told the time), so the
workflow and the unit tests ask it the same questions. The workflow keeps one ``ApprovalRound``
per process, feeds it each ``approval_decision`` signal and each moment a timer fires, and asks
it what to mail next and when to wake up. Its ``state()`` is what the ``state`` query, the CLI
and the approval pages show.

Rules (``ApprovalPolicy``):

- Named approvers decide only for themselves (the id comes from their link's token), once each.
  Without named approvers there is one shared link ("anyone") and its first decision settles it,
  as in the original.
- ``required`` approvals approve. A rejection rejects at once when ``reject_vetoes``; otherwise
  rejections are counted, and the round is rejected only when the approvers still undecided
  (including an escalation list not yet asked) can no longer make up the quorum.
- Reminders go to invited, undecided approvers every ``remind_every`` after their invitation,
  strictly before the deadline. The escalation list is invited once, ``escalate_after`` after
  the round opened, if nothing is decided by then.
- Once settled (or past its deadline) the round takes no more decisions.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Literal

from workflows.messages import (
    ANYONE,
    ApprovalDecision,
    ApprovalNotice,
    ApprovalPolicy,
    ApprovalState,
    Approver,
    ApproverState,
    FailureReason,
)

ANYONE_NAME = "anyone with the link"


class Outcome(StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    VETOED = "vetoed"  # a rejection, under reject_vetoes
    UNREACHABLE = "unreachable"  # counted rejections left the quorum out of reach
    EXPIRED = "expired"  # the deadline passed first


class Refusal(StrEnum):
    """Why a decision did not count (the workflow logs it; the API shows the state instead)."""

    NOT_AN_APPROVER = "not-an-approver"
    ALREADY_DECIDED = "already-decided"
    CLOSED = "closed"


NoticeKind = Literal["request", "reminder", "escalation"]


class ApprovalRound:
    """The approvals of one process under its ``ApprovalPolicy``."""

    def __init__(self, policy: ApprovalPolicy) -> None:
        self.policy = policy
        self.opened_at: datetime | None = None
        self.deadline: datetime | None = None
        self.outcome = Outcome.PENDING
        self.settled_at: datetime | None = None
        self.escalated_at: datetime | None = None
        self.notices: list[ApprovalNotice] = []
        self._approvers: dict[str, ApproverState] = (
            {a.id: ApproverState(id=a.id, name=a.name) for a in policy.approvers}
            if policy.named
            else {ANYONE: ApproverState(id=ANYONE, name=ANYONE_NAME, role="anyone")}
        )
        self._order: list[str] = []  # approver ids, in the order their decisions arrived

    # -- what happens -----------------------------------------------------------------------

    def open(self, at: datetime, deadline: datetime) -> None:
        """The request goes out now; decisions are due by ``deadline``."""
        self.opened_at = at
        self.deadline = deadline

    def record(self, decision: ApprovalDecision, at: datetime) -> Refusal | None:
        """Count one decision, or say why it does not count."""
        if self.outcome is not Outcome.PENDING:
            return Refusal.CLOSED
        approver_id = decision.approver_id or ANYONE
        approver = self._approvers.get(approver_id)
        if approver is None:
            return Refusal.NOT_AN_APPROVER
        if approver.decision is not None:
            return Refusal.ALREADY_DECIDED
        # The shared link's decider names themselves; a named approver is who the policy says,
        # whatever the form carried.
        by = decision.decided_by if approver.role == "anyone" else approver.display
        self._approvers[approver_id] = approver.model_copy(
            update={
                "decision": "approved" if decision.approved else "rejected",
                "decided_at": at,
                "decided_by": by,
                "comment": decision.comment,
            }
        )
        self._order.append(approver_id)
        self._settle(at)
        return None

    def invited(self, approvers: list[str], at: datetime) -> None:
        for approver_id in approvers:
            if approver_id in self._approvers:
                self._update(approver_id, invited_at=at)

    def reminded(self, approvers: list[str], at: datetime) -> None:
        for approver_id in approvers:
            approver = self._approvers[approver_id]
            self._update(approver_id, reminders=approver.reminders + 1, last_reminded_at=at)

    def escalate(self, at: datetime) -> list[Approver]:
        """Add the escalation list (they count toward the quorum); who must now be mailed."""
        self.escalated_at = at
        added = [a for a in self.policy.escalate_to if a.id not in self._approvers]
        for approver in added:
            self._approvers[approver.id] = ApproverState(
                id=approver.id, name=approver.name, role="escalation"
            )
        return added

    def expire(self, at: datetime) -> None:
        """The deadline passed with nothing settled: no decision counts any more."""
        if self.outcome is Outcome.PENDING:
            self.outcome = Outcome.EXPIRED
            self.settled_at = at

    def noted(
        self, kind: NoticeKind, to: list[str], at: datetime, error: str | None = None
    ) -> None:
        """One round of mail, sent (or not, with ``error``), for the history of the request."""
        self.notices.append(
            ApprovalNotice(kind=kind, at=at, to=to, sent=error is None, error=error)
        )

    # -- questions --------------------------------------------------------------------------

    @property
    def settled(self) -> bool:
        return self.outcome is not Outcome.PENDING

    @property
    def approvals(self) -> int:
        return sum(a.decision == "approved" for a in self._approvers.values())

    @property
    def rejections(self) -> int:
        return sum(a.decision == "rejected" for a in self._approvers.values())

    def awaited(self) -> list[ApproverState]:
        """Approvers asked so far who have not decided."""
        return [a for a in self._approvers.values() if a.decision is None]

    @property
    def escalates_at(self) -> datetime | None:
        """When the escalation list is asked, while that is still to come."""
        after = self.policy.escalate_after
        if after is None or self.escalated_at is not None or self.opened_at is None:
            return None
        return self.opened_at + after

    def escalation_due(self, now: datetime) -> bool:
        due = self.escalates_at
        return not self.settled and due is not None and now >= due

    def next_reminder(self, approver: ApproverState) -> datetime | None:
        """When ``approver`` is reminded next: their invitation's schedule, before the deadline."""
        every = self.policy.remind_every
        if every is None or approver.invited_at is None or approver.decision is not None:
            return None
        due = approver.invited_at + every * (approver.reminders + 1)
        return due if self.deadline is None or due < self.deadline else None

    def reminders_due(self, now: datetime) -> list[ApproverState]:
        if self.settled:
            return []
        return [a for a in self.awaited() if (due := self.next_reminder(a)) and due <= now]

    def next_wakeup(self) -> datetime | None:
        """The next moment something is due: a reminder, the escalation, or the deadline."""
        if self.settled:
            return None
        moments = [self.deadline, self.escalates_at]
        moments += [self.next_reminder(a) for a in self.awaited()]
        due = [m for m in moments if m is not None]
        return min(due) if due else None

    def failure(self) -> tuple[FailureReason, str] | None:
        """Why the process must stop here, or None once approved (or while pending)."""
        if self.outcome is Outcome.VETOED:
            vetoer = self._approvers[self._order[-1]]
            comment = f": {vetoer.comment}" if vetoer.comment else ""
            return FailureReason.REJECTED, f"rejected by {vetoer.decided_by}{comment}"
        if self.outcome is Outcome.UNREACHABLE:
            return FailureReason.REJECTED, (
                f"rejected: {self.policy.required} approvals can no longer be reached "
                f"({self.approvals} approved, rejected by {_names(self._deciders())})"
            )
        if self.outcome is Outcome.EXPIRED:
            assert self.opened_at is not None and self.deadline is not None
            within = self.deadline - self.opened_at
            if self.policy.on_timeout == "reject":
                return FailureReason.REJECTED, f"not approved within {within}: {self.summary()}"
            if not self._order and not self.policy.named:
                return FailureReason.APPROVAL_TIMEOUT, f"no approval decision within {within}"
            return FailureReason.APPROVAL_TIMEOUT, f"not approved within {within}: {self.summary()}"
        return None

    def summary(self) -> str:
        """Where the decision stands, in one line: "1 of 2 approvals; waiting for Bob, Carol"."""
        required = self.policy.required
        if self.outcome is Outcome.APPROVED:
            return f"approved by {_names(self._deciders())} ({self.approvals} of {required})"
        if self.outcome is Outcome.VETOED:
            return f"rejected by {_names(self._deciders())}"
        if self.outcome is Outcome.UNREACHABLE:
            return (
                f"rejected: {required} approvals out of reach "
                f"(rejected by {_names(self._deciders())})"
            )
        tally = f"{self.approvals} of {required} approval{'s' if required > 1 else ''}"
        if self.rejections:
            tally += f", {self.rejections} rejected"
        awaited = _names([a for a in self.awaited()])
        if self.outcome is Outcome.EXPIRED:
            return f"{tally}; the deadline passed" + (f" without {awaited}" if awaited else "")
        waiting = f"; waiting for {awaited}" if awaited else ""
        escalation = self.escalates_at
        if escalation is not None:
            escalation_to = _names(list(self.policy.escalate_to))
            waiting += f"; escalates to {escalation_to} at {_when(escalation)}"
        return tally + waiting

    def state(self) -> ApprovalState:
        """The ``approval`` part of the process's ``state`` query."""
        deciders = self._deciders()
        decision: Literal["approved", "rejected"] | None = None
        if self.outcome is Outcome.APPROVED:
            decision = "approved"
        elif self.outcome in (Outcome.VETOED, Outcome.UNREACHABLE) or (
            self.outcome is Outcome.EXPIRED and self.policy.on_timeout == "reject"
        ):
            decision = "rejected"
        reminders = [r for a in self.awaited() if (r := self.next_reminder(a))]
        return ApprovalState(
            deadline=self.deadline,
            decision=decision,
            decided_by=_names(deciders) if decision and deciders else None,
            decided_at=self.settled_at if decision else None,
            comment=deciders[0].comment if decision and len(deciders) == 1 else None,
            required=self.policy.required,
            reject_vetoes=self.policy.reject_vetoes,
            approvers=list(self._approvers.values()),
            approvals=self.approvals,
            rejections=self.rejections,
            needed=0 if self.settled else self.policy.required - self.approvals,
            waiting_for=[a.id for a in self.awaited()] if not self.settled else [],
            escalates_at=self.escalates_at if not self.settled else None,
            escalated_at=self.escalated_at,
            next_reminder_at=min(reminders) if reminders and not self.settled else None,
            notices=list(self.notices),
            summary=self.summary(),
        )

    # -- inside -----------------------------------------------------------------------------

    def _settle(self, at: datetime) -> None:
        required = self.policy.required
        if self.approvals >= required:
            self.outcome = Outcome.APPROVED
        elif self.rejections and self.policy.reject_vetoes:
            self.outcome = Outcome.VETOED
        elif self.approvals + self._still_possible() < required:
            self.outcome = Outcome.UNREACHABLE
        if self.settled:
            self.settled_at = at

    def _still_possible(self) -> int:
        """Approvals that may yet come: the undecided, and an escalation list not asked yet."""
        later = len(self.policy.escalate_to) if self.escalated_at is None else 0
        return len(self.awaited()) + later

    def _deciders(self) -> list[ApproverState]:
        """Whose decisions settled the round: the approvals, or the rejection(s)."""
        if self.outcome is Outcome.APPROVED:
            wanted = "approved"
        elif self.outcome in (Outcome.VETOED, Outcome.UNREACHABLE):
            wanted = "rejected"
        else:
            return []
        decided = [self._approvers[i] for i in self._order]
        if self.outcome is Outcome.VETOED:
            return decided[-1:]
        return [a for a in decided if a.decision == wanted]

    def _update(self, approver_id: str, **changes: object) -> None:
        self._approvers[approver_id] = self._approvers[approver_id].model_copy(update=changes)


def _names(people: list[ApproverState] | list[Approver]) -> str:
    """``Alice, Bob and Carol``: who, for a person to read."""
    names = [
        p.decided_by if isinstance(p, ApproverState) and p.decided_by else p.display for p in people
    ]
    if len(names) <= 1:
        return "".join(names)
    return f"{', '.join(names[:-1])} and {names[-1]}"


def _when(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")
