"""``approval-flow list``: recent processes, newest first, from the visibility store."""

from __future__ import annotations

import argparse
from typing import Any

from temporalio.client import Client

from cli.output import printable
from cli.queries import status_to_tell
from cli.settings import CliSettings
from starter import PROCESS_WORKFLOW
from workflows.messages import PROCESS_STATUS_ATTRIBUTE, ProcessStatus

HELP = "recent processes"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--status", choices=[s.value for s in ProcessStatus])
    parser.add_argument("--limit", type=int, default=20, help="at most this many (20)")


def list_query(status: str | None) -> str:
    query = f"WorkflowType = '{PROCESS_WORKFLOW}'"
    if status:
        wanted = ProcessStatus(status)
        query += f" AND {PROCESS_STATUS_ATTRIBUTE} = '{wanted.value}'"
        if not wanted.is_final:
            # A process Temporal closed by itself (terminated) still says pending or in-progress.
            query += " AND ExecutionStatus = 'Running'"
    return query


async def run(
    args: argparse.Namespace, client: Client, settings: CliSettings
) -> tuple[dict[str, Any], str]:
    rows: list[dict[str, Any]] = []
    async for execution in client.list_workflows(list_query(args.status), limit=args.limit):
        rows.append(
            {
                "process_id": execution.id,
                # Temporal's when it closed the process by itself (terminated): its own is stale.
                "status": status_to_tell(execution),
                "temporal_status": execution.status.name if execution.status else None,
                "started_at": execution.start_time.isoformat(),
                "closed_at": execution.close_time.isoformat() if execution.close_time else None,
            }
        )
    rows.sort(key=lambda row: row["started_at"], reverse=True)
    if not rows:
        which = f" with status {args.status}" if args.status else ""
        return {"processes": []}, f"no processes{which}"
    return {"processes": rows}, render_list(rows)


def render_list(rows: list[dict[str, Any]]) -> str:
    """The table of processes; ids escaped as ``status`` does: any client of the Temporal
    namespace may start a ProcessWorkflow under an id of its choosing."""
    header = ("PROCESS", "STATUS", "TEMPORAL", "STARTED (UTC)")
    table = [
        (
            printable(row["process_id"]),
            printable(row["status"] or "-"),
            row["temporal_status"] or "-",
            row["started_at"][:19].replace("T", " "),
        )
        for row in rows
    ]
    widths = [max(len(str(line[i])) for line in [header, *table]) for i in range(len(header))]
    return "\n".join(
        "  ".join(str(cell).ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in [header, *table]
    )
