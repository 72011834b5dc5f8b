"""``approval-flow replay``: would the code on disk still run the live histories? Ask first.

Fetches the histories of the processes and mutexes on the configured task queue that are running,
or closed within ``--closed-within`` (7 days by default), from the configured Temporal server and
replays each against the workflow code of this checkout, as a worker would after a restart. A
history that no longer replays (a nondeterminism error: the code now issues other commands than
the history recorded) is a process or a mutex the new code would break: exit status 1.

Set up as the worker is: the same workflows (``worker.WORKFLOWS``), the pydantic data converter
and the linear-retry interceptor (it adds a header to every activity call).
"""

from __future__ import annotations

import argparse
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from temporalio.client import Client, WorkflowExecution, WorkflowHistory
from temporalio.common import SearchAttributeKey
from temporalio.runtime import LoggingConfig, Runtime, TelemetryConfig, TelemetryFilter

from activities.mutex import MUTEX_WORKFLOW_TYPE
from cli.output import CommandFailed
from cli.settings import CliSettings
from starter import PROCESS_WORKFLOW

if TYPE_CHECKING:
    from temporalio.worker import Replayer

HELP = "replay live histories against the code on disk (before every deploy)"

DEFAULT_CLOSED_WITHIN = "7d"
_DURATION = re.compile(r"(?P<amount>\d+(?:\.\d+)?)(?P<unit>[smhd]?)")
_UNITS = {"": "seconds", "s": "seconds", "m": "minutes", "h": "hours", "d": "days"}
_DEPLOYMENT_VERSION = SearchAttributeKey.for_keyword("TemporalWorkerDeploymentVersion")
_VERSIONING_BEHAVIOR = SearchAttributeKey.for_keyword("TemporalWorkflowVersioningBehavior")
_ERRORS_ONLY = TelemetryFilter(core_level="ERROR", other_level="ERROR")
# The core wraps the reason in a Rust debug dump: ``Failure { message: "...", source: ...``.
_CORE_MESSAGE = re.compile(r'message: "(?P<message>(?:[^"\\]|\\.)*)"')


def duration(text: str) -> timedelta:
    """``7d``, ``12h``, ``30m``, ``90s`` or plain seconds; ``0`` means running ones only."""
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(f"{text!r} is no duration: write e.g. 7d, 12h, 30m, 90s")
    return timedelta(**{_UNITS[match["unit"]]: float(match["amount"])})


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--closed-within",
        type=duration,
        default=duration(DEFAULT_CLOSED_WITHIN),
        metavar="DURATION",
        help=f"also replay runs closed this recently ({DEFAULT_CLOSED_WITHIN}; 0: running only)",
    )
    parser.add_argument(
        "--limit", type=int, default=1000, help="replay at most this many histories (1000)"
    )


def replay_query(task_queue: str, closed_since: datetime | None) -> str:
    """Processes and mutexes on ``task_queue``: running, or closed since ``closed_since``."""
    types = f"WorkflowType = '{PROCESS_WORKFLOW}' OR WorkflowType = '{MUTEX_WORKFLOW_TYPE}'"
    when = "ExecutionStatus = 'Running'"
    if closed_since is not None:
        when += f" OR CloseTime >= '{closed_since.astimezone(UTC).isoformat()}'"
    return f"TaskQueue = '{task_queue}' AND ({types}) AND ({when})"


