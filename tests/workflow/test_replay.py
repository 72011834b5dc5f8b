"""Replay every recorded history against the workflow code on disk.

A change to ``workflows/`` that would break a running process or the never-ending mutex fails
here: each file under ``tests/histories/<version>/`` is one run that version of the code wrote
(see ``tests/workflow/record_histories``). The replayer is set up as the worker is: the pydantic
data converter and the linear-retry interceptor, which adds a header to every activity call.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from temporalio.client import WorkflowHistory
from temporalio.worker import Replayer

from activities.retry import LinearRetryInterceptor
from common.payloads import DATA_CONVERTER
from workflows.mutex import MutexWorkflow
from workflows.process import ProcessWorkflow

ROOT = Path(__file__).resolve().parent.parent / "histories"
HISTORIES = sorted(ROOT.glob("**/*.json"))

# Every branch of the v1 code has a history; deleting one must be a visible change here.
REQUIRED = {
    "v1": [
        # Recorded on the dev server by tests/workflow/record_histories.
        "process_completed",
        "process_rejected",
        "process_approval_timeout",
        "process_lock_timeout",
        "process_lock_timeout_deadline_passed",
        "process_command_failed",
        "process_command_send_failed",
        "process_command_timeout",
        "process_cancelled_awaiting_approval",
        "process_cancelled_during_activity",
        "process_cancelled_waiting_for_lock",
        "process_cancelled_while_sending",
        "process_cancelled_during_cleanup",
        "process_error_record_missing",
        "process_error_lease_revoked",
        "process_retried_create",
        "process_retried_http_503",
        "process_retry_after_honoured",
        "process_min_successful_abandons_send",
        "process_tolerated_failure",
        "process_tolerated_count_exceeded",
        "process_tolerated_percentage_exceeded",
        "process_min_successful_unreachable",
        "process_first_decision_wins",
        "process_repeated_and_unknown_callbacks",
        "process_late_grant_released",
        "process_release_without_mutex",
        "mutex_fifo_queue_liveness_alive",
        "mutex_abandoned_holder",
        "mutex_liveness_unknown_and_unmarkable",
        "mutex_revoked_holder_gone",
        "mutex_lease_revoked",
        "mutex_failed_grant",
        "mutex_cancel_races_grant",
        "mutex_queued_requests_cancelled",
        "mutex_late_grant_released",
        "mutex_continue_as_new_run1",
        "mutex_continue_as_new_run2",
        # Recorded earlier on the time-skipping server, by the same v1 workflow code.
        "ts_process_completed",
        "ts_process_command_failed",
        "ts_process_rejected",
        "ts_mutex_grants_and_releases",
    ],
}


# The approval policy (patch "approval-policy"), recorded on its own with
# ``record_histories v2 --only process_policy_``: every process started since takes this path.
REQUIRED.setdefault("v2", []).extend(
    [
        "process_policy_default_completed",
        "process_policy_default_timeout",
        "process_policy_quorum_approved",
        "process_policy_vetoed",
        "process_policy_quorum_unreachable",
        "process_policy_reminders",
        "process_policy_escalated",
        "process_policy_timeout_fail",
        "process_policy_timeout_reject",
        "process_policy_reminder_failed",
        "process_policy_cancelled_while_mailing",
    ]
)

# The operators' patches (issue 11), recorded with ``record_histories v2 --only ops_...``:
# ``mutex-priority`` (a queue by priority, carried across continue-as-new).
REQUIRED["v2"].extend(["ops_mutex_priority_run1", "ops_mutex_priority_run2"])

# The mutex under ``mutex-survives-operators`` (issue 8 §5), recorded with
# ``record_histories v2 --only mutex_``: liveness by run, grants and bookkeeping beside the queue.
REQUIRED["v2"].extend(
    [
        "mutex_cancel_ignored",
        "mutex_fifo_queue_liveness_alive",
        "mutex_abandoned_holder",
        "mutex_liveness_unknown_and_unmarkable",
        "mutex_revoked_holder_gone",
        "mutex_failed_grant",
        "mutex_cancel_races_grant",
        "mutex_continue_as_new_run1",
        "mutex_continue_as_new_run2",
    ]
)


# Every scenario again under ``process-lock-guards-sends`` (issue 8: sends stopped and waited for
# before the lock goes back, final writes without an attempt limit, a cancel ends Cancelled),
# with all the patches before it: ``record_histories v3``.
REQUIRED["v3"] = [
    "mutex_abandoned_holder",
    "mutex_cancel_ignored",
    "mutex_cancel_races_grant",
    "mutex_continue_as_new_run1",
    "mutex_continue_as_new_run2",
    "mutex_failed_grant",
    "mutex_fifo_queue_liveness_alive",
    "mutex_late_grant_released",
    "mutex_lease_revoked",
    "mutex_liveness_unknown_and_unmarkable",
    "mutex_queued_requests_cancelled",
    "mutex_revoked_holder_gone",
    "ops_mutex_priority_run1",
    "ops_mutex_priority_run2",
    "process_approval_timeout",
    "process_cancelled_awaiting_approval",
    "process_cancelled_during_activity",
    "process_cancelled_during_cleanup",
    "process_cancelled_send_in_flight",
    "process_cancelled_waiting_for_lock",
    "process_cancelled_while_sending",
    "process_command_failed",
    "process_command_send_failed",
    "process_command_timeout",
    "process_completed",
    "process_error_lease_revoked",
    "process_error_record_missing",
    "process_first_decision_wins",
    "process_late_grant_released",
    "process_lock_timeout",
    "process_lock_timeout_deadline_passed",
    "process_min_successful_stops_send",
    "process_min_successful_unreachable",
    "process_policy_cancelled_while_mailing",
    "process_policy_default_completed",
    "process_policy_default_timeout",
    "process_policy_escalated",
    "process_policy_quorum_approved",
    "process_policy_quorum_unreachable",
    "process_policy_reminder_failed",
    "process_policy_reminders",
    "process_policy_timeout_fail",
    "process_policy_timeout_reject",
    "process_policy_vetoed",
    "process_rejected",
    "process_release_without_mutex",
    "process_repeated_and_unknown_callbacks",
    "process_retried_create",
    "process_retried_http_503",
    "process_retry_after_honoured",
    "process_stops_send_in_flight",
    "process_tolerated_count_exceeded",
    "process_tolerated_failure",
    "process_tolerated_percentage_exceeded",
    # ``mutex-takes-over``: ``record_histories v3 --only mutex_takeover``.
    "mutex_takeover_terminated",
    "mutex_takeover_reset_keeps_lease",
]
# The operators' process patches (issue 11), recorded beside them with ``record_histories v3
# --only ops_heartbeat`` and ``--only ops_redrive``: ``command-heartbeats`` and ``redrive``.
REQUIRED["v3"] += [
    "ops_heartbeat_missed",
    "ops_heartbeats_kept_alive",
    "ops_redrive_completed",
    "ops_redrive_asks_again",
]
# ``approval-links-traced``: every approval link carries the process's own trace, read from its
# start's headers (``record_histories v3 --only ops_links``).
REQUIRED["v3"] += ["ops_links_traced_named", "ops_links_traced_shared"]

# ``mutex-one-liveness-timer`` (issue 12): the liveness check on one timer of its own, the loop
# waiting without a timeout. Every mutex branch again, with all the mutex patches before it:
# ``record_histories v4 --only mutex_``, ``--only ops_mutex_priority`` and the mutex histories of
# ``--only error_lease_revoked``, ``lock_contention``, ``late_grant_released`` (their process
# histories are v3's again, so they were not kept).
REQUIRED["v4"] = [
    "mutex_abandoned_holder",
    "mutex_cancel_ignored",
    "mutex_cancel_races_grant",
    "mutex_continue_as_new_run1",
    "mutex_continue_as_new_run2",
    "mutex_failed_grant",
    "mutex_fifo_queue_liveness_alive",
    "mutex_late_grant_released",
    "mutex_lease_revoked",
    "mutex_liveness_unknown_and_unmarkable",
    "mutex_queued_requests_cancelled",
    "mutex_revoked_holder_gone",
    "mutex_takeover_reset_keeps_lease",
    "mutex_takeover_terminated",
    "ops_mutex_priority_run1",
    "ops_mutex_priority_run2",
]


# Every process scenario again under ``process-local-writes`` (issue 12: the table's writes in the
# worker first, timers shared and never cancelled, one patch marker): ``record_histories v4``,
# keeping only the process and ops-process files: the mutex did not change with this patch, and
# its v4 runs (``mutex-one-liveness-timer``, above) stay required too.
REQUIRED["v4"] += [
    "ops_heartbeat_missed",
    "ops_heartbeats_kept_alive",
    "ops_links_traced_named",
    "ops_links_traced_shared",
    "ops_redrive_asks_again",
    "ops_redrive_completed",
    "process_approval_timeout",
    "process_cancelled_awaiting_approval",
    "process_cancelled_during_activity",
    "process_cancelled_during_cleanup",
    "process_cancelled_send_in_flight",
    "process_cancelled_waiting_for_lock",
    "process_cancelled_while_sending",
    "process_command_failed",
    "process_command_send_failed",
    "process_command_timeout",
    "process_completed",
    "process_error_lease_revoked",
    "process_error_record_missing",
    "process_first_decision_wins",
    "process_late_grant_released",
    "process_lock_timeout",
    "process_lock_timeout_deadline_passed",
    "process_min_successful_stops_send",
    "process_min_successful_unreachable",
    "process_policy_cancelled_while_mailing",
    "process_policy_default_completed",
    "process_policy_default_timeout",
    "process_policy_escalated",
    "process_policy_quorum_approved",
    "process_policy_quorum_unreachable",
    "process_policy_reminder_failed",
    "process_policy_reminders",
    "process_policy_timeout_fail",
    "process_policy_timeout_reject",
    "process_policy_vetoed",
    "process_rejected",
    "process_release_without_mutex",
    "process_repeated_and_unknown_callbacks",
    "process_retried_create",
    "process_retried_http_503",
    "process_retry_after_honoured",
    "process_stops_send_in_flight",
    "process_tolerated_count_exceeded",
    "process_tolerated_failure",
    "process_tolerated_percentage_exceeded",
]

# A cancel while the record is written ``completed``, as the code before
# ``process-completion-outlives-cancel`` ran it (the process failed ``cancelled``): recorded by
# that code with ``record_histories v4 --only cancelled_while_completing`` (the scenario then
# expected the Cancelled end). It replays through the patch's old branch.
REQUIRED["v4"] += ["process_cancelled_while_completing"]

# ``mutex-take-over-ignores-cancel`` and ``mutex-carries-abandon-marks``: the take-over in a task
# of its own (a cancel meanwhile is ignored), an abandoned holder's pending record mark carried
# across continue-as-new. Every mutex branch again, with all the mutex patches before them:
# ``record_histories v5 --only 'mutex_*,ops_mutex_priority,error_lease_revoked,lock_contention,
# late_grant_released'``, keeping only the mutex files (the process did not change).
REQUIRED["v5"] = [
    *(name for name in REQUIRED["v4"] if name.startswith(("mutex_", "ops_mutex_"))),
    "mutex_abandon_mark_carried_run1",
    "mutex_abandon_mark_carried_run2",
    "mutex_takeover_cancel_ignored",
]

# The two patches of the review of the process's options and completion, recorded with
# ``record_histories v5 --only cancelled_while_completing,options_out_of_range``: each patch is
# asked only on its own branch (a cancel once the commands are done; options out of range), so
# every other process leaves the history v4 recorded.
REQUIRED["v5"] += ["process_cancelled_while_completing", "process_options_out_of_range"]

# A mutex the v4 code wedged (a lease past the year 9999 overflowed its first task, for ever),
# recorded on the time-skipping server and terminated; on today's code (the clamp) its retried
# task completes: ``test_mutex_operators.py`` checks that, which this replay alone cannot (the
# replayer reports nondeterminism only, not a task that raises).
REQUIRED["v4"] += ["ts_mutex_wedged_by_overflowing_lease"]


# ``mutex-defers-from-first-task`` and ``mutex-takes-over-abandon-marks``, each asked only on its
# own branch (a run started to take over; a take-over that found marks pending), recorded with
# ``record_histories v6 --only`` the two names below, comma-separated.
REQUIRED["v6"] = ["mutex_takeover_adopts_marks", "mutex_takeover_release_before_first_task"]


def _name(path: Path) -> str:
    return path.relative_to(ROOT).with_suffix("").as_posix()


def test_every_required_history_is_committed() -> None:
    present = {_name(path) for path in HISTORIES}
    required = {f"{version}/{name}" for version, names in REQUIRED.items() for name in names}
    assert not required - present, f"missing histories: {sorted(required - present)}"


@pytest.fixture(scope="module")
def replayer() -> Replayer:
    return Replayer(
        workflows=[ProcessWorkflow, MutexWorkflow],
        data_converter=DATA_CONVERTER,
        interceptors=[LinearRetryInterceptor()],
    )


@pytest.mark.parametrize("path", HISTORIES, ids=[_name(p) for p in HISTORIES])
async def test_history_replays(replayer: Replayer, path: Path) -> None:
    name = _name(path)
    history = WorkflowHistory.from_json(name, await asyncio.to_thread(path.read_text))
    result = await replayer.replay_workflow(history, raise_on_replay_failure=False)
    assert result.replay_failure is None, f"{name} no longer replays: {result.replay_failure}"
