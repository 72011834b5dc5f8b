"""A table write tried in the worker does not touch DynamoDB once it is too late to end in time.

sdk-core starts a local activity that waited past its deadline for a slot (and the SDK a try
that waited for a pool thread), with ``activity.is_cancelled()`` False: the workflow has already
given up on it and writes as an activity. Each test runs the real activity in an
``ActivityEnvironment`` whose try was scheduled some time ago, and counts the calls a fake
DynamoDB client receives.
"""

from __future__ import annotations

import dataclasses
import logging
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest
from temporalio.exceptions import ActivityError, ApplicationError, RetryState
from temporalio.testing import ActivityEnvironment

from activities.process_table import LATE_TRY, ProcessTableActivities
from common.aws import LOCAL_TRY_CALL
from workflows.messages import CreateProcessRecord, ProcessStatus, UpdateProcessStatus
from workflows.process import LOCAL_WRITE_TRY_TIMEOUT, _no_retry_fixes

# Whatever the machine's speed, a try scheduled this long before its deadline can call, and one
# scheduled at its deadline cannot.
ON_TIME = timedelta(0)
LATE = LOCAL_WRITE_TRY_TIMEOUT


class CountingDynamoDB:
    """Answers every write at once, and counts them."""

    class exceptions:  # the shape of a boto3 client's ``exceptions``
        class ConditionalCheckFailedException(Exception):
            pass

    def __init__(self) -> None:
        self.calls: list[str] = []

    def put_item(self, **_: Any) -> dict[str, Any]:
        self.calls.append("put_item")
        return {}

    def update_item(self, **_: Any) -> dict[str, Any]:
        self.calls.append("update_item")
        return {}


@dataclasses.dataclass
class Table:
    activities: ProcessTableActivities
    ordinary: CountingDynamoDB
    local_try: CountingDynamoDB


@pytest.fixture
def table() -> Table:
    ordinary, local_try = CountingDynamoDB(), CountingDynamoDB()
    activities = ProcessTableActivities(cast(Any, ordinary), "processes", cast(Any, local_try))
    return Table(activities, ordinary, local_try)


def _env(
    *, is_local: bool, waited: timedelta, write: str = "create_process"
) -> ActivityEnvironment:
    """A try scheduled ``waited`` ago, with the deadline the workflow gives a local try."""
    env = ActivityEnvironment()
    env.info = dataclasses.replace(
        env.info,
        activity_type=write,
        is_local=is_local,
        current_attempt_scheduled_time=datetime.now(UTC) - waited,
        schedule_to_close_timeout=LOCAL_WRITE_TRY_TIMEOUT if is_local else None,
    )
    return env


def _create() -> CreateProcessRecord:
    return CreateProcessRecord(
        process_id="process-1", requested_by="alice", description="d", created_at=datetime.now(UTC)
    )


def _update() -> UpdateProcessStatus:
    return UpdateProcessStatus(
        process_id="process-1", status=ProcessStatus.IN_PROGRESS, at=datetime.now(UTC)
    )


def test_a_try_on_time_writes_with_the_local_try_client(table: Table) -> None:
    env = _env(is_local=True, waited=ON_TIME)
    env.run(table.activities.create_process, _create())
    env.run(table.activities.update_process_status, _update())
    assert table.local_try.calls == ["put_item", "update_item"]
    assert table.ordinary.calls == []


@pytest.mark.parametrize("write", ["create_process", "update_process_status"])
def test_a_late_try_fails_without_a_call(
    table: Table, write: str, caplog: pytest.LogCaptureFixture
) -> None:
    arg = _create() if write == "create_process" else _update()
    with caplog.at_level(logging.WARNING), pytest.raises(ApplicationError) as raised:
        _env(is_local=True, waited=LATE, write=write).run(getattr(table.activities, write), arg)
    assert table.local_try.calls == [] and table.ordinary.calls == []
    assert raised.value.type == LATE_TRY
    assert not raised.value.non_retryable
    # As the workflow sees it: an error a retry can fix, so it writes as an activity.
    seen = ActivityError(
        "activity error",
        scheduled_event_id=0,
        started_event_id=0,
        identity="",
        activity_type=write,
        activity_id="1",
        retry_state=RetryState.MAXIMUM_ATTEMPTS_REACHED,
    )
    seen.__cause__ = raised.value
    assert not _no_retry_fixes(seen)
    late = [r for r in caplog.records if "too late" in r.getMessage()]
    assert len(late) == 1, caplog.text
    assert write in late[0].getMessage()


def test_a_try_whose_call_could_outlast_its_deadline_does_not_call(table: Table) -> None:
    """Late enough that a call taking the client's longest would end after the deadline."""
    waited = LOCAL_WRITE_TRY_TIMEOUT - LOCAL_TRY_CALL + timedelta(milliseconds=50)
    with pytest.raises(ApplicationError):
        _env(is_local=True, waited=waited).run(table.activities.create_process, _create())
    assert table.local_try.calls == []


def test_an_activity_writes_however_long_ago_it_was_scheduled(table: Table) -> None:
    """The server's activity has its own timeouts, and no try to replace."""
    _env(is_local=False, waited=timedelta(hours=1)).run(table.activities.create_process, _create())
    assert table.ordinary.calls == ["put_item"]
    assert table.local_try.calls == []
