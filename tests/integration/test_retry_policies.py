"""Retry policies on the real dev server, which (unlike the time-skipping one) hands each activity
its retry policy: the linear-retry interceptor must touch only the calls that ask for it.

Read from the history, as an operator would: an attempt's ``last_failure`` carries a
``next_retry_delay`` only when the interceptor replaced the server's own backoff.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from datetime import timedelta

import pytest
from temporalio import activity, workflow
from temporalio.api.enums.v1 import EventType
from temporalio.common import RetryPolicy
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.retry import LinearRetryInterceptor

pytestmark = pytest.mark.integration

FAILURES_BEFORE_SUCCESS = 2
_failures: dict[str, int] = defaultdict(int)


@activity.defn(name="flaky")
async def flaky(key: str) -> int:
    """Fails twice per key (like a DynamoDB outage), then succeeds; returns the attempt."""
    if _failures[key] < FAILURES_BEFORE_SUCCESS:
        _failures[key] += 1
        raise RuntimeError(f"outage, attempt {activity.info().attempt}")
    return activity.info().attempt


@workflow.defn(sandboxed=False)
class CallsFlaky:
    @workflow.run
    async def run(self, backoff: float) -> int:
        result: int = await workflow.execute_activity(
            flaky,
            workflow.info().workflow_id,
            start_to_close_timeout=timedelta(seconds=10),
            retry_policy=RetryPolicy(
                initial_interval=timedelta(milliseconds=100),
                backoff_coefficient=backoff,
                maximum_attempts=5,
            ),
        )
        return result


async def _last_retry_delay(env: WorkflowEnvironment, backoff: float) -> timedelta | None:
    """Run the workflow; the ``next_retry_delay`` the last failed attempt asked for, if any."""
    task_queue = f"tq-{uuid.uuid4()}"
    async with Worker(
        env.client,
        task_queue=task_queue,
        workflows=[CallsFlaky],
        activities=[flaky],
        interceptors=[LinearRetryInterceptor()],
    ):
        handle = await env.client.start_workflow(
            CallsFlaky.run, backoff, id=f"flaky-{uuid.uuid4()}", task_queue=task_queue
        )
        assert await handle.result() == FAILURES_BEFORE_SUCCESS + 1
    history = await handle.fetch_history()
    (started,) = [
        e.activity_task_started_event_attributes
        for e in history.events
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED
    ]
    failure = started.last_failure.application_failure_info
    assert "outage" in started.last_failure.message
    return failure.next_retry_delay.ToTimedelta() if failure.HasField("next_retry_delay") else None


async def test_an_exponential_policy_keeps_the_servers_backoff(dev_env: WorkflowEnvironment):
    assert await _last_retry_delay(dev_env, backoff=2.0) is None


async def test_a_linear_policy_waits_interval_times_attempt(dev_env: WorkflowEnvironment):
    # The second attempt failed: the third waits 100 ms x 2.
    assert await _last_retry_delay(dev_env, backoff=1.0) == timedelta(milliseconds=200)
