"""``approval-flow start``: start a process and print its approval links.

The approval policy comes from the settings (``APPROVAL_PROCESS__APPROVAL__*``); the flags here
replace what they name, for this one process. So do ``--resource`` and ``--priority``: which lock
the process queues for, and where in that lock's queue.
"""

from __future__ import annotations

import argparse
import re
from datetime import timedelta
from typing import Any

from pydantic import TypeAdapter, ValidationError
from temporalio.client import Client

from cli.output import EXIT_USAGE, CliError, program
from cli.settings import CliSettings
from starter import (
    InboxUnreachable,
    Started,
    check_options,
    start_process,
    wait_for_approval_link,
    wait_for_approver_links,
)
from workflows.lock_queue import describe
from workflows.messages import (
    DEFAULT_LOCK_PRIORITY,
    HIGHEST_LOCK_PRIORITY,
    LOWEST_LOCK_PRIORITY,
    RESOURCE_PATTERN,
    RESOURCE_RULE,
    ApprovalPolicy,
    Approver,
    InvalidProcessOptions,
    ProcessOptions,
)

HELP = "start a process and print its approval link(s)"

_DURATION = TypeAdapter(timedelta)


def resource(text: str) -> str:
    if not re.fullmatch(RESOURCE_PATTERN, text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a resource name: {RESOURCE_RULE}")
    return text


def priority(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not HIGHEST_LOCK_PRIORITY <= value <= LOWEST_LOCK_PRIORITY:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a priority: {HIGHEST_LOCK_PRIORITY} (most urgent) to "
            f"{LOWEST_LOCK_PRIORITY}"
        )
    return value


def duration(text: str) -> timedelta:
    """Seconds (``600``) or ISO 8601 (``PT10M``), as the settings take them."""
    try:
        value: float | str = float(text)
    except ValueError:
        value = text.strip()
    try:
        return _DURATION.validate_python(value)
    except ValidationError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a duration: give seconds (600) or ISO 8601 (PT10M)"
        ) from None


def approver(text: str) -> Approver:
    try:
        return Approver.parse(text)
    except ValidationError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an approver: write ID or ID=NAME, the id without spaces or commas"
        ) from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--requested-by", required=True, help="who asks for approval")
    parser.add_argument("--description", default="", help="what the approver is asked about")
    parser.add_argument(
        "--wait",
        type=float,
        default=15.0,
        metavar="SECONDS",
        help="how long to wait for the approval mail in the local inbox (0: do not wait)",
    )
    lock = parser.add_argument_group(
        "lock", "processes on different resources run at the same time; one at a time on each"
    )
    lock.add_argument(
        "--resource",
        type=resource,
        metavar="NAME",
        help="the resource whose lock the commands run under (default: "
        "APPROVAL_PROCESS__LOCK_RESOURCE, else approval-commands)",
    )
    lock.add_argument(
        "--priority",
        type=priority,
        metavar="1..5",
        help=f"place in the resource's queue: 1 goes first, equal priorities first come first "
        f"served; a holder is never preempted (default {DEFAULT_LOCK_PRIORITY})",
    )
    policy = parser.add_argument_group(
        "approval policy", "each flag replaces the APPROVAL_PROCESS__APPROVAL__* setting it names"
    )
    policy.add_argument(
        "--approver",
        dest="approvers",
        action="append",
        type=approver,
        metavar="ID[=NAME]",
        help="a named approver, mailed a link of their own (repeat for each)",
    )
    policy.add_argument("--required", type=int, metavar="N", help="approvals needed (default 1)")
    policy.add_argument(
        "--reject-vetoes",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="one rejection rejects (default); with --no-reject-vetoes rejections are counted "
        "and reject only once the quorum is out of reach",
    )
    policy.add_argument(
        "--remind-every", type=duration, metavar="D", help="remind undecided approvers this often"
    )
    policy.add_argument(
        "--escalate-after",
        type=duration,
        metavar="D",
        help="then also ask the --escalate-to approvers",
    )
    policy.add_argument(
        "--escalate-to",
        action="append",
        type=approver,
        metavar="ID[=NAME]",
        help="an escalation approver (repeat for each); counts toward the quorum",
    )
    policy.add_argument(
        "--on-timeout",
        choices=("fail", "reject"),
        help="at the deadline: fail approval-timeout (default) or reject",
    )


