"""What ``make run`` tells the person at the terminal once every part is ready.

One demo process is started first (or the earlier one, still waiting, is shown again), so the
banner can print a link to approve right away.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.common import SearchAttributeKey
from temporalio.service import RPCError

from local_stack.settings import LocalStackSettings
from starter import StarterSettings, start_process, wait_for_approval_link
from workflows.messages import PROCESS_STATUS_ATTRIBUTE, ProcessStatus

# The id of the demo process make run started last, in the data folder.
DEMO_FILE = "demo-process"
DESCRIBE_TIMEOUT = timedelta(seconds=5)
STATUS_KEY = SearchAttributeKey.for_keyword(PROCESS_STATUS_ATTRIBUTE)


async def start_demo(
    client: Client,
    app_settings: StarterSettings,
    settings: LocalStackSettings,
    say: Callable[[str], None],
) -> str | None:
    """Start one process, unless make run's last one still waits; its approval link.

    Every ``make run`` on the same data used to start another: restarts left a pile of
    processes waiting for an approval nobody gave. The demo's id is kept in the data folder,
    and a new one starts only once that one no longer waits (approved, rejected, timed out,
    or its data gone). Its link, in the inbox's kept mails, is printed again.
    """
    marker = settings.data_dir / DEMO_FILE
    process_id = await _waiting_demo(client, _last_demo(marker))
    if process_id is not None:
        say(f"demo process {process_id} (from an earlier start) still waits for its approval")
    else:
        try:
            started = await start_process(
                client,
                app_settings,
                requested_by="make run",
                description="Demo process started by make run. Approve it to see the commands run.",
            )
        except Exception as err:  # the stack is up; say why there is no demo and carry on
            say(f"could not start the demo process: {err}")
            return None
        process_id = started.process_id
        _remember_demo(marker, process_id)
        say(f"demo process {process_id} started")
    links = await wait_for_approval_link(
        settings.url(settings.inbox_port), process_id, settings.ready_timeout
    )
    return links[0] if links else None


def _last_demo(marker: Path) -> str | None:
    try:
        return marker.read_text().strip() or None
    except FileNotFoundError:
        return None


def _remember_demo(marker: Path, process_id: str) -> None:
    marker.write_text(process_id + "\n")


async def _waiting_demo(client: Client, process_id: str | None) -> str | None:
    """``process_id`` if that process is still open and waiting for its approval."""
    if process_id is None:
        return None
    try:
        description = await client.get_workflow_handle(process_id).describe(
            rpc_timeout=DESCRIBE_TIMEOUT
        )
    except RPCError:  # not found (a new Temporal database), or no answer: start another
        return None
    if description.status != WorkflowExecutionStatus.RUNNING:
        return None
    # Unset until the workflow's first task has run: it has not been approved either.
    status = description.typed_search_attributes.get(STATUS_KEY)
    return process_id if status in (None, ProcessStatus.PENDING.value) else None


def banner(
    settings: LocalStackSettings,
    namespace: str,
    approval_link: str | None,
    ready_in: float,
    settings_file: Path,
) -> list[str]:
    """Where to look and what to type next."""
    lines = [
        "",
        f"Temporal UI: {settings.url(settings.ui_port, f'/namespaces/{namespace}/workflows')}",
        f"Inbox: {settings.url(settings.inbox_port, '/')}",
    ]
    if settings.starts_demo:
        lines.append(
            f"Approval link: {approval_link or '(not in the inbox yet: see the inbox page)'}"
        )
    lines.append(
        "Start more: .venv/bin/approval-flow start --requested-by you "
        "--description 'what needs approval'"
    )
    lines.append("Inspect: .venv/bin/approval-flow list | status ID | lock")
    # Addresses, signing key, build: what the CLI (off the default ports) and a worker run by
    # hand need, in one file a shell sources.
    lines.append(f"Settings for other terminals: . {shlex.quote(str(settings_file))}")
    if not settings.worker:
        lines.append(
            f"No worker runs (LOCAL_STACK_WORKER=false): . {shlex.quote(str(settings_file))} "
            "&& .venv/bin/python -m worker"
        )
    lines.append(f"Logs: {settings.data_dir / 'logs'}")
    lines.append(f"Ready in {ready_in:.1f} s. Ctrl+C stops everything.")
    return lines
