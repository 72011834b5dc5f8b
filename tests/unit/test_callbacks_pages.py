"""The callbacks API's pages and answer rules, without a server: escaping, CSP, status choices."""

from __future__ import annotations

import base64
import hashlib
import re
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import pytest

from callbacks_api import pages
from callbacks_api.approvals import (
    approval_refusal,
    approver_refusal,
    form_check,
    read_decision,
    read_submitted,
    recorded_decision,
    submitted_mark,
)
from callbacks_api.problems import Problem
from common.tokens import SigningKey
from workflows.messages import (
    ApprovalDecision,
    ApprovalState,
    ApproverState,
    CommandName,
    CommandState,
    FailureReason,
    LockState,
    ProcessState,
    ProcessStatus,
    Stage,
)

NOW = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
HOSTILE = '<script>alert("x")</script>&'


def make_state(**changes: Any) -> ProcessState:
    state = ProcessState(
        process_id="process-1",
        requested_by=HOSTILE,
        description=HOSTILE,
        stage=Stage.AWAITING_APPROVAL,
        status=ProcessStatus.PENDING,
        created_at=NOW,
        updated_at=NOW,
        approval=ApprovalState(deadline=NOW + timedelta(hours=1)),
        lock=LockState(resource="r"),
        commands={name: CommandState(command=name) for name in CommandName},
    )
    return state.model_copy(update=changes)


def decided(decision: str = "approved", by: str = HOSTILE) -> ApprovalState:
    return ApprovalState(decision=decision, decided_by=by, decided_at=NOW, comment=HOSTILE)


def test_pages_escape_everything_from_outside() -> None:
    problem = Problem(
        409, "already-decided", HOSTILE, HOSTILE, state=make_state(approval=decided())
    )
    for html in (
        pages.confirmation_page(make_state(), check='"><script>'),
        pages.recorded_page(make_state(approval=decided())),
        pages.pending_page(make_state()),
        pages.problem_page(problem),
    ):
        assert "<script>" not in html
        assert "&lt;script&gt;" in html


def test_the_pending_page_without_state_shows_no_facts() -> None:
    html = pages.pending_page(None)
    assert "being recorded" in html and "The request" not in html


def test_the_inline_style_is_the_one_the_policy_allows() -> None:
    html = pages.confirmation_page(make_state(), check="abc")
    match = re.search(r"<style>(.*?)</style>", html, re.S)
    assert match
    digest = base64.b64encode(hashlib.sha256(match.group(1).encode()).digest()).decode()
    assert f"style-src 'sha256-{digest}'" in pages.CONTENT_SECURITY_POLICY
    assert "default-src 'none'" in pages.CONTENT_SECURITY_POLICY
    assert "<script" not in html and "http" not in html.split("</head>")[0]


def test_confirmation_form_needs_an_explicit_choice() -> None:
    html = pages.confirmation_page(make_state(), check="abc")
    assert 'type="radio"' in html and "required" in html
    assert "checked" not in html
    assert re.search(
        r'value="reject"\s*checked', pages.confirmation_page(make_state(), "c", "reject")
    )
    for field in ("decision-approve", "decision-reject", "name", "comment"):
        assert f'<label for="{field}">' in html


@pytest.mark.parametrize(
    ("state", "status"),
    [
        (make_state(), None),
        (make_state(stage=Stage.CREATING), None),  # the mail can beat the stage change
        (make_state(approval=decided()), 409),
        (make_state(approval=decided(), stage=Stage.RUNNING_COMMANDS), 409),
        (
            make_state(
                stage=Stage.FAILED,
                status=ProcessStatus.FAILED,
                failure_reason=FailureReason.APPROVAL_TIMEOUT,
            ),
            410,
        ),
        (make_state(stage=Stage.FAILED, status=ProcessStatus.FAILED), 410),
    ],
)
def test_approval_answers(state: ProcessState, status: int | None) -> None:
    refusal = approval_refusal(state)
    assert (refusal.status if refusal else None) == status


