"""``approval-flow status ID``: one process's state, from its ``state`` query."""

from __future__ import annotations

import argparse
import json
import uuid
from typing import Any

from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from cli.output import CliError, printable, when
from cli.queries import closed_by, describe, query_state, status_to_tell
from cli.settings import CliSettings
from starter import PROCESS_WORKFLOW
from workflows.messages import (
    PROCESS_ID_PREFIX,
    ApprovalState,
    ApproverState,
    ProcessState,
    ProcessStatus,
    redrive_process_id,
)

HELP = "one process's state"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "process_id", metavar="ID", type=process_id_argument, help="process id (process-<uuid>)"
    )


def process_id_argument(text: str) -> str:
    """An empty id would reach the server as a refused RPC; it is a usage error here."""
    if not text.strip():
        raise argparse.ArgumentTypeError("a process id is needed (process-<uuid>)")
    return text


def normalise_process_id(text: str) -> str:
    """Accept the bare UUID too: ``7f3c…`` means ``process-7f3c…``."""
    text = text.strip()
    if not text.startswith(PROCESS_ID_PREFIX):
        try:
            uuid.UUID(text)
        except ValueError:
            return text
        return f"{PROCESS_ID_PREFIX}{text}"
    return text


async def run(
    args: argparse.Namespace, client: Client, settings: CliSettings
) -> tuple[dict[str, Any], str]:
    process_id = normalise_process_id(args.process_id)
    description = await describe(client, process_id, "process")
    if description.workflow_type != PROCESS_WORKFLOW:
        raise CliError(f"{process_id} is a {description.workflow_type}, not a process")
    temporal_status = description.status.name if description.status else None
    state, problem = await query_state(client.get_workflow_handle(process_id), ProcessState, client)
    document = {
        "process_id": process_id,
        "temporal_status": temporal_status,
        # Temporal's when it closed the process by itself: the state still shows it waiting.
        "process_status": status_to_tell(description, state),
        "state": state.model_dump(mode="json") if state else None,
        "problem": problem,
    }
    if state is not None:
        redriven_as = await successor(client, state, closed_by(description, state))
        document["redriven_as"] = redriven_as
        text = render_state(state, temporal_status, redriven_as, closed_by(description, state))
    else:
        text = (
            f"{process_id}\n  status    {status_to_tell(description) or '-'}\n"
            f"  temporal  {temporal_status or '-'}\n  ({problem})"
        )
    return document, text


async def successor(client: Client, state: ProcessState, closed: str | None = None) -> str | None:
    """The redrive of this process, if one was started (one RPC, only for a closed failure, or
    a process Temporal closed by itself: ``closed``)."""
    if state.status is not ProcessStatus.FAILED and closed is None:
        return None
    original = state.process_id
    if state.redrive_count:
        original = original.removesuffix(f"-redrive-{state.redrive_count}")
    candidate = redrive_process_id(original, state.redrive_count + 1)
    try:
        await client.get_workflow_handle(candidate).describe()
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            return None
        raise
    return candidate


def render_state(
    state: ProcessState,
    temporal_status: str | None,
    redriven_as: str | None = None,
    closed: str | None = None,
) -> str:
    """The state as lines. ``closed``: Temporal's status when Temporal closed the process by
    itself (``common.closed``); it then leads, the state being as the process last wrote it."""
    status = f"{state.status.value} (stage {state.stage.value})"
    if closed is not None:
        status = (
            f"{closed} in Temporal, at stage {state.stage.value} "
            f"(its own last status: {state.status.value})"
        )
    rows: list[tuple[str, str]] = [
        ("status", status),
        ("requested by", f"{state.requested_by}, {when(state.created_at)}"),
        ("description", state.description or "-"),
    ]
    if state.redriven_from:
        rows.append(("redrive", f"{state.redrive_count} of {state.redriven_from}"))
    # A closed process waits for nothing: its undecided round ended with it.
    rows += approval_rows(state.approval, ended=state.status.is_final or closed is not None)
    lock = state.lock
    lock_text: str = lock.status
    if lock.status == "held":
        lock_text += f" (lease {lock.lease_id}) since {when(lock.granted_at)}"
    elif lock.status == "requested":
        lock_text += f" at {when(lock.requested_at)}, gives up {when(lock.deadline)}"
    rows.append((f"lock {lock.resource}", lock_text))
    for name, command in sorted(state.commands.items()):
        text: str = command.status
        if command.kept_from:
            text += f" in {command.kept_from} (kept, not sent again)"
        if command.attempts:
            text += f", {command.attempts} send attempt(s)"
        if command.status == "sent" and command.deadline:
            text += f", callback due by {when(command.deadline)}"
        if command.status == "sent" and command.heartbeat_deadline:
            text += f", next heartbeat due by {when(command.heartbeat_deadline)}"
        if command.finished_at:
            text += f", finished {when(command.finished_at)}"
        if command.error:
            text += f": {command.error}"
        rows.append((str(name), text))
        if command.heartbeats:
            beat = f"{command.heartbeats}, last {when(command.last_heartbeat_at)}"
            if command.progress is not None:
                beat += f", progress {_compact(command.progress)}"
            rows.append(("  heartbeats", beat))
    if state.failure_reason:
        rows.append(("failure", f"{state.failure_reason.value}: {state.failure_message}"))
    if state.finished_at:
        rows.append(("finished", when(state.finished_at)))
    if closed is not None:
        rows.append(("cleanup", left_behind(state)))
    if redriven_as:
        rows.append(("redriven as", redriven_as))
    rows.append(("temporal", temporal_status or "-"))
    # Names, comments, errors and descriptions come from outside: escaped, each row one line.
    rows = [(printable(label), printable(value)) for label, value in rows]
    width = max(len(label) for label, _ in rows)
    body = "\n".join(f"  {label.ljust(width)}  {value}" for label, value in rows)
    return f"{printable(state.process_id)}\n{body}"


