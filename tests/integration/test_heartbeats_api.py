"""``POST /callbacks/{token}/heartbeat`` over real HTTP, in front of a real ProcessWorkflow on the
dev server: what a downstream system hears, and what reaches the process's history.

AWS and HTTP activities are the workflow tests' fakes under the real names, so the command tokens
are signed here exactly as the send activity signs them. Each test has its own process and lock
resource.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient, TestServer
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from callbacks_api.app import create_app
from common.settings import Settings
from common.tokens import Purpose, SigningKey
from tests.support.waiting import eventually
from tests.workflow.fakes import Fakes
from workflows.messages import (
    APPROVAL_CALLBACK,
    APPROVAL_DECISION_SIGNAL,
    COMMAND_CALLBACK_SIGNAL,
    COMMAND_HEARTBEAT_SIGNAL,
    STATE_QUERY,
    ApprovalDecision,
    CommandName,
    ProcessInput,
    ProcessOptions,
    ProcessState,
)
from workflows.mutex import MutexWorkflow
from workflows.process import ProcessWorkflow

pytestmark = pytest.mark.integration

PROBLEM = "application/problem+json"


@dataclass
class Api:
    client: Client
    http: TestClient[Any, Any]
    settings: Settings
    fakes: Fakes
    task_queue: str

    async def sent_process(self, **options: Any) -> str:
        """A process that holds its lock with both commands sent, awaiting their callbacks."""
        process_id = f"process-{uuid.uuid4()}"
        handle = await self.client.start_workflow(
            ProcessWorkflow.run,
            ProcessInput(
                requested_by="grace",
                options=ProcessOptions(lock_resource=f"hb-{uuid.uuid4().hex[:8]}", **options),
            ),
            id=process_id,
            task_queue=self.task_queue,
        )
        await handle.signal(
            APPROVAL_DECISION_SIGNAL, ApprovalDecision(approved=True, decided_by="ada")
        )

        async def both_sent() -> bool:
            state = await handle.query(STATE_QUERY, result_type=ProcessState)
            return all(c.status == "sent" for c in state.commands.values())

        await eventually(both_sent, "both commands sent")
        return process_id

    def token(self, process_id: str, command: CommandName = CommandName.ONE) -> str:
        sent = self.fakes.commands[(process_id, command)]
        return self.settings.signer.sign(process_id, command.value, Purpose.COMMAND, sent.deadline)

    async def beat(self, token: str, body: Any = None, **kwargs: Any) -> ClientResponse:
        if body is not None:
            kwargs["json"] = body
        return await self.http.post(f"/callbacks/{token}/heartbeat", **kwargs)

    async def signals(self, process_id: str, name: str, at_least: int = 0) -> int:
        """How many ``name`` signals the history holds, once it holds ``at_least`` of them.

        A signal that arrives while a workflow task is in flight is written to the history when
        the task completes, in arrival order: once the last one shows, every earlier one does.
        """
        count = 0

        async def enough() -> bool:
            nonlocal count
            count = await self._count(process_id, name)
            return count >= at_least

        await eventually(enough, f"{at_least} {name} signals in the history")
        return count

    async def _count(self, process_id: str, name: str) -> int:
        count = 0
        async for event in self.client.get_workflow_handle(process_id).fetch_history_events():
            if event.HasField("workflow_execution_signaled_event_attributes"):
                count += event.workflow_execution_signaled_event_attributes.signal_name == name
        return count


@pytest.fixture(scope="module")
async def api(dev_env: WorkflowEnvironment) -> AsyncIterator[Api]:
    key = SigningKey(kid=f"k-{uuid.uuid4().hex[:6]}", secret=secrets.token_urlsafe(32))
    # A long interval: a second heartbeat in a test is always "soon".
    settings = Settings(signing_keys=(key,), heartbeat_min_interval=timedelta(minutes=10))
    fakes = Fakes()
    task_queue = f"heartbeats-api-{uuid.uuid4()}"
    async with Worker(
        dev_env.client,
        task_queue=task_queue,
        workflows=[ProcessWorkflow, MutexWorkflow],
        activities=fakes.activities(),
    ):
        server = TestServer(create_app(settings, dev_env.client), host="127.0.0.1")
        async with TestClient(server) as http:
            yield Api(dev_env.client, http, settings, fakes, task_queue)


async def problem(response: ClientResponse, status: int, kind: str) -> dict[str, Any]:
    assert response.status == status, await response.text()
    assert response.content_type == PROBLEM
    body: dict[str, Any] = await response.json(content_type=PROBLEM)
    assert body["type"].endswith(f":{kind}") and body["detail"]
    return body


async def test_a_heartbeat_is_signalled_repeats_coalesce_and_after_the_result_it_is_409(
    api: Api,
) -> None:
    process_id = await api.sent_process()
    token = api.token(process_id)

    first = await api.beat(token, {"progress": {"percent": 40, "step": "copying"}})
    assert first.status == 202, await first.text()
    assert await first.json() == {
        "status": "accepted",
        "process_id": process_id,
        "command": "command-one",
    }
    # Within the interval: answered, not sent.
    again = await api.beat(token, {"progress": {"percent": 41}})
    assert again.status == 202
    assert (await again.json())["coalesced"] is True
    # Another command's link has its own interval.
    other = await api.beat(api.token(process_id, CommandName.TWO))
    assert other.status == 202 and "coalesced" not in await other.json()
    assert await api.signals(process_id, COMMAND_HEARTBEAT_SIGNAL, at_least=2) == 2

    result = await api.http.post(f"/callbacks/{token}", json={"status": "succeeded"})
    assert result.status == 202
    late = await api.beat(token, {"progress": {"percent": 100}})
    body = await problem(late, 409, "already-reported")
    assert (body["command"], body["delivered_status"]) == ("command-one", "succeeded")
    # Once the result shows in the history, so would the late heartbeat, had it been sent.
    await api.signals(process_id, COMMAND_CALLBACK_SIGNAL, at_least=1)
    assert await api.signals(process_id, COMMAND_HEARTBEAT_SIGNAL) == 2


async def test_bad_heartbeats_are_refused_and_nothing_is_signalled(api: Api) -> None:
    process_id = await api.sent_process()
    token = api.token(process_id)

    await problem(await api.beat(token, {"progress": 1, "eta": 5}), 400, "invalid-body")
    await problem(
        await api.beat(token, data=b"{not json", headers={"Content-Type": "application/json"}),
        400,
        "invalid-body",
    )
    # Not JSON numbers, though the parser takes them: the history would hold null instead.
    for progress in (b"NaN", b"Infinity", b"-Infinity", b"1e400", b'{"percent": NaN}'):
        data = b'{"progress": ' + progress + b"}"
        response = await api.beat(token, data=data, headers={"Content-Type": "application/json"})
        body = await problem(response, 400, "invalid-body")
        assert body["errors"][0]["loc"] == "progress" and "finite" in body["errors"][0]["msg"]
    await problem(
        await api.beat(token, data=b"progress=1", headers={"Content-Type": "text/plain"}),
        415,
        "unsupported-media-type",
    )
    big = {"progress": "x" * api.settings.max_heartbeat_bytes}
    await problem(await api.beat(token, big), 413, "too-large")

    async def chunked() -> AsyncIterator[bytes]:  # no Content-Length: measured after reading
        yield b'{"progress": "'
        yield b"x" * api.settings.max_heartbeat_bytes
        yield b'"}'

    await problem(
        await api.beat(token, data=chunked(), headers={"Content-Type": "application/json"}),
        413,
        "too-large",
    )
    await problem(await api.http.get(f"/callbacks/{token}/heartbeat"), 405, "method-not-allowed")
    await problem(await api.beat(token[:-2] + "xx"), 403, "invalid-token")
    approval = api.settings.signer.sign(
        process_id, APPROVAL_CALLBACK, Purpose.APPROVAL, datetime.now(UTC) + timedelta(hours=1)
    )
    await problem(await api.beat(approval), 403, "invalid-token")
    expired = api.settings.signer.sign(
        process_id, "command-one", Purpose.COMMAND, datetime.now(UTC) - timedelta(hours=1)
    )
    await problem(await api.beat(expired), 410, "expired")

    # A body-less heartbeat is fine; it is the only one in the history.
    assert (await api.beat(token)).status == 202
    assert await api.signals(process_id, COMMAND_HEARTBEAT_SIGNAL, at_least=1) == 1


async def test_heartbeats_to_an_unknown_or_closed_process(api: Api) -> None:
    unknown = f"process-{uuid.uuid4()}"
    token = api.settings.signer.sign(
        unknown, "command-two", Purpose.COMMAND, datetime.now(UTC) + timedelta(hours=1)
    )
    body = await problem(await api.beat(token), 404, "unknown-process")
    assert body["command"] == "command-two"

    process_id = await api.sent_process()
    token = api.token(process_id)
    handle = api.client.get_workflow_handle(process_id)
    await handle.terminate("operator")
    await eventually(lambda: _closed(api.client, process_id), "the process closed", within=15)
    body = await problem(await api.beat(token), 410, "closed")
    assert body["command"] == "command-one"
    # A heartbeat that was not sent is not remembered: the next one is tried again, not coalesced.
    await problem(await api.beat(token), 410, "closed")


async def _closed(client: Client, process_id: str) -> bool:
    description = await client.get_workflow_handle(process_id).describe()
    return description.status != WorkflowExecutionStatus.RUNNING
