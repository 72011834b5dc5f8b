"""The callbacks API over real HTTP, in front of a real ProcessWorkflow on the Temporal dev server.

AWS and HTTP activities are stubs under the real names that capture what the workflow asked for,
so the tests sign links exactly as the real activities do; the mutex activities are real. Each
test uses its own process and lock resource, so tests never wait on each other.

The dev server (not the time-skipping one) keeps workflow time equal to wall time, which the
tokens' expiry is checked against.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import itertools
import json
import logging
import os
import re
import secrets
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient, TestServer
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import PollWorkflowTaskQueueRequest
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from callbacks_api.app import RedactingAccessLogger, create_app
from callbacks_api.approvals import form_check
from callbacks_api.pages import CONTENT_SECURITY_POLICY, SECURITY_HEADERS
from common.settings import Settings
from common.tokens import Purpose, SigningKey, TokenSigner
from tests.support.http import RawResponse, post_until_closed
from tests.support.moto_server import free_loopback_port
from tests.support.processes import alive, children, command_line, stopped
from tests.support.temporal import start_dev_server
from tests.workflow.fakes import Fakes
from workflows.messages import (
    APPROVAL_CALLBACK,
    COMMAND_CALLBACK_SIGNAL,
    COMMAND_HEARTBEAT_SIGNAL,
    CommandName,
    FailureReason,
    ProcessInput,
    ProcessOptions,
    ProcessState,
    ProcessStatus,
    Stage,
)
from workflows.mutex import MutexWorkflow
from workflows.process import ProcessWorkflow

pytestmark = pytest.mark.integration

T = TypeVar("T")
ROOT = Path(__file__).resolve().parents[2]
FORM = "application/x-www-form-urlencoded"
PROBLEM = "application/problem+json"


# ---------------------------------------------------------------------------------------------
# Stub activities and fixtures
# ---------------------------------------------------------------------------------------------


@dataclass
class Stack:
    client: Client
    http: TestClient[Any, Any]
    settings: Settings
    stubs: Fakes
    task_queue: str

    @property
    def signer(self) -> TokenSigner:
        return self.settings.signer

    # -- processes ------------------------------------------------------------------------------

    async def start_process(
        self, task_queue: str | None = None, run_timeout: timedelta | None = None, **options: Any
    ) -> str:
        """A process parked at approval, its approval request captured (once a worker runs)."""
        process_id = f"process-{uuid.uuid4()}"
        await self.client.start_workflow(
            ProcessWorkflow.run,
            ProcessInput(
                requested_by="Grace <grace@example.test>",
                description="Rotate the <b>prod</b> keys & restart",
                # A lock of its own: no test waits behind another test's process.
                options=ProcessOptions(lock_resource=f"test-{uuid.uuid4().hex[:8]}", **options),
            ),
            id=process_id,
            task_queue=task_queue or self.task_queue,
            run_timeout=run_timeout,
        )
        await eventually(
            lambda: self.state(process_id), lambda s: process_id in self.stubs.approvals
        )
        return process_id

    async def state(self, process_id: str) -> ProcessState:
        state: ProcessState = await self.client.get_workflow_handle(process_id).query(
            ProcessWorkflow.state
        )
        return state

    async def approved_and_sent(self, task_queue: str | None = None) -> str:
        """A process past approval and the lock, both commands sent and awaiting callbacks."""
        process_id = await self.start_process(task_queue)
        response = await self.decide(process_id, "approve", name="Ada")
        assert response.status == 200
        await eventually(
            lambda: self.state(process_id),
            lambda s: all(c.status == "sent" for c in s.commands.values()),
        )
        return process_id

    # -- links ------------------------------------------------------------------------------------

    def approval_token(self, process_id: str) -> str:
        request = self.stubs.approvals[process_id]
        return self.signer.sign(process_id, APPROVAL_CALLBACK, Purpose.APPROVAL, request.deadline)

    def command_token(self, process_id: str, command: CommandName) -> str:
        sent = self.stubs.commands[(process_id, command)]
        return self.signer.sign(process_id, command.value, Purpose.COMMAND, sent.deadline)

    # -- requests ---------------------------------------------------------------------------------

    async def page(self, token: str) -> tuple[ClientResponse, str]:
        response = await self.http.get(f"/approvals/{token}")
        return response, await response.text()

    async def decide(
        self, process_id: str, decision: str, *, name: str = "", comment: str = ""
    ) -> ClientResponse:
        """Open the page as a person does, then submit its form."""
        token = self.approval_token(process_id)
        response, html = await self.page(token)
        assert response.status == 200, html
        return await self.http.post(
            f"/approvals/{token}",
            data={
                "check": hidden_check(html),
                "decision": decision,
                "name": name,
                "comment": comment,
            },
        )

    async def callback(self, token: str, body: dict[str, Any]) -> ClientResponse:
        return await self.http.post(f"/callbacks/{token}", json=body)

    async def settled(self, process_id: str) -> None:
        """Wait until no workflow task or activity of the process is scheduled or under way.

        Stopping a worker then leaves nothing in its hands. A worker stopped right after an
        activity completed can take the next workflow task in its last poll and never answer it
        (seen 5 times in 30 on a loaded machine): the server holds that task as started until
        its timeout (10 s), and a signal arriving meanwhile is kept beside the history, not in
        it, until then (``test_an_approval_posted_while_a_dead_worker_holds_a_task_is_kept``).
        """

        async def quiet() -> bool:
            raw = (await self.client.get_workflow_handle(process_id).describe()).raw_description
            return not raw.HasField("pending_workflow_task") and not raw.pending_activities

        await eventually(quiet, bool)

    async def closed(self, process_id: str) -> None:
        """Wait until the workflow has closed, not only shown a final status."""
        handle = self.client.get_workflow_handle(process_id)
        await eventually(handle.describe, lambda d: d.status != WorkflowExecutionStatus.RUNNING)

    def worker(self, task_queue: str) -> Worker:
        return Worker(
            self.client,
            task_queue=task_queue,
            workflows=[ProcessWorkflow, MutexWorkflow],
            activities=self.stubs.activities(),
        )

    async def metric(self, name: str, **labels: str) -> float:
        """One series' value from ``GET /metrics`` (0 before it first counts)."""
        text = await (await self.http.get("/metrics")).text()
        wanted = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
        for line in text.splitlines():
            if line.startswith(f"{name}{{{wanted}}} "):
                return float(line.split()[-1])
        return 0.0

    async def signals(self, process_id: str, name: str) -> int:
        """How many signals called ``name`` the process's history holds."""
        count = 0
        async for event in self.client.get_workflow_handle(process_id).fetch_history_events():
            if event.HasField("workflow_execution_signaled_event_attributes"):
                count += event.workflow_execution_signaled_event_attributes.signal_name == name
        return count