def process_options(args: argparse.Namespace, settings: CliSettings) -> ProcessOptions:
    """The settings' process options with the approval and lock flags given here laid over them."""
    options = _with_approval_flags(args, settings)
    lock = {
        "lock_resource": getattr(args, "resource", None),
        "lock_priority": getattr(args, "priority", None),
    }
    given = {name: value for name, value in lock.items() if value is not None}
    return options.model_copy(update=given) if given else options


def _with_approval_flags(args: argparse.Namespace, settings: CliSettings) -> ProcessOptions:
    flags = {
        "approvers": tuple(args.approvers) if args.approvers else None,
        "required": args.required,
        "reject_vetoes": args.reject_vetoes,
        "remind_every": args.remind_every,
        "escalate_after": args.escalate_after,
        "escalate_to": tuple(args.escalate_to) if args.escalate_to else None,
        "on_timeout": args.on_timeout,
    }
    given = {name: value for name, value in flags.items() if value is not None}
    if not given:
        return settings.process
    policy = {**dict(settings.process.approval), **given}
    try:
        return ProcessOptions.model_validate(
            {**dict(settings.process), "approval": ApprovalPolicy.model_validate(policy)}
        )
    except ValidationError as err:
        problem = err.errors()[0]
        raise CliError(f"invalid approval policy: {problem['msg']}", EXIT_USAGE) from err


def check_arguments(args: argparse.Namespace, settings: CliSettings) -> None:
    """What ``start`` refuses from its flags and settings alone, said before it connects: with
    Temporal down, options out of range would otherwise read "cannot reach Temporal"."""
    options = process_options(args, settings)
    try:
        check_options(options, settings)
    except InvalidProcessOptions as err:
        raise CliError(f"invalid process options: {err}", EXIT_USAGE) from err


async def run(
    args: argparse.Namespace, client: Client, settings: CliSettings
) -> tuple[dict[str, Any], str]:
    options = process_options(args, settings)
    try:
        started = await start_process(
            client, settings, args.requested_by, args.description, options
        )
    except ValidationError as err:
        problem = err.errors()[0]
        field = ".".join(str(p) for p in problem["loc"])
        raise CliError(f"invalid {field}: {problem['msg']}", EXIT_USAGE) from err
    except InvalidProcessOptions as err:
        raise CliError(f"invalid process options: {err}", EXIT_USAGE) from err
    policy = options.approval
    unreachable = None
    if settings.inbox_url and args.wait > 0:
        try:
            started = await read_links(settings.inbox_url, started, policy, args.wait)
        except InboxUnreachable as err:
            unreachable = inbox_hint(err)
    shared = {"*": started.approve_url} if started.approve_url else {}
    document = {
        "process_id": started.process_id,
        "run_id": started.run_id,
        "approval_link": started.approve_url,
        "reject_link": started.reject_url,
        # Approver id -> their own link; "*" is the shared link of a policy without approvers.
        "approval_links": started.approver_links if policy.named else shared,
        "approval_policy": policy.model_dump(mode="json"),
        "lock": {"resource": options.lock_resource, "priority": options.lock_priority},
        "inbox_error": unreachable,
    }
    lock = None
    if args.resource is not None or args.priority is not None:
        lock = f"{options.lock_resource}, priority {describe(options.lock_priority)}"
    return document, render_started(started, settings, args.wait, policy, lock, unreachable)