@dataclass(frozen=True)
class Replayed:
    execution: WorkflowExecution
    events: int
    failure: str | None

    @property
    def versioning(self) -> str:
        """``pinned approval-flow:local``, ``auto-upgrade …``, or ``unversioned``.

        The server's own search attributes say which build a run is on and how it moves.
        """
        attributes = self.execution.typed_search_attributes
        version = attributes.get(_DEPLOYMENT_VERSION)
        behavior = attributes.get(_VERSIONING_BEHAVIOR)
        if not version:
            return "unversioned"
        # "Pinned", "AutoUpgrade" -> "pinned", "auto-upgrade"
        words = re.sub(r"(?<=[a-z])(?=[A-Z])", "-", behavior or "Unspecified").lower()
        return f"{words} {version}"

    def document(self) -> dict[str, Any]:
        return {
            "workflow_id": self.execution.id,
            "run_id": self.execution.run_id,
            "workflow_type": self.execution.workflow_type,
            "status": self.execution.status.name if self.execution.status else None,
            "versioning": self.versioning,
            "events": self.events,
            "replays": self.failure is None,
            "failure": self.failure,
        }

    def line(self, id_width: int) -> str:
        status = self.execution.status.name.lower() if self.execution.status else "-"
        head = (
            f"{'ok' if self.failure is None else 'BREAKS':<6}  "
            f"{self.execution.id:<{id_width}}  run {self.execution.run_id}  "
            f"{status:<16} {self.events:>5} events  {self.versioning}"
        )
        return head if self.failure is None else f"{head}: {self.failure}"


def build_replayer(client: Client) -> Replayer:
    # Here, not at the top: only this command needs the worker's code, and every other command
    # would pay for importing it at each start (the CLI parses every command's arguments).
    from temporalio.worker import Replayer

    import worker
    from activities.retry import LinearRetryInterceptor

    return Replayer(
        workflows=worker.WORKFLOWS,
        namespace=client.namespace,
        data_converter=client.data_converter,
        interceptors=[LinearRetryInterceptor()],
        # A history that breaks is reported on its own line; the SDK's warnings say it again.
        runtime=Runtime(telemetry=TelemetryConfig(logging=LoggingConfig(filter=_ERRORS_ONLY))),
    )


async def replay(client: Client, query: str, limit: int, replayer: Replayer) -> list[Replayed]:
    """Replay every history the query finds, in the order the server lists them."""
    executions: dict[tuple[str, str], WorkflowExecution] = {}

    async def histories() -> AsyncIterator[WorkflowHistory]:
        async for execution in client.list_workflows(query, limit=limit):
            executions[(execution.id, execution.run_id)] = execution
            handle = client.get_workflow_handle(execution.id, run_id=execution.run_id)
            yield await handle.fetch_history()

    replayed = []
    async with replayer.workflow_replay_iterator(histories()) as results:
        async for result in results:
            history = result.history
            failure = result.replay_failure
            replayed.append(
                Replayed(
                    execution=executions[(history.workflow_id, history.run_id)],
                    events=len(history.events),
                    failure=_reason(failure) if failure is not None else None,
                )
            )
    return replayed


async def run(
    args: argparse.Namespace, client: Client, settings: CliSettings
) -> tuple[dict[str, Any], str]:
    window: timedelta = args.closed_within
    closed_since = datetime.now(UTC) - window if window > timedelta(0) else None
    query = replay_query(settings.task_queue, closed_since)
    results = await replay(client, query, args.limit, build_replayer(client))
    breaks = [r for r in results if r.failure is not None]
    document = {
        "task_queue": settings.task_queue,
        "query": query,
        "histories": [r.document() for r in results],
        "replayed": len(results),
        "breaks": len(breaks),
    }
    scope = "running" + (f", or closed within {_human(window)}" if closed_since else "")
    if not results:
        return document, f"no processes or mutexes ({scope}) on task queue {settings.task_queue}"
    width = max(len(r.execution.id) for r in results)
    lines = [r.line(width) for r in results]
    noun = "history" if len(results) == 1 else "histories"
    lines.append(
        f"{len(results)} {noun} ({scope}) on task queue {settings.task_queue} replayed "
        f"against the code on disk: {len(results) - len(breaks)} ok, {len(breaks)} would break"
    )
    text = "\n".join(lines)
    if breaks:
        raise CommandFailed(
            f"{len(breaks)} of {len(results)} histories would break on this code: do not "
            "deploy it (guard the change with workflow.patched, see docs/upgrades.md)",
            document,
            text,
        )
    return document, text


def _reason(err: BaseException) -> str:
    """The reason a replay failed, in one line: the core's message when it sent one."""
    text = str(err).strip() or type(err).__name__
    found = _CORE_MESSAGE.search(text)
    if found:
        text = found["message"]
    return " ".join(text.split())


def _human(window: timedelta) -> str:
    seconds = window.total_seconds()
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"
