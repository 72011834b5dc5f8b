"""The CLI: its output, its errors and exit codes (a time-skipping server answers the RPCs)."""

from __future__ import annotations

import asyncio
import io
import json
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from aiohttp import web
from temporalio.testing import WorkflowEnvironment

from cli.keys import link_lives, spoken
from cli.list import list_query, render_list
from cli.lock import render_lock
from cli.main import build_parser, execute, run
from cli.output import EXIT_UNREACHABLE, EXIT_USAGE, CliError, Output, program
from cli.settings import CliSettings
from cli.start import process_options, render_started
from cli.status import approval_rows, normalise_process_id, render_state
from starter import InboxUnreachable, Started, wait_for_approval_link, wait_for_approver_links
from tests.support.http import serving
from tests.support.moto_server import free_loopback_port
from workflows.messages import (
    ApprovalNotice,
    ApprovalPolicy,
    ApprovalState,
    Approver,
    ApproverState,
    CommandName,
    CommandState,
    FailureReason,
    InvalidProcessOptions,
    Lease,
    LockRequest,
    LockState,
    MutexState,
    ProcessOptions,
    ProcessState,
    ProcessStatus,
    Stage,
)
from workflows.process import send_budget

T0 = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
ROOT = Path(__file__).resolve().parents[2]


def test_bare_uuid_means_a_process_id() -> None:
    uuid = "7f3c2a1e-0000-4000-8000-000000000001"
    assert normalise_process_id(uuid) == f"process-{uuid}"
    assert normalise_process_id(f"process-{uuid}") == f"process-{uuid}"
    assert normalise_process_id("mutex-x") == "mutex-x"


def test_list_query_filters_on_the_search_attribute() -> None:
    assert list_query(None) == "WorkflowType = 'ProcessWorkflow'"
    # A process Temporal terminated still says in-progress: only running ones are.
    assert list_query("in-progress") == (
        "WorkflowType = 'ProcessWorkflow' AND ProcessStatus = 'in-progress' "
        "AND ExecutionStatus = 'Running'"
    )
    assert list_query("failed") == "WorkflowType = 'ProcessWorkflow' AND ProcessStatus = 'failed'"


def test_a_process_temporal_closed_leads_with_temporals_status_and_what_was_left() -> None:
    state = ProcessState(
        process_id="process-1",
        requested_by="alice",
        description="deploy v2",
        stage=Stage.RUNNING_COMMANDS,
        status=ProcessStatus.IN_PROGRESS,
        created_at=T0,
        updated_at=T0,
        approval=ApprovalState(decision="approved", decided_by="bob", decided_at=T0),
        lock=LockState(resource="approval-commands", status="held", lease_id=7),
        commands={
            CommandName.ONE: CommandState(command=CommandName.ONE, status="succeeded"),
            CommandName.TWO: CommandState(command=CommandName.TWO, status="sent"),
        },
    )
    text = render_state(state, "TERMINATED", closed="terminated")
    rows = {line.split(None, 1)[0]: line.split(None, 1)[1] for line in text.splitlines()[1:]}
    assert rows["status"] == (
        "terminated in Temporal, at stage running-commands (its own last status: in-progress)"
    )
    cleanup = rows["cleanup"]
    assert "keeps its last status (in-progress)" in cleanup
    assert "marks the record failed (abandoned)" in cleanup
    assert "command-two sent and not withdrawn" in cleanup
    assert "in-progress (stage" not in text
    # A process that closed itself shows no such line.
    assert "cleanup" not in render_state(state, "RUNNING")


def test_every_command_takes_json() -> None:
    parser = build_parser()
    for argv in (["start", "--requested-by", "a"], ["status", "x"], ["list"], ["lock"]):
        assert parser.parse_args([*argv, "--json"]).json is True


