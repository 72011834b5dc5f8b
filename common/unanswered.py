"""Why a ``state`` query went unanswered, from what the Temporal server can tell.

A query is answered by a worker, so a query that times out reads like "no worker runs". As
often a worker runs and cannot answer yet: the server holds a query until the workflow's current
workflow task is done (a slow write inside it), and a workflow task that fails is retried while
the query waits. Saying "start the worker" then sends an operator the wrong way. And under Worker
Versioning a process pinned to a build is answered by a worker of that build only: with workers
of another build polling, the server refuses the query ("no poller seen for task queue
recently"), and neither "start the worker" nor "try again" helps. So after a timeout (or that
refusal) we ask the server, which answers without a worker: a describe of the workflow (its
pending workflow task, activities and pinned build) and of its task queue (which workers, of
which build, polled it lately), bounded together by ``DIAGNOSIS_TIMEOUT``, and say what they
show and nothing more.

``classify`` is the choice, ``Unanswered`` the wording: the CLI (for an operator) and the
approval page (for a person) each read it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum

from temporalio.api.enums.v1 import PendingWorkflowTaskState, VersioningBehavior
from temporalio.client import Client, WorkflowExecutionDescription
from temporalio.service import RPCError, RPCStatusCode

from common.pollers import Poller, last_workflow_poll, workflow_pollers

# A worker's long poll lasts up to a minute; a poll seen more recently than this is a live worker
# (a worker killed less than this ago still counts).
POLLER_FRESHNESS = timedelta(seconds=70)
# The look after a timeout: two reads the server answers itself, a few ms each when it is well.
# Bounded, so an overloaded server makes the answer "could not tell", not a second long wait.
DIAGNOSIS_TIMEOUT = timedelta(seconds=2)
# A pending activity's last failure can be a whole stack trace's first line; keep the gist.
FAILURE_CHARS = 160
# How the server (1.32) refuses a query, FAILED_PRECONDITION, about a second before the query's
# own deadline, when no worker that could answer it polled for about a minute: none at all, or
# none of the build the process is pinned to. Not "try again later": the same as a timeout.
SERVER_SAW_NO_POLLER = "no poller seen for task queue recently"
UPGRADES_DOC = "docs/upgrades.md"

Polled = Callable[[str], Awaitable[bool | None]]


class Why(StrEnum):
    """What the server showed about a query no worker answered in time."""

    NO_POLLER = "no-poller"  # no worker polled the task queue lately: none runs
    BUILD_NOT_POLLING = "build-not-polling"  # pinned to a build no worker of which polls
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
class Build:
    """A Worker Deployment Version: the build a pinned process runs on, and only there."""

    deployment_name: str
    build_id: str


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
    workflow_id: str | None = None
    # The build the process is pinned to (Worker Versioning), whether a worker of that build
    # polled within ``POLLER_FRESHNESS`` (None: not known), and the deployment's builds that did.
    pinned_to: Build | None = None
    build_polls: bool | None = None
    polling_builds: tuple[str, ...] = ()


def classify(seen: Seen | None) -> Why:
    """The one reason ``seen`` supports. A silent task queue wins: nothing else can answer."""
    if seen is None:
        return Why.UNKNOWN
    if seen.pinned_to is not None and seen.build_polls is False:
        return Why.BUILD_NOT_POLLING
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

    @property
    def lasting(self) -> bool:
        """Whether it lasts until an operator acts: asking again soon will not help."""
        return self.why is Why.BUILD_NOT_POLLING

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
        if why is Why.BUILD_NOT_POLLING:
            return _build_not_polling(seen)
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
            if seen.pinned_to is not None:
                # Before the server refuses (about 20 s after the build's last poll), a stopped
                # build's poll is listed like a live one's.
                text += (
                    f"; the process is pinned to build {seen.pinned_to.build_id} of deployment "
                    f"{seen.pinned_to.deployment_name} and only a worker of that build answers "
                    f"(one stopped less than {_seconds(POLLER_FRESHNESS)} ago still counts)"
                )
        return text + _activities(seen.activities)

    def for_people(self) -> str:
        """For a person at the approval page: the same finding, without Temporal's words."""
        waited = _seconds(self.waited)
        why = self.why
        if why is Why.NO_POLLER:
            return "no worker is running to answer for it"
        if why is Why.BUILD_NOT_POLLING:
            return (
                "it runs on the version of this service it was started on, and that version is "
                "not running now: its operators have to start it or move the process to the "
                "version that runs"
            )
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
    *,
    refused: bool = False,
) -> Unanswered:
    """Ask the server why the query of ``workflow_id`` went unanswered after ``waited``.

    ``polled`` answers whether a worker polls a task queue (the API passes its cached look);
    by default the task queue is described. A process pinned to a build (Worker Versioning) is
    answered by that build's workers only, so for one the task queue's pollers are read with
    their builds instead (``polled`` does not say which build polls). ``refused``: the server
    refused the query as "no poller seen" (``server_saw_no_poller``), its own word that no
    worker that could answer polls; a poll listed up to ``POLLER_FRESHNESS`` ago (a worker
    stopped a minute ago) does not contradict it. Never raises: what the server did not say in
    time is not claimed.
    """
    try:
        async with asyncio.timeout(within.total_seconds()):
            description = await client.get_workflow_handle(workflow_id).describe(rpc_timeout=within)
            pinned = pinned_build(description)
            if pinned is None:
                if refused:
                    return Unanswered(waited, seen_in(description, False))
                worker_polls = await (polled or _poller_of(client, within))(description.task_queue)
                return Unanswered(waited, seen_in(description, worker_polls))
            pollers = await workflow_pollers(client, description.task_queue, within)
    except (RPCError, RuntimeError, TimeoutError):
        return Unanswered(waited, None)
    fresh = _fresh(pollers)
    others = [poller for poller in fresh if not _of(poller, pinned)]
    build_polls = not refused and len(others) < len(fresh)
    builds = {
        p.build_id for p in others if p.build_id and p.deployment_name == pinned.deployment_name
    }
    return Unanswered(
        waited,
        seen_in(
            description,
            build_polls or bool(others),
            pinned=pinned,
            build_polls=build_polls,
            polling_builds=tuple(sorted(builds)),
        ),
    )


