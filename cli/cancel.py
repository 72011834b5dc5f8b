"""``approval-flow cancel ID [--wait]``: ask a running process to stop.

A cancellation is a request: the workflow runs its failure cleanup (it stops its sends and waits
until each has resolved, gives the lock back or withdraws its place in the queue, marks the record
``failed`` with reason ``cancelled``) and closes as Cancelled (processes started before the patch
``process-lock-guards-sends`` close as failed, their state in the failure). A send that had
reached the downstream system is not unsent: it may still act on it, but before the lock goes
back. ``--wait`` waits for the close and prints the state the process ended in.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from temporalio.client import (
    Client,
    WorkflowExecutionDescription,
    WorkflowExecutionStatus,
    WorkflowFailureError,
)
from temporalio.exceptions import ApplicationError, CancelledError
from temporalio.service import RPCError, RPCStatusCode

from cli.output import CliError
from cli.queries import closed_by, describe, process_status_of, query_state
from cli.settings import CliSettings
from cli.status import normalise_process_id, render_state
from starter import PROCESS_WORKFLOW
from workflows.messages import FailureReason, ProcessState

HELP = "ask a running process to stop (its cleanup releases the lock)"

# Long enough for the cleanup's activities and the release signal on a healthy system.
DEFAULT_WAIT = 60.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("process_id", metavar="ID", help="process id (process-<uuid>)")
    parser.add_argument(
        "--wait",
        type=float,
        nargs="?",
        const=DEFAULT_WAIT,
        default=None,
        metavar="SECONDS",
        help=f"wait for the process to close and print how it ended (default {DEFAULT_WAIT:g} s)",
    )


async def run(
    args: argparse.Namespace, client: Client, settings: CliSettings
) -> tuple[dict[str, Any], str]:
    process_id = normalise_process_id(args.process_id)
    description = await describe(client, process_id, "process")
    if description.workflow_type != PROCESS_WORKFLOW:
        raise CliError(f"{process_id} is a {description.workflow_type}, not a process")
    if description.status != WorkflowExecutionStatus.RUNNING:
        raise _already_closed(process_id, description)
    handle = client.get_workflow_handle(process_id)
    try:
        await handle.cancel()
    except RPCError as err:
        if err.status != RPCStatusCode.NOT_FOUND:
            raise
        # It closed between the describe and the cancel.
        closed = await describe(client, process_id, "process")
        raise _already_closed(process_id, closed) from err
    requested = f"{process_id}: cancellation requested"
    if args.wait is None:
        return {"process_id": process_id, "outcome": "cancel-requested"}, requested
    return await _wait_for_close(client, process_id, args.wait, requested)


async def _wait_for_close(
    client: Client, process_id: str, wait: float, requested: str
) -> tuple[dict[str, Any], str]:
    handle = client.get_workflow_handle(process_id)
    try:
        async with asyncio.timeout(wait):
            await handle.result()
    except TimeoutError:
        raise CliError(
            f"{process_id}: cancellation requested, but the process did not close within "
            f"{wait:g} s (is the worker running?)"
        ) from None
    except WorkflowFailureError as failure:
        cause = failure.cause
        if isinstance(cause, CancelledError):
            # Cleaned up, then closed Cancelled: the state is the closed run's, by query.
            state, _ = await query_state(handle, ProcessState)
            closed = WorkflowExecutionStatus.CANCELED.name
            document = {
                "process_id": process_id,
                "outcome": "cancelled",
                "temporal_status": closed,
                "state": state.model_dump(mode="json") if state else None,
            }
            shown = render_state(state, closed) if state else ""
            return document, "\n".join(line for line in (requested, shown) if line)
        state = _state_of(cause)
        reason = cause.type if isinstance(cause, ApplicationError) else None
        if reason != FailureReason.CANCELLED.value:
            # It failed for a reason of its own before the cancellation reached it.
            raise CliError(
                f"{process_id} was not cancelled: it failed first ({reason or cause})"
            ) from None
        document = {
            "process_id": process_id,
            "outcome": "cancelled",
            "temporal_status": WorkflowExecutionStatus.FAILED.name,
            "state": state.model_dump(mode="json") if state else None,
        }
        shown = render_state(state, WorkflowExecutionStatus.FAILED.name) if state else ""
        return document, "\n".join(line for line in (requested, shown) if line)
    raise CliError(f"{process_id} was not cancelled: it completed first")


def _state_of(cause: BaseException | None) -> ProcessState | None:
    """The state the process ended in: its failure carries it as the first detail."""
    if not isinstance(cause, ApplicationError) or not cause.details:
        return None
    try:
        return ProcessState.model_validate(cause.details[0])
    except ValueError:
        return None


def _already_closed(process_id: str, description: WorkflowExecutionDescription) -> CliError:
    temporal = description.status.name if description.status else "closed"
    # Closed by Temporal itself (terminated): its own status is stale, and not repeated here.
    own = None if closed_by(description) else process_status_of(description)
    record = f", process {own}" if own else ""
    return CliError(f"{process_id} is already closed ({temporal}{record}): nothing to cancel")
