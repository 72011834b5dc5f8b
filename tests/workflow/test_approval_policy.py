"""The approval policy in a real ProcessWorkflow on the time-skipping server.

Named approvers decide through their own links (the fakes stand in for the mail; a decision is
the ``approval_decision`` signal the API sends, carrying the approver id from the token). Hours
of reminders and escalation pass in milliseconds.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from temporalio.client import WorkflowFailureError, WorkflowHandle
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment

from tests.workflow.fakes import eventually
from tests.workflow.harness import Harness, harness
from workflows.messages import (
    ApprovalDecision,
    ApprovalPolicy,
    ApprovalState,
    CommandName,
    ProcessStatus,
)
from workflows.process import ProcessWorkflow

MIN = timedelta(minutes=1)
TEAM = "alice@example.test=Alice,bob@example.test=Bob,carol@example.test=Carol"
ALICE, BOB, CAROL = "alice@example.test", "bob@example.test", "carol@example.test"
DAVE = "dave@example.test"


async def _failure(handle: WorkflowHandle) -> ApplicationError:
    with pytest.raises(WorkflowFailureError) as failure:
        await handle.result()
    cause = failure.value.cause
    assert isinstance(cause, ApplicationError)
    return cause


async def _approval(h: Harness, handle: WorkflowHandle) -> ApprovalState:
    return (await h.state(handle)).approval


async def _counted(h: Harness, handle: WorkflowHandle, approver_id: str) -> None:
    """Wait until the workflow has counted ``approver_id``'s decision."""

    async def counted() -> bool:
        approver = (await _approval(h, handle)).approver(approver_id)
        return approver is not None and approver.decision is not None

    await eventually(counted, what=f"{approver_id}'s decision counted")


async def _complete(h: Harness, handle: WorkflowHandle) -> None:
    await h.wait_sent(handle)
    await h.call_back(handle, CommandName.ONE)
    await h.call_back(handle, CommandName.TWO)
    await handle.result()


async def test_two_of_three_approvals_complete_the_process(time_env: WorkflowEnvironment) -> None:
    async with harness(time_env.client) as h:
        handle = await h.start(approval=ApprovalPolicy(approvers=TEAM, required=2))
        await eventually(lambda: h.fakes.mailed(handle.id), what="request mailed")
        # One mail round, each approver their own (the activity mails one message per approver).
        assert h.fakes.mailed(handle.id) == [("request", [ALICE, BOB, CAROL])]
        assert handle.id not in h.fakes.approvals  # no shared link to the topic

        await h.decide_as(handle, ALICE, comment="looks fine")
        await _counted(h, handle, ALICE)
        approval = await _approval(h, handle)
        assert approval.summary == "1 of 2 approvals; waiting for Bob and Carol"
        assert approval.waiting_for == [BOB, CAROL]
        assert (await h.state(handle)).status is ProcessStatus.PENDING

        await h.decide_as(handle, CAROL)
        await _complete(h, handle)

        approval = await _approval(h, handle)
        assert (approval.decision, approval.decided_by) == ("approved", "Alice and Carol")
        assert [(a.id, a.decision) for a in approval.approvers] == [
            (ALICE, "approved"),
            (BOB, None),
            (CAROL, "approved"),
        ]
        assert h.fakes.history[handle.id][-1] is ProcessStatus.COMPLETED


async def test_one_rejection_vetoes(time_env: WorkflowEnvironment) -> None:
    async with harness(time_env.client) as h:
        handle = await h.start(approval=ApprovalPolicy(approvers=TEAM, required=2))
        await h.decide_as(handle, ALICE)
        await h.decide_as(handle, BOB, approved=False, comment="freeze week")
        error = await _failure(handle)
        assert error.type == "rejected"
        assert error.message == "rejected by Bob: freeze week"
        assert h.fakes.records[handle.id]["reason"] == "rejected"
        assert h.fakes.lock_requests == []


async def test_counted_rejections_fail_once_the_quorum_is_out_of_reach(
    time_env: WorkflowEnvironment,
) -> None:
    async with harness(time_env.client) as h:
        policy = ApprovalPolicy(approvers=TEAM, required=2, reject_vetoes=False)
        handle = await h.start(approval=policy)
        await h.decide_as(handle, BOB, approved=False)
        await _counted(h, handle, BOB)
        approval = await _approval(h, handle)
        assert approval.decision is None  # Alice and Carol can still make two
        assert approval.summary == "0 of 2 approvals, 1 rejected; waiting for Alice and Carol"

        await h.decide_as(handle, CAROL, approved=False)
        error = await _failure(handle)
        assert error.type == "rejected"
        assert error.message == (
            "rejected: 2 approvals can no longer be reached (0 approved, rejected by Bob and Carol)"
        )


