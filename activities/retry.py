"""Linear retry delays (``initial_interval x attempt``), as the original's retry strategies.

Temporal's retry policy is exponential. The original waited ``delay x attempt``; this interceptor
reproduces that from the calling workflow's own ``RetryPolicy``, so each call site states its delay
in one place. The workflow side copies the initial interval of a policy without backoff
(coefficient 1.0) into a header of the activity call (not every server hands the policy to the
activity: the time-skipping server does not); the activity side turns a retryable error into
one with ``next_retry_delay = interval x attempt``. Only calls with that header are touched:
exponential policies keep their backoff. An error that already names its delay
(``Retry-After``) or is non-retryable passes through.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from temporalio import activity
from temporalio.converter import PayloadConverter
from temporalio.exceptions import ApplicationError
from temporalio.worker import (
    ActivityInboundInterceptor,
    ExecuteActivityInput,
    Interceptor,
    StartActivityInput,
    WorkflowInboundInterceptor,
    WorkflowInterceptorClassInput,
    WorkflowOutboundInterceptor,
)

RETRY_INTERVAL_HEADER = "linear-retry-interval-seconds"


def linear_delay_error(err: BaseException, interval: timedelta | None) -> BaseException:
    """The error to raise instead of ``err`` so the next attempt waits ``interval x attempt``.

    ``interval`` is the header the calling workflow sets for a linear policy only. Without it the
    error passes untouched and the server's own backoff applies: an exponential policy stays
    exponential. (Falling back to the policy's initial interval, as this once did, turned every
    exponential policy linear on a server that hands the policy to the activity, so a cleanup
    meant to outlast an outage of minutes gave up within one.)
    """
    if interval is None or isinstance(err, asyncio.CancelledError):
        return err
    info = activity.info()
    policy = info.retry_policy
    if isinstance(err, ApplicationError) and (err.non_retryable or err.next_retry_delay):
        return err
    if policy is not None and policy.maximum_attempts and info.attempt >= policy.maximum_attempts:
        return err
    delay = interval * info.attempt
    if policy is not None and policy.maximum_interval is not None:
        delay = min(delay, policy.maximum_interval)
    if isinstance(err, ApplicationError):
        return ApplicationError(err.message, *err.details, type=err.type, next_retry_delay=delay)
    return ApplicationError(
        str(err) or type(err).__name__, type=type(err).__name__, next_retry_delay=delay
    )


class _LinearRetryInbound(ActivityInboundInterceptor):
    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        try:
            return await self.next.execute_activity(input)
        except Exception as err:
            replacement = linear_delay_error(err, _interval_from(input.headers))
            if replacement is err:
                raise
            raise replacement from err


class _RetryIntervalOutbound(WorkflowOutboundInterceptor):
    def start_activity(self, input: StartActivityInput) -> Any:
        # Only a policy without backoff asks for linear delays; exponential ones stay as they are.
        policy = input.retry_policy
        if policy is not None and policy.backoff_coefficient == 1.0:
            seconds = policy.initial_interval.total_seconds()
            input.headers = {
                **input.headers,
                RETRY_INTERVAL_HEADER: PayloadConverter.default.to_payload(seconds),
            }
        return self.next.start_activity(input)


class _RetryIntervalInbound(WorkflowInboundInterceptor):
    def init(self, outbound: WorkflowOutboundInterceptor) -> None:
        super().init(_RetryIntervalOutbound(outbound))


def _interval_from(headers: Any) -> timedelta | None:
    payload = headers.get(RETRY_INTERVAL_HEADER) if headers else None
    if payload is None:
        return None
    return timedelta(seconds=float(PayloadConverter.default.from_payload(payload, float)))


class LinearRetryInterceptor(Interceptor):
    """Register on the worker: it covers both the workflow call and the activity attempt."""

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _LinearRetryInbound(super().intercept_activity(next))

    def workflow_interceptor_class(
        self, input: WorkflowInterceptorClassInput
    ) -> type[WorkflowInboundInterceptor]:
        return _RetryIntervalInbound
