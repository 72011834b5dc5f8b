"""Why a ``state`` query went unanswered, from what the Temporal server can tell.

A query is answered by a worker, so a query that times out reads like "no worker runs". As
often a worker runs and cannot answer yet: the server holds a query until the workflow's current
workflow task is done (a slow write inside it), and a workflow task that fails is retried while
the query waits. Saying "start the worker" then sends an operator the wrong way. So after a
timeout we ask the server, which answers without a worker: a describe of the workflow (its
pending workflow task and activities) and of its task queue (whether a worker polled it lately),
bounded together by ``DIAGNOSIS_TIMEOUT``, and say what they show and nothing more.

``classify`` is the choice, ``Unanswered`` the wording: the CLI (for an operator) and the
approval page (for a person) each read it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum

from temporalio.api.enums.v1 import PendingWorkflowTaskState
from temporalio.client import Client, WorkflowExecutionDescription
from temporalio.service import RPCError

from common.pollers import last_workflow_poll

# A worker's long poll lasts up to a minute; a poll seen more recently than this is a live worker
# (a worker killed less than this ago still counts).
POLLER_FRESHNESS = timedelta(seconds=70)
# The look after a timeout: two reads the server answers itself, a few ms each when it is well.
# Bounded, so an overloaded server makes the answer "could not tell", not a second long wait.
DIAGNOSIS_TIMEOUT = timedelta(seconds=2)
# A pending activity's last failure can be a whole stack trace's first line; keep the gist.
FAILURE_CHARS = 160

Polled = Callable[[str], Awaitable[bool | None]]


class Why(StrEnum):
    """What the server showed about a query no worker answered in time."""

    NO_POLLER = "no-poller"  # no worker polled the task queue lately: none runs
    TASK_RETRYING = "task-retrying"  # its workflow task failed and is tried again
    TASK_RUNNING = "task-running"  # a worker has its workflow task and has not finished it
    TASK_WAITING = "task-waiting"  # its workflow task waits for a worker to take it
    WORKER_SILENT = "worker-silent"  # a worker polls and nothing is pending, yet no answer
    UNKNOWN = "unknown"  # the server could not say in time


@dataclass(frozen=True)
class PendingActivity:
    name: str
    attempt: int
    last_failure: str | None = None


@dataclass(frozen=True)
class Seen:
    """What the server showed just after the query went unanswered."""

    task_queue: str
    # Whether a worker polled the task queue within ``POLLER_FRESHNESS``; None: not known.
    worker_polls: bool | None
    task_started: bool | None = None  # None: no workflow task pending
    task_attempt: int = 0
    # Since the pending workflow task was started (or, not started yet, scheduled).
    task_age: timedelta | None = None
    activities: tuple[PendingActivity, ...] = ()


def classify(seen: Seen | None) -> Why:
    """The one reason ``seen`` supports. A silent task queue wins: nothing else can answer."""
    if seen is None:
        return Why.UNKNOWN
    if seen.worker_polls is False:
        return Why.NO_POLLER
    if seen.task_started is not None:
        if seen.task_attempt > 1:
            return Why.TASK_RETRYING
        return Why.TASK_RUNNING if seen.task_started else Why.TASK_WAITING
    if seen.worker_polls:
        return Why.WORKER_SILENT
    return Why.UNKNOWN


@dataclass(frozen=True)
class Unanswered:
    """A query that no worker answered within ``waited``, and what the server showed then."""

    waited: timedelta
    seen: Seen | None

    @property
    def why(self) -> Why:
        return classify(self.seen)

    def reason(self) -> str:
        """For an operator (``approval-flow status``): what is known, in one line."""
        waited = _seconds(self.waited)
        seen = self.seen
        why = self.why
        if seen is None or why is Why.UNKNOWN:
            return (
                f"no worker answered the state query within {waited}, and the server could not "
                "say in time whether one polls (Temporal may be overloaded)"
            )
        if why is Why.NO_POLLER:
            freshness = _seconds(POLLER_FRESHNESS)
            return (
                f"no worker is polling task queue {seen.task_queue} (no poll in the last "
                f"{freshness}): is the worker running?"
            )
        late = f"the worker did not answer the state query within {waited}"
        if why is Why.TASK_RETRYING:
            text = (
                f"{late}: the process's workflow task failed and is being retried (attempt "
                f"{seen.task_attempt}); the worker's log says why"
            )
        elif why is Why.TASK_RUNNING:
            text = (
                f"{late}: a worker has been running the process's workflow task for "
                f"{_seconds(seen.task_age)}, and a query waits for it to finish"
            )
        elif why is Why.TASK_WAITING:
            text = (
                f"{late}: the process's workflow task has waited {_seconds(seen.task_age)} for a "
                f"worker to take it (the worker on {seen.task_queue} is busy or stopped)"
            )
        else:
            text = (
                f"a worker polled task queue {seen.task_queue} lately, but did not answer the "
                f"state query within {waited} (it may be overloaded or stopped)"
            )
        return text + _activities(seen.activities)

    def for_people(self) -> str:
        """For a person at the approval page: the same finding, without Temporal's words."""
        waited = _seconds(self.waited)
        why = self.why
        if why is Why.NO_POLLER:
            return "no worker is running to answer for it"
        if why is Why.TASK_RETRYING:
            return (
                f"the worker did not answer within {waited}: it is retrying a step of this "
                "process that failed"
            )
        if why in (Why.TASK_RUNNING, Why.TASK_WAITING):
            return (
                f"the worker did not answer within {waited}: it is still busy with a step of "
                "this process"
            )
        if why is Why.WORKER_SILENT:
            return f"the worker did not answer within {waited}"
        return f"no worker answered within {waited}"


