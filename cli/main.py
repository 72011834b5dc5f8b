"""``approval-flow``: start processes and look at them from a terminal.

    approval-flow start --requested-by alice --description "deploy v2"
    approval-flow status process-…
    approval-flow list [--status failed]
    approval-flow lock

Every command takes ``--json`` for scripts. The connection comes from the same environment as
the worker (``TEMPORAL_ADDRESS``, ``TEMPORAL_NAMESPACE``, ...); the defaults reach ``make run``.
Exit codes: 0 done, 1 not found or not possible, 2 bad usage, 3 Temporal unreachable.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, TextIO

import aiohttp
from pydantic import Field, ValidationError
from pydantic_settings import NoDecode
from temporalio.client import (
    Client,
    WorkflowExecution,
    WorkflowExecutionDescription,
    WorkflowHandle,
)
from temporalio.common import SearchAttributeKey
from temporalio.service import RPCError, RPCStatusCode

from common.settings import Settings
from common.temporal import TemporalUnavailable, connect, exit_process
from common.tokens import SigningKey
from workflows.messages import (
    DEFAULT_LOCK_RESOURCE,
    PROCESS_ID_PREFIX,
    PROCESS_STATUS_ATTRIBUTE,
    MutexState,
    ProcessInput,
    ProcessState,
    ProcessStatus,
    mutex_workflow_id,
)

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3

PROCESS_WORKFLOW = "ProcessWorkflow"
STATUS_KEY = SearchAttributeKey.for_keyword(PROCESS_STATUS_ATTRIBUTE)
# A query needs a worker to answer; without one the server would hold the call for a long time.
QUERY_TIMEOUT = timedelta(seconds=10)


class CliSettings(Settings):
    """The worker's settings, minus what only services need: the CLI signs nothing."""

    signing_keys: Annotated[tuple[SigningKey, ...], NoDecode] = Field(default=())
    # Where ``start`` looks for the approval mail it caused (the local inbox of ``make run``).
    # Set it empty when approvers get real mail: ``start`` then prints only the process id.
    inbox_url: str | None = "http://127.0.0.1:8025"


class CliError(Exception):
    """A failure reported as one line on stderr, with its exit code."""

    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class Output:
    """Where results go: ``--json`` prints one JSON document, otherwise readable lines."""

    as_json: bool
    stream: TextIO

    def emit(self, document: Any, text: str) -> None:
        if self.as_json:
            print(json.dumps(document, indent=2, default=str), file=self.stream)
        else:
            print(text, file=self.stream)


# -- start --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Started:
    process_id: str
    run_id: str | None
    approve_url: str | None = None
    reject_url: str | None = None


async def start_process(
    client: Client, settings: Settings, requested_by: str, description: str
) -> Started:
    """Start one ProcessWorkflow; the process id is the workflow id (``process-<uuid>``)."""
    process_input = ProcessInput(
        requested_by=requested_by, description=description, options=settings.process
    )
    process_id = f"{PROCESS_ID_PREFIX}{uuid.uuid4()}"
    handle: WorkflowHandle[Any, Any] = await client.start_workflow(
        PROCESS_WORKFLOW,
        process_input,
        id=process_id,
        task_queue=settings.task_queue,
    )
    return Started(process_id=process_id, run_id=handle.result_run_id)


async def wait_for_approval_link(
    inbox_url: str, process_id: str, wait: float, poll_interval: float = 0.2
) -> tuple[str, str | None] | None:
    """The approve and reject links the workflow mailed, read from the local inbox.

    None when the inbox cannot be reached or the mail did not arrive in time.
    """
    url = f"{inbox_url.rstrip('/')}/messages.json"
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    request_timeout = aiohttp.ClientTimeout(total=2)
    async with aiohttp.ClientSession(timeout=request_timeout) as http:
        while True:
            try:
                async with http.get(url, params={"process_id": process_id}) as response:
                    if response.status == 200:
                        messages = (await response.json()).get("messages", [])
                        for message in messages:
                            if message.get("approve_url"):
                                return message["approve_url"], message.get("reject_url")
            except (aiohttp.ClientError, TimeoutError, ValueError):
                pass  # not up yet, or not there at all: the deadline decides
            if loop.time() + poll_interval > deadline:
                return None
            await asyncio.sleep(poll_interval)


