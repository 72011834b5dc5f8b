"""Which reason an unanswered query is given, from what the server showed (common/unanswered.py).

The server's side is met for real in tests/integration/test_unanswered_query.py.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any, cast

import pytest
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from callbacks_api.problems import Problem, no_worker_answer
from callbacks_api.processes import Processes
from common.unanswered import (
    Build,
    PendingActivity,
    Seen,
    Unanswered,
    Why,
    classify,
    diagnose,
)

QUEUE = "approval-flow"
LOCAL = Build("approval-flow", "local")
FIVE = timedelta(seconds=5)


def seen(**fields: Any) -> Seen:
    return Seen(**{"task_queue": QUEUE, "worker_polls": True, **fields})


@pytest.mark.parametrize(
    ("observed", "why"),
    [
        (None, Why.UNKNOWN),
        (seen(worker_polls=False), Why.NO_POLLER),
        # A task a worker took once counts for nothing if no worker polled for 70 s since.
        (seen(worker_polls=False, task_started=True, task_attempt=1), Why.NO_POLLER),
        (seen(task_started=True, task_attempt=1), Why.TASK_RUNNING),
        (seen(task_started=False, task_attempt=1), Why.TASK_WAITING),
        (seen(task_started=True, task_attempt=2), Why.TASK_RETRYING),
        (seen(task_started=False, task_attempt=2), Why.TASK_RETRYING),
        (seen(), Why.WORKER_SILENT),
        # Whether a worker polls is not known: only the task can be spoken for.
        (seen(worker_polls=None, task_started=True, task_attempt=1), Why.TASK_RUNNING),
        (seen(worker_polls=None), Why.UNKNOWN),
        # Pinned to a build none of whose workers polls: nothing else can answer.
        (seen(pinned_to=LOCAL, build_polls=False), Why.BUILD_NOT_POLLING),
        (seen(worker_polls=False, pinned_to=LOCAL, build_polls=False), Why.BUILD_NOT_POLLING),
        (seen(pinned_to=LOCAL, build_polls=False, task_started=False), Why.BUILD_NOT_POLLING),
        (seen(pinned_to=LOCAL, build_polls=True), Why.WORKER_SILENT),
        (seen(pinned_to=LOCAL, build_polls=None), Why.WORKER_SILENT),
    ],
)
def test_the_reason_is_the_one_the_server_showed(observed: Seen | None, why: Why) -> None:
    assert classify(observed) is why


def test_no_worker_polling_names_the_task_queue_and_asks_for_the_worker() -> None:
    text = Unanswered(FIVE, seen(worker_polls=False)).reason()
    assert text == (
        "no worker is polling task queue approval-flow (no poll in the last 70 s): "
        "is the worker running?"
    )


@pytest.mark.parametrize(
    ("builds", "worker_polls", "polling", "to"),
    [
        (("local-2",), True, "build local-2 does", "local-2"),
        (("b", "c"), True, "builds b, c do", "BUILD"),
        ((), True, "other workers do", "BUILD"),
        ((), False, "nor did any other worker", "BUILD"),
    ],
)
def test_a_process_pinned_to_a_build_nobody_runs_names_it_and_both_ways_out(
    builds: tuple[str, ...], worker_polls: bool, polling: str, to: str
) -> None:
    pinned = seen(
        workflow_id="process-1",
        worker_polls=worker_polls,
        pinned_to=LOCAL,
        build_polls=False,
        polling_builds=builds,
    )
    unanswered = Unanswered(FIVE, pinned)
    assert unanswered.reason() == (
        "the process is pinned to build local of deployment approval-flow (Worker Versioning), "
        "and no worker of that build polled task queue approval-flow in the last 70 s "
        f"({polling}): start a worker of build local (APPROVAL_DEPLOYMENT_NAME=approval-flow "
        "APPROVAL_BUILD_ID=local), or, once "
        "`approval-flow replay` on a build that runs says its history replays, move the process "
        "there: temporal workflow update-options --workflow-id process-1 "
        "--versioning-override-behavior pinned --versioning-override-deployment-name "
        f"approval-flow --versioning-override-build-id {to} (docs/upgrades.md, step 5)"
    )
    # For a person: no Temporal words, and no "try again shortly" (it lasts until someone acts).
    assert unanswered.lasting
    people = no_worker_answer(unanswered.for_people(), lasting=unanswered.lasting).detail
    assert "the version of this service it was started on" in people
    assert "try again shortly" not in people and "trying again helps only once they have" in people
    assert "build" not in people and "task queue" not in people


def test_a_silent_worker_of_a_pinned_process_names_the_build_that_must_answer() -> None:
    text = Unanswered(FIVE, seen(pinned_to=LOCAL, build_polls=True)).reason()
    assert text.endswith(
        "; the process is pinned to build local of deployment approval-flow and only a worker "
        "of that build answers (one stopped less than 70 s ago still counts)"
    )
    assert not Unanswered(FIVE, seen(pinned_to=LOCAL, build_polls=True)).lasting


def test_a_running_task_says_the_worker_is_at_it_and_since_when() -> None:
    text = Unanswered(
        FIVE, seen(task_started=True, task_attempt=1, task_age=timedelta(seconds=12.34))
    ).reason()
    assert text == (
        "the worker did not answer the state query within 5 s: a worker has been running the "
        "process's workflow task for 12.3 s, and a query waits for it to finish"
    )


def test_a_retried_task_gives_its_attempt_and_what_the_process_waits_for() -> None:
    activity = PendingActivity("update_process_status", 3, "Read timeout on endpoint URL")
    text = Unanswered(
        FIVE, seen(task_started=False, task_attempt=2, activities=(activity,))
    ).reason()
    assert text == (
        "the worker did not answer the state query within 5 s: the process's workflow task "
        "failed and is being retried (attempt 2); the worker's log says why; meanwhile the "
        "process waits for activity update_process_status (attempt 3, last failure: Read "
        "timeout on endpoint URL)"
    )


def test_a_task_no_worker_took_yet_says_the_worker_is_busy_or_stopped() -> None:
    text = Unanswered(
        FIVE, seen(task_started=False, task_attempt=1, task_age=timedelta(seconds=7))
    ).reason()
    assert "workflow task has waited 7 s for a worker to take it" in text
    assert "busy or stopped" in text


def test_a_silent_worker_is_not_called_absent() -> None:
    text = Unanswered(FIVE, seen()).reason()
    assert text.startswith("a worker polled task queue approval-flow lately, but did not answer")
    assert "is the worker running?" not in text


def test_what_the_server_did_not_say_is_not_claimed() -> None:
    text = Unanswered(FIVE, None).reason()
    assert "could not say in time whether one polls" in text
    assert Unanswered(FIVE, None).for_people() == "no worker answered within 5 s"


@pytest.mark.parametrize(
    ("observed", "words"),
    [
        (seen(worker_polls=False), "no worker is running to answer for it"),
        (seen(task_started=True, task_attempt=1), "still busy with a step of this process"),
        (seen(task_started=False, task_attempt=1), "still busy with a step of this process"),
        (seen(task_started=True, task_attempt=2), "retrying a step of this process that failed"),
        (seen(), "the worker did not answer within 5 s"),
    ],
)
def test_people_read_the_same_finding_without_temporals_words(observed: Seen, words: str) -> None:
    text = Unanswered(FIVE, observed).for_people()
    assert words in text
    assert "task queue" not in text and "workflow task" not in text


class SilentClient:
    """A Temporal client whose query is never answered and whose describe fails or hangs."""

    namespace = "default"

    def __init__(self, describe: str) -> None:
        self._describe = describe
        self.describes = 0

    def get_workflow_handle(self, workflow_id: str) -> SilentClient:
        return self

    async def query(self, *args: Any, **kwargs: Any) -> None:
        raise RPCError("deadline exceeded", RPCStatusCode.DEADLINE_EXCEEDED, b"")

    async def describe(self, *args: Any, **kwargs: Any) -> None:
        self.describes += 1
        if self._describe == "hangs":
            await asyncio.Event().wait()
        raise RPCError("unavailable", RPCStatusCode.UNAVAILABLE, b"")


@pytest.mark.parametrize("describe", ["fails", "hangs"])
async def test_a_server_that_cannot_tell_why_bounds_the_look_and_claims_nothing(
    describe: str,
) -> None:
    client = SilentClient(describe)
    unanswered = await diagnose(
        cast(Client, client), "process-1", FIVE, within=timedelta(seconds=0.1)
    )
    assert unanswered.why is Why.UNKNOWN and client.describes == 1


async def test_the_api_keeps_its_code_and_status_and_says_what_it_knows() -> None:
    processes = Processes(cast(Client, SilentClient("fails")))
    with pytest.raises(Problem) as refused:
        await processes.state("process-1")
    assert (refused.value.status, refused.value.kind) == (503, "no-worker-answer")
    assert refused.value.headers == {"Retry-After": "5"}
    assert refused.value.detail == (
        "The process could not be read just now (no worker answered within 5 s). Nothing was "
        "recorded; try again shortly."
    )