def test_state_reads_as_lines() -> None:
    state = ProcessState(
        process_id="process-1",
        requested_by="alice",
        description="deploy v2",
        stage=Stage.FAILED,
        status=ProcessStatus.FAILED,
        created_at=T0,
        updated_at=T0,
        approval=ApprovalState(
            decision="approved", decided_by="bob", decided_at=T0, comment="go ahead"
        ),
        lock=LockState(resource="approval-commands", status="released"),
        commands={
            CommandName.ONE: CommandState(
                command=CommandName.ONE, status="failed", attempts=1, error="disk full"
            ),
            CommandName.TWO: CommandState(command=CommandName.TWO, status="succeeded", attempts=2),
        },
        failure_reason=FailureReason.COMMAND_FAILED,
        failure_message="command-one failed",
        finished_at=T0,
    )
    text = render_state(state, "FAILED")
    lines = text.splitlines()
    assert lines[0] == "process-1"
    assert "status                  failed (stage failed)" in text
    assert 'approved by bob at 2026-01-02 03:04:05 UTC "go ahead"' in text
    assert "command-one             failed, 1 send attempt(s): disk full" in text
    assert "failure                 command-failed: command-one failed" in text
    assert lines[-1].split() == ["temporal", "FAILED"]


def test_state_prints_what_others_wrote_with_control_characters_escaped() -> None:
    """Names, comments and errors come from links and downstream systems: an escape sequence
    in one must reach the terminal as text, and a line break must not start a fake row."""
    state = ProcessState(
        process_id="process-1",
        requested_by="alice\x1b]0;pwned\x07",
        description="deploy\nstatus  completed",
        stage=Stage.FAILED,
        status=ProcessStatus.FAILED,
        created_at=T0,
        updated_at=T0,
        approval=ApprovalState(
            decision="approved",
            decided_by="\x1b[31mRED\x1b]0;pwned\x07",
            decided_at=T0,
            comment="\x1b[2Jcleared \u202eevil",
        ),
        lock=LockState(resource="approval-commands", status="released"),
        commands={
            CommandName.ONE: CommandState(
                command=CommandName.ONE, status="failed", error="bad\x9b31m\r\nline"
            ),
        },
    )
    text = render_state(state, "FAILED")
    assert text.isascii() and "\x1b" not in text and "\x07" not in text and "\r" not in text
    assert r"approved by \x1b[31mRED\x1b]0;pwned\x07 at" in text
    assert r'"\x1b[2Jcleared \u202eevil"' in text
    assert r"alice\x1b]0;pwned\x07, 2026" in text
    assert r"deploy\nstatus  completed" in text
    assert r"failed: bad\x9b31m\r\nline" in text
    assert len(text.splitlines()) == len(render_state(make_plain(state), "FAILED").splitlines())


def make_plain(state: ProcessState) -> ProcessState:
    """The same state with every outside text plain."""
    return state.model_copy(
        update={
            "requested_by": "alice",
            "description": "deploy",
            "approval": state.approval.model_copy(update={"decided_by": "bob", "comment": "ok"}),
            "commands": {
                name: command.model_copy(update={"error": "bad"})
                for name, command in state.commands.items()
            },
        }
    )


def test_lock_shows_holder_and_queue_in_order() -> None:
    state = MutexState(
        resource="approval-commands",
        holder=Lease(
            request_id="r1",
            holder_workflow_id="process-1",
            lease_id=7,
            granted_at=T0,
            expires_at=T0 + timedelta(hours=3),
        ),
        queue=[
            LockRequest(
                requester_workflow_id=f"process-{n}",
                request_id=f"r{n}",
                lease_timeout=timedelta(hours=3),
                requested_at=T0,
            )
            for n in (2, 3)
        ],
    )
    text = render_lock(state, "mutex-approval-commands")
    assert "holder  process-1 (lease 7)" in text
    assert "    1. process-2" in text and "    2. process-3" in text