def test_a_lost_race_says_another_decision_came_first() -> None:
    refusal = approval_refusal(make_state(approval=decided(by="Bob")), raced=True)
    assert refusal is not None and refusal.status == 409
    assert "arrived first" in refusal.detail and "by Bob" in refusal.detail
    assert refusal.extra["decided_by"] == "Bob"


def test_a_plain_visit_to_a_decided_request_is_not_told_its_decision_was_lost() -> None:
    refusal = approval_refusal(make_state(approval=decided(by="Bob")))
    assert refusal is not None and refusal.status == 409
    assert refusal.detail == (
        "This request was already approved by Bob. Only the first decision counts."
    )
    raced = approval_refusal(make_state(approval=decided(by="Bob")), raced=True)
    assert raced is not None and raced.detail.endswith("; yours was not recorded.")


TOKEN = "a.b.c"
KEYS = [SigningKey("k", "k" * 32)]


def form(**fields: str) -> bytes:
    return urlencode({"check": form_check(KEYS[0].secret, TOKEN), **fields}).encode()


def test_a_form_keeps_line_breaks_in_the_comment_and_collapses_them_in_the_name() -> None:
    decision = read_decision(
        form(decision="approve", name=" Ada\t Lovelace\n", comment="line one\r\n\tline two"),
        TOKEN,
        KEYS,
    )
    assert decision.decided_by == "Ada Lovelace"
    assert decision.comment == "line one\r\n\tline two"
    rtl = read_decision(
        form(decision="reject", name="\u05d0\u200f \U0001f468\u200d\U0001f469"), TOKEN, KEYS
    )
    assert rtl.decided_by == "\u05d0\u200f \U0001f468\u200d\U0001f469"  # marks and joiners


@pytest.mark.parametrize(
    ("field", "text", "found"),
    [
        ("name", "\x1b[31mRED\x1b]0;pwned\x07", "U+001B"),
        ("comment", "\x1b[2Jcleared", "U+001B"),
        ("comment", "ring\x07", "U+0007"),
        ("name", "nul\x00", "U+0000"),
        ("name", "del\x7f", "U+007F"),
        ("comment", "c1 \x9b31m", "U+009B"),
        ("name", "Ada \u202eevil", "U+202E"),
        ("comment", "isolate \u2066x\u2069", "U+2066"),
    ],
)
def test_a_form_with_control_characters_is_refused_naming_the_field(
    field: str, text: str, found: str
) -> None:
    with pytest.raises(Problem) as refused:
        read_decision(form(decision="approve", **{field: text}), TOKEN, KEYS)
    assert (refused.value.status, refused.value.kind) == (400, "malformed-form")
    assert refused.value.detail.startswith(f"The {field} contains a control character ({found})")


@pytest.mark.parametrize("name", [b"%ff%fe", b"\xff\xfe", b"%c3%28"])
def test_a_form_that_is_not_utf8_is_refused_raw_or_percent_encoded(name: bytes) -> None:
    with pytest.raises(Problem) as refused:
        read_decision(form(decision="approve") + b"&name=" + name, TOKEN, KEYS)
    assert (refused.value.status, refused.value.detail) == (400, "The form could not be read.")


def test_the_outcome_page_knows_its_own_decision_and_no_other() -> None:
    old, new = SigningKey("old", "o" * 32), SigningKey("new", "n" * 32)
    ada = ApprovalDecision(approved=True, decided_by="Ada", comment="ok")
    mark = submitted_mark(old.secret, "a.b.c", ada)

    submitted = read_submitted(mark, "a.b.c", [new, old])  # across a key rotation
    assert submitted is not None
    state = make_state(
        approval=ApprovalState(decision="approved", decided_by="Ada", decided_at=NOW, comment="ok")
    )
    assert submitted.matches("a.b.c", recorded_decision(state))
    for other in (
        ada.model_copy(update={"approved": False}),
        ada.model_copy(update={"decided_by": "Bob"}),
        ada.model_copy(update={"comment": None}),
        None,
    ):
        assert not submitted.matches("a.b.c", other)
    # Only our keys vouch for a mark, and only for its own link.
    assert read_submitted(mark, "a.b.d", [old]) is None
    assert read_submitted(mark, "a.b.c", [new]) is None
    forged = mark.split(".")[0] + "." + "0" * 32
    for bad in (forged, "x", "", None, mark + ".x"):
        assert read_submitted(bad, "a.b.c", [old]) is None
    # The name and the comment never appear in the mark (it goes in the URL).
    assert "Ada" not in mark and "ok" not in mark


