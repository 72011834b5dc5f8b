"""How the API answers each way Temporal can refuse a signal: try again only when it may help."""

from __future__ import annotations

from typing import Any, cast

import pytest
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from callbacks_api.problems import Problem
from callbacks_api.processes import Processes
from workflows.messages import CommandCallback


class RefusingClient:
    """A Temporal client whose every signal fails with one RPC error."""

    def __init__(self, status: RPCStatusCode, message: str) -> None:
        self.error = RPCError(message, status, b"")
        self.signals = 0

    def get_workflow_handle(self, workflow_id: str) -> RefusingClient:
        return self

    async def signal(self, *args: Any, **kwargs: Any) -> None:
        self.signals += 1
        raise self.error


async def refusal_of(status: RPCStatusCode, message: str = "refused") -> Problem:
    processes = Processes(cast(Client, RefusingClient(status, message)))
    with pytest.raises(Problem) as refused:
        await processes.signal("process-1", CommandCallback(command="c", status="succeeded"))
    return refused.value


@pytest.mark.parametrize(
    "status",
    [
        RPCStatusCode.UNAVAILABLE,
        RPCStatusCode.DEADLINE_EXCEEDED,
        RPCStatusCode.RESOURCE_EXHAUSTED,
        RPCStatusCode.ABORTED,
        RPCStatusCode.CANCELLED,
        RPCStatusCode.INTERNAL,
        RPCStatusCode.UNKNOWN,
    ],
)
async def test_a_transient_failure_is_503_with_retry_after(status: RPCStatusCode) -> None:
    problem = await refusal_of(status)
    assert (problem.status, problem.kind) == (503, "temporal-unavailable")
    assert problem.headers == {"Retry-After": "5"}
    assert "may or may not" in problem.detail


async def test_the_signal_limit_is_409_and_says_another_try_will_not_help() -> None:
    # The dev server's words (tests/integration/test_temporal_refusals.py meets them for real).
    message = "exceeded workflow execution limit for signal events"
    problem = await refusal_of(RPCStatusCode.INVALID_ARGUMENT, message)
    assert (problem.status, problem.kind) == (409, "signal-limit")
    assert "Retry-After" not in problem.headers
    assert "not recorded" in problem.detail and "will not help" in problem.detail


async def test_a_message_over_the_servers_payload_limit_is_413() -> None:
    problem = await refusal_of(RPCStatusCode.INVALID_ARGUMENT, "Blob data size exceeds limit.")
    assert (problem.status, problem.kind) == (413, "too-large")
    assert "Retry-After" not in problem.headers


@pytest.mark.parametrize(
    "status",
    [
        RPCStatusCode.INVALID_ARGUMENT,
        RPCStatusCode.PERMISSION_DENIED,
        RPCStatusCode.UNAUTHENTICATED,
        RPCStatusCode.FAILED_PRECONDITION,
        RPCStatusCode.UNIMPLEMENTED,
        RPCStatusCode.DATA_LOSS,
    ],
)
async def test_any_other_refusal_is_500_and_not_try_again(
    status: RPCStatusCode, caplog: pytest.LogCaptureFixture
) -> None:
    problem = await refusal_of(status, "WorkflowId is not set on request.")
    assert (problem.status, problem.kind) == (500, "temporal-refused")
    assert "Retry-After" not in problem.headers
    assert "nothing was recorded" in problem.detail
    # The cause is in the log, for the operator; the answer does not echo the server.
    assert "WorkflowId is not set on request." in caplog.text
    assert status.name in caplog.text