@pytest.fixture(scope="module")
def env(dev_env: WorkflowEnvironment) -> WorkflowEnvironment:
    return dev_env


def make_settings(**overrides: Any) -> Settings:
    key = SigningKey(kid=f"k-{uuid.uuid4().hex[:6]}", secret=secrets.token_urlsafe(32))
    values: dict[str, Any] = {"signing_keys": (key,), **overrides}
    return Settings(**values)


@pytest.fixture(scope="module")
async def stack(env: WorkflowEnvironment) -> AsyncIterator[Stack]:
    settings = make_settings()
    stubs = Fakes()
    task_queue = f"callbacks-api-{uuid.uuid4()}"
    async with Worker(
        env.client,
        task_queue=task_queue,
        workflows=[ProcessWorkflow, MutexWorkflow],
        activities=stubs.activities(),
    ):
        # A generous confirmation wait: on a busy machine a 202 ("not confirmed yet") would
        # make the exact-status assertions flaky; the wait ends as soon as the state shows it.
        app = create_app(settings, env.client, decision_wait=timedelta(seconds=10))
        server = TestServer(app, host="127.0.0.1")
        # As ``python -m callbacks_api`` serves: the access log must not print tokens either.
        await server.start_server(access_log_class=RedactingAccessLogger)
        async with TestClient(server) as http:
            yield Stack(env.client, http, settings, stubs, task_queue)


async def eventually(
    probe: Callable[[], Awaitable[T]], check: Callable[[T], bool], within: float = 15.0
) -> T:
    """Probe until ``check`` holds; fails with the last value seen. No fixed sleeps."""
    deadline = time.monotonic() + within
    while True:
        value = await probe()
        if check(value):
            return value
        assert time.monotonic() < deadline, f"condition not met within {within}s: {value!r}"
        await asyncio.sleep(0.05)


def hidden_check(html: str) -> str:
    match = re.search(r'name="check" value="([0-9a-f]+)"', html)
    assert match, html
    return match.group(1)


def assert_security_headers(response: ClientResponse) -> None:
    for name, value in SECURITY_HEADERS.items():
        assert response.headers[name] == value, name


def assert_page_headers(response: ClientResponse) -> None:
    assert response.content_type == "text/html"
    assert response.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
    assert response.headers["Referrer-Policy"] == "no-referrer"
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["X-Content-Type-Options"] == "nosniff"


async def problem(response: ClientResponse, status: int, kind: str) -> dict[str, Any]:
    assert response.status == status, await response.text()
    assert response.content_type == PROBLEM
    body: dict[str, Any] = await response.json(content_type=PROBLEM)
    assert body["status"] == status
    assert body["type"].endswith(f":{kind}")
    assert body["title"] and body["detail"]
    return body


def unchanged_approval(state: ProcessState) -> bool:
    return state.stage is Stage.AWAITING_APPROVAL and state.approval.decision is None


# ---------------------------------------------------------------------------------------------
# Approval pages
# ---------------------------------------------------------------------------------------------