def test_form_check_is_bound_to_token_and_key() -> None:
    assert form_check("k" * 32, "a.b.c") == form_check("k" * 32, "a.b.c")
    assert form_check("k" * 32, "a.b.c") != form_check("k" * 32, "a.b.d")
    assert form_check("k" * 32, "a.b.c") != form_check("j" * 32, "a.b.c")


def test_problem_documents_follow_rfc_9457() -> None:
    body = Problem(410, "expired", "Gone", "The link expired.", extra={"command": "x"}).to_json()
    assert body["type"].startswith("tag:") and body["type"].endswith(":expired")
    assert (body["status"], body["title"], body["detail"], body["command"]) == (
        410,
        "Gone",
        "The link expired.",
        "x",
    )


# -- named approvers ---------------------------------------------------------------------------


def named(**changes: Any) -> ApprovalState:
    approval = ApprovalState(
        deadline=NOW + timedelta(hours=1),
        required=2,
        approvers=[
            ApproverState(
                id="a@x",
                name=HOSTILE,
                decision="approved",
                decided_at=NOW,
                decided_by=HOSTILE,
                comment=HOSTILE,
            ),
            ApproverState(id="b@x", name="Bob"),
            ApproverState(id="d@x", role="escalation"),
        ],
        approvals=1,
        summary=f"1 of 2 approvals; waiting for Bob and {HOSTILE}",
    )
    return approval.model_copy(update=changes)


def test_a_named_approvers_page_says_for_whom_and_where_it_stands() -> None:
    html = pages.confirmation_page(make_state(approval=named()), check="c", approver="b@x")
    assert "waiting for your decision, <strong>Bob</strong>" in html
    assert "<strong>1 of 2 approvals; waiting for Bob and &lt;script&gt;" in html
    assert "Bob &lt;b@x&gt; (you):" in html
    assert "d@x, asked on escalation:" in html and "not decided yet" in html
    assert "approved at <time" in html
    assert 'name="name"' not in html  # the link says who decides
    assert "<script>" not in html
    # The shared link's page keeps the name field and shows no approvers list.
    shared = pages.confirmation_page(make_state(), check="c")
    assert 'name="name"' in shared and "approvers-heading" not in shared


def test_a_named_approver_is_told_their_decision_counts_before_the_outcome() -> None:
    state = make_state(approval=named())
    html = pages.recorded_page(state, approver="a@x")
    assert "Your decision (<strong>approved</strong>) is recorded" in html
    assert "not settled yet: 1 of 2 approvals" in html
    settled = make_state(approval=named(decision="approved", decided_by="A and B"))
    html = pages.recorded_page(settled, approver="b@x")
    assert "The request is now <strong>approved</strong>" in html


def test_a_named_approvers_refusals() -> None:
    state = make_state(approval=named())
    assert approver_refusal(state, "b@x") is None
    again = approver_refusal(state, "a@x")
    assert again is not None and (again.status, again.kind) == (409, "already-decided")
    assert again.detail.startswith("You already approved this request (2030-01-01 12:00 UTC)")
    assert again.extra["approver"] == "a@x"
    stranger = approver_refusal(state, "eve@x")
    assert stranger is not None and (stranger.status, stranger.kind) == (403, "not-an-approver")
    shared = approver_refusal(state, None)
    assert shared is not None and shared.status == 403
    assert approver_refusal(make_state(), None) is None  # no named approvers: the shared link
    html = pages.problem_page(again, approver="a@x")
    assert "&lt;script&gt;alert" in html and "<script>" not in html


def test_a_request_rejected_at_its_deadline_is_told_so() -> None:
    approval = named(decision="rejected", decided_by=None)
    refusal = approval_refusal(make_state(approval=approval))
    assert refusal is not None and refusal.status == 409
    assert "already rejected when its time ran out. It is settled" in refusal.detail
