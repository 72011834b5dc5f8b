"""A process started with options out of the workflow's range fails at once, cleanly (patch
``process-options-in-range``).

The starters refuse such options (``ProcessOptions.check()``); a client that starts the workflow
itself does not ask them. Before the patch the first date or duration the process could not
compute failed a workflow task, again on every retry: a 3,000,000-day approval timeout
(``now + approval_timeout`` past the year 9999) left the process running for ever, its record
pending, its lock never asked for and never cleaned up.
"""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import WorkflowFailureError
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment

from tests.workflow.harness import harness
from workflows.messages import ApprovalPolicy, FailureReason, ProcessStatus, RetrySettings
from workflows.process import OPTIONS_IN_RANGE_PATCH

E = EventType


@pytest.mark.parametrize(
    ("options", "why"),
    [
        (
            {"approval_timeout": timedelta(days=3_000_000)},
            "approval_timeout 3000000 days, 0:00:00 is longer than 365 days, 0:00:00",
        ),
        (
            {"activity_attempt_timeout": timedelta(seconds=-5)},
            "activity_attempt_timeout -1 day, 23:59:55 is not positive",
        ),
        (
            {"http_retry": RetrySettings(max_attempts=10**7, delay=timedelta(seconds=1))},
            "http_retry.max_attempts 10000000 is more than 100",
        ),
        (
            {"approval": ApprovalPolicy(remind_every=timedelta.max)},
            "approval.remind_every 999999999 days, 23:59:59.999999 is longer than 365 days",
        ),
    ],
    ids=["approval-timeout-past-9999", "negative-attempt-timeout", "ten-million-attempts", "max"],
)
async def test_a_process_out_of_range_fails_cleanly_naming_the_option(
    time_env: WorkflowEnvironment, options: dict[str, object], why: str
) -> None:
    async with harness(time_env.client) as h:
        handle = await h.start("alice", **options)
        with pytest.raises(WorkflowFailureError) as failure:
            await handle.result()
        error = failure.value.cause
        assert isinstance(error, ApplicationError)
        assert error.type == FailureReason.ERROR.value
        assert error.message.startswith(f"process options out of range: {why}")
        # The record is created and marked failed with the same reason; no lock was asked for.
        record = h.fakes.records[handle.id]
        assert record["status"] is ProcessStatus.FAILED
        assert record["reason"] is FailureReason.ERROR
        assert record["message"] == error.message
        assert h.fakes.history[handle.id] == [ProcessStatus.PENDING, ProcessStatus.FAILED]
        assert not h.fakes.lock_requests
        events = list((await handle.fetch_history()).events)
        assert not [e for e in events if e.event_type == E.EVENT_TYPE_WORKFLOW_TASK_FAILED]
        assert OPTIONS_IN_RANGE_PATCH in patch_ids(events)


def patch_ids(events: list[HistoryEvent]) -> list[str]:
    """The ids of the patches a history recorded (``workflow.patched`` markers)."""
    markers = [
        e.marker_recorded_event_attributes
        for e in events
        if e.event_type == E.EVENT_TYPE_MARKER_RECORDED
        and e.marker_recorded_event_attributes.marker_name == "core_patch"
    ]
    return [json.loads(m.details["patch-data"].payloads[0].data)["id"] for m in markers]
