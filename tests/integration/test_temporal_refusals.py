"""What the callbacks API answers when a real Temporal server refuses a signal for good.

A dev server of its own, with two of its limits set low: the signals one run takes
(``history.maximumSignalsPerExecution``) and the size of one payload (``limit.blobSize.error``).
Both refusals come back as INVALID_ARGUMENT; sending again meets them again, so the answer must
not be "503, try again" (it was, for every error but NOT_FOUND), and nothing is recorded.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from temporalio.testing import WorkflowEnvironment

from callbacks_api.app import create_app
from common.settings import Settings
from common.tokens import Purpose, SigningKey
from tests.support.temporal import start_dev_server
from workflows.messages import CommandName, ProcessInput, ProcessOptions
from workflows.process import ProcessWorkflow

pytestmark = pytest.mark.integration

SIGNALS_PER_RUN = 1
PAYLOAD_LIMIT = 6_000  # bytes; a process's input is well below, a callback can be far above


@pytest.fixture(scope="module")
async def limited_env() -> AsyncIterator[WorkflowEnvironment]:
    async with await start_dev_server(
        "--dynamic-config-value",
        f"history.maximumSignalsPerExecution={SIGNALS_PER_RUN}",
        "--dynamic-config-value",
        f"limit.blobSize.error={PAYLOAD_LIMIT}",
        "--dynamic-config-value",
        f"limit.blobSize.warn={PAYLOAD_LIMIT // 2}",
    ) as env:
        yield env


async def test_refusals_for_good_are_told_apart_from_try_again(
    limited_env: WorkflowEnvironment,
) -> None:
    client = limited_env.client
    settings = Settings(
        signing_keys=(SigningKey(kid="refusals", secret=secrets.token_urlsafe(32)),)
    )
    # No worker: the signals are the API's alone, and the server answers them all by itself.
    process_id = f"process-{uuid.uuid4()}"
    handle = await client.start_workflow(
        ProcessWorkflow.run,
        ProcessInput(requested_by="Grace", options=ProcessOptions(lock_resource="refusals")),
        id=process_id,
        task_queue=f"nobody-{uuid.uuid4()}",
    )
    deadline = datetime.now(UTC) + timedelta(hours=1)

    def link(command: CommandName) -> str:
        token = settings.signer.sign(process_id, command.value, Purpose.COMMAND, deadline)
        return f"/callbacks/{token}"

    async def signals() -> list[str]:
        return [
            event.workflow_execution_signaled_event_attributes.signal_name
            async for event in handle.fetch_history_events()
            if event.HasField("workflow_execution_signaled_event_attributes")
        ]

    async def answer(command: CommandName, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        response = await http.post(link(command), json=body)
        if response.status >= 400:  # refused for good: nothing tells the client to come back
            assert "Retry-After" not in response.headers
        return response.status, await response.json(content_type=None)

    async with TestClient(TestServer(create_app(settings, client), host="127.0.0.1")) as http:
        # Over the payload limit (the API's own limit, 64 KiB, is higher): 413, not sent.
        big = {"status": "succeeded", "result": {"log": "x" * (2 * PAYLOAD_LIMIT)}}
        status, body = await answer(CommandName.ONE, big)
        assert (status, body["type"].rsplit(":", 1)[-1]) == (413, "too-large"), body
        assert "nothing was recorded" in body["detail"]
        assert await signals() == []

        # The one signal the run takes is taken; the next is refused for good: 409.
        status, body = await answer(CommandName.ONE, {"status": "succeeded"})
        assert status == 202, body
        status, body = await answer(CommandName.TWO, {"status": "succeeded"})
        assert (status, body["type"].rsplit(":", 1)[-1]) == (409, "signal-limit"), body
        assert "will not help" in body["detail"]
        assert await signals() == ["command_callback"]
