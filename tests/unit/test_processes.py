"""How the API answers each way Temporal can refuse a signal: try again only when it may help."""

from __future__ import annotations

from datetime import timedelta
from types import SimpleNamespace
from typing import Any, cast

import pytest
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from callbacks_api.approvals import Approvals
from callbacks_api.deliveries import RecentDeliveries
from callbacks_api.problems import Problem
from callbacks_api.processes import Processes
from common.settings import Settings
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

    async def query(self, *args: Any, **kwargs: Any) -> None:
        raise self.error

    async def describe(self, *args: Any, **kwargs: Any) -> None:
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
        RPCStatusCode.FAILED_PRECONDITION,  # for a signal; a read is only "not ready" (below)
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


class UnconnectedClient(RefusingClient):
    """A lazy client whose signal fails with the RuntimeError the SDK raises before sending."""

    def __init__(self, message: str) -> None:
        super().__init__(RPCStatusCode.UNAVAILABLE, "unused")
        self.runtime_error = RuntimeError(message)

    async def signal(self, *args: Any, **kwargs: Any) -> None:
        self.signals += 1
        raise self.runtime_error


async def test_a_signal_that_could_not_connect_says_nothing_was_recorded_for_sure() -> None:
    # temporalio 1.35's words, from a lazy client pointed at a port nobody listens on.
    refused = "Failed client connect: Server connection error: ... ConnectionRefused ..."
    processes = Processes(cast(Client, UnconnectedClient(refused)))
    with pytest.raises(Problem) as failed:
        await processes.signal("process-1", CommandCallback(command="c", status="succeeded"))
    assert (failed.value.status, failed.value.kind) == (503, "temporal-unavailable")
    assert failed.value.nothing_recorded and "Nothing was recorded" in failed.value.detail


async def test_any_other_runtime_error_of_a_signal_may_have_landed() -> None:
    processes = Processes(cast(Client, UnconnectedClient("something else went wrong")))
    with pytest.raises(Problem) as failed:
        await processes.signal("process-1", CommandCallback(command="c", status="succeeded"))
    assert not failed.value.nothing_recorded and "may or may not" in failed.value.detail


async def test_an_uncertain_signal_is_not_sure_nothing_was_recorded() -> None:
    # sdk-core retries UNAVAILABLE ("tcp connect error") inside the call: an earlier try may
    # have reached the server, whatever the last one met.
    assert not (await refusal_of(RPCStatusCode.UNAVAILABLE, "tcp connect error")).nothing_recorded


# The dev server's words (temporal 1.32) for a query while the workflow task keeps failing.
NOT_READY = "Unable to query workflow due to Workflow Task in failed state."


async def test_a_read_of_a_process_whose_workflow_task_keeps_failing_is_503_not_ready() -> None:
    # A crash-looping or stopped worker, a bad deploy: it passes once a worker runs the task.
    processes = Processes(
        cast(Client, RefusingClient(RPCStatusCode.FAILED_PRECONDITION, NOT_READY))
    )
    for read in (processes.state("process-1"), processes.describe("process-1")):
        with pytest.raises(Problem) as refused:
            await read
        assert (refused.value.status, refused.value.kind) == (503, "not-ready")
        assert refused.value.headers == {"Retry-After": "5"}


async def test_a_refused_read_does_not_say_nothing_was_recorded() -> None:
    # Only a signal records anything; a read refused for good must not deny what was signalled.
    processes = Processes(cast(Client, RefusingClient(RPCStatusCode.PERMISSION_DENIED, "no")))
    with pytest.raises(Problem) as refused:
        await processes.state("process-1")
    assert (refused.value.status, refused.value.kind) == (500, "temporal-refused")
    assert "recorded" not in refused.value.detail


@pytest.mark.parametrize(
    "status", [RPCStatusCode.FAILED_PRECONDITION, RPCStatusCode.PERMISSION_DENIED]
)
async def test_after_a_delivered_decision_any_failed_read_is_outcome_unknown(
    status: RPCStatusCode,
) -> None:
    # The signal was accepted, so the page says "delivered", never "nothing was recorded".
    processes = Processes(cast(Client, RefusingClient(status, NOT_READY)))

    async def polled(task_queue: str) -> bool:
        return True  # a worker polls: the page waits for the query's answer

    processes.polled = polled  # type: ignore[method-assign]
    approvals = Approvals(
        cast(Settings, SimpleNamespace(task_queue="approvals")),
        processes,
        RecentDeliveries(),
        decision_wait=timedelta(seconds=5),
    )
    with pytest.raises(Problem) as unknown:
        await approvals._read_after_decision("process-1")
    assert (unknown.value.status, unknown.value.kind) == (503, "outcome-unknown")
    assert "was delivered" in unknown.value.detail