async def diagnose(
    client: Client,
    workflow_id: str,
    waited: timedelta,
    polled: Polled | None = None,
    within: timedelta = DIAGNOSIS_TIMEOUT,
) -> Unanswered:
    """Ask the server why the query of ``workflow_id`` went unanswered after ``waited``.

    ``polled`` answers whether a worker polls a task queue (the API passes its cached look);
    by default the task queue is described. Never raises: what the server did not say in time
    is not claimed.
    """
    try:
        async with asyncio.timeout(within.total_seconds()):
            description = await client.get_workflow_handle(workflow_id).describe(rpc_timeout=within)
            worker_polls = await (polled or _poller_of(client, within))(description.task_queue)
    except (RPCError, RuntimeError, TimeoutError):
        return Unanswered(waited, None)
    return Unanswered(waited, seen_in(description, worker_polls))


def seen_in(description: WorkflowExecutionDescription, worker_polls: bool | None) -> Seen:
    """The parts of a workflow's description that say why a query waits."""
    raw = description.raw_description
    activities = tuple(
        PendingActivity(
            name=activity.activity_type.name,
            attempt=activity.attempt,
            last_failure=_gist(activity.last_failure.message)
            if activity.HasField("last_failure")
            else None,
        )
        for activity in raw.pending_activities
    )
    if not raw.HasField("pending_workflow_task"):
        return Seen(description.task_queue, worker_polls, activities=activities)
    task = raw.pending_workflow_task
    started = task.state == PendingWorkflowTaskState.PENDING_WORKFLOW_TASK_STATE_STARTED
    since = task.started_time if started else task.scheduled_time
    age = datetime.now(UTC) - since.ToDatetime(tzinfo=UTC) if since.seconds else None
    return Seen(
        description.task_queue,
        worker_polls,
        task_started=started,
        task_attempt=task.attempt,
        task_age=age,
        activities=activities,
    )


async def task_queue_polled(client: Client, task_queue: str, within: timedelta) -> bool:
    """Whether a worker polled ``task_queue`` for workflow tasks within ``POLLER_FRESHNESS``."""
    last = await last_workflow_poll(client, task_queue, rpc_timeout=within)
    return last is not None and last > datetime.now(UTC) - POLLER_FRESHNESS


def _poller_of(client: Client, within: timedelta) -> Polled:
    async def polled(task_queue: str) -> bool | None:
        return await task_queue_polled(client, task_queue, within)

    return polled


def _activities(activities: tuple[PendingActivity, ...]) -> str:
    """What the process waits for besides; an activity never holds a query up, but it is often
    what the operator is after (a write retried while DynamoDB is away)."""
    if not activities:
        return ""
    parts = []
    for activity in activities:
        text = f"{activity.name} (attempt {activity.attempt}"
        if activity.last_failure:
            text += f", last failure: {activity.last_failure}"
        parts.append(text + ")")
    return "; meanwhile the process waits for activity " + ", ".join(parts)


def _gist(message: str) -> str:
    line = message.strip().splitlines()[0] if message.strip() else ""
    return line if len(line) <= FAILURE_CHARS else line[: FAILURE_CHARS - 1] + "…"


def _seconds(value: timedelta | None) -> str:
    if value is None:
        return "a while"
    return f"{round(max(value.total_seconds(), 0), 1):g} s"