async def cmd_start(args: argparse.Namespace, client: Client, settings: CliSettings) -> Started:
    try:
        started = await start_process(client, settings, args.requested_by, args.description)
    except ValidationError as err:
        problem = err.errors()[0]
        field = ".".join(str(p) for p in problem["loc"])
        raise CliError(f"invalid {field}: {problem['msg']}", EXIT_USAGE) from err
    if settings.inbox_url and args.wait > 0:
        links = await wait_for_approval_link(settings.inbox_url, started.process_id, args.wait)
        if links is not None:
            started = Started(started.process_id, started.run_id, links[0], links[1])
    return started


def render_started(started: Started, settings: CliSettings, waited: float) -> str:
    lines = [f"Process: {started.process_id}"]
    if started.approve_url:
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
    lines.append(f"Follow it: approval-flow status {started.process_id}")
    return "\n".join(lines)


# -- status -------------------------------------------------------------------------------------


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


async def describe(client: Client, workflow_id: str, what: str) -> WorkflowExecutionDescription:
    try:
        return await client.get_workflow_handle(workflow_id).describe()
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            raise CliError(f"no {what} with id {workflow_id}") from err
        raise


async def query_state(
    handle: WorkflowHandle[Any, Any], result_type: type[Any]
) -> tuple[Any | None, str | None]:
    """The ``state`` query's answer, or None and why there is none."""
    try:
        return await handle.query("state", result_type=result_type, rpc_timeout=QUERY_TIMEOUT), None
    except RPCError as err:
        if err.status in (RPCStatusCode.DEADLINE_EXCEEDED, RPCStatusCode.CANCELLED):
            return None, "no worker answered the state query (is the worker running?)"
        return None, f"state query failed: {err.message}"
    except Exception as err:  # WorkflowQueryFailedError, WorkflowQueryRejectedError, ...
        return None, f"state query failed: {err}"


def _when(moment: datetime | None) -> str:
    if moment is None:
        return "-"
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def process_status_of(description: WorkflowExecution) -> str | None:
    value = description.typed_search_attributes.get(STATUS_KEY)
    return str(value) if value is not None else None


def render_state(state: ProcessState, temporal_status: str | None) -> str:
    rows: list[tuple[str, str]] = [
        ("status", f"{state.status.value} (stage {state.stage.value})"),
        ("requested by", f"{state.requested_by}, {_when(state.created_at)}"),
        ("description", state.description or "-"),
    ]
    approval = state.approval
    if approval.decision:
        comment = f' "{approval.comment}"' if approval.comment else ""
        rows.append(
            (
                "approval",
                f"{approval.decision} by {approval.decided_by} at {_when(approval.decided_at)}"
                + comment,
            )
        )
    elif approval.deadline:
        rows.append(("approval", f"waiting, deadline {_when(approval.deadline)}"))
    else:
        rows.append(("approval", "not asked yet"))
    lock = state.lock
    lock_text: str = lock.status
    if lock.status == "held":
        lock_text += f" (lease {lock.lease_id}) since {_when(lock.granted_at)}"
    elif lock.status == "requested":
        lock_text += f" at {_when(lock.requested_at)}, gives up {_when(lock.deadline)}"
    rows.append((f"lock {lock.resource}", lock_text))
    for name, command in sorted(state.commands.items()):
        text: str = command.status
        if command.attempts:
            text += f", {command.attempts} send attempt(s)"
        if command.status == "sent" and command.deadline:
            text += f", callback due by {_when(command.deadline)}"
        if command.finished_at:
            text += f", finished {_when(command.finished_at)}"
        if command.error:
            text += f": {command.error}"
        rows.append((str(name), text))
    if state.failure_reason:
        rows.append(("failure", f"{state.failure_reason.value}: {state.failure_message}"))
    if state.finished_at:
        rows.append(("finished", _when(state.finished_at)))
    rows.append(("temporal", temporal_status or "-"))
    width = max(len(label) for label, _ in rows)
    body = "\n".join(f"  {label.ljust(width)}  {value}" for label, value in rows)
    return f"{state.process_id}\n{body}"


