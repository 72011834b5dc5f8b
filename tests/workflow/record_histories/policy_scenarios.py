"""ProcessWorkflow under the ``approval-policy`` patch: one scenario per branch of the policy.

Every process started from the patch on takes this path, the default policy too (its first two
scenarios). Names start ``process_policy_`` so they can be recorded on their own
(``--only 'process_policy_*'``) into a version folder other changes also record into.
"""

from __future__ import annotations

import asyncio

from temporalio.client import WorkflowHandle

from tests.workflow.fakes import Fakes, eventually
from tests.workflow.harness import Harness, harness
from tests.workflow.record_histories.recording import (
    PATIENCE,
    SECOND,
    E,
    History,
    Recording,
    start,
)
from workflows.messages import ApprovalPolicy, CommandName, FailureReason

TEAM = "alice@example.test=Alice,bob@example.test=Bob,carol@example.test=Carol"
ALICE, BOB, CAROL = "alice@example.test", "bob@example.test", "carol@example.test"
DAVE = "dave@example.test"
NOTIFY = "notify_approvers"
DECISION = "approval_decision"


def _patched(history: History) -> bool:
    return bool(history.of(E.EVENT_TYPE_MARKER_RECORDED))


async def _counted(h: Harness, handle: WorkflowHandle, approver_id: str) -> None:
    async def counted() -> bool:
        approver = (await h.state(handle)).approval.approver(approver_id)
        return approver is not None and approver.decision is not None

    await eventually(counted, within=PATIENCE, what=f"{approver_id} counted")


async def _complete(rec: Recording, h: Harness, handle: WorkflowHandle) -> History:
    await h.wait_sent(handle)
    await h.call_back(handle, CommandName.ONE)
    await h.call_back(handle, CommandName.TWO)
    return await rec.completed(handle)


async def process_policy_default_completed(rec: Recording) -> None:
    """No policy set: the original's shared link, under the patch."""
    async with harness(rec.client) as h:
        handle = await start(h)
        await h.approve(handle)
        history = await _complete(rec, h, handle)
        assert _patched(history)
        assert history.activities("publish_approval_request") and not history.activities(NOTIFY)
        rec.save("process_policy_default_completed", history)


async def process_policy_default_timeout(rec: Recording) -> None:
    async with harness(rec.client) as h:
        handle = await start(h, approval_timeout=SECOND)
        history = await rec.failed(handle, FailureReason.APPROVAL_TIMEOUT)
        assert _patched(history) and history.of(E.EVENT_TYPE_TIMER_FIRED)
        rec.save("process_policy_default_timeout", history)


async def process_policy_quorum_approved(rec: Recording) -> None:
    """Two of three approve; a second click and a stranger's decision change nothing."""
    async with harness(rec.client) as h:
        handle = await start(h, approval=ApprovalPolicy(approvers=TEAM, required=2))
        await h.decide_as(handle, ALICE)
        await _counted(h, handle, ALICE)
        await h.decide_as(handle, ALICE, approved=False)
        await h.decide_as(handle, CAROL)
        history = await _complete(rec, h, handle)
        assert len(history.activities(NOTIFY)) == 1
        assert history.signals_received(DECISION) == 3
        rec.save("process_policy_quorum_approved", history)


async def process_policy_vetoed(rec: Recording) -> None:
    async with harness(rec.client) as h:
        handle = await start(h, approval=ApprovalPolicy(approvers=TEAM, required=2))
        await h.decide_as(handle, BOB, approved=False, comment="freeze week")
        history = await rec.failed(handle, FailureReason.REJECTED)
        assert not history.activities("request_lock")
        rec.save("process_policy_vetoed", history)


async def process_policy_quorum_unreachable(rec: Recording) -> None:
    async with harness(rec.client) as h:
        policy = ApprovalPolicy(approvers=TEAM, required=2, reject_vetoes=False)
        handle = await start(h, approval=policy)
        await h.decide_as(handle, BOB, approved=False)
        await _counted(h, handle, BOB)
        await h.decide_as(handle, CAROL, approved=False)
        history = await rec.failed(handle, FailureReason.REJECTED)
        assert history.signals_received(DECISION) == 2
        rec.save("process_policy_quorum_unreachable", history)