async def test_opening_the_link_ten_times_changes_nothing_then_approve_moves_on(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    process_id = await stack.start_process()
    token = stack.approval_token(process_id)

    for _ in range(10):
        response, html = await stack.page(token)
        assert response.status == 200
        assert_page_headers(response)
        assert '<html lang="en">' in html
        assert "Rotate the &lt;b&gt;prod&lt;/b&gt; keys &amp; restart" in html
        assert "Grace &lt;grace@example.test&gt;" in html
        assert '<label for="comment">' in html
    assert unchanged_approval(await stack.state(process_id))

    response = await stack.http.post(
        f"/approvals/{token}",
        data={"check": hidden_check(html), "decision": "approve", "name": "Ada", "comment": "ok"},
    )
    html = await response.text()
    assert response.status == 200, html
    assert_page_headers(response)
    assert "Decision recorded" in html and "approved" in html

    state = await eventually(
        lambda: stack.state(process_id), lambda s: s.stage is Stage.RUNNING_COMMANDS
    )
    assert state.approval.decision == "approved"
    assert state.approval.decided_by == "Ada"
    assert state.approval.comment == "ok"
    assert state.lock.status == "held"
    # Log records name the process (as ``extra``) and a fingerprint, never the token itself;
    # the access log shows the route pattern.
    messages = [record.getMessage() for record in caplog.records]
    assert any(getattr(record, "process_id", None) == process_id for record in caplog.records)
    # Post/redirect/get: the POST answers 303 and the page it leads to shows the outcome.
    assert any("POST /approvals/{token} 303" in message for message in messages)
    assert any("GET /approvals/{token} 200" in message for message in messages)
    assert all(token not in message for message in messages)


async def test_reject_is_recorded_and_fails_the_process(stack: Stack) -> None:
    process_id = await stack.start_process()

    response = await stack.decide(process_id, "reject", comment="not this week")

    assert response.status == 200
    assert "rejected" in await response.text()
    state = await eventually(lambda: stack.state(process_id), lambda s: s.status.is_final)
    assert state.failure_reason is FailureReason.REJECTED
    assert state.approval.decided_by == "approver via link"  # no name given


async def test_reject_link_preselects_reject_but_decides_nothing(stack: Stack) -> None:
    process_id = await stack.start_process()
    token = stack.approval_token(process_id)

    response = await stack.http.get(f"/approvals/{token}?decision=reject")

    html = await response.text()
    assert response.status == 200
    assert re.search(r'value="reject"\s*checked', html)
    assert unchanged_approval(await stack.state(process_id))


async def test_second_decision_is_refused_with_the_first_one(stack: Stack) -> None:
    process_id = await stack.start_process()
    token = stack.approval_token(process_id)
    _, html = await stack.page(token)
    check = hidden_check(html)
    first = await stack.http.post(
        f"/approvals/{token}", data={"check": check, "decision": "approve", "name": "Ada"}
    )
    assert first.status == 200

    # The same decision again (a double click) is the recorded one: no conflict.
    repeat = await stack.http.post(
        f"/approvals/{token}", data={"check": check, "decision": "approve", "name": "Ada"}
    )
    assert repeat.status == 200

    second = await stack.http.post(
        f"/approvals/{token}", data={"check": check, "decision": "reject", "name": "Bob"}
    )

    html = await second.text()
    assert second.status == 409
    assert_page_headers(second)
    assert "approved by Ada" in html and "yours was not sent" in html
    state = await stack.state(process_id)
    assert (state.approval.decision, state.approval.decided_by) == ("approved", "Ada")
    # Opening the link again tells the same story.
    response, html = await stack.page(token)
    assert response.status == 409 and "approved by Ada" in html


async def test_two_simultaneous_first_decisions_one_wins_and_the_other_is_told(
    stack: Stack,
) -> None:
    process_id = await stack.start_process()
    token = stack.approval_token(process_id)
    _, html = await stack.page(token)
    check = hidden_check(html)

    async def post(decision: str, name: str) -> tuple[int, str]:
        response = await stack.http.post(
            f"/approvals/{token}", data={"check": check, "decision": decision, "name": name}
        )
        return response.status, await response.text()

    answers = await asyncio.gather(post("approve", "Ada"), post("reject", "Bob"))

    assert sorted(status for status, _ in answers) == [200, 409]
    state = await stack.state(process_id)
    winner = "Ada" if state.approval.decision == "approved" else "Bob"
    assert state.approval.decided_by == winner
    loser_page = next(html for status, html in answers if status == 409)
    assert f"by {winner}" in loser_page


async def test_expired_link_is_gone(stack: Stack) -> None:
    process_id = await stack.start_process()
    past = datetime.now(UTC) - timedelta(hours=1)
    token = stack.signer.sign(process_id, APPROVAL_CALLBACK, Purpose.APPROVAL, past)

    response, html = await stack.page(token)
    assert response.status == 410
    assert_page_headers(response)
    assert "expired" in html
    response = await stack.http.post(
        f"/approvals/{token}", data={"check": "0" * 64, "decision": "approve"}
    )
    assert response.status == 410
    assert unchanged_approval(await stack.state(process_id))


async def test_closed_process_is_gone(stack: Stack) -> None:
    process_id = await stack.start_process(approval_timeout=timedelta(seconds=1))
    token = stack.approval_token(process_id)  # still valid: deadline plus grace
    check = hidden_check_for(stack, token)
    await stack.closed(process_id)

    response, html = await stack.page(token)
    assert response.status == 410
    assert "time to decide ran out" in html
    response = await stack.http.post(
        f"/approvals/{token}", data={"check": check, "decision": "approve"}
    )
    assert response.status == 410
    state = await stack.state(process_id)
    assert state.approval.decision is None
    assert state.failure_reason is FailureReason.APPROVAL_TIMEOUT


async def test_a_terminated_process_offers_no_form_and_says_terminated(stack: Stack) -> None:
    """A terminate runs none of the workflow's code: its state still says pending."""
    process_id = await stack.start_process()
    token = stack.approval_token(process_id)
    check = hidden_check_for(stack, token)
    await stack.client.get_workflow_handle(process_id).terminate("operator")
    # The query still answers the last state the workflow wrote: waiting for a decision.
    assert unchanged_approval(await stack.state(process_id))

    response, html = await stack.page(token)
    assert response.status == 410, html
    assert "status terminated" in html and 'name="check"' not in html
    response = await stack.http.post(
        f"/approvals/{token}", data={"check": check, "decision": "approve"}
    )
    html = await response.text()
    assert response.status == 410, html
    assert "status terminated" in html and "pending" not in html
    assert await stack.signals(process_id, "approval_decision") == 0


async def test_a_process_whose_run_timed_out_offers_no_form(stack: Stack) -> None:
    """A run timeout set at start closes it as a terminate does: none of its code runs."""
    process_id = await stack.start_process(run_timeout=timedelta(seconds=2))
    token = stack.approval_token(process_id)
    await stack.closed(process_id)

    response, html = await stack.page(token)
    assert response.status == 410, html
    assert "status timed-out" in html and 'name="check"' not in html


async def test_a_decision_delivered_then_terminated_is_not_being_recorded(stack: Stack) -> None:
    """Delivered while no worker ran, then terminated: it will never be recorded."""
    task_queue = f"no-worker-{uuid.uuid4()}"
    async with stack.worker(task_queue):
        process_id = await stack.start_process(task_queue)
        await stack.settled(process_id)
    token = stack.approval_token(process_id)
    response = await stack.http.post(
        f"/approvals/{token}",
        data={"check": hidden_check_for(stack, token), "decision": "approve", "name": "Ada"},
        allow_redirects=False,
    )
    assert response.status == 303
    outcome = response.headers["Location"]
    await stack.client.get_workflow_handle(process_id).terminate("operator")
    # No worker at all: the server alone says it is closed.
    response = await stack.http.get(f"/approvals/{token}{outcome}")
    html = await response.text()
    assert response.status == 410, html
    assert "status terminated" in html

    async with stack.worker(task_queue):
        # A worker replaying the closed run for the query applies the decision that arrived
        # after its last step: its state shows it approved and queued for the lock.
        state = await stack.state(process_id)
        assert (state.approval.decision, state.stage) == ("approved", Stage.WAITING_FOR_LOCK)
        response = await stack.http.get(f"/approvals/{token}{outcome}")
        html = await response.text()
    assert response.status == 410, html
    assert "status terminated" in html and "Decision recorded" not in html


async def test_unknown_process_is_not_found(stack: Stack) -> None:
    deadline = datetime.now(UTC) + timedelta(hours=1)
    token = stack.signer.sign(
        f"process-{uuid.uuid4()}", APPROVAL_CALLBACK, Purpose.APPROVAL, deadline
    )

    response, html = await stack.page(token)
    assert response.status == 404
    assert "No such process" in html
    check = hidden_check_for(stack, token)
    response = await stack.http.post(
        f"/approvals/{token}", data={"check": check, "decision": "approve"}
    )
    assert response.status == 404


async def test_a_mark_the_api_did_not_make_shows_the_plain_page(stack: Stack) -> None:
    process_id = await stack.start_process()
    token = stack.approval_token(process_id)

    for mark in ("0" * 32 + "." + "0" * 32, "garbage", ""):
        response = await stack.http.get(f"/approvals/{token}", params={"submitted": mark})
        html = await response.text()
        assert response.status == 200, mark
        assert "Approval requested" in html and "being recorded" not in html
    assert unchanged_approval(await stack.state(process_id))


async def test_an_approval_posted_while_no_worker_runs_is_pending_then_recorded(
    stack: Stack,
) -> None:
    task_queue = f"no-worker-{uuid.uuid4()}"
    async with stack.worker(task_queue):
        process_id = await stack.start_process(task_queue)
        # Not only parked: nothing left for the stopping worker to take and drop (see settled).
        await stack.settled(process_id)
    token = stack.approval_token(process_id)

    # No worker polls the task queue now: the decision is signalled and the page says so. (The
    # stopped worker's last poll is recent, so the server still lists it: an app of its own
    # waits 1 s for it to answer, not the 10 s a busy worker gets.)
    app = create_app(stack.settings, stack.client, decision_wait=timedelta(seconds=1))
    async with TestClient(TestServer(app, host="127.0.0.1")) as http:
        response = await http.post(
            f"/approvals/{token}",
            data={"check": hidden_check_for(stack, token), "decision": "approve", "name": "Ada"},
            allow_redirects=False,
        )
        assert response.status == 303
        assert_security_headers(response)
        outcome = response.headers["Location"]
        assert outcome.startswith("?submitted=")
        response = await http.get(f"/approvals/{token}{outcome}")
        html = await response.text()
    assert response.status == 202, html
    assert_page_headers(response)
    assert "Decision being recorded" in html and "no worker answered" in html
    # The server holds the decision: one signal, in the history.
    assert await stack.signals(process_id, "approval_decision") == 1

    async with stack.worker(task_queue):
        state = await eventually(
            lambda: stack.state(process_id), lambda s: s.approval.decision is not None
        )
        assert (state.approval.decision, state.approval.decided_by) == ("approved", "Ada")
        response = await stack.http.get(f"/approvals/{token}{outcome}")
        assert response.status == 200
        assert "Decision recorded" in await response.text()


async def test_in_a_worker_outage_an_open_pages_decision_is_taken_but_no_page_is_shown(
    stack: Stack,
) -> None:
    """What docs/api.md promises a person during a worker outage, and no more: the POST of a
    page already open is taken (signal first), but the page itself needs a worker to render, so
    the mailed link shows no form, and a POST without the page's hidden check is refused."""
    task_queue = f"outage-{uuid.uuid4()}"
    async with stack.worker(task_queue):
        process_id = await stack.start_process(task_queue)
        token = stack.approval_token(process_id)
        page = await stack.http.get(f"/approvals/{token}")  # opened while the worker runs
        html = await page.text()
        assert page.status == 200, html
        found = re.search(r'name="check" value="([0-9a-f]+)"', html)
        assert found is not None, html
        await stack.settled(process_id)

    # A short read, so the test does not wait the page's 5 s (a stopped worker's last poll is
    # still listed: the query waits its whole deadline, as in the outage reproduced).
    app = create_app(stack.settings, stack.client, temporal_timeout=timedelta(seconds=1))
    async with TestClient(TestServer(app, host="127.0.0.1")) as http:
        response = await http.get(f"/approvals/{token}")
        html = await response.text()
        assert (response.status, response.headers["Retry-After"]) == (503, "5"), html
        assert 'name="check"' not in html and "could not be read just now" in html

        response = await http.post(f"/approvals/{token}", data={"decision": "approve"})
        assert response.status == 400, await response.text()

        form = {"check": found.group(1), "decision": "approve", "name": "Ada"}
        response = await http.post(f"/approvals/{token}", data=form, allow_redirects=False)
        assert response.status == 303, await response.text()
    assert await stack.signals(process_id, "approval_decision") == 1

    async with stack.worker(task_queue):
        state = await eventually(
            lambda: stack.state(process_id), lambda s: s.approval.decision is not None
        )
    assert (state.approval.decision, state.approval.decided_by) == ("approved", "Ada")


async def test_a_process_not_ready_to_be_read_is_503_and_a_delivered_decision_says_so(
    stack: Stack,
) -> None:
    """The server refuses a query FAILED_PRECONDITION while the process cannot answer: its
    first workflow task is not scheduled yet (here: a start delay) or its workflow task keeps
    failing (a crash-looping worker, a bad deploy). Both pass once a worker runs the task.

    Before, the page was 500 "refused ... nothing was recorded", even right after the decision
    was signalled and accepted: false. Now the page is 503 (try again), and after a decision,
    "Your decision was delivered".
    """
    process_id = f"process-{uuid.uuid4()}"
    handle = await stack.client.start_workflow(
        ProcessWorkflow.run,
        ProcessInput(requested_by="Grace", description="Rotate the keys"),
        id=process_id,
        task_queue=stack.task_queue,  # a worker polls it: the page waits for the query
        start_delay=timedelta(hours=1),
    )
    token = stack.signer.sign(
        process_id, APPROVAL_CALLBACK, Purpose.APPROVAL, datetime.now(UTC) + timedelta(hours=1)
    )
    try:
        response, html = await stack.page(token)
        assert response.status == 503, html
        assert response.headers["Retry-After"] == "5"
        assert "not ready" in html and "recorded" not in html

        response = await stack.http.post(
            f"/approvals/{token}",
            data={"check": hidden_check_for(stack, token), "decision": "approve", "name": "Ada"},
            allow_redirects=False,
        )
        assert response.status == 303
        response = await stack.http.get(f"/approvals/{token}{response.headers['Location']}")
        html = await response.text()
        assert response.status == 503, html
        assert "Decision sent" in html and "Your decision was delivered" in html
        assert "nothing was recorded" not in html
        # It was: the server holds the decision.
        assert await stack.signals(process_id, "approval_decision") == 1
    finally:
        await handle.terminate("test over")


async def test_an_approval_posted_while_a_dead_worker_holds_a_task_is_kept(stack: Stack) -> None:
    """A worker took a workflow task and died before answering it (kill -9, or a stop racing
    its last poll). The approval posted meanwhile is accepted by the server, which holds it
    beside the history until the task times out, then writes it there: nothing is lost, and
    the process records the decision once a worker runs."""
    task_queue = f"dead-worker-{uuid.uuid4()}"
    process_id = f"process-{uuid.uuid4()}"
    handle = await stack.client.start_workflow(
        ProcessWorkflow.run,
        ProcessInput(
            requested_by="Grace",
            options=ProcessOptions(lock_resource=f"test-{uuid.uuid4().hex[:8]}"),
        ),
        id=process_id,
        task_queue=task_queue,
        task_timeout=timedelta(seconds=2),  # how long the dead worker's task is held
    )
    # The dead worker: it takes the first workflow task and never answers.
    polled = await stack.client.workflow_service.poll_workflow_task_queue(
        PollWorkflowTaskQueueRequest(
            namespace=stack.client.namespace,
            task_queue=TaskQueue(name=task_queue),
            identity="a worker killed mid-task",
        ),
        timeout=timedelta(seconds=30),
    )
    assert polled.workflow_execution.workflow_id == process_id
    deadline = datetime.now(UTC) + timedelta(hours=1)
    token = stack.signer.sign(process_id, APPROVAL_CALLBACK, Purpose.APPROVAL, deadline)

    settings = stack.settings.model_copy(update={"task_queue": task_queue})
    app = create_app(settings, stack.client, decision_wait=timedelta(seconds=1))
    async with TestClient(TestServer(app, host="127.0.0.1")) as http:
        response = await http.post(
            f"/approvals/{token}",
            data={"check": hidden_check_for(stack, token), "decision": "approve", "name": "Ada"},
        )
        html = await response.text()
    assert response.status == 202, html
    assert "Decision being recorded" in html

    # Once the dead worker's task times out, the decision is in the history: once.
    await eventually(lambda: stack.signals(process_id, "approval_decision"), lambda n: n == 1)
    async with stack.worker(task_queue):
        state = await eventually(
            lambda: stack.state(process_id), lambda s: s.approval.decision is not None
        )
    assert (state.approval.decision, state.approval.decided_by) == ("approved", "Ada")
    assert await stack.signals(process_id, "approval_decision") == 1
    await handle.terminate("test over")


async def test_with_no_worker_polling_at_all_the_page_does_not_wait_for_one(
    stack: Stack,
) -> None:
    """A task queue no worker ever polled: the server says so, and the page answers at once."""
    task_queue = f"never-polled-{uuid.uuid4()}"
    process_id = f"process-{uuid.uuid4()}"
    handle = await stack.client.start_workflow(
        ProcessWorkflow.run,
        ProcessInput(
            requested_by="Grace",
            options=ProcessOptions(lock_resource=f"test-{uuid.uuid4().hex[:8]}"),
        ),
        id=process_id,
        task_queue=task_queue,
    )
    deadline = datetime.now(UTC) + timedelta(hours=1)
    token = stack.signer.sign(process_id, APPROVAL_CALLBACK, Purpose.APPROVAL, deadline)
    # Were a worker counted as there, the page would wait the whole (absurd) decision_wait.
    # The API's own task queue is this one: another test's worker may poll the default one.
    settings = stack.settings.model_copy(update={"task_queue": task_queue})
    app = create_app(settings, stack.client, decision_wait=timedelta(hours=1))
    async with TestClient(TestServer(app, host="127.0.0.1")) as http:
        response = await asyncio.wait_for(
            http.post(
                f"/approvals/{token}",
                data={"check": hidden_check_for(stack, token), "decision": "reject"},
            ),
            60,
        )
        html = await response.text()
    assert response.status == 202, html
    assert "Decision being recorded" in html

    async with stack.worker(task_queue):
        state = await eventually(lambda: stack.state(process_id), lambda s: s.status.is_final)
        assert state.failure_reason is FailureReason.REJECTED
        await stack.closed(handle.id)


def hidden_check_for(stack: Stack, token: str) -> str:
    """The form check our page would carry, for links whose page cannot be shown."""
    return form_check(stack.settings.signing_keys[0].secret, token)


async def test_tampered_or_foreign_tokens_are_forbidden(stack: Stack) -> None:
    process_id = await stack.start_process()
    token = stack.approval_token(process_id)
    header, payload, signature = token.split(".")
    tampered = f"{header}.{payload}.{signature[:-2]}{'AA' if signature[-2:] != 'AA' else 'BB'}"
    foreign = make_settings().signer.sign(
        process_id, APPROVAL_CALLBACK, Purpose.APPROVAL, datetime.now(UTC) + timedelta(hours=1)
    )

    for bad in (tampered, foreign, "not-a-token"):
        response, html = await stack.page(bad)
        assert response.status == 403, bad
        assert "not valid" in html
        response = await stack.http.post(
            f"/approvals/{bad}", data={"check": "0" * 64, "decision": "approve"}
        )
        assert response.status == 403
    assert unchanged_approval(await stack.state(process_id))


async def test_malformed_forms_are_refused(stack: Stack) -> None:
    process_id = await stack.start_process()
    token = stack.approval_token(process_id)
    _, html = await stack.page(token)
    check = hidden_check(html)
    url = f"/approvals/{token}"
    headers = {"Content-Type": FORM}

    bad_forms = [
        {"check": check},  # no decision
        {"check": check, "decision": "maybe"},
        {"decision": "approve"},  # no check
        {"check": check, "decision": "approve", "name": "x" * 201},
        {"check": check, "decision": "approve", "comment": "x" * 2001},
    ]
    for form in bad_forms:
        response = await stack.http.post(url, data=form)
        assert response.status == 400, form
        assert_page_headers(response)
    # Terminal escapes and bidi overrides would reach operators' terminals: refused, named.
    for field, text in (
        ("name", "\x1b[31mRED\x1b]0;pwned\x07"),
        ("comment", "\x1b[2Jcleared"),
        ("name", "Ada \u202eevil"),
        ("comment", "fine\r\nthen \x9b C1"),
    ):
        response = await stack.http.post(
            url, data={"check": check, "decision": "approve", field: text}
        )
        assert response.status == 400, text
        assert f"The {field} contains a control character" in await response.text()
    for body in (f"check={check}&decision=approve&decision=reject", "%zz=\xff", "&&&"):
        response = await stack.http.post(url, data=body.encode("latin-1"), headers=headers)
        assert response.status == 400, body
    # Bytes that are not UTF-8, raw or percent-encoded alike, are not read as U+FFFD.
    for name in ("\xff\xfe", "%ff%fe"):
        body = f"check={check}&decision=approve&name={name}"
        response = await stack.http.post(url, data=body.encode("latin-1"), headers=headers)
        assert response.status == 400, body
        assert "The form could not be read." in await response.text()

    # A form that did not come from this link's page, or from another site, is refused.
    response = await stack.http.post(url, data={"check": "0" * 64, "decision": "approve"})
    assert response.status == 403
    response = await stack.http.post(
        url,
        data={"check": check, "decision": "approve"},
        headers={"Sec-Fetch-Site": "cross-site"},
    )
    assert response.status == 403
    assert unchanged_approval(await stack.state(process_id))


async def test_approval_wants_a_form_and_only_get_or_post(stack: Stack) -> None:
    process_id = await stack.start_process()
    token = stack.approval_token(process_id)

    response = await stack.http.post(f"/approvals/{token}", json={"decision": "approve"})
    assert response.status == 415
    assert_page_headers(response)
    response = await stack.http.put(f"/approvals/{token}", data={"decision": "approve"})
    assert response.status == 405
    assert "GET" in response.headers["Allow"] and "POST" in response.headers["Allow"]
    assert_page_headers(response)  # a person reads every answer under /approvals, even aiohttp's
    assert unchanged_approval(await stack.state(process_id))
    assert_page_headers(await stack.http.get(f"/approvals/{token}/more"))
    # Programs read everything else.
    await problem(await stack.http.get(f"/callbacks/{token}/more"), 404, "not-found")
    await problem(await stack.http.get("/nothing-here"), 404, "not-found")


# ---------------------------------------------------------------------------------------------
# Command callbacks
# ---------------------------------------------------------------------------------------------


async def test_command_callbacks_reach_their_command_and_complete_the_process(
    stack: Stack,
) -> None:
    process_id = await stack.approved_and_sent()

    one = await stack.callback(
        stack.command_token(process_id, CommandName.ONE),
        {"status": "succeeded", "result": {"rows": 3}},
    )
    assert one.status == 202
    assert await one.json() == {
        "status": "accepted",
        "process_id": process_id,
        "command": "command-one",
    }
    state = await eventually(
        lambda: stack.state(process_id),
        lambda s: s.commands[CommandName.ONE].status == "succeeded",
    )
    assert state.commands[CommandName.ONE].result == {"rows": 3}
    assert state.commands[CommandName.TWO].status == "sent"

    two = await stack.callback(
        stack.command_token(process_id, CommandName.TWO), {"status": "succeeded"}
    )
    assert two.status == 202
    state = await eventually(lambda: stack.state(process_id), lambda s: s.status.is_final)
    assert state.status is ProcessStatus.COMPLETED


async def test_failure_callback_fails_the_process_and_later_ones_are_gone(stack: Stack) -> None:
    process_id = await stack.approved_and_sent()

    response = await stack.callback(
        stack.command_token(process_id, CommandName.TWO),
        {"status": "failed", "error": "disk full"},
    )
    assert response.status == 202
    state = await eventually(lambda: stack.state(process_id), lambda s: s.status.is_final)
    assert state.failure_reason is FailureReason.COMMAND_FAILED
    assert state.commands[CommandName.TWO].status == "failed"
    assert state.commands[CommandName.TWO].error == "disk full"
    await stack.closed(process_id)

    # The process has ended: a late result for command one is refused, told apart by describe.
    late = await stack.callback(
        stack.command_token(process_id, CommandName.ONE), {"status": "succeeded"}
    )
    body = await problem(late, 410, "closed")
    assert (body["command"], body["process_status"]) == ("command-one", "failed")
    assert (await stack.state(process_id)).commands[CommandName.ONE].status == "not-awaited"


async def test_a_callback_to_a_terminated_process_says_terminated(stack: Stack) -> None:
    process_id = await stack.approved_and_sent()
    await stack.client.get_workflow_handle(process_id).terminate("operator")

    late = await stack.callback(
        stack.command_token(process_id, CommandName.ONE), {"status": "succeeded"}
    )
    body = await problem(late, 410, "closed")
    # Its search attribute still says in-progress: nothing of the workflow ran to change it.
    assert (body["command"], body["process_status"]) == ("command-one", "terminated")
    assert "status terminated" in body["detail"]


async def test_a_different_repeated_callback_is_a_conflict(stack: Stack) -> None:
    process_id = await stack.approved_and_sent()
    token = stack.command_token(process_id, CommandName.ONE)
    assert (await stack.callback(token, {"status": "succeeded"})).status == 202
    await eventually(
        lambda: stack.state(process_id),
        lambda s: s.commands[CommandName.ONE].status == "succeeded",
    )

    again = await stack.callback(token, {"status": "failed", "error": "oops"})

    body = await problem(again, 409, "already-reported")
    assert body["delivered_status"] == "succeeded"
    assert (await stack.state(process_id)).commands[CommandName.ONE].status == "succeeded"
    # A retry of the very result already recorded is answered as the first time.
    replay = await stack.callback(token, {"status": "succeeded"})
    assert replay.status == 202
    assert (await replay.json())["duplicate"] is True


async def test_command_callbacks_need_no_worker(stack: Stack) -> None:
    task_queue = f"worker-outage-{uuid.uuid4()}"
    async with stack.worker(task_queue):
        process_id = await stack.approved_and_sent(task_queue)
    # The worker has stopped: nothing polls the task queue, so no query could be answered.

    for command in CommandName:
        response = await stack.callback(
            stack.command_token(process_id, command), {"status": "succeeded"}
        )
        assert response.status == 202, await response.text()
        assert (await response.json())["status"] == "accepted"

    async with stack.worker(task_queue):
        handle = stack.client.get_workflow_handle(process_id)
        await asyncio.wait_for(handle.result(), 60)
        state = await stack.state(process_id)
    assert state.status is ProcessStatus.COMPLETED
    assert all(c.status == "succeeded" for c in state.commands.values())


async def test_repeats_on_one_link_are_not_signalled_again(stack: Stack) -> None:
    process_id = await stack.approved_and_sent()
    token = stack.command_token(process_id, CommandName.ONE)
    # Key order differs; the content is the same result.
    same = [{"status": "succeeded", "result": {"a": 1, "b": 2}}] * 20
    same += [{"result": {"b": 2, "a": 1}, "status": "succeeded"}] * 20
    other = [{"status": "failed", "error": "late"}] * 10

    before = await stack.metric("callbacks_api_repeats_total", link="command", outcome="repeat")

    answers = await asyncio.gather(*(stack.callback(token, body) for body in same + other))
    answers += [await stack.callback(token, body) for body in same + other]

    statuses = [answer.status for answer in answers]
    assert statuses.count(202) == 2 * len(same)
    assert statuses.count(409) == 2 * len(other)
    duplicates = [(await a.json()).get("duplicate", False) for a in answers if a.status == 202]
    assert duplicates.count(False) == 1  # exactly one post was sent
    assert await stack.signals(process_id, "command_callback") == 1
    # Operators see the repeats answered from memory.
    after = await stack.metric("callbacks_api_repeats_total", link="command", outcome="repeat")
    assert after - before == 2 * len(same) - 1
    state = await eventually(
        lambda: stack.state(process_id),
        lambda s: s.commands[CommandName.ONE].status == "succeeded",
    )
    assert state.commands[CommandName.ONE].result == {"a": 1, "b": 2}


async def test_tokens_only_work_on_their_own_route(stack: Stack) -> None:
    process_id = await stack.approved_and_sent()
    command_token = stack.command_token(process_id, CommandName.ONE)
    other = await stack.start_process()
    approval_token = stack.approval_token(other)

    response, html = await stack.page(command_token)
    assert response.status == 403
    assert "not valid" in html
    await problem(
        await stack.callback(approval_token, {"status": "succeeded"}), 403, "invalid-token"
    )

    assert (await stack.state(process_id)).commands[CommandName.ONE].status == "sent"
    assert unchanged_approval(await stack.state(other))


async def test_bad_callback_bodies_are_refused(stack: Stack) -> None:
    process_id = await stack.approved_and_sent()
    token = stack.command_token(process_id, CommandName.ONE)
    url = f"/callbacks/{token}"
    json_headers = {"Content-Type": "application/json"}

    response = await stack.http.post(url, data=b"{not json", headers=json_headers)
    body = await problem(response, 400, "invalid-body")
    assert "not valid JSON" in body["detail"]
    bad_bodies: list[dict[str, Any]] = [
        {"status": "done"},
        {"status": "succeeded", "extra": 1},
        {"result": {}},
    ]
    for bad in bad_bodies:
        body = await problem(await stack.callback(token, bad), 400, "invalid-body")
        assert body["errors"]
    response = await stack.http.post(url, data=b'{"status": "succeeded"}')
    await problem(response, 415, "unsupported-media-type")
    too_big = b'{"status": "succeeded", "result": {"x": "' + b"a" * (64 * 1024) + b'"}}'
    response = await stack.http.post(url, data=too_big, headers=json_headers)
    await problem(response, 413, "too-large")
    response = await stack.http.get(url)
    await problem(response, 405, "method-not-allowed")
    assert response.headers["Allow"] == "POST"

    assert (await stack.state(process_id)).commands[CommandName.ONE].status == "sent"


async def test_non_json_numbers_and_terminal_escapes_are_refused_not_changed(
    stack: Stack,
) -> None:
    process_id = await stack.approved_and_sent()
    token = stack.command_token(process_id, CommandName.ONE)
    url = f"/callbacks/{token}"
    json_headers = {"Content-Type": "application/json"}

    # The JSON parser takes these; the workflow would have recorded null (or nothing) instead.
    for number in (b"NaN", b"Infinity", b"-Infinity", b"1e400", b"-1e400", b'[1, {"b": NaN}]'):
        data = b'{"status": "succeeded", "result": {"a": ' + number + b"}}"
        response = await stack.http.post(url, data=data, headers=json_headers)
        body = await problem(response, 400, "invalid-body")
        assert [e["loc"] for e in body["errors"]] == ["result.a"], number
        assert "finite" in body["errors"][0]["msg"]
    for error in ("\x1b[2Jcleared", "bell\x07", "nul\x00", "csi\x9b", "\u202eevil"):
        response = await stack.callback(token, {"status": "failed", "error": error})
        body = await problem(response, 400, "invalid-body")
        assert [e["loc"] for e in body["errors"]] == ["error"], error
        assert "control character" in body["errors"][0]["msg"]
    assert await stack.signals(process_id, COMMAND_CALLBACK_SIGNAL) == 0

    # What JSON can carry passes unchanged, line breaks in an error included.
    result = {"a": 1.5e308, "b": -0.0, "c": [1, 2**53], "text": "tab\tand\nline"}
    response = await stack.callback(token, {"status": "succeeded", "result": result})
    assert response.status == 202, await response.text()
    state = await eventually(
        lambda: stack.state(process_id),
        lambda s: s.commands[CommandName.ONE].status == "succeeded",
    )
    assert state.commands[CommandName.ONE].result == result
    other = stack.command_token(process_id, CommandName.TWO)
    response = await stack.callback(other, {"status": "failed", "error": "line one\r\n\tline two"})
    assert response.status == 202, await response.text()


async def test_a_body_that_cannot_be_decoded_is_400_in_one_log_line(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    """A Content-Encoding the body does not match: 400 on every route, the connection closed
    (what is left of it frames no request), one log line and no traceback, nothing signalled."""
    caplog.set_level(logging.INFO)
    process_id = await stack.approved_and_sent()
    command = stack.command_token(process_id, CommandName.ONE)
    approving = await stack.start_process()
    approval = stack.approval_token(approving)
    gzip_json = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
    gzip_form = {"Content-Type": FORM, "Content-Encoding": "gzip"}
    form = f"check={hidden_check_for(stack, approval)}&decision=approve".encode()

    async def post(path: str, headers: dict[str, str], body: bytes) -> RawResponse:
        assert stack.http.port is not None  # the server is started
        return await post_until_closed(stack.http.host, stack.http.port, path, headers, body)

    for path in (f"/callbacks/{command}", f"/callbacks/{command}/heartbeat"):
        for encoding, body in (
            ("gzip", b"notgzip"),
            ("gzip", b'{"status": "succeeded"}'),
            ("deflate", b"notdeflate"),
        ):
            headers = {**gzip_json, "Content-Encoding": encoding}
            response = await post(path, headers, body)
            assert response.status == 400, (path, body, response)
            assert response.headers["content-type"] == PROBLEM
            assert json.loads(response.body)["type"].endswith(":unreadable-body")
            assert response.headers["connection"] == "close"
    response = await post(f"/approvals/{approval}", gzip_form, b"notgzip")
    assert response.status == 400 and response.headers["content-type"].startswith("text/html")
    assert b"could not be read" in response.body
    # A form that is gzip indeed is taken (asked to close: a good request keeps it open).
    response = await post(
        f"/approvals/{approval}", {**gzip_form, "Connection": "close"}, gzip.compress(form)
    )
    assert response.status == 303

    ours = [r for r in caplog.records if r.name.startswith(("aiohttp", "callbacks_api"))]
    assert not [r for r in ours if r.exc_info or r.levelno >= logging.ERROR]
    refused = [r.getMessage() for r in ours if r.name == "callbacks_api.bodies"]
    assert len(refused) == 7
    assert all("\n" not in line and command not in line for line in refused)
    assert "Refused an unreadable body on POST /callbacks/{token} (" in refused[0]

    # A gzip bomb is refused by its decompressed size, as before.
    bomb = b'{"status": "succeeded", "result": {"x": "' + b"a" * (1 << 20) + b'"}}'
    too_large = await stack.http.post(
        f"/callbacks/{command}", data=gzip.compress(bomb), headers=gzip_json
    )
    await problem(too_large, 413, "too-large")
    assert await stack.signals(process_id, COMMAND_CALLBACK_SIGNAL) == 0
    assert await stack.signals(process_id, COMMAND_HEARTBEAT_SIGNAL) == 0
    assert (await stack.state(process_id)).commands[CommandName.ONE].status == "sent"


async def test_unknown_process_and_bad_token_on_callbacks(stack: Stack) -> None:
    deadline = datetime.now(UTC) + timedelta(hours=1)
    unknown = stack.signer.sign(
        f"process-{uuid.uuid4()}", CommandName.ONE.value, Purpose.COMMAND, deadline
    )
    await problem(await stack.callback(unknown, {"status": "succeeded"}), 404, "unknown-process")
    past = datetime.now(UTC) - timedelta(hours=1)
    expired = stack.signer.sign(
        f"process-{uuid.uuid4()}", CommandName.ONE.value, Purpose.COMMAND, past
    )
    await problem(await stack.callback(expired, {"status": "succeeded"}), 410, "expired")
    await problem(await stack.callback("x.y.z", {"status": "succeeded"}), 403, "invalid-token")


# ---------------------------------------------------------------------------------------------
# Health, readiness, metrics, Temporal down
# ---------------------------------------------------------------------------------------------


async def test_health_readiness_and_metrics(stack: Stack) -> None:
    assert (await stack.http.get("/healthz")).status == 200
    response = await stack.http.get("/readyz")
    assert response.status == 200
    assert await response.json() == {"status": "ready"}
    await stack.page("not-a-token")

    response = await stack.http.get("/metrics")
    text = await response.text()
    assert response.status == 200
    assert 'callbacks_api_requests_total{method="GET",route="/approvals/{token}",status="403"}' in (
        text
    )
    assert "not-a-token" not in text


async def test_temporal_unreachable_is_a_clear_503() -> None:
    client = await Client.connect(
        f"127.0.0.1:{free_loopback_port()}", data_converter=pydantic_data_converter, lazy=True
    )
    settings = make_settings()
    token = settings.signer.sign(
        f"process-{uuid.uuid4()}",
        APPROVAL_CALLBACK,
        Purpose.APPROVAL,
        datetime.now(UTC) + timedelta(hours=1),
    )
    server = TestServer(create_app(settings, client), host="127.0.0.1")
    async with TestClient(server) as http:
        assert (await http.get("/healthz")).status == 200
        await problem(await http.get("/readyz"), 503, "temporal-unavailable")
        response = await http.get(f"/approvals/{token}")
        html = await response.text()
        assert response.status == 503
        assert "could not be reached" in html
        assert "Traceback" not in html
        assert response.headers["Retry-After"]
        command = settings.signer.sign(
            f"process-{uuid.uuid4()}",
            CommandName.ONE.value,
            Purpose.COMMAND,
            datetime.now(UTC) + timedelta(hours=1),
        )
        response = await http.post(f"/callbacks/{command}", json={"status": "succeeded"})
        body = await problem(response, 503, "temporal-unavailable")
        assert "Nothing was recorded" in body["detail"]
        # Nothing left this API, as the first answer said: a different result on the link is
        # tried too, not held back as if the first might have landed.
        response = await http.post(f"/callbacks/{command}", json={"status": "failed"})
        body = await problem(response, 503, "temporal-unavailable")
        assert "Nothing was recorded" in body["detail"]


async def test_temporal_frozen_or_killed_after_the_api_connected_may_have_recorded() -> None:
    """Frozen (SIGSTOP), Temporal does not answer in time. Killed, once the API connected: the
    SDK retries the refused connection inside the call (UNAVAILABLE "tcp connect error"), so an
    earlier try may have reached the server. Both answer "may or may not", and a different
    result on the link is held back, as that answer implies."""
    env = await start_dev_server()
    try:
        port = env.client.service_client.config.target_host.rsplit(":", 1)[1]
        # This test's server: its argv names the port exactly (another server's may contain
        # it as a substring, e.g. in a longer port number).
        [server] = [
            pid
            for pid in children(os.getpid())
            if "start-dev" in command_line(pid)
            and any(
                flag == "--port" and value == port
                for flag, value in itertools.pairwise(command_line(pid))
            )
        ]
        settings = make_settings()
        command = settings.signer.sign(
            f"process-{uuid.uuid4()}",
            CommandName.ONE.value,
            Purpose.COMMAND,
            datetime.now(UTC) + timedelta(hours=1),
        )
        app = create_app(settings, env.client, temporal_timeout=timedelta(seconds=2))
        async with TestClient(TestServer(app, host="127.0.0.1")) as http:
            # Connected: the server itself answers that no such process exists.
            response = await http.post(f"/callbacks/{command}", json={"status": "succeeded"})
            await problem(response, 404, "unknown-process")

            # Frozen: no answer in time. An approval decided then may or may not be recorded.
            approval = settings.signer.sign(
                f"process-{uuid.uuid4()}",
                APPROVAL_CALLBACK,
                Purpose.APPROVAL,
                datetime.now(UTC) + timedelta(hours=1),
            )
            os.kill(server, signal.SIGSTOP)
            try:
                # kill() returns before every thread of the server has stopped: post once the
                # kernel says the whole process is stopped.
                async def server_stopped() -> bool:
                    return stopped(server)

                await eventually(server_stopped, bool)
                response = await http.post(
                    f"/approvals/{approval}",
                    data={
                        "check": form_check(settings.signing_keys[0].secret, approval),
                        "decision": "approve",
                    },
                )
                html = await response.text()
            finally:
                os.kill(server, signal.SIGCONT)
            assert response.status == 503, html
            assert "did not confirm it received this, so it may or may not have been" in html

            os.kill(server, signal.SIGKILL)

            async def server_alive() -> bool:
                return alive(server)

            await eventually(server_alive, lambda up: not up)

            response = await http.post(f"/callbacks/{command}", json={"status": "succeeded"})
            body = await problem(response, 503, "temporal-unavailable")
            assert "may or may not have been recorded" in body["detail"]
            response = await http.post(f"/callbacks/{command}", json={"status": "failed"})
            await problem(response, 503, "earlier-message-unconfirmed")
    finally:
        with contextlib.suppress(Exception):  # its server is already gone
            await env.shutdown()


async def test_an_overlong_request_line_gets_our_400(tmp_path: Path) -> None:
    """``python -m callbacks_api`` as deployed: aiohttp's own refusal would bypass our headers."""
    port = free_loopback_port()
    key = SigningKey(kid="k", secret=secrets.token_urlsafe(32))
    env = {
        **os.environ,
        "TEMPORAL_ADDRESS": f"127.0.0.1:{free_loopback_port()}",  # lazy: never reached here
        "APPROVAL_SIGNING_KEYS": f"{key.kid}:{key.secret}",
        "APPROVAL_API_PORT": str(port),
    }
    log_path = tmp_path / "api.log"
    with log_path.open("wb") as log:
        api = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "callbacks_api", cwd=ROOT, env=env, stdout=log, stderr=log
        )
    try:

        async def healthy() -> bool:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                assert api.returncode is None, log_path.read_text()
                return False
            writer.close()
            return True

        await eventually(healthy, bool, within=30)
        secret_part = "eyJ" + "A" * 9000  # as a token would be, too long for one line
        for request in (
            f"GET /approvals/{secret_part} HTTP/1.1\r\nHost: x\r\n\r\n",
            f"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {secret_part}\r\n\r\n",
        ):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(request.encode())
            raw = await asyncio.wait_for(reader.read(), 10)  # the API closes the connection
            writer.close()
            head, _, body = raw.decode().partition("\r\n\r\n")
            status_line, *header_lines = head.split("\r\n")
            headers = dict(line.split(": ", 1) for line in header_lines)
            assert status_line.split()[1] == "400", raw
            assert headers["Content-Type"] == PROBLEM
            for name, value in SECURITY_HEADERS.items():
                assert headers[name] == value, name
            document = json.loads(body)
            assert document["type"].endswith(":bad-request") and "8 KB" in document["detail"]
    finally:
        api.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(api.wait(), 30) == 0
    output = log_path.read_text()
    assert "Refused an unreadable request" in output
    assert "Traceback" not in output and "AAAA" not in output
