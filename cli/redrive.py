"""``approval-flow redrive ID``: run a failed process again from the step where it failed.

Like Step Functions' redrive. The new process keeps what the failed one achieved: the approval
already given (unless the approval was the failure: rejected, timed out, never given), and every
command that succeeded, which is not sent again. It queues at the mutex again and sends the
other commands under the same idempotency keys, so a downstream system that did finish one is
not asked to do it twice.

The redrive is a new process, ``<original>-redrive-<n>``, started with the failed one's input
and a ``redrive`` part saying where it came from; its record and state say so too. Why a new id
rather than a new run under the old one: every link, record and callback stays bound to the run
that made it, so a late click or callback meant for the failed process cannot land in the new
one, and the failed process stays as it ended, for the record. One id per failure: a second
redrive of the same failure is refused by Temporal itself, the id being taken.

Only a closed process that did not complete can be redriven: failed, cancelled, terminated or
timed out. What it achieved is read from its final state: the one its failure carries, read from
its history (no worker needed); a cancelled or terminated one is asked with the ``state`` query.
"""

from __future__ import annotations

import argparse
from typing import Any

from temporalio.client import Client, WorkflowExecutionStatus, WorkflowHandle
from temporalio.common import WorkflowIDReusePolicy
from temporalio.exceptions import ApplicationError, WorkflowAlreadyStartedError

from cli.output import CliError, program, when
from cli.queries import closed_by, describe, query_state, status_to_tell
from cli.settings import CliSettings
from cli.start import inbox_hint
from cli.status import normalise_process_id, process_id_argument
from starter import PROCESS_WORKFLOW, InboxUnreachable, wait_for_approval_link
from workflows.lock_queue import describe as describe_priority
from workflows.messages import (
    CommandName,
    ProcessInput,
    ProcessState,
    Redrive,
    redrive_process_id,
)

HELP = "run a failed process again from the step where it failed"

REDRIVABLE = {
    WorkflowExecutionStatus.FAILED,
    WorkflowExecutionStatus.CANCELED,
    WorkflowExecutionStatus.TERMINATED,
    WorkflowExecutionStatus.TIMED_OUT,
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "process_id", metavar="ID", type=process_id_argument, help="the failed process's id"
    )
    parser.add_argument(
        "--wait",
        type=float,
        default=15.0,
        metavar="SECONDS",
        help="when it asks for approval again: how long to wait for the new approval mail in "
        "the local inbox (0: not at all); it never waits for the redrive to run",
    )


async def run(
    args: argparse.Namespace, client: Client, settings: CliSettings
) -> tuple[dict[str, Any], str]:
    process_id = normalise_process_id(args.process_id)
    description = await describe(client, process_id, "process")
    if description.workflow_type != PROCESS_WORKFLOW:
        raise CliError(f"{process_id} is a {description.workflow_type}, not a process")
    status = description.status
    if status == WorkflowExecutionStatus.RUNNING:
        raise CliError(
            f"{process_id} is still running: only a process that failed can be redriven "
            f"(to stop it: {program()} cancel {process_id})"
        )
    if status not in REDRIVABLE:
        temporal = status.name if status else "closed"
        raise CliError(f"{process_id} {temporal.lower()}: nothing to redrive")
    handle = client.get_workflow_handle(process_id)
    failed_input, carried = await read_history(client, handle)
    state = await final_state(client, handle, carried)
    closed = closed_by(description, state)
    redrive = plan(process_id, failed_input, state)
    new_id = redrive_process_id(redrive.original_process_id, redrive.count)
    try:
        started = await client.start_workflow(
            PROCESS_WORKFLOW,
            failed_input.model_copy(update={"redrive": redrive}),
            id=new_id,
            task_queue=settings.task_queue,
            # One redrive per failure: the id of this one may never be used again.
            id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
        )
    except WorkflowAlreadyStartedError as err:
        taken = await describe(client, new_id, "process")
        raise CliError(
            f"{process_id} was already redriven as {new_id} "
            f"({status_to_tell(taken) or (taken.status.name if taken.status else '?')}); "
            "redrive that one if it failed"
        ) from err
    link = unreachable = None
    if redrive.approval is None and settings.inbox_url and args.wait > 0:
        try:
            links = await wait_for_approval_link(
                settings.inbox_url, new_id, args.wait, patient=False
            )
        except InboxUnreachable as err:
            links, unreachable = None, inbox_hint(err)
        link = links[0] if links else None
    document = {
        "process_id": new_id,
        "run_id": started.result_run_id,
        "redriven_from": process_id,
        "redrive_count": redrive.count,
        "approval_kept": redrive.approval is not None,
        "commands_kept": sorted(name.value for name in redrive.succeeded),
        "commands_sent_again": sorted(
            name.value for name in CommandName if name not in redrive.succeeded
        ),
        "approval_link": link,
        "inbox_error": unreachable,
    }
    return document, render(new_id, redrive, failed_input, state, link, closed, unreachable)