async def cmd_status(args: argparse.Namespace, client: Client) -> tuple[dict[str, Any], str]:
    process_id = normalise_process_id(args.process_id)
    description = await describe(client, process_id, "process")
    if description.workflow_type != PROCESS_WORKFLOW:
        raise CliError(f"{process_id} is a {description.workflow_type}, not a process")
    temporal_status = description.status.name if description.status else None
    state, problem = await query_state(client.get_workflow_handle(process_id), ProcessState)
    document = {
        "process_id": process_id,
        "temporal_status": temporal_status,
        "process_status": process_status_of(description),
        "state": state.model_dump(mode="json") if state else None,
        "problem": problem,
    }
    if state is not None:
        text = render_state(state, temporal_status)
    else:
        text = (
            f"{process_id}\n  status    {process_status_of(description) or '-'}\n"
            f"  temporal  {temporal_status or '-'}\n  ({problem})"
        )
    return document, text


# -- list ---------------------------------------------------------------------------------------


def list_query(status: str | None) -> str:
    query = f"WorkflowType = '{PROCESS_WORKFLOW}'"
    if status:
        query += f" AND {PROCESS_STATUS_ATTRIBUTE} = '{ProcessStatus(status).value}'"
    return query


async def cmd_list(args: argparse.Namespace, client: Client) -> tuple[dict[str, Any], str]:
    rows: list[dict[str, Any]] = []
    async for execution in client.list_workflows(list_query(args.status), limit=args.limit):
        rows.append(
            {
                "process_id": execution.id,
                "status": process_status_of(execution),
                "temporal_status": execution.status.name if execution.status else None,
                "started_at": execution.start_time.isoformat(),
                "closed_at": execution.close_time.isoformat() if execution.close_time else None,
            }
        )
    rows.sort(key=lambda row: row["started_at"], reverse=True)
    if not rows:
        which = f" with status {args.status}" if args.status else ""
        return {"processes": []}, f"no processes{which}"
    header = ("PROCESS", "STATUS", "TEMPORAL", "STARTED (UTC)")
    table = [
        (
            row["process_id"],
            row["status"] or "-",
            row["temporal_status"] or "-",
            row["started_at"][:19].replace("T", " "),
        )
        for row in rows
    ]
    widths = [max(len(str(line[i])) for line in [header, *table]) for i in range(len(header))]
    text = "\n".join(
        "  ".join(str(cell).ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in [header, *table]
    )
    return {"processes": rows}, text


# -- lock ---------------------------------------------------------------------------------------


def render_lock(state: MutexState, workflow_id: str) -> str:
    lines = [f"lock {state.resource} ({workflow_id})"]
    holder = state.holder
    if holder is None:
        lines.append("  holder  nobody")
    else:
        lines.append(
            f"  holder  {holder.holder_workflow_id} (lease {holder.lease_id}), "
            f"since {_when(holder.granted_at)}, lease ends {_when(holder.expires_at)}"
        )
    if not state.queue:
        lines.append("  queue   empty")
    else:
        lines.append(f"  queue   {len(state.queue)} waiting, first in line first:")
        for position, request in enumerate(state.queue, start=1):
            lines.append(
                f"    {position}. {request.requester_workflow_id} "
                f"since {_when(request.requested_at)}"
            )
    counters = state.counters.model_dump()
    lines.append(
        "  counts  " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in counters.items())
    )
    return "\n".join(lines)


