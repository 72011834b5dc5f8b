"""``approval-flow lock``: who holds the lock on a resource, and who waits for it."""

from __future__ import annotations

import argparse
from typing import Any

from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from cli.output import when
from cli.queries import query_state
from cli.settings import CliSettings
from workflows.messages import DEFAULT_LOCK_RESOURCE, MutexState, mutex_workflow_id

HELP = "who holds the lock, who waits"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--resource", default=DEFAULT_LOCK_RESOURCE)


async def run(
    args: argparse.Namespace, client: Client, settings: CliSettings
) -> tuple[dict[str, Any], str]:
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
        lines.append(f"  queue   {len(state.queue)} waiting, first in line first:")
        for position, request in enumerate(state.queue, start=1):
            lines.append(
                f"    {position}. {request.requester_workflow_id} "
                f"since {when(request.requested_at)}"
            )
    counters = state.counters.model_dump()
    lines.append(
        "  counts  " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in counters.items())
    )
    return "\n".join(lines)