async def read_links(
    inbox_url: str, started: Started, policy: ApprovalPolicy, wait: float
) -> Started:
    """The links the workflow mailed, from the local inbox; ``InboxUnreachable`` at once if
    nothing listens there (not after ``wait``, blaming the worker)."""
    if policy.named:
        ids = [a.id for a in policy.approvers]
        found = await wait_for_approver_links(
            inbox_url, started.process_id, ids, wait, patient=False
        )
        return Started(started.process_id, started.run_id, approver_links=found)
    links = await wait_for_approval_link(inbox_url, started.process_id, wait, patient=False)
    if links is None:
        return started
    return Started(started.process_id, started.run_id, links[0], links[1])


def inbox_hint(err: InboxUnreachable) -> str:
    """An unreachable inbox, and what to set: the process started and mails its links anyway."""
    return (
        f"{err} (APPROVAL_INBOX_URL: the inbox `make run` printed, or empty when approvers get "
        "real mail); the process runs and its mail goes out all the same"
    )


def render_started(
    started: Started,
    settings: CliSettings,
    waited: float,
    policy: ApprovalPolicy | None = None,
    lock: str | None = None,
    unreachable: str | None = None,
) -> str:
    lines = [f"Process: {started.process_id}"]
    if policy is not None and policy.named:
        lines += _approver_lines(started, settings, waited, policy, unreachable)
        if unreachable:
            lines.append(f"Inbox: {unreachable}")
    elif unreachable:
        lines.append(f"Approval link: {unreachable}")
    elif started.approve_url:
        lines.append(f"Approval link: {started.approve_url}")
        if started.reject_url:
            lines.append(f"Reject link: {started.reject_url}")
    elif not settings.inbox_url:
        lines.append("Approval link: mailed to the approvers (no local inbox configured)")
    elif waited <= 0:
        lines.append(f"Approval link: see the inbox at {settings.inbox_url}")
    else:
        lines.append(
            f"Approval link: not in the inbox at {settings.inbox_url} after {waited:g} s "
            "(is the worker running?); it is mailed as soon as the worker publishes it"
        )
    if policy is not None and (policy.named or policy.remind_every or policy.escalate_after):
        lines.append(f"Policy: {describe_policy(policy)}")
    if lock is not None:
        lines.append(f"Lock: {lock}")
    lines.append(f"Follow it: {program()} status {started.process_id}")
    return "\n".join(lines)


def _approver_lines(
    started: Started,
    settings: CliSettings,
    waited: float,
    policy: ApprovalPolicy,
    unreachable: str | None = None,
) -> list[str]:
    lines = ["Approval links (each decides for its own approver only):"]
    width = max(len(_who(a)) for a in policy.approvers)
    for person in policy.approvers:
        link = started.approver_links.get(person.id)
        if link is None:
            link = (
                "mailed to them (no local inbox configured)"
                if not settings.inbox_url
                else "mailed to them (the inbox cannot be reached: see below)"
                if unreachable
                else f"see the inbox at {settings.inbox_url}"
                if waited <= 0
                else f"not in the inbox after {waited:g} s (is the worker running?)"
            )
        lines.append(f"  {_who(person).ljust(width)}  {link}")
    return lines


def describe_policy(policy: ApprovalPolicy) -> str:
    """The policy in one line: "2 of 3 approvals; a rejection vetoes; reminders every 0:10:00"."""
    named = len(policy.approvers)
    parts = [
        f"{policy.required} of {named} approvals" if named else "one decision, shared link",
        "a rejection vetoes" if policy.reject_vetoes else "rejections are counted",
    ]
    if policy.remind_every:
        parts.append(f"reminders every {policy.remind_every}")
    if policy.escalate_after:
        to = ", ".join(_who(a) for a in policy.escalate_to)
        parts.append(f"escalates to {to} after {policy.escalate_after}")
    at_deadline = "rejects" if policy.on_timeout == "reject" else "fails"
    parts.append(f"{at_deadline} at the deadline")
    return "; ".join(parts)


def _who(person: Approver) -> str:
    return f"{person.name} <{person.id}>" if person.name else person.id
