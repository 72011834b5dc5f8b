"""Linear retry delays and ``Retry-After``: the original's retry timing on Temporal."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from temporalio.common import RetryPolicy
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.commands import RETRY_AFTER_CAP, retry_after
from activities.retry import linear_delay_error

TWO_MINUTES = timedelta(minutes=2)


def _replace(
    err: BaseException,
    attempt: int,
    policy: RetryPolicy | None = None,
    interval: timedelta | None = TWO_MINUTES,
) -> BaseException:
    """``linear_delay_error`` as seen from the given attempt of an activity.

    ``interval`` is what the workflow's header carries (None: no header was sent).
    """
    env = ActivityEnvironment()
    env.info = replace(env.info, attempt=attempt, retry_policy=policy)
    return env.run(linear_delay_error, err, interval)


def _policy() -> RetryPolicy:
    return RetryPolicy(initial_interval=TWO_MINUTES, maximum_attempts=3)


@pytest.mark.parametrize("attempt", [1, 2])
def test_delay_grows_linearly_with_the_attempt(attempt: int) -> None:
    replaced = _replace(RuntimeError("dynamodb is down"), attempt, _policy())
    assert isinstance(replaced, ApplicationError)
    assert replaced.next_retry_delay == TWO_MINUTES * attempt
    assert replaced.type == "RuntimeError"
    assert replaced.message == "dynamodb is down"
    assert not replaced.non_retryable


def test_application_error_keeps_its_type_and_details() -> None:
    original = ApplicationError("HTTP 503", 503, type="HttpStatusError")
    replaced = _replace(original, 2, _policy())
    assert isinstance(replaced, ApplicationError)
    assert (replaced.type, replaced.details, replaced.message) == (
        "HttpStatusError",
        (503,),
        "HTTP 503",
    )
    assert replaced.next_retry_delay == 2 * TWO_MINUTES


def test_error_without_message_is_named_by_its_type() -> None:
    replaced = _replace(TimeoutError(), 1, _policy())
    assert isinstance(replaced, ApplicationError)
    assert replaced.message == "TimeoutError"


def test_maximum_interval_caps_the_delay() -> None:
    policy = RetryPolicy(
        initial_interval=TWO_MINUTES, maximum_interval=timedelta(minutes=3), maximum_attempts=5
    )
    replaced = _replace(RuntimeError("x"), 4, policy)
    assert isinstance(replaced, ApplicationError)
    assert replaced.next_retry_delay == timedelta(minutes=3)


def test_without_the_header_an_exponential_policy_stays_exponential() -> None:
    """The server hands the policy to the activity; its interval alone must not linearise it."""
    exponential = RetryPolicy(initial_interval=TWO_MINUTES, backoff_coefficient=2.0)
    err = RuntimeError("dynamodb is down")
    assert _replace(err, 3, exponential, interval=None) is err


@pytest.mark.parametrize(
    ("err", "attempt", "policy"),
    [
        pytest.param(RuntimeError("x"), 3, _policy(), id="last-attempt"),
        pytest.param(
            ApplicationError("bad request", non_retryable=True), 1, _policy(), id="non-retryable"
        ),
        pytest.param(
            ApplicationError("busy", next_retry_delay=timedelta(seconds=7)),
            1,
            _policy(),
            id="retry-after-wins",
        ),
        pytest.param(asyncio.CancelledError(), 1, _policy(), id="cancelled"),
    ],
)
def test_errors_passed_through_untouched(
    err: BaseException, attempt: int, policy: RetryPolicy | None
) -> None:
    assert _replace(err, attempt, policy) is err


def test_unlimited_attempts_keep_growing() -> None:
    policy = RetryPolicy(initial_interval=TWO_MINUTES, maximum_attempts=0)
    replaced = _replace(RuntimeError("x"), 10, policy)
    assert isinstance(replaced, ApplicationError)
    assert replaced.next_retry_delay == 10 * TWO_MINUTES


NOW = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("header", "delay"),
    [
        (None, None),
        ("7", timedelta(seconds=7)),
        (" 120 ", timedelta(minutes=2)),
        ("0", timedelta(seconds=1)),  # zero would read as "no delay given"
        ("Tue, 01 Jan 2030 12:00:30 GMT", timedelta(seconds=30)),
        ("Tue, 01 Jan 2030 11:00:00 GMT", timedelta(seconds=1)),  # already past
        ("soon", None),
        ("-5", None),
        ("", None),
        # Absurd delays are capped, never an exception (OverflowError, int()'s digit limit).
        ("86400", RETRY_AFTER_CAP),
        ("86401", RETRY_AFTER_CAP),
        ("99999999999999999999", RETRY_AFTER_CAP),
        ("9" * 5000, RETRY_AFTER_CAP),
        ("Fri, 31 Dec 9999 23:59:59 GMT", RETRY_AFTER_CAP),
        ("\u00b2", None),  # a digit to str.isdigit(), not to int()
    ],
)
def test_retry_after_header(header: str | None, delay: timedelta | None) -> None:
    assert retry_after(header, now=NOW) == delay
