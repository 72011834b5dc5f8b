"""``approval-flow lock [--resource NAME]``: who holds each resource's lock, and who waits.

Every resource has its own mutex workflow (``mutex-<resource>``), which never ends. Without
``--resource`` the command finds them all through the visibility store (running workflows of type
``MutexWorkflow``) and asks each for its ``state``; with it, just that one. A queue is shown in
the order it is granted: by priority (1 first), then first come, first served.

``--resource NAME --recover`` restarts a mutex an operator closed (it must never be terminated:
its holder and waiters do not know it is gone). The new run takes over the closed run's holder,
queue and lease ids before it grants anything; the next process that asks for the lock starts
such a run by itself.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from activities.mutex import closed_mutex_run
from cli.output import CliError, program, when
from cli.queries import query_state
from cli.settings import CliSettings
from cli.start import resource
from workflows.lock_queue import describe
from workflows.messages import MUTEX_ID_PREFIX, MutexInput, MutexState, mutex_workflow_id

HELP = "who holds each resource's lock, who waits (--recover: restart a closed mutex)"

MUTEX_WORKFLOW = "MutexWorkflow"
# Resources asked at once; each answer needs a worker, and a slow one should not stall the rest.
CONCURRENT_QUERIES = 8
# How long --recover waits for the new run to have taken over before it shows the state.
TAKE_OVER_WAIT = 15.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--resource", type=resource, metavar="NAME", help="one resource (default: every resource)"
    )
    parser.add_argument(
        "--recover",
        action="store_true",
        help="with --resource: if its mutex run was closed, start one that takes over from it",
    )


async def run(
    args: argparse.Namespace, client: Client, settings: CliSettings
) -> tuple[dict[str, Any], str]:
    if args.recover:
        if args.resource is None:
            raise CliError("--recover needs --resource NAME", 2)
        started = await recover(client, settings, args.resource)
        document, text = await one_lock(client, args.resource)
        first = (
            f"started run {started} of {mutex_workflow_id(args.resource)}, which took over the "
            "closed run"
            if started
            else f"{mutex_workflow_id(args.resource)} is not closed: nothing to recover"
        )
        return {**document, "recovered": started}, f"{first}\n{text}"
    if args.resource is not None:
        return await one_lock(client, args.resource)
    return await every_lock(client)


async def recover(client: Client, settings: CliSettings, name: str) -> str | None:
    """Start a mutex run that takes over the closed one; its run id, or None if none is closed.

    Waits (a little) until the new run has read the closed one, so what is shown is true.
    """
    previous = await closed_mutex_run(client, name)
    if previous is None:
        return None
    try:
        handle = await client.start_workflow(
            MUTEX_WORKFLOW,
            MutexInput(resource=name, previous_run_id=previous),
            id=mutex_workflow_id(name),
            task_queue=settings.task_queue,
        )
    except WorkflowAlreadyStartedError:
        return None  # a process asked meanwhile: its request started the run that takes over
    run_id = handle.result_run_id
    assert run_id is not None
    loop = asyncio.get_running_loop()
    deadline = loop.time() + TAKE_OVER_WAIT
    while loop.time() < deadline:
        state, _ = await query_state(
            client.get_workflow_handle(handle.id, run_id=run_id), MutexState
        )
        if state is not None and state.recovered_from == previous:
            break
        await asyncio.sleep(0.2)
    return run_id


def mutex_query() -> str:
    return f"WorkflowType = '{MUTEX_WORKFLOW}' AND ExecutionStatus = 'Running'"


async def every_lock(client: Client) -> tuple[dict[str, Any], str]:
    resources = sorted(
        [
            execution.id.removeprefix(MUTEX_ID_PREFIX)
            async for execution in client.list_workflows(mutex_query())
            if execution.id.startswith(MUTEX_ID_PREFIX)
        ]
    )
    if not resources:
        return {"resources": []}, "no locks: no process has asked for one yet"
    limit = asyncio.Semaphore(CONCURRENT_QUERIES)

    async def read(name: str) -> tuple[dict[str, Any], str]:
        async with limit:
            return await one_lock(client, name)

    answers = await asyncio.gather(*(read(name) for name in resources))
    document = {"resources": [doc for doc, _ in answers]}
    return document, "\n\n".join(text for _, text in answers)


async def one_lock(client: Client, name: str) -> tuple[dict[str, Any], str]:
    workflow_id = mutex_workflow_id(name)
    try:
        description = await client.get_workflow_handle(workflow_id).describe()
    except RPCError as err:
        if err.status != RPCStatusCode.NOT_FOUND:
            raise
        document = {"resource": name, "workflow_id": workflow_id, "state": None}
        return document, f"lock {name}: free (no process has asked for it yet)"
    state, problem = await query_state(client.get_workflow_handle(workflow_id), MutexState, client)
    document = {
        "resource": name,
        "workflow_id": workflow_id,
        "temporal_status": description.status.name if description.status else None,
        "state": state.model_dump(mode="json") if state else None,
        "problem": problem,
    }
    if state is None:
        text = f"lock {name} ({workflow_id})\n  ({problem})"
    else:
        text = render_lock(state, workflow_id)
    status = description.status
    if status is not None and status != WorkflowExecutionStatus.RUNNING:
        text += "\n" + closed_mutex_note(status.name, name)
    return document, text


def closed_mutex_note(status: str, name: str) -> str:
    """What an operator reads when the mutex run was closed from outside (it never ends itself)."""
    return (
        f"  note    this mutex run is {status}: someone closed it from outside (never terminate\n"
        "          or cancel a mutex; a cancel request is ignored). Nobody is granted this lock\n"
        "          until a new run takes over the holder, queue and lease ids shown above: the\n"
        "          next process that asks for the lock starts one; to take over now:\n"
        f"          {program()} lock --resource {name} --recover"
    )


def render_lock(state: MutexState, workflow_id: str) -> str:
    lines = [f"lock {state.resource} ({workflow_id})"]
    holder = state.holder
    if holder is None:
        lines.append("  holder  nobody")
    else:
        lines.append(
            f"  holder  {holder.holder_workflow_id} (lease {holder.lease_id}), "
            f"since {when(holder.granted_at)}, lease ends {when(holder.expires_at)}"
        )
    if not state.queue:
        lines.append("  queue   empty")
    else:
        lines.append(f"  queue   {len(state.queue)} waiting, next to be granted first:")
        for position, request in enumerate(state.queue, start=1):
            lines.append(
                f"    {position}. {request.requester_workflow_id}, "
                f"priority {describe(request.priority)}, since {when(request.requested_at)}"
            )
    counters = state.counters.model_dump()
    lines.append(
        "  counts  " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in counters.items())
    )
    return "\n".join(lines)
