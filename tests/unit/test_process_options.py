"""Process options in range: ``ProcessOptions.check()`` (the starters) refuses a duration or an
attempt count out of range in one line, and the workflow runs with whatever it accepts.

A 3,000,000-day approval timeout once passed the check; its process then failed a workflow task
on every retry (``now + approval_timeout`` past the year 9999), never failed, and its record
stayed pending. The workflow now fails such a process cleanly (patch
``process-options-in-range``, tests/workflow/test_options_out_of_range.py); the starters answer
first.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from workflows.messages import (
    LONGEST_OPTION,
    MOST_ATTEMPTS,
    ApprovalPolicy,
    InvalidProcessOptions,
    ProcessOptions,
)
from workflows.process import RANGE_LONGEST, RANGE_MOST_ATTEMPTS, options_out_of_range

# Every duration option, by the name the messages give it.
DURATIONS = [
    "approval_timeout",
    "lock_timeout",
    "command_timeout",
    "aws_retry.delay",
    "http_retry.delay",
    "max_retry_after",
    "activity_attempt_timeout",
    "command_heartbeat_timeout",
    "lease_timeout",
    "send_heartbeat_timeout",
    "final_write_max_interval",
    "approval.remind_every",
]
YEAR = timedelta(days=365)


def with_option(name: str, value: Any, options: ProcessOptions | None = None) -> ProcessOptions:
    """``options`` (the defaults) with one option set; ``a.b`` sets ``b`` of the part ``a``."""
    options = options or ProcessOptions()
    part, _, field = name.partition(".")
    if not field:
        return options.model_copy(update={part: value})
    inner = getattr(options, part)
    return options.model_copy(update={part: inner.model_copy(update={field: value})})


def refusal(options: ProcessOptions) -> str:
    with pytest.raises(InvalidProcessOptions) as error:
        options.check()
    message = str(error.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("name", DURATIONS)
def test_a_duration_longer_than_a_year_is_refused_naming_it(name: str) -> None:
    message = refusal(with_option(name, YEAR + timedelta(seconds=1)))
    assert message == (
        f"{name} 365 days, 0:00:01 is longer than 365 days, 0:00:00, the longest a process "
        "option may be; shorten it"
    )


@pytest.mark.parametrize("name", DURATIONS)
def test_the_largest_durations_are_refused_at_once_not_overflowing(name: str) -> None:
    """timedelta.max in any option: a one-line refusal, never the OverflowError of the sums."""
    assert refusal(with_option(name, timedelta.max)).startswith(f"{name} 999999999 days")


@pytest.mark.parametrize("name", DURATIONS)
def test_a_negative_duration_is_refused(name: str) -> None:
    assert refusal(with_option(name, timedelta(seconds=-1))) == (
        f"{name} -1 day, 23:59:59 is negative"
    )


def test_an_attempt_timeout_of_zero_and_a_final_interval_below_a_second_are_refused() -> None:
    assert refusal(with_option("activity_attempt_timeout", timedelta(0))) == (
        "activity_attempt_timeout must be longer than 0"
    )
    assert refusal(with_option("final_write_max_interval", timedelta(milliseconds=500))) == (
        "final_write_max_interval 0:00:00.500000 is shorter than 0:00:01, the final writes' "
        "first retry interval"
    )


@pytest.mark.parametrize("name", ["aws_retry", "http_retry"])
@pytest.mark.parametrize("attempts", [MOST_ATTEMPTS + 1, 10**7, 2**62])
def test_too_many_attempts_are_refused_without_counting_them(name: str, attempts: int) -> None:
    """10**7 attempts once made the send budget's sum loop for minutes."""
    assert refusal(with_option(f"{name}.max_attempts", attempts)) == (
        f"{name}.max_attempts {attempts} is more than 100, the most a retry may make; lower it"
    )


def test_a_year_long_approval_wait_is_fine() -> None:
    ProcessOptions(approval_timeout=YEAR, approval=ApprovalPolicy(remind_every=YEAR)).check()


def test_the_starters_bounds_lie_within_the_workflows() -> None:
    """What the starters accept the workflow runs with: their bounds may go down, never past
    the workflow's frozen range."""
    assert LONGEST_OPTION <= RANGE_LONGEST
    assert MOST_ATTEMPTS <= RANGE_MOST_ATTEMPTS


@pytest.mark.parametrize("name", DURATIONS)
@pytest.mark.parametrize(
    "value",
    [timedelta(0), timedelta(seconds=1), timedelta(hours=1), YEAR, YEAR + timedelta(1), -YEAR],
)
def test_every_duration_the_check_accepts_is_in_the_workflows_range(
    name: str, value: timedelta
) -> None:
    options = with_option(name, value)
    try:
        options._check_ranges()
    except InvalidProcessOptions:
        return
    assert options_out_of_range(options) is None


def test_the_workflows_range_names_what_is_out_of_it() -> None:
    assert options_out_of_range(ProcessOptions()) is None
    huge = with_option("approval_timeout", timedelta(days=3_000_000))
    assert options_out_of_range(huge) == (
        "approval_timeout 3000000 days, 0:00:00 is longer than 365 days, 0:00:00"
    )
    assert options_out_of_range(with_option("aws_retry.max_attempts", 2**40)) == (
        "aws_retry.max_attempts 1099511627776 is more than 100"
    )
    assert options_out_of_range(with_option("activity_attempt_timeout", timedelta(0))) == (
        "activity_attempt_timeout 0:00:00 is not positive"
    )
    assert options_out_of_range(with_option("http_retry.delay", timedelta(seconds=-1))) == (
        "http_retry.delay -1 day, 23:59:59 is negative"
    )
    # 0 is no maximum (the SDK's); between 0 and the first interval the SDK refuses the policy.
    assert options_out_of_range(with_option("final_write_max_interval", timedelta(0))) is None
    short = with_option("final_write_max_interval", timedelta(milliseconds=500))
    assert options_out_of_range(short) == (
        "final_write_max_interval 0:00:00.500000 is below the first retry's 0:00:01 "
        "(0 means no maximum)"
    )


@pytest.mark.parametrize("resource", ["", "   ", "x" * 101, "db\x1b[31m", "a\nb", "-db", "a b"])
def test_a_lock_resource_no_mutex_id_should_carry_is_refused(resource: str) -> None:
    # It becomes the mutex's workflow id: over Temporal's 1,000-byte limit the lock request is
    # refused by the server on every try; control characters reach operators' terminals. The
    # same rule as `start --resource` (a setting or an API caller skipped it).
    with pytest.raises(InvalidProcessOptions, match="lock_resource"):
        ProcessOptions(lock_resource=resource).check()


@pytest.mark.parametrize("resource", ["db-eu-1", "x" * 100, "approval-commands", "a.b_c"])
def test_a_lock_resource_that_names_a_thing_is_accepted(resource: str) -> None:
    ProcessOptions(lock_resource=resource).check()
