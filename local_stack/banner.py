"""What ``make run`` tells the person at the terminal once every part is ready.

One demo process is started first, so the banner can print a link to approve right away.
"""

from __future__ import annotations

from collections.abc import Callable

from temporalio.client import Client

from local_stack.settings import LocalStackSettings
from starter import StarterSettings, start_process, wait_for_approval_link


async def start_demo(
    client: Client,
    app_settings: StarterSettings,
    settings: LocalStackSettings,
    say: Callable[[str], None],
) -> str | None:
    """Start one process; its approval link once the inbox has the mail."""
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
    say(f"demo process {started.process_id} started")
    links = await wait_for_approval_link(
        settings.url(settings.inbox_port), started.process_id, settings.ready_timeout
    )
    return links[0] if links else None


def banner(
    settings: LocalStackSettings, namespace: str, approval_link: str | None, ready_in: float
) -> list[str]:
    """Where to look and what to type next."""
    lines = [
        "",
        f"Temporal UI: {settings.url(settings.ui_port, f'/namespaces/{namespace}/workflows')}",
        f"Inbox: {settings.url(settings.inbox_port, '/')}",
    ]
    if settings.demo:
        lines.append(
            f"Approval link: {approval_link or '(not in the inbox yet: see the inbox page)'}"
        )
    lines.append(
        "Start more: .venv/bin/approval-flow start --requested-by you "
        "--description 'what needs approval'"
    )
    lines.append("Inspect: .venv/bin/approval-flow list | status ID | lock")
    defaults = LocalStackSettings.model_fields
    if (
        settings.temporal_port != defaults["temporal_port"].default
        or settings.inbox_port != defaults["inbox_port"].default
        or settings.host != defaults["host"].default
    ):
        lines.append(
            "  (in another terminal first: export "
            f"TEMPORAL_ADDRESS={settings.temporal_address} "
            f"APPROVAL_INBOX_URL={settings.url(settings.inbox_port)})"
        )
    lines.append(f"Logs: {settings.data_dir / 'logs'}")
    lines.append(f"Ready in {ready_in:.1f} s. Ctrl+C stops everything.")
    return lines