async def nobody_to_answer(
    client: Client, workflow_id: str, within: timedelta = DIAGNOSIS_TIMEOUT
) -> Unanswered | None:
    """Why no worker can answer a query of ``workflow_id``, if the server shows it already: no
    worker polled its task queue for ``POLLER_FRESHNESS``, or none of the build it is pinned to.
    None when one may answer (or the server could not say in time): then wait for the query.
    """
    unanswered = await diagnose(client, workflow_id, timedelta(0), within=within)
    return unanswered if unanswered.why in (Why.NO_POLLER, Why.BUILD_NOT_POLLING) else None


def server_saw_no_poller(err: RPCError) -> bool:
    """Whether the server refused a query because no worker that could answer it polls."""
    return err.status == RPCStatusCode.FAILED_PRECONDITION and SERVER_SAW_NO_POLLER in err.message


def pinned_build(description: WorkflowExecutionDescription) -> Build | None:
    """The build the process is pinned to, from its versioning info; None if it is not pinned.

    An operator's pinned override (``temporal workflow update-options``) wins over the build
    the process pinned itself to; an auto-upgrade override unpins it.
    """
    info = description.raw_description.workflow_execution_info
    if not info.HasField("versioning_info"):
        return None
    versioning = info.versioning_info
    override = versioning.versioning_override
    if override.HasField("pinned") and override.pinned.HasField("version"):
        version = override.pinned.version
    elif override.auto_upgrade:
        return None
    elif (
        versioning.behavior == VersioningBehavior.VERSIONING_BEHAVIOR_PINNED
        and versioning.HasField("deployment_version")
    ):
        version = versioning.deployment_version
    else:
        return None
    return Build(version.deployment_name, version.build_id)


def seen_in(
    description: WorkflowExecutionDescription,
    worker_polls: bool | None,
    *,
    pinned: Build | None = None,
    build_polls: bool | None = None,
    polling_builds: tuple[str, ...] = (),
) -> Seen:
    """The parts of a workflow's description that say why a query waits."""
    raw = description.raw_description
    seen = Seen(
        description.task_queue,
        worker_polls,
        workflow_id=description.id,
        pinned_to=pinned,
        build_polls=build_polls,
        polling_builds=polling_builds,
    )
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
        return replace(seen, activities=activities)
    task = raw.pending_workflow_task
    started = task.state == PendingWorkflowTaskState.PENDING_WORKFLOW_TASK_STATE_STARTED
    since = task.started_time if started else task.scheduled_time
    age = datetime.now(UTC) - since.ToDatetime(tzinfo=UTC) if since.seconds else None
    return replace(
        seen, task_started=started, task_attempt=task.attempt, task_age=age, activities=activities
    )


async def task_queue_polled(client: Client, task_queue: str, within: timedelta) -> bool:
    """Whether a worker polled ``task_queue`` for workflow tasks within ``POLLER_FRESHNESS``."""
    last = await last_workflow_poll(client, task_queue, rpc_timeout=within)
    return last is not None and last > datetime.now(UTC) - POLLER_FRESHNESS


def _poller_of(client: Client, within: timedelta) -> Polled:
    async def polled(task_queue: str) -> bool | None:
        return await task_queue_polled(client, task_queue, within)

    return polled


def _fresh(pollers: list[Poller]) -> list[Poller]:
    since = datetime.now(UTC) - POLLER_FRESHNESS
    return [poller for poller in pollers if poller.last_poll > since]


def _of(poller: Poller, build: Build) -> bool:
    return (poller.deployment_name, poller.build_id) == (build.deployment_name, build.build_id)


def _build_not_polling(seen: Seen) -> str:
    """Pinned to a build nobody runs: say which, who does poll, and the two ways out."""
    assert seen.pinned_to is not None
    build = seen.pinned_to
    others = seen.polling_builds
    if len(others) == 1:
        polling = f"build {others[0]} does"
    elif others:
        polling = f"builds {', '.join(others)} do"
    elif seen.worker_polls:
        polling = "other workers do"
    else:
        polling = "nor did any other worker"
    return (
        f"the process is pinned to build {build.build_id} of deployment {build.deployment_name} "
        f"(Worker Versioning), and no worker of that build polled task queue {seen.task_queue} "
        f"in the last {_seconds(POLLER_FRESHNESS)} ({polling}): start a worker of build "
        f"{build.build_id} (APPROVAL_DEPLOYMENT_NAME={build.deployment_name} "
        f"APPROVAL_BUILD_ID={build.build_id}), or, once `approval-flow "
        "replay` on a build that runs says its history replays, move the process there: "
        f"temporal workflow update-options --workflow-id {seen.workflow_id or 'ID'} "
        "--versioning-override-behavior pinned --versioning-override-deployment-name "
        f"{build.deployment_name} --versioning-override-build-id "
        f"{others[0] if len(others) == 1 else 'BUILD'} ({UPGRADES_DOC}, step 5)"
    )


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