def left_behind(state: ProcessState) -> str:
    """What a close by Temporal left as it was: none of the process's own cleanup ran."""
    parts = [
        "none ran: its record in the process table was not closed and keeps its last status "
        f"({state.status.value})"
    ]
    if state.lock.status == "held":
        parts.append(
            "the mutex frees the lock and marks the record failed (abandoned) at its next "
            "liveness check"
        )
    elif state.lock.status == "requested":
        parts.append("its place in the lock's queue is dropped when its turn comes")
    sent = [
        str(name) for name, command in sorted(state.commands.items()) if command.status == "sent"
    ]
    if sent:
        parts.append(f"{', '.join(sent)} sent and not withdrawn: the downstream may still act")
    return "; ".join(parts)


def _compact(value: object, limit: int = 120) -> str:
    """JSON on one line, cut to ``limit`` characters: progress is the downstream's to shape."""
    text = json.dumps(value, separators=(", ", ": "), default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def approval_rows(approval: ApprovalState, ended: bool = False) -> list[tuple[str, str]]:
    """The decision, each named approver, and every mail sent: reminders and escalation too.

    ``ended``: the process has ended (cancelled, failed, terminated, ...), so a round with no
    decision ended undecided; the state it last wrote still says "waiting"."""
    named = [a for a in approval.approvers if a.role != "anyone"]
    rows: list[tuple[str, str]] = []
    if approval.decision:
        comment = f' "{approval.comment}"' if approval.comment else ""
        by = f" by {approval.decided_by}" if approval.decided_by else ""
        decided = f"{approval.decision}{by} at {when(approval.decided_at)}{comment}"
        rows.append(("approval", decided))
        if named and approval.summary:
            rows.append(("", approval.summary))
    elif ended:
        if not approval.deadline:
            rows.append(("approval", "never asked: the process ended first"))
        else:
            tally = f" ({approval.approvals} of {approval.required} approvals)" if named else ""
            text = f"ended undecided{tally}: the process ended before a decision"
            rows.append(("approval", f"{text}; deadline was {when(approval.deadline)}"))
    elif approval.deadline:
        if named and approval.summary:
            rows.append(("approval", f"{approval.summary}; deadline {when(approval.deadline)}"))
        else:
            rows.append(("approval", f"waiting, deadline {when(approval.deadline)}"))
    else:
        rows.append(("approval", "not asked yet"))
    for person in named:
        label = "escalated to" if person.role == "escalation" else "approver"
        rows.append((label, _approver(person, ended)))
    if named or len(approval.notices) > 1:
        for notice in approval.notices:
            to = ", ".join(_name_of(approval, i) for i in notice.to)
            text = f"{when(notice.at)} to {to}"
            if not notice.sent:
                text += f": NOT SENT ({notice.error})"
            rows.append((f"mail: {notice.kind}", text))
    return rows


def _approver(approver: ApproverState, ended: bool = False) -> str:
    who = f"{approver.name} <{approver.id}>" if approver.name else approver.id
    if approver.decision:
        comment = f' "{approver.comment}"' if approver.comment else ""
        text = f"{who}: {approver.decision} at {when(approver.decided_at)}{comment}"
    elif ended:
        text = f"{who}: did not decide"
        if approver.invited_at:
            text += f" (asked {when(approver.invited_at)})"
    else:
        text = f"{who}: waiting"
        if approver.invited_at:
            text += f" since {when(approver.invited_at)}"
    if approver.reminders:
        text += f", reminded {approver.reminders}x (last {when(approver.last_reminded_at)})"
    return text


def _name_of(approval: ApprovalState, approver_id: str) -> str:
    approver = approval.approver(approver_id)
    return approver.display if approver else approver_id
