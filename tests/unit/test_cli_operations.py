"""The operators' CLI parts of issue 11: lock flags, the lock listing, heartbeats and redrives in
``status``, and what ``redrive`` keeps. No server needed."""

from __future__ import annotations

import argparse
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from cli.lock import mutex_query, render_lock
from cli.main import build_parser
from cli.redrive import plan, render
from cli.settings import CliSettings
from cli.start import process_options
from cli.status import render_state
from workflows.messages import (
    ApprovalState,
    ApproverState,
    CommandName,
    CommandState,
    FailureReason,
    LockRequest,
    LockState,
    MutexState,
    ProcessInput,
    ProcessOptions,
    ProcessState,
    ProcessStatus,
    Redrive,
    Stage,
    redrive_process_id,
)

T0 = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(list(argv))


@pytest.mark.parametrize(
    "flags",
    [
        ["--priority", "0"],
        ["--priority", "6"],
        ["--priority", "high"],
        ["--resource", "two words"],
        ["--resource=-leading-dash"],
        ["--resource", "x" * 101],
    ],
)
def test_bad_lock_flags_are_usage_errors(
    flags: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        parse("start", "--requested-by", "a", *flags)
    assert exit_.value.code == 2
    [line] = capsys.readouterr().err.splitlines()
    assert "is not a" in line


def test_lock_flags_replace_the_settings_for_this_process_only() -> None:
    settings = CliSettings(
        signing_keys=(), process=ProcessOptions(lock_resource="db", approval_timeout=timedelta(1))
    )
    options = process_options(parse("start", "--requested-by", "a"), settings)
    assert (options.lock_resource, options.lock_priority) == ("db", 3)
    args = parse("start", "--requested-by", "a", "--resource", "payments.eu", "--priority", "1")
    options = process_options(args, settings)
    assert (options.lock_resource, options.lock_priority) == ("payments.eu", 1)
    assert options.approval_timeout == timedelta(1)  # the rest as configured


def test_lock_shows_each_waiter_with_its_priority_in_grant_order() -> None:
    queue = [
        LockRequest(
            requester_workflow_id=f"process-{n}",
            request_id=f"r{n}",
            lease_timeout=timedelta(hours=3),
            requested_at=T0,
            priority=priority,
        )
        for n, priority in ((2, 1), (3, 3), (4, 5))
    ]
    text = render_lock(MutexState(resource="db", queue=queue), "mutex-db")
    assert "queue   3 waiting, next to be granted first:" in text
    assert "    1. process-2, priority 1 (most urgent), since 2026-01-02 03:04:05 UTC" in text
    assert "    2. process-3, priority 3 (default)" in text
    assert "    3. process-4, priority 5 (least urgent)" in text
    assert mutex_query() == "WorkflowType = 'MutexWorkflow' AND ExecutionStatus = 'Running'"


def state(**changes: object) -> ProcessState:
    base = ProcessState(
        process_id="process-1",
        requested_by="alice",
        description="deploy",
        stage=Stage.FAILED,
        status=ProcessStatus.FAILED,
        created_at=T0,
        updated_at=T0,
        approval=ApprovalState(decision="approved", decided_by="bob", decided_at=T0),
        lock=LockState(resource="approval-commands", status="released"),
        commands={
            CommandName.ONE: CommandState(
                command=CommandName.ONE, status="succeeded", result={"rows": 3}
            ),
            CommandName.TWO: CommandState(
                command=CommandName.TWO, status="failed", error="disk full"
            ),
        },
        failure_reason=FailureReason.COMMAND_FAILED,
        failure_message="commands did not meet the completion policy: command-two failed",
    )
    return base.model_copy(update=changes)


def status_rows(text: str) -> dict[str, str]:
    """``status``'s rows, label to value (labels are padded to one width)."""
    rows = {}
    for line in text.splitlines()[1:]:
        match = re.fullmatch(r"\s+(.+?)\s{2,}(.+)", line)
        assert match is not None, line
        rows[match.group(1)] = match.group(2)
    return rows


def test_status_shows_heartbeats_progress_and_where_a_redrive_came_from() -> None:
    sent = CommandState(
        command=CommandName.TWO,
        status="sent",
        deadline=T0 + timedelta(hours=1),
        heartbeats=4,
        last_heartbeat_at=T0 + timedelta(minutes=3),
        progress={"percent": 40, "step": "copying"},
        heartbeat_deadline=T0 + timedelta(minutes=5),
    )
    kept = CommandState(command=CommandName.ONE, status="succeeded", kept_from="process-1")
    text = render_state(
        state(
            process_id="process-1-redrive-1",
            status=ProcessStatus.IN_PROGRESS,
            stage=Stage.RUNNING_COMMANDS,
            commands={CommandName.ONE: kept, CommandName.TWO: sent},
            redriven_from="process-1",
            redrive_count=1,
            failure_reason=None,
        ),
        "RUNNING",
    )
    rows = status_rows(text)
    assert rows["redrive"] == "1 of process-1"
    assert rows["command-one"] == "succeeded in process-1 (kept, not sent again)"
    assert "next heartbeat due by 2026-01-02 03:09:05 UTC" in rows["command-two"]
    assert rows["heartbeats"] == (
        '4, last 2026-01-02 03:07:05 UTC, progress {"percent": 40, "step": "copying"}'
    )


def test_a_process_closed_while_awaiting_approval_is_not_shown_waiting() -> None:
    """Before, a process cancelled while awaiting approval showed ``approval  waiting,
    deadline ...`` next to ``failure  cancelled``: its own last state, as if it still waited."""
    cancelled = state(
        stage=Stage.FAILED,
        approval=ApprovalState(deadline=T0 + timedelta(hours=1)),
        failure_reason=FailureReason.CANCELLED,
        failure_message="cancelled by an operator",
    )
    rows = status_rows(render_state(cancelled, "CANCELED"))
    assert rows["approval"] == (
        "ended undecided: the process ended before a decision; deadline was 2026-01-02 04:04:05 UTC"
    )
    assert rows["failure"].startswith("cancelled")

    # Terminated (Temporal closed it; its own status still says pending), with named approvers.
    named = ApprovalState(
        deadline=T0 + timedelta(hours=1),
        required=2,
        approvers=[
            ApproverState(id="a@x", decision="approved", decided_at=T0, decided_by="a@x"),
            ApproverState(id="b@x", invited_at=T0),
        ],
        approvals=1,
        summary="1 of 2 approvals; waiting for b@x",
    )
    terminated = state(
        status=ProcessStatus.PENDING,
        stage=Stage.AWAITING_APPROVAL,
        approval=named,
        failure_reason=None,
    )
    text = render_state(terminated, "TERMINATED", closed="terminated")
    assert not re.search(r"\bwaiting\b", text), text
    lines = [" ".join(line.split()) for line in text.splitlines()]
    assert (
        "approval ended undecided (1 of 2 approvals): the process ended before a decision; "
        "deadline was 2026-01-02 04:04:05 UTC"
    ) in lines
    assert "approver b@x: did not decide (asked 2026-01-02 03:04:05 UTC)" in lines

    # Still running: still waiting.
    running = state(
        status=ProcessStatus.PENDING,
        stage=Stage.AWAITING_APPROVAL,
        approval=ApprovalState(deadline=T0 + timedelta(hours=1)),
        failure_reason=None,
    )
    assert status_rows(render_state(running, "RUNNING"))["approval"] == (
        "waiting, deadline 2026-01-02 04:04:05 UTC"
    )


def test_a_redrive_keeps_the_approval_and_what_succeeded() -> None:
    failed = ProcessInput(requested_by="alice")
    redrive = plan("process-1", failed, state())
    assert (redrive.redriven_from, redrive.original_process_id, redrive.count) == (
        "process-1",
        "process-1",
        1,
    )
    assert redrive.approval is not None and redrive.approval.decided_by == "bob"
    assert list(redrive.succeeded) == [CommandName.ONE]
    assert redrive.succeeded[CommandName.ONE].result == {"rows": 3}
    text = render("process-1-redrive-1", redrive, failed, state(), None)
    assert text.splitlines()[:2] == [
        "Redrive 1 of process-1: process-1-redrive-1",
        "It failed with command-failed: commands did not meet the completion policy: "
        "command-two failed",
    ]
    assert "command-one: succeeded in process-1, not sent again" in text
    assert "command-two: sent again, idempotency key process-1:command-two" in text
    assert "Lock: queues for approval-commands again, priority 3 (default)" in text


def test_a_redrive_asks_again_when_the_approval_was_the_failure() -> None:
    rejected = state(
        approval=ApprovalState(decision="rejected", decided_by="bob"),
        commands={n: CommandState(command=n) for n in CommandName},
        failure_reason=FailureReason.REJECTED,
    )
    redrive = plan("process-1", ProcessInput(requested_by="alice"), rejected)
    assert redrive.approval is None and redrive.succeeded == {}
    # Never sent by the failed process: the redrive sends them for the first time.
    text = render(
        "process-1-redrive-1", redrive, ProcessInput(requested_by="alice"), rejected, None
    )
    assert "command-one: sent for the first time, idempotency key process-1:command-one" in text
    assert "sent again" not in text


def test_a_redrive_of_a_redrive_counts_on_and_keeps_the_original_keys() -> None:
    earlier = Redrive(redriven_from="process-1", original_process_id="process-1", count=1)
    failed = ProcessInput(requested_by="alice", redrive=earlier)
    again = plan("process-1-redrive-1", failed, state(process_id="process-1-redrive-1"))
    assert (again.original_process_id, again.count) == ("process-1", 2)
    assert redrive_process_id(again.original_process_id, again.count) == "process-1-redrive-2"


def _help_of(command: str, option: str) -> str:
    """What ``approval-flow COMMAND --help`` says of ``option``."""
    parser = build_parser()
    [commands] = [
        action for action in parser._actions if isinstance(action, argparse._SubParsersAction)
    ]
    sub: argparse.ArgumentParser = commands.choices[command]
    return next(a.help or "" for a in sub._actions if option in a.option_strings)


def _command_row(command: str) -> str:
    """The row of docs/operations.md's command table for ``command``."""
    text = (Path(__file__).resolve().parents[2] / "docs/operations.md").read_text()
    [row] = [line for line in text.splitlines() if line.startswith(f"| `{command} ")]
    return row


@pytest.mark.parametrize(
    ("command", "waits_for", "help_says"),
    [
        ("start", "waits up to 15 s for the approval mail", "approval mail in the local inbox"),
        ("redrive", "wait for the new approval mail", "new approval mail in the local inbox"),
        ("cancel", "waits for the close", None),
    ],
)
def test_the_docs_say_what_each_wait_waits_for(
    command: str, waits_for: str, help_says: str | None
) -> None:
    """``redrive --wait`` waits for the mail (as ``start --wait``), not for the redrive (as
    ``cancel --wait`` waits for the close): the table once listed it beside cancel's, unsaid."""
    assert waits_for in _command_row(command)
    if help_says is not None:
        assert help_says in _help_of(command, "--wait")