async def test_an_approver_decides_once(time_env: WorkflowEnvironment) -> None:
    async with harness(time_env.client) as h:
        handle = await h.start(approval=ApprovalPolicy(approvers=TEAM, required=2))
        await h.decide_as(handle, ALICE)
        await _counted(h, handle, ALICE)
        await h.decide_as(handle, ALICE, approved=False)  # a change of mind: not counted
        await h.decide_as(handle, ALICE)  # nor a second approval
        # A link-less decision and a stranger's do not count under named approvers either.
        await handle.signal(
            ProcessWorkflow.approval_decision, ApprovalDecision(approved=True, decided_by="Eve")
        )
        await handle.signal(
            ProcessWorkflow.approval_decision,
            ApprovalDecision(approved=True, decided_by="Eve", approver_id="eve@example.test"),
        )
        await eventually(
            lambda: _signals_handled(h, handle, 5), what="every decision signal handled"
        )
        approval = await _approval(h, handle)
        assert (approval.approvals, approval.rejections, approval.decision) == (1, 0, None)
        assert approval.approver(ALICE).decision == "approved"  # type: ignore[union-attr]
        assert approval.approver("eve@example.test") is None

        await h.decide_as(handle, BOB)
        await _complete(h, handle)


async def _signals_handled(h: Harness, handle: WorkflowHandle, count: int) -> bool:
    """Whether the workflow has run a task after ``count`` decision signals arrived."""
    events = [e async for e in handle.fetch_history_events()]
    signalled = [
        i
        for i, e in enumerate(events)
        if e.HasField("workflow_execution_signaled_event_attributes")
    ]
    completed = [
        i for i, e in enumerate(events) if e.HasField("workflow_task_completed_event_attributes")
    ]
    return len(signalled) >= count and bool(completed) and completed[-1] > signalled[-1]


async def _held_at(env: WorkflowEnvironment, h: Harness, sequence: int) -> None:
    """Let workflow time pass until notice ``sequence`` is being sent, and hold it there.

    The fakes hold that notice's activity; time does not skip while an activity runs, so the
    process stands still at that moment until the test opens the gate.
    """
    # What awaiting a result does: let the server skip time (the time-skipping env's own method).
    async with env.time_skipping_unlocked():  # type: ignore[attr-defined]
        await eventually(lambda: sequence in h.fakes.notify_reached, what=f"notice {sequence}")


def _gates(h: Harness, *sequences: int) -> None:
    for sequence in sequences:
        h.fakes.notify_gates[sequence] = asyncio.Event()


async def test_reminders_come_on_schedule_and_stop_with_the_decision(
    time_env: WorkflowEnvironment,
) -> None:
    async with harness(time_env.client) as h:
        policy = ApprovalPolicy(
            approvers="alice@example.test=Alice,bob@example.test=Bob",
            required=2,
            remind_every=10 * MIN,
        )
        _gates(h, 2, 4)
        handle = await h.start(approval=policy)
        await _held_at(time_env, h, 2)  # the second reminder, at 0:20
        await h.decide_as(handle, ALICE)
        await _counted(h, handle, ALICE)
        h.fakes.notify_gates[2].set()
        await _held_at(time_env, h, 4)  # the fourth, at 0:40
        await h.decide_as(handle, BOB)
        await _counted(h, handle, BOB)
        h.fakes.notify_gates[4].set()
        await _complete(h, handle)

        approval = await _approval(h, handle)
        assert approval.deadline is not None
        opened = approval.deadline - timedelta(hours=1)
        sent = [(n.kind, n.to, n.at - opened) for n in approval.notices]
        assert [(kind, to) for kind, to, _ in sent] == [
            ("request", [ALICE, BOB]),
            ("reminder", [ALICE, BOB]),
            ("reminder", [ALICE, BOB]),  # Alice decided while this one was being sent
            ("reminder", [BOB]),
            ("reminder", [BOB]),  # Bob decided while this one was being sent: no more after
        ]
        for (_, _, offset), minutes in zip(sent, (0, 10, 20, 30, 40), strict=True):
            assert minutes * MIN <= offset < minutes * MIN + timedelta(seconds=10)
        # What the workflow noted is what was mailed (one activity call per round of mail).
        assert h.fakes.mailed(handle.id) == [(n.kind, n.to) for n in approval.notices]
        reminders = h.fakes.notices[handle.id][1:]
        assert all(n.summary and "of 2 approvals" in n.summary for n in reminders)
        assert [(a.id, a.reminders) for a in approval.approvers] == [(ALICE, 2), (BOB, 4)]