async def read_history(
    client: Client, handle: WorkflowHandle[Any, Any]
) -> tuple[ProcessInput, ProcessState | None]:
    """The failed process's input (its first event) and the state its failure carries (its last
    event, when it failed), read from its history: no worker needed."""
    process_input: ProcessInput | None = None
    carried: ProcessState | None = None
    async for event in handle.fetch_history_events():
        if event.HasField("workflow_execution_started_event_attributes"):
            payloads = event.workflow_execution_started_event_attributes.input.payloads
            [decoded] = await client.data_converter.decode(payloads, [ProcessInput])
            if isinstance(decoded, ProcessInput):
                process_input = decoded
        elif event.HasField("workflow_execution_failed_event_attributes"):
            failure = event.workflow_execution_failed_event_attributes.failure
            carried = _state_in(await client.data_converter.decode_failure(failure))
    if process_input is None:
        raise CliError(f"{handle.id}: its history holds no process input to redrive from")
    return process_input, carried


async def final_state(
    client: Client, handle: WorkflowHandle[Any, Any], carried: ProcessState | None
) -> ProcessState:
    """The state the process ended in: the one its failure carries, else the ``state`` query."""
    if carried is not None:
        return carried
    state, problem = await query_state(handle, ProcessState, client)
    if state is None:
        raise CliError(
            f"cannot read what {handle.id} achieved before it ended ({problem}); "
            "nothing was redriven"
        )
    return state  # type: ignore[no-any-return]


def plan(process_id: str, failed: ProcessInput, state: ProcessState) -> Redrive:
    """What the redrive keeps: an approval given, and every command that succeeded."""
    before = failed.redrive
    approval = state.approval if state.approval.decision == "approved" else None
    succeeded = {
        name: command for name, command in state.commands.items() if command.status == "succeeded"
    }
    return Redrive(
        redriven_from=process_id,
        original_process_id=before.original_process_id if before else process_id,
        count=(before.count if before else 0) + 1,
        approval=approval,
        succeeded=succeeded,
    )


def render(
    new_id: str,
    redrive: Redrive,
    failed: ProcessInput,
    state: ProcessState,
    link: str | None,
    closed: str | None = None,
    unreachable: str | None = None,
) -> str:
    """``closed``: Temporal's status when Temporal closed the process by itself (terminated,
    timed out): its state is then as it last wrote it, not a failure (``common.closed``).
    ``unreachable``: why the local inbox could not be read for the new approval link."""
    options = failed.options
    if closed is not None:
        ended = f"It was {closed} in Temporal at stage {state.stage.value}, before it finished"
    else:
        failure = f"{state.failure_reason.value}: " if state.failure_reason else ""
        ended = f"It failed with {failure}{state.failure_message or state.status.value}"
    lines = [f"Redrive {redrive.count} of {redrive.redriven_from}: {new_id}", ended]
    approval = redrive.approval
    if approval is not None:
        lines.append(f"Approval kept: {approval.decided_by}, {when(approval.decided_at)}")
    else:
        mailed = f" (mailed; {unreachable})" if unreachable else " (mailed)"
        lines.append("Approval: asked again" + (f": {link}" if link else mailed))
    for name in CommandName:
        kept = redrive.succeeded.get(name)
        if kept is not None:
            origin = kept.kept_from or redrive.redriven_from
            lines.append(f"{name.value}: succeeded in {origin}, not sent again")
        else:
            key = f"{redrive.original_process_id}:{name.value}"
            # A process that failed before its commands (rejected, cancelled while queued) never
            # sent them: "again" would send an operator looking for a first send that never was.
            never = state.commands[name].status == "not-started" if name in state.commands else True
            verb = "sent for the first time" if never else "sent again"
            lines.append(f"{name.value}: {verb}, idempotency key {key}")
    lines.append(
        f"Lock: queues for {options.lock_resource} again, "
        f"priority {describe_priority(options.lock_priority)}"
    )
    lines.append(f"Follow it: {program()} status {new_id}")
    return "\n".join(lines)


def _state_in(cause: BaseException) -> ProcessState | None:
    if not isinstance(cause, ApplicationError) or not cause.details:
        return None
    try:
        return ProcessState.model_validate(cause.details[0])
    except ValueError:
        return None
