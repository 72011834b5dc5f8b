"""The HTML pages approvers see: plain, accessible, no scripts, no external assets.

Every value from outside (the process description, names, comments) goes through ``html.escape``.
The only inline style is allowed by its hash in the Content-Security-Policy, so nothing injected
could style, script or frame anything even if escaping were ever missed.
"""

from __future__ import annotations

import base64
import hashlib
from datetime import UTC, datetime
from html import escape

from callbacks_api.problems import Problem
from workflows.messages import ApprovalState, ProcessState

_STYLE = (
    "body{font-family:system-ui,sans-serif;line-height:1.5;max-width:42rem;margin:2rem auto;"
    "padding:0 1rem;color:#1b1b1b;background:#fff}"
    # minmax(0,1fr) and overflow-wrap: a long process id or description wraps at phone width
    # instead of pushing the page sideways.
    "dl{display:grid;grid-template-columns:max-content minmax(0,1fr);gap:.25rem 1rem}"
    "dt{font-weight:600}dd{margin:0;overflow-wrap:anywhere}"
    "fieldset{margin:1rem 0;padding:.75rem 1rem}legend{font-weight:600}"
    "label{display:block;margin:.5rem 0 .25rem}input[type=text],textarea{width:100%;"
    "box-sizing:border-box;font:inherit;padding:.4rem}"
    "input[type=radio]+label{display:inline;margin:0 1.5rem 0 .25rem}"
    "button{font:inherit;padding:.5rem 1.25rem;margin-top:1rem}"
    ":focus-visible{outline:3px solid #1a5fb4;outline-offset:2px}"
    ".note{color:#444;font-size:.95rem}"
)
_STYLE_HASH = base64.b64encode(hashlib.sha256(_STYLE.encode()).digest()).decode()

CONTENT_SECURITY_POLICY = (
    f"default-src 'none'; style-src 'sha256-{_STYLE_HASH}'; form-action 'self'; "
    "base-uri 'none'; frame-ancestors 'none'"
)

# Sent with every answer, pages or not: a page reached through a bearer link must not be cached,
# framed, sniffed into something else, or leak its URL (the token) in a Referer header.
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "X-Robots-Tag": "noindex, nofollow",
}

DEFAULT_APPROVER = "approver via link"


def _document(title: str, body: str) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        '<meta name="robots" content="noindex, nofollow">\n'
        f"<title>{escape(title)}</title>\n<style>{_STYLE}</style>\n</head>\n"
        f"<body>\n<main>\n<h1>{escape(title)}</h1>\n{body}</main>\n</body>\n</html>\n"
    )


def _when(moment: datetime | None) -> str:
    if moment is None:
        return "unknown"
    utc = moment.astimezone(UTC)
    text = utc.strftime("%Y-%m-%d %H:%M UTC")
    return f'<time datetime="{escape(utc.isoformat())}">{escape(text)}</time>'


def _process_facts(state: ProcessState) -> str:
    description = escape(state.description) if state.description else "<em>none given</em>"
    return (
        '<section aria-labelledby="process-heading">\n'
        '<h2 id="process-heading">The request</h2>\n<dl>\n'
        f"<dt>Process</dt><dd>{escape(state.process_id)}</dd>\n"
        f"<dt>What</dt><dd>{description}</dd>\n"
        f"<dt>Requested by</dt><dd>{escape(state.requested_by)}</dd>\n"
        f"<dt>Requested at</dt><dd>{_when(state.created_at)}</dd>\n"
        f"<dt>Decide by</dt><dd>{_when(state.approval.deadline)}</dd>\n"
        f"<dt>Current stage</dt><dd>{escape(state.stage.value)}</dd>\n"
        "</dl>\n</section>\n"
    )


def _decision_facts(approval: ApprovalState) -> str:
    comment = escape(approval.comment) if approval.comment else "<em>none</em>"
    return (
        '<section aria-labelledby="decision-heading">\n'
        '<h2 id="decision-heading">The decision</h2>\n<dl>\n'
        f"<dt>Decision</dt><dd>{escape(approval.decision or 'none')}</dd>\n"
        f"<dt>Decided by</dt><dd>{escape(approval.decided_by or 'unknown')}</dd>\n"
        f"<dt>Decided at</dt><dd>{_when(approval.decided_at)}</dd>\n"
        f"<dt>Comment</dt><dd>{comment}</dd>\n"
        "</dl>\n</section>\n"
    )


def confirmation_page(state: ProcessState, check: str, preselect: str | None = None) -> str:
    """The page a GET shows: facts and a form. Nothing is decided until the form is posted.

    The decision is a required radio choice rather than two submit buttons, so pressing Enter in
    a text field cannot approve by accident. The mail's links may preselect a choice
    (``?decision=reject``); the person still confirms it.
    """
    approve = " checked" if preselect == "approve" else ""
    reject = " checked" if preselect == "reject" else ""
    form = (
        '<h2 id="decide-heading">Your decision</h2>\n'
        '<form method="post" aria-labelledby="decide-heading">\n'
        f'<input type="hidden" name="check" value="{escape(check)}">\n'
        "<fieldset>\n<legend>Approve or reject this request</legend>\n"
        '<input type="radio" id="decision-approve" name="decision" value="approve" '
        f"required{approve}>"
        '<label for="decision-approve">Approve</label>\n'
        f'<input type="radio" id="decision-reject" name="decision" value="reject"{reject}>'
        '<label for="decision-reject">Reject</label>\n'
        "</fieldset>\n"
        '<label for="name">Your name (optional)</label>\n'
        '<input type="text" id="name" name="name" maxlength="200" autocomplete="name" '
        'aria-describedby="name-note">\n'
        '<p class="note" id="name-note">Recorded with the decision. Anyone holding this link '
        "can decide; the name is what they say about themselves.</p>\n"
        '<label for="comment">Comment (optional)</label>\n'
        '<textarea id="comment" name="comment" rows="4" maxlength="2000"></textarea>\n'
        '<button type="submit">Submit decision</button>\n'
        "</form>\n"
    )
    intro = (
        "<p>This request is waiting for a decision. Opening this page changed nothing; "
        "only submitting the form below records one. The first decision recorded wins.</p>\n"
    )
    return _document("Approval requested", intro + _process_facts(state) + form)


def recorded_page(state: ProcessState) -> str:
    verdict = "approved" if state.approval.decision == "approved" else "rejected"
    body = (
        f"<p>Thank you. The request is now <strong>{verdict}</strong>; "
        "the process has recorded your decision.</p>\n"
        + _decision_facts(state.approval)
        + _process_facts(state)
    )
    return _document("Decision recorded", body)


def pending_page(state: ProcessState | None) -> str:
    """After a delivered decision that the process has not handled yet (no worker running)."""
    body = (
        "<p>Your decision was delivered to the process and is being recorded. The process has "
        "not handled it yet (no worker answered just now); it will as soon as one runs, and "
        "nothing more is needed from you. The first decision the process receives wins: open "
        "this link again later to see which one that was.</p>\n"
    )
    if state is not None:
        body += _process_facts(state)
    return _document("Decision being recorded", body)


def problem_page(problem: Problem) -> str:
    body = f"<p>{escape(problem.detail)}</p>\n"
    state = problem.state
    if state is not None:
        if state.approval.decision is not None:
            body += _decision_facts(state.approval)
        body += _process_facts(state)
    return _document(problem.title, body)