def test_unreachable_server_is_one_line_and_exit_3(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    address = f"127.0.0.1:{free_loopback_port()}"
    monkeypatch.setenv("TEMPORAL_ADDRESS", address)
    assert run(["list"]) == EXIT_UNREACHABLE
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.splitlines() == [
        f"approval-flow: cannot reach Temporal at {address}: connection refused "
        "(is `make run` running?)"
    ]


def test_options_out_of_range_are_said_as_such_with_temporal_down(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # They were said only once connected: with the server down, "cannot reach Temporal" (exit 3)
    # hid what the operator must fix first.
    monkeypatch.setenv("TEMPORAL_ADDRESS", f"127.0.0.1:{free_loopback_port()}")
    monkeypatch.setenv("APPROVAL_PROCESS__APPROVAL_TIMEOUT", "P3000000D")
    monkeypatch.setenv("APPROVAL_INBOX_URL", "")
    assert run(["start", "--requested-by", "alice"]) == EXIT_USAGE
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("approval-flow: invalid process options: approval_timeout"), line


def test_malformed_temporal_address_is_one_line_and_exit_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TEMPORAL_ADDRESS", "localhost:99999")
    assert run(["list"]) == EXIT_USAGE
    assert capsys.readouterr().err.splitlines() == [
        "approval-flow: invalid settings: TEMPORAL_ADDRESS must be host:port, "
        "with a port from 1 to 65535"
    ]


@pytest.mark.parametrize(
    ("argv", "error"),
    [
        (["status", ""], "approval-flow status: argument ID: a process id is needed"),
        (["status", "  "], "approval-flow status: argument ID: a process id is needed"),
        (["statsu"], "approval-flow: argument COMMAND: invalid choice: 'statsu'"),
        (["list", "--limit", "x"], "approval-flow list: argument --limit: invalid int value"),
        ([], "approval-flow: the following arguments are required: COMMAND"),
    ],
)
def test_usage_errors_are_one_line_and_exit_2(
    argv: list[str], error: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        run(argv)
    assert exit_.value.code == EXIT_USAGE
    captured = capsys.readouterr()
    assert captured.out == ""
    [line] = captured.err.splitlines()
    assert line.startswith(error) and line.endswith("--help)")


def test_keys_says_how_long_links_live_with_the_defaults(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("APPROVAL_SIGNING_KEYS", f"new:{'n' * 32},old:{'o' * 32}")
    monkeypatch.setenv("TEMPORAL_ADDRESS", f"127.0.0.1:{free_loopback_port()}")  # not needed

    assert run(["keys", "--json"]) == 0

    document = json.loads(capsys.readouterr().out)
    assert document["keys"] == [{"kid": "new", "signs": True}, {"kid": "old", "signs": False}]
    # A command callback's link: 4 HTTP retry waits of 20 min (Retry-After bound), 5 attempts of
    # 30 s, the 1 h callback wait and the 5 min grace.
    assert document["longest"] == {
        "link": "command-callback",
        "seconds": 8850.0,
        "text": "2 h 27 min 30 s",
    }
    assert document["link_lives_seconds"]["approval"] == 3900.0
    assert "keep the old key listed for 2 h 27 min 30 s" in document["rotation"]


def test_keys_follow_the_process_settings(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("APPROVAL_PROCESS__APPROVAL_TIMEOUT", "PT5H")
    monkeypatch.setenv("APPROVAL_TOKEN_GRACE", "60")

    assert run(["keys"]) == 0

    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "Signing keys: none set here (APPROVAL_SIGNING_KEYS)"
    assert lines[1] == "Longest link life: 5 h 1 min (approval links)"


def test_link_lives_match_what_the_worker_signs() -> None:
    """The command token's deadline is the one ProcessWorkflow._run_command gives the send."""
    options = ProcessOptions(command_timeout=timedelta(minutes=10))
    lives = link_lives(options, grace=timedelta(minutes=5))
    assert lives["command-callback"] == send_budget(options) + timedelta(minutes=15)
    assert spoken(timedelta(days=1, seconds=61)) == "1 d 1 min 1 s"


async def execute_args(env: WorkflowEnvironment, argv: list[str]) -> str:
    out = io.StringIO()
    args = build_parser().parse_args(argv)
    await execute(args, env.client, CliSettings(inbox_url=None), Output(args.json, out))
    return out.getvalue()


async def test_unknown_process_is_a_clear_error(time_env: WorkflowEnvironment) -> None:
    with pytest.raises(CliError) as error:
        await execute_args(time_env, ["status", "process-does-not-exist"])
    assert str(error.value) == "no process with id process-does-not-exist"
    assert error.value.code == 1


async def test_invalid_input_is_a_usage_error(time_env: WorkflowEnvironment) -> None:
    with pytest.raises(CliError) as error:
        await execute_args(time_env, ["start", "--requested-by", ""])
    assert error.value.code == EXIT_USAGE
    assert str(error.value).startswith("invalid requested_by:")


async def test_a_lease_shorter_than_a_process_needs_is_refused_at_start(
    time_env: WorkflowEnvironment,
) -> None:
    """Raising command_timeout alone once got processes revoked mid-phase, silently."""
    settings = CliSettings(
        inbox_url=None, process=ProcessOptions(command_timeout=timedelta(hours=3))
    )
    args = build_parser().parse_args(["start", "--requested-by", "alice"])
    with pytest.raises(CliError) as error:
        await execute(args, time_env.client, settings, Output(False, io.StringIO()))
    assert error.value.code == EXIT_USAGE
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith("invalid process options: lease_timeout 3:00:00 is shorter than")
    assert "command timeout 3:00:00" in message


async def test_a_duration_out_of_range_is_refused_at_start(time_env: WorkflowEnvironment) -> None:
    """A 3,000,000-day approval timeout once started a process that failed a workflow task on
    every retry, its record pending for good: the CLI now refuses it, in the settings or in a
    flag, with one line naming the option and the bound."""
    settings = CliSettings(
        inbox_url=None, process=ProcessOptions(approval_timeout=timedelta(days=3_000_000))
    )
    args = build_parser().parse_args(["start", "--requested-by", "alice"])
    with pytest.raises(CliError) as error:
        await execute(args, time_env.client, settings, Output(False, io.StringIO()))
    assert error.value.code == EXIT_USAGE
    assert str(error.value) == (
        "invalid process options: approval_timeout 3000000 days, 0:00:00 is longer than "
        "365 days, 0:00:00, the longest a process option may be; shorten it"
    )
    flag = ["start", "--requested-by", "alice", "--remind-every", "P400D"]
    with pytest.raises(CliError) as error:
        await execute_args(time_env, flag)
    assert error.value.code == EXIT_USAGE
    assert str(error.value).startswith(
        "invalid process options: approval.remind_every 400 days, 0:00:00 is longer than"
    )


async def test_a_heartbeat_timeout_no_system_could_meet_is_refused_at_start(
    time_env: WorkflowEnvironment,
) -> None:
    """The API passes one link's heartbeats on at most every 5 s and drops the ones between:
    a 3 s timeout always fired, and 6 s fired although the system kept its cadence (heartbeats
    reached the workflow 6 s apart). Anything under twice the interval is refused."""
    args = build_parser().parse_args(["start", "--requested-by", "alice"])
    for seconds, shown in ((3, "0:00:03"), (6, "0:00:06"), (9.5, "0:00:09.500000")):
        settings = CliSettings(
            inbox_url=None,
            process=ProcessOptions(command_heartbeat_timeout=timedelta(seconds=seconds)),
        )
        with pytest.raises(CliError) as error:
            await execute(args, time_env.client, settings, Output(False, io.StringIO()))
        assert error.value.code == EXIT_USAGE
        message = str(error.value)
        assert "\n" not in message
        assert message.startswith(
            f"invalid process options: command_heartbeat_timeout {shown} is shorter than "
            "0:00:10, twice APPROVAL_HEARTBEAT_MIN_INTERVAL 0:00:05"
        )
    # Twice the interval, and a few times it, are fine.
    for seconds in (10, 20):
        fine = settings.model_copy(
            update={"process": ProcessOptions(command_heartbeat_timeout=timedelta(seconds=seconds))}
        )
        out = io.StringIO()
        await execute(args, time_env.client, fine, Output(True, out))
        assert json.loads(out.getvalue())["process_id"].startswith("process-")


def test_reminders_that_would_flood_the_history_are_refused() -> None:
    """10 s reminders over a day would be ~8,640 timers and mails: past Temporal's history limit."""
    policy = ApprovalPolicy(remind_every=timedelta(seconds=10))
    with pytest.raises(InvalidProcessOptions) as error:
        ProcessOptions(approval_timeout=timedelta(hours=24), approval=policy).check()
    assert "\n" not in str(error.value) and "remind less often" in str(error.value)
    hourly = ApprovalPolicy(remind_every=timedelta(hours=1))
    ProcessOptions(approval_timeout=timedelta(hours=24), approval=hourly).check()


def test_default_options_fit_their_lease() -> None:
    options = ProcessOptions()
    options.check()
    needed = sum(options.lease_needed().values(), timedelta())
    assert needed <= options.lease_timeout


async def test_lock_nobody_asked_for(time_env: WorkflowEnvironment) -> None:
    out = await execute_args(time_env, ["lock", "--resource", "never-used", "--json"])
    assert json.loads(out) == {
        "resource": "never-used",
        "workflow_id": "mutex-never-used",
        "state": None,
    }


@asynccontextmanager
async def fake_inbox(after_polls: int) -> AsyncIterator[str]:
    """An inbox whose mail for process-1 shows up on the ``after_polls``-th request."""
    polls = 0

    async def messages(request: web.Request) -> web.Response:
        nonlocal polls
        polls += 1
        found = polls >= after_polls and request.query.get("process_id") == "process-1"
        mail = {"approve_url": "http://api/approvals/t", "reject_url": "http://api/r"}
        return web.json_response({"messages": [mail] if found else []})

    app = web.Application()
    app.router.add_get("/messages.json", messages)
    async with serving(app) as base:
        yield base


async def test_start_waits_for_the_link_in_the_inbox() -> None:
    async with fake_inbox(after_polls=3) as inbox:
        links = await wait_for_approval_link(inbox, "process-1", wait=5, poll_interval=0.01)
        assert links == ("http://api/approvals/t", "http://api/r")
        assert await wait_for_approval_link(inbox, "process-2", wait=0.05) is None


async def test_no_inbox_means_no_link() -> None:
    """``make run``'s banner is patient: its inbox may still be starting."""
    inbox = f"http://127.0.0.1:{free_loopback_port()}"
    assert await wait_for_approval_link(inbox, "process-1", wait=0.1, poll_interval=0.02) is None


async def test_an_inbox_nobody_listens_at_is_said_at_once(time_env: WorkflowEnvironment) -> None:
    """Before, ``start`` waited its 15 s and said "not in the inbox ... (is the worker
    running?)" while the worker was fine and the inbox refused the connection."""
    inbox = f"http://127.0.0.1:{free_loopback_port()}"
    with pytest.raises(InboxUnreachable) as unreachable:
        await wait_for_approval_link(inbox, "process-1", wait=600, patient=False)
    assert unreachable.value.reason == "connection refused"
    with pytest.raises(InboxUnreachable):
        await wait_for_approver_links(inbox, "process-1", ["a@x"], wait=600, patient=False)

    settings = CliSettings(inbox_url=inbox)
    for argv in (
        ["start", "--requested-by", "x"],
        ["start", "--requested-by", "x", "--approver", "a@x"],
    ):
        out = io.StringIO()
        args = build_parser().parse_args(argv)
        await execute(args, time_env.client, settings, Output(False, out))
        text = out.getvalue()
        said = (
            f"cannot reach the inbox at {inbox}: connection refused (APPROVAL_INBOX_URL: the "
            "inbox `make run` printed, or empty when approvers get real mail); the process runs "
            "and its mail goes out all the same"
        )
        assert said in text, text
        assert "is the worker running?" not in text
    args = build_parser().parse_args(["start", "--requested-by", "x", "--json"])
    out = io.StringIO()
    await execute(args, time_env.client, settings, Output(True, out))
    document = json.loads(out.getvalue())
    assert document["approval_link"] is None
    assert document["inbox_error"].startswith(f"cannot reach the inbox at {inbox}: connection")


async def test_a_reader_that_stops_early_is_not_an_error(time_env: WorkflowEnvironment) -> None:
    """``approval-flow status ID | head -2``: no BrokenPipeError traceback, exit 0."""
    read, write = os.pipe()
    os.close(read)  # the reader has gone before the first byte is written
    env = {**os.environ, "TEMPORAL_ADDRESS": time_env.client.service_client.config.target_host}
    try:
        process = await asyncio.create_subprocess_exec(
            *[sys.executable, "-m", "cli", "lock", "--resource", "never-used"],
            cwd=ROOT,
            env=env,
            stdout=write,
            stderr=asyncio.subprocess.PIPE,
        )
    finally:
        os.close(write)
    _, err = await asyncio.wait_for(process.communicate(), 30)
    assert (process.returncode, err.decode()) == (0, "")


def test_hints_name_the_cli_as_it_can_be_typed_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bin_dir = tmp_path / "venv" / "bin"
    bin_dir.mkdir(parents=True)
    script = bin_dir / "approval-flow"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    monkeypatch.chdir(tmp_path)
    # Not on PATH: the path that runs it from here, as `.venv/bin/approval-flow` in a clone.
    assert program(str(script), search_path="/nonexistent") == "venv/bin/approval-flow"
    # On PATH (an activated venv, the image): the bare name.
    assert program(str(script), search_path=str(bin_dir)) == "approval-flow"
    monkeypatch.chdir(bin_dir)
    assert program(str(script), search_path="/nonexistent") == "./approval-flow"

    started = Started("process-1", None)
    last = render_started(started, CliSettings(inbox_url=None), 0).splitlines()[-1]
    assert last == f"Follow it: {program()} status process-1"


# -- the approval policy on the command line --------------------------------------------------


async def test_start_takes_the_policy_and_prints_each_approvers_link(
    time_env: WorkflowEnvironment,
) -> None:
    async def messages(request: web.Request) -> web.Response:
        process_id = request.query["process_id"]
        mails = [
            {"process_id": process_id, "approver": who, "approve_url": f"http://api/{who}"}
            for who in ("a@x", "b@x", "c@x")
        ]
        return web.json_response({"messages": mails})

    app = web.Application()
    app.router.add_get("/messages.json", messages)
    argv = [
        "start",
        "--requested-by",
        "grace",
        *("--approver", "a@x=Alice", "--approver", "b@x", "--approver", "c@x=Carol"),
        *("--required", "2", "--no-reject-vetoes", "--remind-every", "600"),
        *("--escalate-after", "PT30M", "--escalate-to", "d@x=Dave", "--on-timeout", "reject"),
    ]
    async with serving(app) as inbox:
        settings = CliSettings(inbox_url=inbox)
        args = build_parser().parse_args([*argv, "--json"])
        out = io.StringIO()
        await execute(args, time_env.client, settings, Output(True, out))
        document = json.loads(out.getvalue())
        args = build_parser().parse_args(argv)
        out = io.StringIO()
        await execute(args, time_env.client, settings, Output(False, out))
        text = out.getvalue()

    assert document["approval_links"] == {
        "a@x": "http://api/a@x",
        "b@x": "http://api/b@x",
        "c@x": "http://api/c@x",
    }
    assert document["approval_link"] is None  # no one link decides for everyone
    policy = ApprovalPolicy.model_validate(document["approval_policy"])
    assert (policy.required, policy.reject_vetoes, policy.on_timeout) == (2, False, "reject")
    assert policy.escalate_to == (Approver(id="d@x", name="Dave"),)
    assert "  Alice <a@x>  http://api/a@x" in text
    assert "  b@x          http://api/b@x" in text
    assert (
        "Policy: 2 of 3 approvals; rejections are counted; reminders every 0:10:00; "
        "escalates to Dave <d@x> after 0:30:00; rejects at the deadline" in text
    )
    # What started is what the workflow carries.
    handle = time_env.client.get_workflow_handle(document["process_id"])
    started = await handle.describe()
    assert started.workflow_type == "ProcessWorkflow"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--required", "2"], "a quorum (required > 1) needs named approvers"),
        (["--approver", "a@x", "--required", "2"], "required is 2 but only 1 approvers"),
        (["--approver", "a@x", "--escalate-to", "b@x"], "escalate_after and escalate_to go"),
        (
            ["--approver", "a@x", "--escalate-to", "b@x", "--escalate-after", "PT2H"],
            "escalate_after must come before approval_timeout",
        ),
    ],
)
def test_a_bad_policy_is_a_usage_error(argv: list[str], message: str) -> None:
    args = build_parser().parse_args(["start", "--requested-by", "grace", *argv])
    with pytest.raises(CliError) as error:
        process_options(args, CliSettings(inbox_url=None))
    assert error.value.code == EXIT_USAGE
    assert str(error.value).startswith("invalid approval policy:")
    assert message in str(error.value)


@pytest.mark.parametrize("argv", [["--remind-every", "soon"], ["--approver", "a b"]])
def test_bad_policy_flags_are_refused_by_the_parser(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["start", "--requested-by", "x", *argv])
    assert exit_.value.code == EXIT_USAGE
    assert "is not a" in capsys.readouterr().err


def test_status_shows_each_approver_reminders_and_escalation() -> None:
    minute = timedelta(minutes=1)
    approval = ApprovalState(
        deadline=T0 + 60 * minute,
        required=2,
        approvers=[
            ApproverState(
                id="a@x",
                name="Alice",
                invited_at=T0,
                decision="approved",
                decided_at=T0 + 5 * minute,
                decided_by="Alice",
                comment="ok",
            ),
            ApproverState(id="b@x", invited_at=T0, reminders=2, last_reminded_at=T0 + 20 * minute),
            ApproverState(id="d@x", name="Dave", role="escalation", invited_at=T0 + 30 * minute),
        ],
        approvals=1,
        notices=[
            ApprovalNotice(kind="request", at=T0, to=["a@x", "b@x"]),
            ApprovalNotice(kind="reminder", at=T0 + 10 * minute, to=["b@x"]),
            ApprovalNotice(
                kind="reminder",
                at=T0 + 20 * minute,
                to=["b@x"],
                sent=False,
                error="SNS unavailable",
            ),
            ApprovalNotice(kind="escalation", at=T0 + 30 * minute, to=["d@x"]),
        ],
        summary="1 of 2 approvals; waiting for b@x and Dave",
    )
    rows = approval_rows(approval)
    assert rows == [
        (
            "approval",
            "1 of 2 approvals; waiting for b@x and Dave; deadline 2026-01-02 04:04:05 UTC",
        ),
        ("approver", 'Alice <a@x>: approved at 2026-01-02 03:09:05 UTC "ok"'),
        (
            "approver",
            "b@x: waiting since 2026-01-02 03:04:05 UTC, reminded 2x "
            "(last 2026-01-02 03:24:05 UTC)",
        ),
        ("escalated to", "Dave <d@x>: waiting since 2026-01-02 03:34:05 UTC"),
        ("mail: request", "2026-01-02 03:04:05 UTC to Alice, b@x"),
        ("mail: reminder", "2026-01-02 03:14:05 UTC to b@x"),
        ("mail: reminder", "2026-01-02 03:24:05 UTC to b@x: NOT SENT (SNS unavailable)"),
        ("mail: escalation", "2026-01-02 03:34:05 UTC to Dave"),
    ]


def test_list_escapes_a_process_id_it_did_not_write() -> None:
    # Any client of the namespace may start a ProcessWorkflow under an id of its choosing; the
    # raw id cleared the operator's screen (ESC [2J) and wrote a line of its own.
    row = {
        "process_id": "process-1\x1b[2J\nprocess-2  completed",
        "status": "pending",
        "temporal_status": "RUNNING",
        "started_at": "2026-12-05T04:00:00+00:00",
    }
    text = render_list([row])
    assert "\x1b" not in text and len(text.splitlines()) == 2, text
    assert "process-1\\x1b[2J\\nprocess-2  completed" in text, text
