"""The HTML pages approvers see: plain, accessible, no scripts, no external assets.

The pages are Jinja2 templates (``callbacks_api/templates/``) with autoescape on, so every value
from outside (the process description, names, comments) is escaped unless a template says
otherwise. The only inline style is allowed by its hash in the Content-Security-Policy, so nothing
injected could style, script or frame anything even if escaping were ever missed.
"""

from __future__ import annotations

import base64
import hashlib
from datetime import UTC, datetime
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined
from markupsafe import Markup

from callbacks_api.problems import Problem
from workflows.messages import ApproverState, ProcessState

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


_TEMPLATES = Environment(
    loader=PackageLoader("callbacks_api", "templates"),
    # Every value is text unless a template says otherwise: escaping is the default, not a habit.
    autoescape=True,
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


def _utc_iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat()


def _utc_text(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


_TEMPLATES.filters["utc_iso"] = _utc_iso
_TEMPLATES.filters["utc_text"] = _utc_text


def _render(template: str, title: str, **values: Any) -> str:
    # The style is ours and its hash is in the CSP: it goes in as it is.
    return _TEMPLATES.get_template(template).render(title=title, style=Markup(_STYLE), **values)


def _approver(state: ProcessState, approver_id: str | None) -> ApproverState | None:
    return state.approval.approver(approver_id) if approver_id else None


def confirmation_page(
    state: ProcessState, check: str, preselect: str | None = None, approver: str | None = None
) -> str:
    """The page a GET shows: facts and a form. Nothing is decided until the form is posted.

    For a named approver's link (``approver``: their id) the page says whom it decides for and
    where the request stands, and asks no name.
    """
    me = _approver(state, approver)
    return _render(
        "confirmation.html",
        "Approval requested",
        state=state,
        check=check,
        preselect=preselect,
        me=me,
    )


def recorded_page(state: ProcessState, approver: str | None = None) -> str:
    """After a decision the process has recorded (for a named approver: theirs, maybe not the
    outcome yet)."""
    me = _approver(state, approver)
    return _render("recorded.html", "Decision recorded", state=state, me=me, mine=me)


def pending_page(state: ProcessState | None) -> str:
    """After a delivered decision that the process has not handled yet (no worker running)."""
    return _render("pending.html", "Decision being recorded", state=state)


def problem_page(problem: Problem, approver: str | None = None) -> str:
    me = _approver(problem.state, approver) if problem.state else None
    return _render("problem.html", problem.title, problem=problem, me=me)