async def process_policy_reminders(rec: Recording) -> None:
    """Reminders every second until each approver decided."""
    async with harness(rec.client) as h:
        policy = ApprovalPolicy(
            approvers="alice@example.test=Alice,bob@example.test=Bob",
            required=2,
            remind_every=SECOND,
        )
        handle = await start(h, approval=policy)
        await eventually(
            lambda: len(h.fakes.mailed(handle.id, "reminder")) >= 2, within=PATIENCE, what="two"
        )
        await h.decide_as(handle, ALICE)
        await _counted(h, handle, ALICE)
        await eventually(
            lambda: ("reminder", [BOB]) in h.fakes.mailed(handle.id),
            within=PATIENCE,
            what="a reminder to Bob alone",
        )
        await h.decide_as(handle, BOB)
        history = await _complete(rec, h, handle)
        assert len(history.activities(NOTIFY)) >= 4  # the request and three reminders
        rec.save("process_policy_reminders", history)


async def process_policy_escalated(rec: Recording) -> None:
    async with harness(rec.client) as h:
        policy = ApprovalPolicy(
            approvers="alice@example.test=Alice,bob@example.test=Bob",
            required=2,
            escalate_after=SECOND,
            escalate_to="dave@example.test=Dave",
        )
        handle = await start(h, approval=policy)
        await h.decide_as(handle, ALICE)
        await h.decide_as(handle, DAVE)  # waits for the escalation mail to Dave
        history = await _complete(rec, h, handle)
        assert h.fakes.mailed(handle.id) == [
            ("request", [ALICE, BOB]),
            ("escalation", [DAVE]),
        ]
        assert len(history.activities(NOTIFY)) == 2
        rec.save("process_policy_escalated", history)


async def process_policy_timeout_fail(rec: Recording) -> None:
    async with harness(rec.client) as h:
        policy = ApprovalPolicy(approvers=TEAM, required=2)
        handle = await start(h, approval=policy, approval_timeout=2 * SECOND)
        await h.decide_as(handle, ALICE)
        history = await rec.failed(handle, FailureReason.APPROVAL_TIMEOUT)
        assert history.of(E.EVENT_TYPE_TIMER_FIRED)
        rec.save("process_policy_timeout_fail", history)


async def process_policy_timeout_reject(rec: Recording) -> None:
    async with harness(rec.client) as h:
        policy = ApprovalPolicy(approvers=TEAM, on_timeout="reject")
        handle = await start(h, approval=policy, approval_timeout=2 * SECOND)
        history = await rec.failed(handle, FailureReason.REJECTED)
        assert history.of(E.EVENT_TYPE_TIMER_FIRED)
        rec.save("process_policy_timeout_reject", history)


async def process_policy_reminder_failed(rec: Recording) -> None:
    """A reminder that fails every attempt is noted and the wait goes on."""
    fakes = Fakes(notify_failures={1})
    async with harness(rec.client, fakes) as h:
        policy = ApprovalPolicy(approvers=TEAM, remind_every=SECOND)
        handle = await start(h, approval=policy)

        async def noted() -> bool:
            return any(not n.sent for n in (await h.state(handle)).approval.notices)

        await eventually(noted, within=PATIENCE, what="the failed reminder noted")
        await h.decide_as(handle, CAROL)
        history = await _complete(rec, h, handle)
        assert history.closed_activities(NOTIFY, E.EVENT_TYPE_ACTIVITY_TASK_FAILED) == 1
        rec.save("process_policy_reminder_failed", history)


async def process_policy_cancelled_while_mailing(rec: Recording) -> None:
    """Cancelled while a reminder is being sent: the cancel is not mistaken for a failed mail."""
    fakes = Fakes(notify_gates={1: asyncio.Event()})
    async with harness(rec.client, fakes) as h:
        policy = ApprovalPolicy(approvers=TEAM, remind_every=SECOND)
        handle = await start(h, approval=policy)
        await eventually(lambda: 1 in fakes.notify_reached, within=PATIENCE, what="reminder")
        try:
            await handle.cancel()
            history = await rec.cancelled(handle)
        finally:
            fakes.notify_gates[1].set()
        assert history.of(E.EVENT_TYPE_ACTIVITY_TASK_CANCEL_REQUESTED)
        rec.save("process_policy_cancelled_while_mailing", history)


SCENARIOS = [
    process_policy_default_completed,
    process_policy_default_timeout,
    process_policy_quorum_approved,
    process_policy_vetoed,
    process_policy_quorum_unreachable,
    process_policy_reminders,
    process_policy_escalated,
    process_policy_timeout_fail,
    process_policy_timeout_reject,
    process_policy_reminder_failed,
    process_policy_cancelled_while_mailing,
]
