"""Named approvers through the callbacks API: each link decides for its own approver, once.

The same real HTTP, dev server and stub activities as ``test_callbacks_api``; the links are signed
exactly as the ``notify_approvers`` activity signs them (the token's subject is the approver).
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiohttp import ClientResponse

from callbacks_api.approvals import form_check
from common.tokens import Purpose
from tests.integration.test_callbacks_api import (  # noqa: F401  (fixtures, used by name)
    Stack,
    env,
    eventually,
    hidden_check,
    stack,
)
from workflows.messages import (
    APPROVAL_CALLBACK,
    ApprovalPolicy,
    FailureReason,
    ProcessInput,
    ProcessOptions,
    ProcessState,
    Stage,
)
from workflows.process import ProcessWorkflow

pytestmark = pytest.mark.integration


@pytest.fixture
def api(stack: Stack) -> Stack:  # noqa: F811  (the imported fixture, by name)
    """The API, a worker with stub activities and the dev server of ``test_callbacks_api``."""
    return stack


TEAM = "alice@example.test=Alice,bob@example.test=Bob <b>,carol@example.test=Carol"
ALICE, BOB, CAROL = "alice@example.test", "bob@example.test", "carol@example.test"


async def start_named(api: Stack, **policy: Any) -> str:
    """A process whose named approvers have been mailed their links."""
    process_id = f"process-{uuid.uuid4()}"
    await api.client.start_workflow(
        ProcessWorkflow.run,
        ProcessInput(
            requested_by="Grace <grace@example.test>",
            description="Rotate the prod keys",
            options=ProcessOptions(
                lock_resource=f"test-{uuid.uuid4().hex[:8]}",
                approval=ApprovalPolicy(approvers=TEAM, **policy),
            ),
        ),
        id=process_id,
        task_queue=api.task_queue,
    )
    await eventually(lambda: api.state(process_id), lambda s: bool(s.approval.notices))
    return process_id


def link_of(api: Stack, process_id: str, approver: str) -> str:
    """The token of ``approver``'s link, as the activity signed it into their mail."""
    notice = api.stubs.notices[process_id][0]
    return api.signer.sign(
        process_id, APPROVAL_CALLBACK, Purpose.APPROVAL, notice.deadline, approver=approver
    )


async def decide_as(
    api: Stack, token: str, decision: str, comment: str = ""
) -> tuple[ClientResponse, str]:
    """Open the page, submit its form, follow the redirect to the outcome page."""
    response, html = await api.page(token)
    assert response.status == 200, html
    answer = await api.http.post(
        f"/approvals/{token}",
        data={"check": hidden_check(html), "decision": decision, "comment": comment},
    )
    return answer, await answer.text()


def decided(state: ProcessState) -> dict[str, str | None]:
    return {a.id: a.decision for a in state.approval.approvers}


async def test_each_approver_decides_for_themselves_until_the_quorum(api: Stack) -> None:
    process_id = await start_named(api, required=2)
    alice, bob, carol = (link_of(api, process_id, who) for who in (ALICE, BOB, CAROL))

    response, html = await api.page(alice)
    assert response.status == 200
    assert "waiting for your decision, <strong>Alice</strong>" in html
    assert "0 of 2 approvals; waiting for Alice, Bob &lt;b&gt; and Carol" in html
    assert "Alice &lt;alice@example.test&gt; (you)" in html
    assert 'name="name"' not in html  # the link says who decides; no name to type

    answer, html = await decide_as(api, alice, "approve", comment="fine by me")
    assert answer.status == 200, html
    assert answer.history and answer.history[0].status == 303  # post/redirect/get
    assert "Your decision (<strong>approved</strong>) is recorded" in html
    assert "1 of 2 approvals; waiting for Bob &lt;b&gt; and Carol" in html
    state = await api.state(process_id)
    assert decided(state) == {ALICE: "approved", BOB: None, CAROL: None}
    assert state.approval.approver(ALICE).comment == "fine by me"  # type: ignore[union-attr]
    assert state.stage is Stage.AWAITING_APPROVAL

    answer, html = await decide_as(api, carol, "approve")
    assert answer.status == 200, html
    assert "The request is now <strong>approved</strong>" in html
    state = await eventually(
        lambda: api.state(process_id), lambda s: s.stage is not Stage.AWAITING_APPROVAL
    )
    assert (state.approval.decision, state.approval.decided_by) == ("approved", "Alice and Carol")

    # Bob's link still opens, and says the request is settled without him.
    response, html = await api.page(bob)
    assert response.status == 409
    assert "approved by Alice and Carol" in html


