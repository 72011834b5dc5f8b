"""``approval-flow start``: start a process and print its approval link."""

from __future__ import annotations

import argparse
from typing import Any

from pydantic import ValidationError
from temporalio.client import Client

from cli.output import EXIT_USAGE, CliError, program
from cli.settings import CliSettings
from starter import Started, start_process, wait_for_approval_link

HELP = "start a process and print its approval link"


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


async def run(
    args: argparse.Namespace, client: Client, settings: CliSettings
) -> tuple[dict[str, Any], str]:
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
    document = {
        "process_id": started.process_id,
        "run_id": started.run_id,
        "approval_link": started.approve_url,
        "reject_link": started.reject_url,
    }
    return document, render_started(started, settings, args.wait)


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
    lines.append(f"Follow it: {program()} status {started.process_id}")
    return "\n".join(lines)