async def cmd_lock(args: argparse.Namespace, client: Client) -> tuple[dict[str, Any], str]:
    workflow_id = mutex_workflow_id(args.resource)
    try:
        description = await client.get_workflow_handle(workflow_id).describe()
    except RPCError as err:
        if err.status != RPCStatusCode.NOT_FOUND:
            raise
        document = {"resource": args.resource, "workflow_id": workflow_id, "state": None}
        return document, f"lock {args.resource}: free (no process has asked for it yet)"
    state, problem = await query_state(client.get_workflow_handle(workflow_id), MutexState)
    document = {
        "resource": args.resource,
        "workflow_id": workflow_id,
        "temporal_status": description.status.name if description.status else None,
        "state": state.model_dump(mode="json") if state else None,
        "problem": problem,
    }
    if state is None:
        return document, f"lock {args.resource} ({workflow_id})\n  ({problem})"
    return document, render_lock(state, workflow_id)


# -- wiring -------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="print one JSON document")
    parser = argparse.ArgumentParser(
        prog="approval-flow",
        description="Start approval processes and inspect them on Temporal.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    start = commands.add_parser(
        "start", parents=[common], help="start a process and print its approval link"
    )
    start.add_argument("--requested-by", required=True, help="who asks for approval")
    start.add_argument("--description", default="", help="what the approver is asked about")
    start.add_argument(
        "--wait",
        type=float,
        default=15.0,
        metavar="SECONDS",
        help="how long to wait for the approval mail in the local inbox (0: do not wait)",
    )

    status = commands.add_parser("status", parents=[common], help="one process's state")
    status.add_argument("process_id", metavar="ID", help="process id (process-<uuid>)")

    listing = commands.add_parser("list", parents=[common], help="recent processes")
    listing.add_argument("--status", choices=[s.value for s in ProcessStatus])
    listing.add_argument("--limit", type=int, default=20, help="at most this many (20)")

    lock = commands.add_parser("lock", parents=[common], help="who holds the lock, who waits")
    lock.add_argument("--resource", default=DEFAULT_LOCK_RESOURCE)
    return parser


async def execute(
    args: argparse.Namespace, client: Client, settings: CliSettings, out: Output
) -> None:
    """Run one parsed command against a connected client."""
    if args.command == "start":
        started = await cmd_start(args, client, settings)
        document = {
            "process_id": started.process_id,
            "run_id": started.run_id,
            "approval_link": started.approve_url,
            "reject_link": started.reject_url,
        }
        out.emit(document, render_started(started, settings, args.wait))
        return
    handlers = {"status": cmd_status, "list": cmd_list, "lock": cmd_lock}
    document, text = await handlers[args.command](args, client)
    out.emit(document, text)


async def run_async(args: argparse.Namespace, settings: CliSettings, out: Output) -> None:
    client = await connect(settings)
    try:
        await execute(args, client, settings, out)
    except RPCError as err:
        if err.status in (RPCStatusCode.UNAVAILABLE, RPCStatusCode.DEADLINE_EXCEEDED):
            raise CliError(
                f"Temporal at {settings.temporal_address} stopped answering: {err.message}",
                EXIT_UNREACHABLE,
            ) from err
        raise CliError(f"Temporal refused: {err.message}") from err


def run(argv: Sequence[str] | None = None, stdout: TextIO | None = None) -> int:
    """Parse, run, and turn every expected failure into one line on stderr and an exit code."""
    args = build_parser().parse_args(argv)
    out = Output(as_json=args.json, stream=stdout or sys.stdout)
    try:
        settings = CliSettings()
    except ValidationError as err:
        problem = err.errors()[0]
        print(f"approval-flow: invalid setting {problem['loc']}: {problem['msg']}", file=sys.stderr)
        return EXIT_USAGE
    try:
        asyncio.run(run_async(args, settings, out))
    except TemporalUnavailable as err:
        reason = str(err)
        if "ConnectionRefused" in reason:  # the usual case; the transport's details add nothing
            reason = f"cannot reach Temporal at {settings.temporal_address}: connection refused"
        print(f"approval-flow: {reason} (is `make run` running?)", file=sys.stderr)
        return EXIT_UNREACHABLE
    except CliError as err:
        print(f"approval-flow: {err}", file=sys.stderr)
        return err.code
    except KeyboardInterrupt:
        return 130
    return EXIT_OK


def main() -> None:
    # ``exit_process`` keeps the exit status even if the SDK aborts interpreter finalisation.
    exit_process(run())


if __name__ == "__main__":
    main()
