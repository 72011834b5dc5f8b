"""The approval policy without a server: quorum, veto, once per approver, reminders, escalation."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from starter import StarterSettings
from workflows.approval import ApprovalRound, Outcome, Refusal
from workflows.messages import (
    ANYONE,
    ApprovalDecision,
    ApprovalPolicy,
    Approver,
    FailureReason,
    ProcessOptions,
)

T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)
MIN = timedelta(minutes=1)
TEAM = "alice@example.test=Alice,bob@example.test=Bob,carol@example.test=Carol"
ALICE, BOB, CAROL = "alice@example.test", "bob@example.test", "carol@example.test"
DAVE = "dave@example.test"


def opened(policy: ApprovalPolicy, invite: bool = True) -> ApprovalRound:
    round_ = ApprovalRound(policy)
    round_.open(T0, T0 + HOUR)
    if invite:
        round_.invited([a.id for a in round_.awaited()], T0)
    return round_


def decide(
    round_: ApprovalRound,
    who: str | None,
    approved: bool = True,
    at: datetime = T0 + MIN,
    comment: str | None = None,
) -> Refusal | None:
    decision = ApprovalDecision(
        approved=approved, decided_by=who or "someone", approver_id=who, comment=comment
    )
    return round_.record(decision, at)


# -- without named approvers: the original --------------------------------------------------


def test_without_approvers_the_shared_link_decides_once() -> None:
    round_ = opened(ApprovalPolicy())
    assert [a.id for a in round_.awaited()] == [ANYONE]
    assert (
        round_.record(ApprovalDecision(approved=True, decided_by="Ada", comment="ok"), T0) is None
    )
    assert round_.outcome is Outcome.APPROVED
    state = round_.state()
    assert (state.decision, state.decided_by, state.comment) == ("approved", "Ada", "ok")
    later = ApprovalDecision(approved=False, decided_by="Eve")
    assert round_.record(later, T0 + MIN) is Refusal.CLOSED
    assert round_.failure() is None


def test_without_approvers_a_rejection_fails_as_the_original() -> None:
    round_ = opened(ApprovalPolicy())
    round_.record(ApprovalDecision(approved=False, decided_by="Eve", comment="not now"), T0)
    assert round_.failure() == (FailureReason.REJECTED, "rejected by Eve: not now")


def test_without_approvers_a_timeout_fails_as_the_original() -> None:
    round_ = opened(ApprovalPolicy())
    round_.expire(T0 + HOUR)
    assert round_.failure() == (
        FailureReason.APPROVAL_TIMEOUT,
        "no approval decision within 1:00:00",
    )
    assert round_.state().decision is None
    assert round_.record(ApprovalDecision(approved=True, decided_by="x"), T0) is Refusal.CLOSED


def test_a_named_decision_does_not_count_without_named_approvers() -> None:
    round_ = opened(ApprovalPolicy())
    assert decide(round_, ALICE) is Refusal.NOT_AN_APPROVER
    assert not round_.settled


# -- quorum and veto ----------------------------------------------------------------------------


def test_two_of_three_approve() -> None:
    round_ = opened(ApprovalPolicy(approvers=TEAM, required=2))
    assert decide(round_, ALICE, comment="fine") is None
    assert not round_.settled
    assert round_.summary() == "1 of 2 approvals; waiting for Bob and Carol"
    assert round_.state().waiting_for == [BOB, CAROL]
    assert round_.state().needed == 1
    assert decide(round_, CAROL, at=T0 + 2 * MIN) is None
    assert round_.outcome is Outcome.APPROVED
    state = round_.state()
    assert (state.decision, state.decided_by) == ("approved", "Alice and Carol")
    assert state.decided_at == T0 + 2 * MIN
    assert state.comment is None  # two decisions made it: no one comment speaks for both
    assert state.approvals == 2 and state.waiting_for == [] and state.needed == 0
    assert decide(round_, BOB, approved=False) is Refusal.CLOSED
    assert round_.failure() is None


def test_a_rejection_vetoes_by_default() -> None:
    round_ = opened(ApprovalPolicy(approvers=TEAM, required=2))
    decide(round_, ALICE)
    decide(round_, BOB, approved=False, comment="freeze week")
    assert round_.outcome is Outcome.VETOED
    assert round_.failure() == (FailureReason.REJECTED, "rejected by Bob: freeze week")
    state = round_.state()
    assert (state.decision, state.decided_by, state.comment) == ("rejected", "Bob", "freeze week")


def test_counted_rejections_reject_only_once_the_quorum_is_out_of_reach() -> None:
    round_ = opened(ApprovalPolicy(approvers=TEAM, required=2, reject_vetoes=False))
    decide(round_, BOB, approved=False)
    assert not round_.settled
    assert round_.summary() == "0 of 2 approvals, 1 rejected; waiting for Alice and Carol"
    decide(round_, CAROL, approved=False)
    assert round_.outcome is Outcome.UNREACHABLE
    assert round_.failure() == (
        FailureReason.REJECTED,
        "rejected: 2 approvals can no longer be reached (0 approved, rejected by Bob and Carol)",
    )
    assert round_.state().decided_by == "Bob and Carol"


def test_counted_rejection_then_quorum_approves() -> None:
    round_ = opened(ApprovalPolicy(approvers=TEAM, required=2, reject_vetoes=False))
    decide(round_, BOB, approved=False)
    decide(round_, ALICE)
    decide(round_, CAROL)
    assert round_.outcome is Outcome.APPROVED
    assert round_.state().decided_by == "Alice and Carol"


def test_an_escalation_list_still_to_come_keeps_the_quorum_in_reach() -> None:
    policy = ApprovalPolicy(
        approvers="alice@example.test,bob@example.test",
        required=2,
        reject_vetoes=False,
        escalate_after=30 * MIN,
        escalate_to=DAVE,
    )
    round_ = opened(policy)
    decide(round_, BOB, approved=False)
    assert not round_.settled  # Dave, not asked yet, can still make the second approval
    round_.escalate(T0 + 30 * MIN)
    decide(round_, ALICE, at=T0 + 31 * MIN)
    assert not round_.settled
    decide(round_, DAVE, at=T0 + 32 * MIN)
    assert round_.outcome is Outcome.APPROVED
    assert round_.state().decided_by == "alice@example.test and dave@example.test"


# -- who may decide -----------------------------------------------------------------------------


def test_each_approver_decides_once() -> None:
    round_ = opened(ApprovalPolicy(approvers=TEAM, required=2))
    assert decide(round_, ALICE) is None
    assert decide(round_, ALICE, approved=False) is Refusal.ALREADY_DECIDED
    assert decide(round_, ALICE) is Refusal.ALREADY_DECIDED
    assert round_.approvals == 1 and round_.rejections == 0
    assert round_.state().approver(ALICE).decision == "approved"  # type: ignore[union-attr]


def test_only_named_approvers_decide() -> None:
    round_ = opened(ApprovalPolicy(approvers=TEAM, escalate_after=30 * MIN, escalate_to=DAVE))
    assert decide(round_, None) is Refusal.NOT_AN_APPROVER  # the shared link has no say here
    assert decide(round_, "mallory@example.test") is Refusal.NOT_AN_APPROVER
    assert decide(round_, DAVE) is Refusal.NOT_AN_APPROVER  # not asked yet
    assert round_.approvals == 0


def test_a_named_approver_is_named_by_the_policy_not_by_the_form() -> None:
    round_ = opened(ApprovalPolicy(approvers=TEAM))
    round_.record(ApprovalDecision(approved=True, decided_by="The CEO", approver_id=BOB), T0)
    assert round_.state().decided_by == "Bob"


# -- reminders and escalation -------------------------------------------------------------------


def test_reminders_follow_the_invitation_until_the_deadline() -> None:
    round_ = opened(ApprovalPolicy(approvers=TEAM, required=2, remind_every=20 * MIN))
    assert round_.next_wakeup() == T0 + 20 * MIN
    assert round_.reminders_due(T0 + 19 * MIN) == []
    due = round_.reminders_due(T0 + 20 * MIN)
    assert [a.id for a in due] == [ALICE, BOB, CAROL]
    round_.reminded([a.id for a in due], T0 + 20 * MIN)
    decide(round_, ALICE, at=T0 + 25 * MIN)
    assert round_.next_wakeup() == T0 + 40 * MIN
    assert [a.id for a in round_.reminders_due(T0 + 40 * MIN)] == [BOB, CAROL]
    round_.reminded([BOB, CAROL], T0 + 40 * MIN)
    # The next would fall on the deadline: none is due then, only the deadline.
    assert round_.next_wakeup() == T0 + HOUR
    assert round_.reminders_due(T0 + HOUR) == []
    state = round_.state()
    assert [(a.id, a.reminders) for a in state.approvers] == [(ALICE, 1), (BOB, 2), (CAROL, 2)]


def test_no_reminders_once_settled() -> None:
    round_ = opened(ApprovalPolicy(approvers=TEAM, remind_every=10 * MIN))
    decide(round_, CAROL)
    assert round_.reminders_due(T0 + 10 * MIN) == []
    assert round_.next_wakeup() is None


def test_no_reminders_by_default() -> None:
    round_ = opened(ApprovalPolicy(approvers=TEAM))
    assert round_.next_wakeup() == T0 + HOUR
    assert round_.reminders_due(T0 + 59 * MIN) == []


def test_escalation_invites_the_list_once_and_they_count() -> None:
    policy = ApprovalPolicy(
        approvers="alice@example.test=Alice,bob@example.test=Bob",
        required=2,
        remind_every=20 * MIN,
        escalate_after=30 * MIN,
        escalate_to="dave@example.test=Dave",
    )
    round_ = opened(policy)
    assert round_.next_wakeup() == T0 + 20 * MIN
    round_.reminded([ALICE, BOB], T0 + 20 * MIN)
    assert round_.next_wakeup() == T0 + 30 * MIN
    assert not round_.escalation_due(T0 + 29 * MIN)
    assert round_.escalation_due(T0 + 30 * MIN)
    assert "escalates to Dave at 2026-01-05 09:30 UTC" in round_.summary()
    added = round_.escalate(T0 + 30 * MIN)
    assert added == [Approver(id=DAVE, name="Dave")]
    round_.invited([DAVE], T0 + 30 * MIN)
    assert not round_.escalation_due(T0 + 31 * MIN)
    assert round_.state().waiting_for == [ALICE, BOB, DAVE]
    # Alice and Bob: every 20 min from 09:00; Dave: every 20 min from 09:30.
    assert round_.next_wakeup() == T0 + 40 * MIN
    assert [a.id for a in round_.reminders_due(T0 + 40 * MIN)] == [ALICE, BOB]
    round_.reminded([ALICE, BOB], T0 + 40 * MIN)
    assert round_.next_wakeup() == T0 + 50 * MIN
    assert [a.id for a in round_.reminders_due(T0 + 50 * MIN)] == [DAVE]
    decide(round_, ALICE, at=T0 + 51 * MIN)
    decide(round_, DAVE, at=T0 + 52 * MIN)
    assert round_.outcome is Outcome.APPROVED
    assert round_.state().decided_by == "Alice and Dave"


def test_no_escalation_once_settled() -> None:
    policy = ApprovalPolicy(approvers=TEAM, escalate_after=30 * MIN, escalate_to=DAVE)
    round_ = opened(policy)
    decide(round_, BOB)
    assert not round_.escalation_due(T0 + 30 * MIN)


# -- the deadline -------------------------------------------------------------------------------


def test_timeout_fails_by_default_and_says_where_it_stood() -> None:
    round_ = opened(ApprovalPolicy(approvers=TEAM, required=2))
    decide(round_, ALICE)
    round_.expire(T0 + HOUR)
    assert round_.failure() == (
        FailureReason.APPROVAL_TIMEOUT,
        "not approved within 1:00:00: 1 of 2 approvals; the deadline passed without Bob and Carol",
    )
    assert round_.state().decision is None
    assert decide(round_, BOB) is Refusal.CLOSED


def test_timeout_can_reject() -> None:
    round_ = opened(ApprovalPolicy(approvers=TEAM, on_timeout="reject"))
    round_.expire(T0 + HOUR)
    reason, message = round_.failure() or (None, "")
    assert reason is FailureReason.REJECTED
    assert message.startswith("not approved within 1:00:00: 0 of 1 approval;")
    state = round_.state()
    assert (state.decision, state.decided_by) == ("rejected", None)


def test_notices_are_kept_in_the_state() -> None:
    round_ = opened(ApprovalPolicy(approvers=TEAM))
    round_.noted("request", [ALICE, BOB, CAROL], T0)
    round_.noted("reminder", [BOB], T0 + 10 * MIN, error="SNS unavailable")
    notices = round_.state().notices
    assert [(n.kind, n.to, n.sent) for n in notices] == [
        ("request", [ALICE, BOB, CAROL], True),
        ("reminder", [BOB], False),
    ]


# -- the policy as input ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"approvers": "a,b,a"}, "an approver may be listed once: a"),
        ({"approvers": "a", "escalate_to": "a", "escalate_after": MIN}, "listed once"),
        ({"required": 2}, "a quorum (required > 1) needs named approvers"),
        ({"approvers": "a,b", "required": 3}, "required is 3 but only 2 approvers are named"),
        ({"approvers": "a", "escalate_to": "b"}, "escalate_after and escalate_to go together"),
        ({"approvers": "a", "remind_every": timedelta(0)}, "remind_every must be positive"),
        ({"approvers": "a b"}, "String should match pattern"),
    ],
)
def test_bad_policies_are_refused(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError) as err:
        ApprovalPolicy.model_validate(fields)
    assert message in str(err.value)


def test_escalation_must_come_before_the_deadline() -> None:
    policy = ApprovalPolicy(approvers="a", escalate_after=HOUR, escalate_to="b")
    with pytest.raises(ValidationError, match="escalate_after must come before"):
        ProcessOptions(approval=policy)


def test_approvers_are_written_id_equals_name() -> None:
    policy = ApprovalPolicy(approvers=" alice@x = Alice  Liddell , bob@x ")
    assert policy.approvers == (Approver(id="alice@x", name="Alice Liddell"), Approver(id="bob@x"))


def test_the_policy_is_a_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APPROVAL_SIGNING_KEYS", "k1:" + "s" * 40)
    monkeypatch.setenv("APPROVAL_PROCESS__APPROVAL__APPROVERS", TEAM)
    monkeypatch.setenv("APPROVAL_PROCESS__APPROVAL__REQUIRED", "2")
    monkeypatch.setenv("APPROVAL_PROCESS__APPROVAL__REJECT_VETOES", "false")
    monkeypatch.setenv("APPROVAL_PROCESS__APPROVAL__REMIND_EVERY", "600")
    monkeypatch.setenv("APPROVAL_PROCESS__APPROVAL__ESCALATE_AFTER", "PT30M")
    monkeypatch.setenv("APPROVAL_PROCESS__APPROVAL__ESCALATE_TO", "dave@example.test=Dave")
    monkeypatch.setenv("APPROVAL_PROCESS__APPROVAL__ON_TIMEOUT", "reject")
    policy = StarterSettings().process.approval
    assert [a.display for a in policy.approvers] == ["Alice", "Bob", "Carol"]
    assert (policy.required, policy.reject_vetoes, policy.on_timeout) == (2, False, "reject")
    assert (policy.remind_every, policy.escalate_after) == (10 * MIN, 30 * MIN)
    assert policy.escalate_to == (Approver(id=DAVE, name="Dave"),)
    # JSON works too.
    monkeypatch.setenv("APPROVAL_PROCESS__APPROVAL__APPROVERS", '[{"id": "x@y", "name": "X"}]')
    monkeypatch.setenv("APPROVAL_PROCESS__APPROVAL__REQUIRED", "1")
    assert StarterSettings().process.approval.approvers == (Approver(id="x@y", name="X"),)