async def test_a_link_of_one_approver_cannot_decide_for_another(api: Stack) -> None:
    process_id = await start_named(api, required=2)
    alice, bob = link_of(api, process_id, ALICE), link_of(api, process_id, BOB)
    _, alice_page = await api.page(alice)

    # Alice's form, posted to Bob's link: the form is bound to the link it came from.
    response = await api.http.post(
        f"/approvals/{bob}", data={"check": hidden_check(alice_page), "decision": "approve"}
    )
    assert response.status == 403
    # Alice's token with Bob's id swapped in: the signature no longer holds.
    header, _, signature = alice.split(".")
    swapped = bob.split(".")[1]
    response, html = await api.page(f"{header}.{swapped}.{signature}")
    assert response.status == 403 and "not valid" in html
    # Through her own link, Alice decides for Alice only, whatever the form claims.
    response = await api.http.post(
        f"/approvals/{alice}",
        data={"check": hidden_check(alice_page), "decision": "approve", "name": "Bob"},
    )
    assert response.status == 200
    state = await api.state(process_id)
    assert decided(state) == {ALICE: "approved", BOB: None, CAROL: None}
    assert state.approval.approver(ALICE).decided_by == "Alice"  # type: ignore[union-attr]

    # A well-signed link for someone the policy does not name decides nothing.
    deadline = datetime.now(UTC) + timedelta(hours=1)
    stranger = api.signer.sign(
        process_id, APPROVAL_CALLBACK, Purpose.APPROVAL, deadline, approver="eve@example.test"
    )
    response, html = await api.page(stranger)
    assert response.status == 403 and "approver this process does not have" in html
    # The shared link's kind (no approver in the token) has no say under named approvers.
    shared = api.signer.sign(process_id, APPROVAL_CALLBACK, Purpose.APPROVAL, deadline)
    response, html = await api.page(shared)
    assert response.status == 403 and "decided by its named approvers" in html
    # A POST reads nothing before signalling (a signal needs no worker), so it cannot know yet:
    # it is signalled and answered 303; the workflow ignores it; the page after says 403.
    for token, why in ((shared, "decided by its named approvers"), (stranger, "does not have")):
        response = await api.http.post(
            f"/approvals/{token}",
            data={
                "check": form_check(api.settings.signing_keys[0].secret, token),
                "decision": "reject",
            },
            allow_redirects=False,
        )
        assert response.status == 303
        response = await api.http.get(f"/approvals/{token}{response.headers['Location']}")
        assert response.status == 403 and why in await response.text()
    assert (await api.state(process_id)).approval.rejections == 0
    assert decided(await api.state(process_id)) == {ALICE: "approved", BOB: None, CAROL: None}


async def test_an_approver_clicking_twice_hears_their_own_earlier_decision(api: Stack) -> None:
    process_id = await start_named(api, required=2)
    alice = link_of(api, process_id, ALICE)
    _, page = await api.page(alice)
    check = hidden_check(page)
    first = await api.http.post(f"/approvals/{alice}", data={"check": check, "decision": "approve"})
    assert first.status == 200

    # A change of mind through the same page: refused, naming her first decision.
    second = await api.http.post(f"/approvals/{alice}", data={"check": check, "decision": "reject"})
    html = await second.text()
    assert second.status == 409
    assert "already sent through this link: approved" in html
    assert "Each approver decides once" in html
    # Opening her link again says the same, from the process's own record.
    response, html = await api.page(alice)
    assert response.status == 409
    assert "You already approved this request" in html
    state = await api.state(process_id)
    assert (state.approval.approvals, state.approval.rejections) == (1, 0)


async def test_a_veto_through_a_named_link_rejects(api: Stack) -> None:
    process_id = await start_named(api, required=2)
    answer, html = await decide_as(
        api, link_of(api, process_id, BOB), "reject", comment="not <now>"
    )
    assert answer.status == 200, html
    assert "The request is now <strong>rejected</strong>" in html
    assert "not &lt;now&gt;" in html
    state = await eventually(lambda: api.state(process_id), lambda s: s.status.is_final)
    assert state.failure_reason is FailureReason.REJECTED
    assert state.failure_message == "rejected by Bob <b>: not <now>"
    assert re.search(r"rejected at .*not &lt;now&gt;", html)