async def test_escalation_asks_more_approvers_and_one_of_them_makes_the_quorum(
    time_env: WorkflowEnvironment,
) -> None:
    async with harness(time_env.client) as h:
        policy = ApprovalPolicy(
            approvers="alice@example.test=Alice,bob@example.test=Bob",
            required=2,
            escalate_after=30 * MIN,
            escalate_to="dave@example.test=Dave",
        )
        _gates(h, 1)
        handle = await h.start(approval=policy)
        await h.decide_as(handle, ALICE)
        # Dave has no say before the escalation (he has no link yet either).
        await handle.signal(
            ProcessWorkflow.approval_decision,
            ApprovalDecision(approved=True, decided_by=DAVE, approver_id=DAVE),
        )
        await _counted(h, handle, ALICE)
        await eventually(lambda: _signals_handled(h, handle, 2), what="Dave's early decision")
        assert (await _approval(h, handle)).approver(DAVE) is None
        await _held_at(time_env, h, 1)  # the escalation, at 0:30
        await h.decide_as(handle, DAVE)
        await _counted(h, handle, DAVE)
        h.fakes.notify_gates[1].set()
        await _complete(h, handle)

        approval = await _approval(h, handle)
        assert (approval.decision, approval.decided_by) == ("approved", "Alice and Dave")
        escalation = approval.notices[-1]
        assert (escalation.kind, escalation.to) == ("escalation", [DAVE])
        assert approval.escalated_at == escalation.at
        assert approval.deadline is not None
        since_open = escalation.at - (approval.deadline - timedelta(hours=1))
        assert 30 * MIN <= since_open < 31 * MIN
        assert h.fakes.mailed(handle.id) == [
            ("request", [ALICE, BOB]),
            ("escalation", [DAVE]),
        ]
        assert [(a.id, a.role) for a in approval.approvers][-1] == (DAVE, "escalation")


@pytest.mark.parametrize(
    ("on_timeout", "reason"), [("fail", "approval-timeout"), ("reject", "rejected")]
)
async def test_the_deadline_fails_or_rejects_as_the_policy_says(
    time_env: WorkflowEnvironment, on_timeout: str, reason: str
) -> None:
    async with harness(time_env.client) as h:
        policy = ApprovalPolicy(approvers=TEAM, required=2, on_timeout=on_timeout)
        handle = await h.start(approval=policy)
        await h.decide_as(handle, ALICE)
        error = await _failure(handle)
        assert error.type == reason
        assert error.message == (
            "not approved within 1:00:00: 1 of 2 approvals; the deadline passed without Bob "
            "and Carol"
        )
        state = await h.state(handle)
        assert state.finished_at is not None
        assert (
            timedelta(hours=1)
            <= state.finished_at - state.created_at
            < timedelta(hours=1, minutes=1)
        )
        assert h.fakes.records[handle.id]["reason"] == reason
        assert state.approval.decision == ("rejected" if on_timeout == "reject" else None)


async def test_a_reminder_that_cannot_be_sent_is_noted_and_the_wait_goes_on(
    time_env: WorkflowEnvironment,
) -> None:
    async with harness(time_env.client) as h:
        policy = ApprovalPolicy(approvers=TEAM, remind_every=10 * MIN)
        h.fakes.notify_failures.add(1)  # the reminder at 0:10 fails all three attempts
        _gates(h, 2)
        handle = await h.start(approval=policy)
        await _held_at(time_env, h, 2)  # the next one, at 0:20, is being sent
        failed = (await _approval(h, handle)).notices[1]
        assert (failed.kind, failed.sent) == ("reminder", False)
        assert failed.error and "SNS unavailable" in failed.error
        await h.decide_as(handle, CAROL)
        await _counted(h, handle, CAROL)
        h.fakes.notify_gates[2].set()
        await _complete(h, handle)
        assert (await _approval(h, handle)).notices[2].sent


async def test_without_approvers_reminders_go_to_the_topic_with_the_shared_link(
    time_env: WorkflowEnvironment,
) -> None:
    async with harness(time_env.client) as h:
        _gates(h, 1)
        handle = await h.start(approval=ApprovalPolicy(remind_every=25 * MIN))
        await _held_at(time_env, h, 1)  # the reminder at 0:25
        await h.approve(handle, by="Ada")
        h.fakes.notify_gates[1].set()
        await _complete(h, handle)
        assert handle.id in h.fakes.approvals  # the original's request, to the topic
        assert h.fakes.mailed(handle.id) == [("reminder", ["*"])]
        approval = await _approval(h, handle)
        assert (approval.decision, approval.decided_by) == ("approved", "Ada")
        assert [(n.kind, n.to) for n in approval.notices] == [
            ("request", ["*"]),
            ("reminder", ["*"]),
        ]


async def test_a_request_that_cannot_be_sent_fails_the_process(
    time_env: WorkflowEnvironment,
) -> None:
    """Unlike a reminder: with no mail out, nobody can decide; as the original, it fails."""
    async with harness(time_env.client) as h:
        h.fakes.notify_failures.add(0)
        handle = await h.start(approval=ApprovalPolicy(approvers=TEAM))
        error = await _failure(handle)
        assert error.type == "error"
        assert "SNS unavailable" in error.message
        assert h.fakes.records[handle.id]["reason"] == "error"
