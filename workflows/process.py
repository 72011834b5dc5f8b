"""ProcessWorkflow: ask a person to approve, take the lock, run two commands, record the outcome.

Reads like the original: create the record, ask for approval, wait for the lock, start, run both
commands in parallel, complete. Callbacks arrive as signals and every wait has a deadline. Any
failure marks the record ``failed`` with a reason, gives the lock back and fails the workflow with
an ``ApplicationError`` whose type is that reason; a cancelled process ends Cancelled.

The lock guards the effect, not the bookkeeping (patch ``process-lock-guards-sends``): every send
carries the lock's resource and lease id (the fence), heartbeats so a cancel reaches it, and the
process gives the lock back only once each send it started has resolved. Processes started before
the patch replay as they ran: they abandoned a send still in flight when the policy settled.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from typing import Any, NoReturn, TypeVar

from temporalio import workflow
from temporalio.common import RetryPolicy, SearchAttributeKey
from temporalio.exceptions import ActivityError, ApplicationError, CancelledError, FailureError
from temporalio.workflow import ActivityCancellationType

with workflow.unsafe.imports_passed_through():
    from activities.commands import CommandActivities
    from activities.mutex import request_lock
    from activities.notifications import ApprovalNotifier
    from activities.process_table import ProcessTableActivities
    from workflows.approval import ApprovalRound
    from workflows.asking import (
        APPROVAL_LINKS_TRACED_PATCH,
        APPROVAL_POLICY_PATCH,
        AskForApproval,
    )
    from workflows.messages import (
        APPROVAL_DECISION_SIGNAL,
        COMMAND_CALLBACK_SIGNAL,
        COMMAND_HEARTBEAT_SIGNAL,
        LOCK_CANCEL_SIGNAL,
        LOCK_GRANTED_SIGNAL,
        LOCK_RELEASE_SIGNAL,
        LOCK_REVOKED_SIGNAL,
        PROCESS_STATUS_ATTRIBUTE,
        STATE_QUERY,
        ApprovalDecision,
        ApprovalState,
        CommandCallback,
        CommandHeartbeat,
        CommandName,
        CommandOutcome,
        CommandState,
        CreateProcessRecord,
        FailureReason,
        LockCancel,
        LockGranted,
        LockRelease,
        LockRequest,
        LockRevoked,
        LockState,
        ProcessInput,
        ProcessOptions,
        ProcessResult,
        ProcessState,
        ProcessStatus,
        PublishApprovalRequest,
        Redrive,
        RequestLock,
        RetrySettings,
        SendCommand,
        SendResult,
        Stage,
        UpdateProcessStatus,
        mutex_workflow_id,
    )
    from workflows.waiting import Deadlines, wait_until

STATUS_KEY = SearchAttributeKey.for_keyword(PROCESS_STATUS_ATTRIBUTE)
_T = TypeVar("_T")
# From this patch on, a redriven process (input ``redrive``) keeps the approval and the commands
# that succeeded in the process it redrives, and sends the others under the original's keys.
REDRIVE_PATCH = "redrive"
# From this patch on, a process with ``command_heartbeat_timeout`` set ends a sent command
# ``timed-out`` once its downstream system neither heartbeats nor calls back for that long.
COMMAND_HEARTBEATS_PATCH = "command-heartbeats"
LOCK_TIMEOUT_MESSAGE = "Processes not finished in a timely manner"

# Signals to the mutex and the final record write must outlive short outages of their own.
_CLEANUP_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(minutes=1),
    maximum_attempts=10,
)

# From this patch on: sends heartbeat, carry the fence and are waited for before the lock goes
# back; final record writes retry until they succeed; a cancelled process ends Cancelled.
LOCK_GUARDS_SENDS_PATCH = "process-lock-guards-sends"
# From this patch on (issue 12: a happy path of 71-81 history events, and a workflow task inside
# the lock that the in-progress write alone cost):
# - the process table's writes (create, in-progress, completed, failed) are first tried in the
#   worker, as local activities: one marker in the task that needs the write, where an activity
#   costs three events and a workflow task of its own; a failed try goes on as an activity with
#   the call's retry policy (``_table_write``);
# - the waits share timers and never cancel them (workflows/waiting.py): a wait reuses a running
#   timer that fires by its deadline, so a happy path starts one or two timers, not one per wait;
# - the patch stands for every process patch before it (lock-guards-sends, approval-policy,
#   approval-links-traced, redrive, command-heartbeats): a process started under it asks only
#   this one (``_since``), so its history carries one patch marker and one change-version upsert,
#   not one of each per patch.
# Processes started before it replay the patches they recorded.
LOCAL_WRITES_PATCH = "process-local-writes"
# How long a table write may run in the worker before it goes on as an activity. A query that
# reaches a process while one of its workflow tasks is open waits for that task, and a local
# activity holds the task open: sdk-core then completes it only every 8 s (a "workflow task
# heartbeat", at 80% of the 10 s task timeout) until the try ends, so with the full attempt
# timeout a DynamoDB outage stalled ``approval-flow status`` 8 s a query and made the approval
# page (5 s query deadline) answer 503 "no worker answered" (measured, tests/integration/
# test_query_during_write.py). A write takes milliseconds; one that takes 2 s is an outage, which
# the activity then retries on the server while queries are answered. A sync activity cannot
# be interrupted, and sdk-core starts a try that waited past this for a slot: so a try
# calls DynamoDB only if its call can end within the try by itself (common/aws.py:
# local_try_config), else it fails at once without a call (activities/process_table.py:
# ``_client``). A request a try sent may still land after the activity's write: the writes are
# conditional and converge. Not recorded in the history (the marker holds the outcome):
# replay-safe.
LOCAL_WRITE_TRY_TIMEOUT = timedelta(seconds=2)
# The patches ``process-local-writes`` stands for, and the only ones ``_since`` answers. A patch
# newer than it must call ``workflow.patched`` itself: answered True for a process started under
# ``process-local-writes``, it would take the new branch in a history recorded without it.
SUBSUMED_BY_LOCAL_WRITES = frozenset(
    {
        LOCK_GUARDS_SENDS_PATCH,
        APPROVAL_POLICY_PATCH,
        APPROVAL_LINKS_TRACED_PATCH,
        REDRIVE_PATCH,
        COMMAND_HEARTBEATS_PATCH,
    }
)


# From this patch on, a cancel that arrives once the commands are done (the policy satisfied,
# every send resolved) no longer changes the outcome: the lock goes back, the record is written
# ``completed`` (shielded, as the cleanup is) and the run completes. Before it, such a cancel
# reached the release or the write and the process was recorded failed ``cancelled`` although
# its commands had run (with the real table the write could even land first: DynamoDB said
# completed, Temporal cancelled). Asked only when such a cancel arrives: a process not
# cancelled there records no marker and leaves the history it always did.
COMPLETION_OUTLIVES_CANCEL_PATCH = "process-completion-outlives-cancel"
# From this patch on, a process whose options lie outside the range below fails at once,
# cleanly (record failed ``error``, the message names the option). Before it, the first date or
# duration it could not compute (``now + approval_timeout`` past the year 9999, a negative
# attempt timeout, a retry policy the SDK refuses) failed a workflow task, again on every
# retry: the process never failed and its record stayed pending. Asked only for such options:
# a process in range records no marker and leaves the history it always did.
OPTIONS_IN_RANGE_PATCH = "process-options-in-range"
# The range: the longest any duration option may be, and the most attempts a retry may make.
# Within it, every date the workflow computes (now + a timeout + a send budget of up to 100
# linear delays: under 5,100 years) stays before the year 9999, every duration fits Temporal's
# (10,000 years), and the send budget's loop stays short. FROZEN: a process outside it takes
# the patched branch, so moving a bound would change the commands of the processes between
# the old bound and the new (a new patch). ``ProcessOptions.check()`` (the starters) refuses
# at least all of this, and a clear one-line answer comes from there first.
RANGE_LONGEST = timedelta(days=365)
RANGE_MOST_ATTEMPTS = 100
# A retry policy's first interval for the final writes: their ``maximum_interval`` may not be
# below it (the SDK refuses the policy), 0 meaning no maximum.
_FINAL_WRITE_FIRST_INTERVAL = timedelta(seconds=1)


def runs_patch(patch: str, local_writes: bool) -> bool:
    """Whether a process runs the code of ``patch``, one of ``SUBSUMED_BY_LOCAL_WRITES``: every
    process under ``process-local-writes`` does, without recording it; an older process answers
    as it recorded. Any other id is refused (a ValueError fails the workflow task, loudly)."""
    if patch not in SUBSUMED_BY_LOCAL_WRITES:
        raise ValueError(
            f"patch {patch!r} is not one that {LOCAL_WRITES_PATCH!r} stands for:"
            " a newer patch calls workflow.patched itself (docs/upgrades.md, Patch discipline)"
        )
    return local_writes or workflow.patched(patch)


def final_write_retry(options: ProcessOptions) -> RetryPolicy:
    """For the write that closes a record (completed, failed): no attempt limit.

    A record left ``pending`` or ``in-progress`` is a process nobody will ever finish; so the
    write backs off (exponentially, up to ``final_write_max_interval``) through any outage and
    stops only at an error no retry can fix (the record is gone, or already final).
    """
    return RetryPolicy(
        initial_interval=_FINAL_WRITE_FIRST_INTERVAL,
        backoff_coefficient=2.0,
        maximum_interval=options.final_write_max_interval,
        maximum_attempts=0,
    )


def options_out_of_range(options: ProcessOptions) -> str | None:
    """Why a process cannot run with ``options`` (patch ``process-options-in-range``), in one
    line; None when it can. Pure, cheap and total: it runs for every process, in its first task.

    Only what the workflow cannot compute with: the longest durations (``RANGE_LONGEST``), the
    most attempts (``RANGE_MOST_ATTEMPTS``), and the few values the SDK refuses in a command
    (an attempt timeout that is not positive, a negative retry delay or heartbeat timeout, a
    final-write interval below its first). FROZEN, as the range is.
    """
    durations: dict[str, timedelta | None] = {
        "approval_timeout": options.approval_timeout,
        "lock_timeout": options.lock_timeout,
        "command_timeout": options.command_timeout,
        "aws_retry.delay": options.aws_retry.delay,
        "http_retry.delay": options.http_retry.delay,
        "max_retry_after": options.max_retry_after,
        "activity_attempt_timeout": options.activity_attempt_timeout,
        "command_heartbeat_timeout": options.command_heartbeat_timeout,
        "lease_timeout": options.lease_timeout,
        "send_heartbeat_timeout": options.send_heartbeat_timeout,
        "final_write_max_interval": options.final_write_max_interval,
        "approval.remind_every": options.approval.remind_every,
        "approval.escalate_after": options.approval.escalate_after,
    }
    for name, value in durations.items():
        if value is not None and value > RANGE_LONGEST:
            return f"{name} {value} is longer than {RANGE_LONGEST}"
    for name, retry in (("aws_retry", options.aws_retry), ("http_retry", options.http_retry)):
        if retry.max_attempts > RANGE_MOST_ATTEMPTS:
            return f"{name}.max_attempts {retry.max_attempts} is more than {RANGE_MOST_ATTEMPTS}"
    zero = timedelta(0)
    if options.activity_attempt_timeout <= zero:
        return f"activity_attempt_timeout {options.activity_attempt_timeout} is not positive"
    for name in ("aws_retry.delay", "http_retry.delay", "send_heartbeat_timeout"):
        value = durations[name]
        if value is not None and value < zero:
            return f"{name} {value} is negative"
    interval = options.final_write_max_interval
    if interval != zero and interval < _FINAL_WRITE_FIRST_INTERVAL:
        return (
            f"final_write_max_interval {interval} is below the first retry's "
            f"{_FINAL_WRITE_FIRST_INTERVAL} (0 means no maximum)"
        )
    return None


class ProcessFailure(Exception):
    """A business failure inside the run; turned into cleanup and a typed ApplicationError."""

    def __init__(self, reason: FailureReason, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def linear_retry(settings: RetrySettings, **extra: Any) -> RetryPolicy:
    """A retry policy whose delays the worker's interceptor makes ``delay x attempt``."""
    return RetryPolicy(
        initial_interval=settings.delay,
        backoff_coefficient=1.0,
        maximum_attempts=settings.max_attempts,
        **extra,
    )


def send_budget(options: ProcessOptions) -> timedelta:
    """Longest a command send may take with every HTTP retry: the callback token must outlive it."""
    return options.send_budget()


@workflow.defn
class ProcessWorkflow:
    @workflow.init
    def __init__(self, input: ProcessInput) -> None:
        now = workflow.now()
        self._input = input
        self._options = input.options
        self._process_id = workflow.info().workflow_id
        self._stage = Stage.CREATING
        self._status = ProcessStatus.PENDING
        self._created_at = now
        self._updated_at = now
        self._finished_at: datetime | None = None
        # Who may decide, who has, and whether that settles it (workflows/approval.py).
        self._round = ApprovalRound(input.options.approval)
        self._lock = LockState(resource=input.options.lock_resource)
        self._lock_revoked: LockRevoked | None = None
        self._commands = {name: CommandState(command=name) for name in CommandName}
        self._callbacks: dict[CommandName, CommandCallback] = {}
        self._commands_settled = False
        self._command_tasks: list[asyncio.Task[None]] = []
        self._stopping_sends = False
        self._failure: ProcessFailure | None = None
        # Decided once, at the start: a process keeps the behaviour it started with. The newest
        # patch is asked first: it implies the older ones, which it then never records.
        self._local_writes = workflow.patched(LOCAL_WRITES_PATCH)
        self._guards_sends = self._since(LOCK_GUARDS_SENDS_PATCH)
        self._deadlines = Deadlines()
        # A redrive: where it came from, and the approval it keeps (None: it asks again).
        self._redrive: Redrive | None = None
        self._kept_approval: ApprovalState | None = None

    @workflow.run
    async def run(self, input: ProcessInput) -> ProcessResult:
        if input.redrive is not None and self._since(REDRIVE_PATCH):
            self._resume(input.redrive)
        out_of_range = options_out_of_range(input.options)
        if out_of_range is not None and workflow.patched(OPTIONS_IN_RANGE_PATCH):
            # Its own options could not even create and fail the record: the defaults do
            # (only the table's retries and timeouts are read before it fails).
            self._options = ProcessOptions()
        else:
            out_of_range = None  # in range; or started before the patch, and replayed as it ran
        try:
            with self._step("create process"):
                await self._create_record()
            if out_of_range is not None:
                raise ProcessFailure(
                    FailureReason.ERROR, f"process options out of range: {out_of_range}"
                )
            with self._step("ask for approval"):
                await self._ask_for_approval()
            with self._step("wait for the lock"):
                await self._wait_for_lock()
            with self._step("start process"):
                # Under ``process-local-writes`` this write runs inside the task that took the
                # grant, which then schedules the sends: a ``lock_revoked`` that arrives while it
                # runs is seen in the next task, after the sends are scheduled (they are then
                # stopped); the lease id every command carries fences them off downstream.
                await self._set_status(ProcessStatus.IN_PROGRESS, stage=Stage.RUNNING_COMMANDS)
            with self._step("run commands"):
                outcomes = await self._run_commands()
            with self._step("complete process"):
                self._stage = Stage.COMPLETING
                await self._complete()
            return ProcessResult(process_id=self._process_id, commands=outcomes)
        except ProcessFailure as failure:
            await self._fail(failure)
        except asyncio.CancelledError:
            await self._fail(ProcessFailure(FailureReason.CANCELLED, "process was cancelled"))
        except FailureError as err:
            if _is_cancellation(err):  # a cancel that reached us through an activity or timer
                await self._fail(ProcessFailure(FailureReason.CANCELLED, "process was cancelled"))
            await self._fail(ProcessFailure(FailureReason.ERROR, _describe(err)))

    # -- signals and query ----------------------------------------------------------------------

    @workflow.signal(name=APPROVAL_DECISION_SIGNAL)
    def approval_decision(self, decision: ApprovalDecision) -> None:
        """Counted by the approval policy; repeats, strangers and late ones are logged, ignored.

        Without named approvers the first decision settles it, as in the original.
        """
        if self._stage in (Stage.COMPLETED, Stage.FAILED):
            refusal: str | None = self._stage.value
        else:
            refusal = self._round.record(decision, workflow.now())
        if refusal is not None:
            workflow.logger.info(
                "approval decision by %s (approver %s) ignored: %s",
                decision.decided_by,
                decision.approver_id or "-",
                refusal,
            )
            return
        self._touch()

    @workflow.signal(name=COMMAND_CALLBACK_SIGNAL)
    def command_callback(self, callback: CommandCallback) -> None:
        """A downstream result; unknown commands and repeats are logged and ignored."""
        try:
            name = CommandName(callback.command)
        except ValueError:
            workflow.logger.warning("callback for unknown command %r ignored", callback.command)
            return
        if name in self._callbacks:
            workflow.logger.info("repeated callback for %s ignored", name.value)
            return
        self._callbacks[name] = callback
        self._touch()

    @workflow.signal(name=COMMAND_HEARTBEAT_SIGNAL)
    def command_heartbeat(self, heartbeat: CommandHeartbeat) -> None:
        """A downstream system is still at work: the command's heartbeat deadline moves on.

        Counted whether or not the process asked for heartbeats (the state shows the progress);
        unknown commands and heartbeats for a finished command are logged and ignored.
        """
        try:
            name = CommandName(heartbeat.command)
        except ValueError:
            workflow.logger.warning("heartbeat for unknown command %r ignored", heartbeat.command)
            return
        command = self._commands[name]
        if command.status not in ("sending", "sent") or name in self._callbacks:
            workflow.logger.info("heartbeat for %s (%s) ignored", name.value, command.status)
            return
        now = workflow.now()
        changes: dict[str, Any] = {
            "heartbeats": command.heartbeats + 1,
            "last_heartbeat_at": now,
            "progress": heartbeat.progress,
        }
        timeout = self._options.command_heartbeat_timeout
        if command.heartbeat_deadline is not None and timeout is not None:
            # The wait notices at its next timer; the state says the new due time at once.
            changes["heartbeat_deadline"] = now + timeout
        self._update_command(name, **changes)

    @workflow.signal(name=LOCK_GRANTED_SIGNAL)
    async def lock_granted(self, grant: LockGranted) -> None:
        """Take the lock, or hand back at once a grant that arrives after we stopped waiting."""
        if self._lock.status == "requested" and grant.request_id == self._lock.request_id:
            self._lock = self._lock.model_copy(
                update={"status": "held", "lease_id": grant.lease_id, "granted_at": workflow.now()}
            )
            self._touch()
            return
        workflow.logger.warning(
            "lease %s arrived while lock is %s; releasing it", grant.lease_id, self._lock.status
        )
        await self._signal_mutex(
            LOCK_RELEASE_SIGNAL, LockRelease(request_id=grant.request_id, lease_id=grant.lease_id)
        )

    @workflow.signal(name=LOCK_REVOKED_SIGNAL)
    def lock_revoked(self, revoked: LockRevoked) -> None:
        if self._lock.status == "held" and revoked.lease_id == self._lock.lease_id:
            self._lock_revoked = revoked
            self._lock = self._lock.model_copy(update={"status": "revoked"})
            self._touch()

    @workflow.query(name=STATE_QUERY)
    def state(self) -> ProcessState:
        return ProcessState(
            process_id=self._process_id,
            requested_by=self._input.requested_by,
            description=self._input.description,
            stage=self._stage,
            status=self._status,
            created_at=self._created_at,
            updated_at=self._updated_at,
            approval=self._approval(),
            lock=self._lock,
            commands=dict(self._commands),
            failure_reason=self._failure.reason if self._failure else None,
            failure_message=self._failure.message if self._failure else None,
            finished_at=self._finished_at,
            redriven_from=self._redrive.redriven_from if self._redrive else None,
            redrive_count=self._redrive.count if self._redrive else 0,
        )

    # -- redrive --------------------------------------------------------------------------------

    def _resume(self, redrive: Redrive) -> None:
        """Take over what the failed process achieved: its approval (when it was given) and
        every command that succeeded, whose state stays as it ended there."""
        self._redrive = redrive
        self._kept_approval = redrive.approval
        for name, command in redrive.succeeded.items():
            self._commands[name] = command.model_copy(
                update={
                    "kept_from": command.kept_from or redrive.redriven_from,
                    "heartbeat_deadline": None,
                }
            )

    def _approval(self) -> ApprovalState:
        return self._kept_approval or self._round.state()

    # -- steps ----------------------------------------------------------------------------------

    async def _create_record(self) -> None:
        record = CreateProcessRecord(
            process_id=self._process_id,
            requested_by=self._input.requested_by,
            description=self._input.description,
            created_at=self._created_at,
            redriven_from=self._redrive.redriven_from if self._redrive else None,
            redrive_count=self._redrive.count if self._redrive else 0,
        )
        if self._local_writes:
            await self._table_write(
                ProcessTableActivities.create_process,
                record,
                linear_retry(self._options.aws_retry),
            )
        else:
            await workflow.execute_activity_method(
                ProcessTableActivities.create_process, record, **self._aws_call()
            )
        workflow.upsert_search_attributes([STATUS_KEY.value_set(ProcessStatus.PENDING.value)])

    async def _ask_for_approval(self) -> None:
        if self._kept_approval is not None:
            return  # a redrive keeps the approval given to the process it redrives
        self._stage = Stage.AWAITING_APPROVAL
        now = workflow.now()
        deadline = now + self._options.approval_timeout
        self._round.open(now, deadline)
        self._touch()
        if self._since(APPROVAL_POLICY_PATCH):
            # The policy: named approvers' own links, quorum, reminders, escalation.
            await AskForApproval(
                self._round,
                self._process_id,
                self._input,
                self._created_at,
                linear_retry(self._options.aws_retry),
                self._touch,
                self._wait_until,
                self._since,
            ).run()
        else:
            # Started before the policy: the original's one mail and one wait, as recorded.
            await self._ask_once(deadline)
        failure = self._round.failure()
        if failure is not None:
            raise ProcessFailure(*failure)

    async def _ask_once(self, deadline: datetime) -> None:
        await workflow.execute_activity_method(
            ApprovalNotifier.publish_approval_request,
            PublishApprovalRequest(
                process_id=self._process_id,
                requested_by=self._input.requested_by,
                description=self._input.description,
                requested_at=self._created_at,
                deadline=deadline,
            ),
            **self._aws_call(),
        )
        if not await self._wait_until(lambda: self._round.settled, deadline):
            self._round.expire(workflow.now())

    async def _wait_for_lock(self) -> None:
        """Queue for the resource; FIFO, no polling: the mutex signals when it is our turn."""
        self._stage = Stage.WAITING_FOR_LOCK
        now = workflow.now()
        request = LockRequest(
            requester_workflow_id=self._process_id,
            request_id=str(workflow.uuid4()),
            lease_timeout=self._options.lease_timeout,
            requested_at=now,
            # The input's, so a process started before priorities asks at the default.
            priority=self._options.lock_priority,
            # The grant and the liveness checks follow this run: a reset makes another.
            requester_run_id=workflow.info().run_id if self._guards_sends else None,
        )
        deadline = now + self._options.lock_timeout
        self._lock = self._lock.model_copy(
            update={
                "status": "requested",
                "request_id": request.request_id,
                "requested_at": now,
                "deadline": deadline,
            }
        )
        self._touch()
        await workflow.execute_activity(
            request_lock,
            RequestLock(resource=self._options.lock_resource, request=request),
            **self._aws_call(),
        )
        if not await self._wait_until(lambda: self._lock.status == "held", deadline):
            raise ProcessFailure(FailureReason.LOCK_TIMEOUT, LOCK_TIMEOUT_MESSAGE)

    async def _run_commands(self) -> list[CommandOutcome]:
        """Both commands at once; stop waiting as soon as the completion policy is decided."""
        kept = self._redrive.succeeded if self._redrive else {}
        # A redrive does not send again what succeeded before: its state is already final.
        tasks = [
            asyncio.ensure_future(self._run_command(name))
            for name in CommandName
            if name not in kept
        ]
        self._command_tasks = tasks
        try:
            await workflow.wait_condition(
                lambda: (
                    self._policy_decided()
                    or self._lock_revoked is not None
                    or any(_crashed(t) for t in tasks)
                )
            )
            for task in tasks:
                if _crashed(task):
                    await task  # re-raises what went wrong inside the command
            if self._lock_revoked is not None:
                raise ProcessFailure(
                    FailureReason.ERROR,
                    f"lock lease {self._lock_revoked.lease_id} was revoked "
                    f"({self._lock_revoked.reason}); mutual exclusion no longer holds",
                )
        finally:
            # Before the patch: a send still in flight was abandoned here, and the lock released
            # under it. From the patch on, _stop_sends (here or in the cleanup) waits for it.
            if not self._guards_sends:
                for task in tasks:
                    if not task.done():
                        task.cancel()
        now = workflow.now()
        outcomes = [self._outcome(name) for name in CommandName]
        for outcome in outcomes:  # the state shows what each command ended as, truthfully
            if self._commands[outcome.command].status in ("not-started", "sending", "sent"):
                self._update_command(
                    outcome.command,
                    status=outcome.status,
                    result=outcome.result,
                    error=outcome.error,
                    finished_at=now,
                )
        # A cancelled command task may still resume once (a send that completed just before the
        # cancel returns its result): from here on the states above are final.
        self._commands_settled = True
        if self._guards_sends:
            await self._stop_sends(raise_cancel=True)
        succeeded = sum(o.status == "succeeded" for o in outcomes)
        failed = sum(o.status not in ("succeeded", "not-awaited") for o in outcomes)
        if self._options.completion.is_satisfied(succeeded, failed, len(outcomes)):
            return outcomes
        failures = [o for o in outcomes if o.status not in ("succeeded", "not-awaited")]
        reason = (
            FailureReason.COMMAND_FAILED
            if any(o.status in ("failed", "send-failed") for o in failures)
            else FailureReason.COMMAND_TIMEOUT
        )
        details = "; ".join(
            f"{o.command.value} {o.status}" + (f" ({o.error})" if o.error else "") for o in failures
        )
        raise ProcessFailure(reason, f"commands did not meet the completion policy: {details}")

    async def _run_command(self, name: CommandName) -> None:
        method = (
            CommandActivities.send_command_one
            if name is CommandName.ONE
            else CommandActivities.send_command_two
        )
        options = self._options
        callback_deadline = workflow.now() + send_budget(options) + options.command_timeout
        heartbeat = options.command_heartbeat_timeout
        if heartbeat is not None and not self._since(COMMAND_HEARTBEATS_PATCH):
            heartbeat = None
        self._update_command(name, status="sending")
        retry = options.http_retry if name is CommandName.TWO else options.aws_retry
        command = SendCommand(
            process_id=self._process_id,
            command=name,
            deadline=callback_deadline,
            http_retry_statuses=options.http_retry_statuses,
            max_retry_after=options.max_retry_after,
            heartbeat_timeout=heartbeat,  # so the downstream knows how often
            # A redrive sends under the original process's idempotency key.
            original_process_id=self._redrive.original_process_id if self._redrive else None,
            redrive=self._redrive.count if self._redrive else 0,
        )
        try:
            if self._guards_sends:
                # The fence travels with the command; the send heartbeats so a cancel reaches
                # it, and a cancel is complete only once the send confirms it (or finishes):
                # the lock is given back after the effect, never during it.
                sent: SendResult = await workflow.execute_activity_method(
                    method,
                    command.model_copy(
                        update={
                            "lock_resource": self._lock.resource,
                            "lease_id": self._lock.lease_id,
                        }
                    ),
                    start_to_close_timeout=options.activity_attempt_timeout,
                    heartbeat_timeout=options.send_heartbeat_timeout,
                    retry_policy=linear_retry(retry),
                    cancellation_type=ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
                )
            else:
                sent = await workflow.execute_activity_method(
                    method,
                    command,
                    start_to_close_timeout=options.activity_attempt_timeout,
                    retry_policy=linear_retry(retry),
                    # Before the patch: a send did not heartbeat, so a cancel could not reach
                    # it; it was abandoned, and could land after the lock went back.
                    cancellation_type=ActivityCancellationType.ABANDON,
                )
        except ActivityError as err:
            if self._stopping_sends and _is_cancellation(err):
                self._update_command(
                    name, status="not-awaited", error="send cancelled", finished_at=workflow.now()
                )
                return
            self._update_command(
                name, status="send-failed", error=_describe(err), finished_at=workflow.now()
            )
            return
        if self._stopping_sends:
            return  # sent just before the cancel reached it; nobody waits for its callback
        deadline = workflow.now() + options.command_timeout
        self._update_command(
            name, status="sent", attempts=sent.attempt, sent_at=workflow.now(), deadline=deadline
        )
        if heartbeat is not None:
            missed = await self._await_callback(name, deadline, heartbeat)
        elif await self._wait_until(lambda: name in self._callbacks, deadline):
            missed = None
        else:
            missed = f"no callback within {options.command_timeout}"
        if missed is not None:
            self._update_command(name, status="timed-out", error=missed, finished_at=workflow.now())
            return
        callback = self._callbacks[name]
        self._update_command(
            name,
            status=callback.status,
            result=callback.result,
            error=callback.error,
            finished_at=workflow.now(),
        )

    async def _await_callback(
        self, name: CommandName, deadline: datetime, heartbeat: timedelta
    ) -> str | None:
        """Wait for the callback until ``deadline``, the hard cap, or until a heartbeat is
        overdue; None when the callback came, else why the command timed out.

        One timer per heartbeat period, not per heartbeat: when the timer fires, a heartbeat
        that came meanwhile sets the next due time.
        """
        while True:
            command = self._commands[name]
            since = max(t for t in (command.sent_at, command.last_heartbeat_at) if t is not None)
            due = since + heartbeat
            self._update_command(name, heartbeat_deadline=due)
            if await self._wait_until(lambda: name in self._callbacks, min(due, deadline)):
                return None
            now = workflow.now()
            if now >= deadline:
                return f"no callback within {self._options.command_timeout}"
            last = self._commands[name].last_heartbeat_at
            if last is None or last + heartbeat <= now:
                seen = f"the last at {last.isoformat()}" if last else "none since it was sent"
                return f"no heartbeat within {heartbeat} ({seen})"

    # -- completion -----------------------------------------------------------------------------

    async def _complete(self) -> None:
        """Give the lock back, write the record ``completed``, let the handlers finish.

        The commands are done: a cancel that arrives now cannot undo them. From patch
        ``process-completion-outlives-cancel`` on it is logged and the completion goes on: each
        step is started as before (its commands in the same order) and then awaited through the
        cancel (``_through_cancel``), as the cleanup is shielded. The patch is asked only when
        such a cancel arrives; recorded before it (no marker), the cancel stops the step it
        reached, as it did, and the process fails ``cancelled``.
        """
        try:
            await self._release_lock()
        except asyncio.CancelledError:
            # The SDK waits for a sent signal through a cancel; should one come through, the
            # release is sent all the same.
            if not workflow.patched(COMPLETION_OUTLIVES_CANCEL_PATCH):
                raise
            workflow.logger.warning("cancel after the commands were done: completing the process")
        await self._set_status(ProcessStatus.COMPLETED, stage=Stage.COMPLETED, through_cancel=True)
        handlers = asyncio.ensure_future(workflow.wait_condition(workflow.all_handlers_finished))
        await self._through_cancel(handlers)

    async def _through_cancel(self, operation: asyncio.Future[_T]) -> _T:
        """Await ``operation``, already started, through a cancel of the process (patch
        ``process-completion-outlives-cancel``; see ``_complete``).

        Recorded before the patch, the cancel reaches ``operation`` as it did when it was
        awaited directly: cancelled (an activity's cancel command in the same activation), or,
        when it had just finished, a CancelledError at the await.
        """
        while True:
            try:
                return await asyncio.shield(operation)
            except asyncio.CancelledError:
                if not workflow.patched(COMPLETION_OUTLIVES_CANCEL_PATCH):
                    if operation.done():
                        raise
                    operation.cancel()
                    return await operation
                workflow.logger.warning(
                    "cancel after the commands were done: completing the process"
                )

    # -- failure and cleanup --------------------------------------------------------------------

    async def _fail(self, failure: ProcessFailure) -> NoReturn:
        """Cleanup shared by every failure and by cancellation, then a typed failure.

        The cleanup is shielded: a cancel that arrives while it runs (an operator cancelling a
        process that is already failing) must not leave the lock held or the record unmarked.
        """
        workflow.logger.warning("process failed (%s): %s", failure.reason.value, failure.message)
        self._failure = failure
        self._stage = Stage.FAILED
        self._status = ProcessStatus.FAILED
        self._finished_at = workflow.now()
        self._touch()
        cleanup = asyncio.ensure_future(self._clean_up(failure))
        while not cleanup.done():
            try:
                await asyncio.shield(cleanup)
            except asyncio.CancelledError:
                workflow.logger.warning("cancel during cleanup: finishing the cleanup first")
        await cleanup
        await workflow.wait_condition(workflow.all_handlers_finished)
        if self._guards_sends and failure.reason is FailureReason.CANCELLED:
            # Cleaned up (record failed/cancelled, sends stopped, lock released): now end as
            # what happened, Cancelled, rather than as a failure of the process's own making.
            raise asyncio.CancelledError(failure.message)
        raise ApplicationError(
            failure.message,
            self.state().model_dump(mode="json"),
            type=failure.reason.value,
            non_retryable=True,
        )

    async def _clean_up(self, failure: ProcessFailure) -> None:
        if self._guards_sends:
            await self._stop_sends(raise_cancel=False)
        await self._release_lock()
        try:
            await self._write_status(
                UpdateProcessStatus(
                    process_id=self._process_id,
                    status=ProcessStatus.FAILED,
                    reason=failure.reason,
                    message=failure.message,
                    at=workflow.now(),
                ),
                retry=final_write_retry(self._options) if self._guards_sends else _CLEANUP_RETRY,
            )
        except FailureError as err:
            workflow.logger.error("could not mark the record failed: %s", err)
        workflow.upsert_search_attributes([STATUS_KEY.value_set(ProcessStatus.FAILED.value)])

    async def _stop_sends(self, raise_cancel: bool) -> None:
        """Cancel the sends still running and wait until each has resolved: done, failed, or
        confirmed cancelled. Only then may the lock go back, or the next holder's commands could
        meet this one's downstream.

        A cancel of the process that arrives meanwhile does not cut the wait short; with
        ``raise_cancel`` it is raised once the sends resolved (the cleanup then runs).
        """
        pending = [task for task in self._command_tasks if not task.done()]
        if not pending:
            return
        if not self._stopping_sends:
            self._stopping_sends = True
            workflow.logger.info("stopping %d command(s) still running", len(pending))
            for task in pending:
                task.cancel()
        cancel: asyncio.CancelledError | None = None
        while not all(task.done() for task in pending):
            try:
                await workflow.wait_condition(lambda: all(task.done() for task in pending))
            except asyncio.CancelledError as err:
                cancel = err
        workflow.logger.info("every send has resolved")
        if cancel is not None and raise_cancel:
            raise cancel

    async def _release_lock(self) -> None:
        """Give back a held lease, or withdraw a pending request; never leaves the lock taken."""
        lock = self._lock
        if lock.status == "held" and lock.lease_id is not None and lock.request_id:
            self._lock = lock.model_copy(
                update={"status": "released", "released_at": workflow.now()}
            )
            await self._signal_mutex(
                LOCK_RELEASE_SIGNAL, LockRelease(request_id=lock.request_id, lease_id=lock.lease_id)
            )
        elif lock.status == "requested" and lock.request_id:
            self._lock = lock.model_copy(update={"status": "cancelled"})
            await self._signal_mutex(LOCK_CANCEL_SIGNAL, LockCancel(request_id=lock.request_id))

    async def _signal_mutex(self, signal: str, arg: LockRelease | LockCancel) -> None:
        handle = workflow.get_external_workflow_handle(mutex_workflow_id(self._lock.resource))
        try:
            await handle.signal(signal, arg)
        except FailureError as err:
            # No mutex running means nothing is held; the lease expiry covers any other case.
            workflow.logger.error("could not %s lock: %s", signal, err)

    # -- helpers --------------------------------------------------------------------------------

    async def _set_status(
        self, status: ProcessStatus, stage: Stage, through_cancel: bool = False
    ) -> None:
        final = status.is_final and self._guards_sends
        await self._write_status(
            UpdateProcessStatus(
                process_id=self._process_id,
                status=status,
                approved_by=self._approval().decided_by
                if status is ProcessStatus.IN_PROGRESS
                else None,
                at=workflow.now(),
            ),
            retry=final_write_retry(self._options)
            if final
            else linear_retry(self._options.aws_retry),
            through_cancel=through_cancel,
        )
        self._status = status
        self._stage = stage
        if status.is_final:
            self._finished_at = workflow.now()
        self._touch()
        workflow.upsert_search_attributes([STATUS_KEY.value_set(status.value)])

    async def _write_status(
        self, update: UpdateProcessStatus, retry: RetryPolicy, through_cancel: bool = False
    ) -> None:
        """``through_cancel``: awaited through a cancel of the process (``_through_cancel``)."""
        if self._local_writes:
            await self._table_write(
                ProcessTableActivities.update_process_status, update, retry, through_cancel
            )
            return
        if through_cancel:
            await self._through_cancel(
                workflow.start_activity_method(
                    ProcessTableActivities.update_process_status,
                    update,
                    start_to_close_timeout=self._options.activity_attempt_timeout,
                    retry_policy=retry,
                )
            )
            return
        await workflow.execute_activity_method(
            ProcessTableActivities.update_process_status,
            update,
            start_to_close_timeout=self._options.activity_attempt_timeout,
            retry_policy=retry,
        )

    async def _table_write(
        self,
        method: Callable[[Any, Any], Any],
        arg: Any,
        retry: RetryPolicy,
        through_cancel: bool = False,
    ) -> None:
        """One write of the process table: first tried in the worker, then as an activity.

        The first try is a local activity: it runs inside the workflow task that needs it and
        leaves one marker in the history, where an activity costs three events and a workflow
        task of its own. If that try fails for a reason a retry could fix (DynamoDB down, the
        worker lost) or outlasts ``LOCAL_WRITE_TRY_TIMEOUT`` (DynamoDB slow or frozen), the
        same write goes to the server as an activity with the call's full retry policy: the
        server then retries it through the outage, visible in ``describe``, without a workflow
        task held open (queries are answered meanwhile). So a write gets one quick try more
        than the policy counts. An error no retry can fix (the record is gone) ends it at once.
        """
        attempt = self._options.activity_attempt_timeout
        # Short, so a stalled write never keeps queries waiting (LOCAL_WRITE_TRY_TIMEOUT). From
        # scheduling, but sdk-core does not time out a try while it waits for a local-activity
        # slot: it starts it once a slot frees, however late. Such a try fails at once without
        # writing (activities/process_table.py: ``_client``), so the write goes on as an
        # activity, and the slot is free again at once; a slot is held at most 2 s by a try.
        local_try = min(attempt, LOCAL_WRITE_TRY_TIMEOUT)
        try:
            if through_cancel:
                await self._through_cancel(
                    workflow.start_local_activity_method(
                        method,
                        arg,
                        schedule_to_close_timeout=local_try,
                        start_to_close_timeout=local_try,
                        retry_policy=RetryPolicy(maximum_attempts=1),
                    )
                )
                return
            await workflow.execute_local_activity_method(
                method,
                arg,
                schedule_to_close_timeout=local_try,
                start_to_close_timeout=local_try,
                retry_policy=RetryPolicy(maximum_attempts=1),
            )
            return
        except FailureError as err:
            # An ActivityError whose cause says why: a TimeoutError (the try ran out, or waited
            # out its time for a slot), an ApplicationError (retryable unless the record is gone
            # or the transition impossible; a try that started too late is retryable).
            if _is_cancellation(err) or _no_retry_fixes(err):
                raise
            workflow.logger.warning(
                "%s failed in the worker (%s); retrying it as an activity",
                getattr(method, "__name__", "table write"),
                _describe(err),
            )
        if through_cancel:
            await self._through_cancel(
                workflow.start_activity_method(
                    method, arg, start_to_close_timeout=attempt, retry_policy=retry
                )
            )
            return
        await workflow.execute_activity_method(
            method, arg, start_to_close_timeout=attempt, retry_policy=retry
        )

    def _since(self, patch: str) -> bool:
        """Whether this process runs the code of ``patch``, one the newest patch stands for
        (``runs_patch``): never ask it about a newer one."""
        return runs_patch(patch, self._local_writes)

    def _aws_call(self) -> dict[str, Any]:
        return {
            "start_to_close_timeout": self._options.activity_attempt_timeout,
            "retry_policy": linear_retry(self._options.aws_retry),
        }

    async def _wait_until(self, condition: Callable[[], bool], deadline: datetime) -> bool:
        """Wait for ``condition`` until ``deadline``; False on timeout (never an untyped error).

        From ``process-local-writes`` on, the waits share timers that are never cancelled
        (workflows/waiting.py): a wait reuses a running timer that fires by its deadline.
        """
        if self._local_writes:
            return await self._deadlines.wait_until(condition, deadline)
        return await wait_until(condition, deadline)

    def _policy_decided(self) -> bool:
        outcomes = [self._outcome(name) for name in CommandName]
        succeeded = sum(o.status == "succeeded" for o in outcomes)
        failed = sum(o.status not in ("succeeded", "not-awaited") for o in outcomes)
        return self._options.completion.is_decided(succeeded, failed, len(outcomes))

    def _outcome(self, name: CommandName) -> CommandOutcome:
        """A command's outcome; a callback that arrived counts even before its task saw it."""
        state = self._commands[name]
        callback = self._callbacks.get(name)
        if state.status in ("not-started", "sending", "sent") and callback is not None:
            return CommandOutcome(
                command=name, status=callback.status, result=callback.result, error=callback.error
            )
        if state.status in ("not-started", "sending", "sent"):
            return CommandOutcome(command=name, status="not-awaited")
        return CommandOutcome(
            command=name, status=state.status, result=state.result, error=state.error
        )

    def _update_command(self, name: CommandName, **changes: Any) -> None:
        if self._commands_settled:
            return
        self._commands[name] = self._commands[name].model_copy(update=changes)
        self._touch()

    def _touch(self) -> None:
        self._updated_at = workflow.now()

    @contextlib.contextmanager
    def _step(self, name: str) -> Iterator[None]:
        """Log a step's start and end at INFO (the workflow logger names the process)."""
        workflow.logger.info("step %r started", name)
        try:
            yield
        except (Exception, asyncio.CancelledError) as err:  # not GeneratorExit: an eviction
            workflow.logger.info("step %r ended: %s", name, type(err).__name__)
            raise
        workflow.logger.info("step %r ended", name)


def _is_cancellation(err: BaseException) -> bool:
    """True when a failure chain ends in a cancellation (of the workflow, reaching an activity)."""
    current: BaseException | None = err
    while current is not None:
        if isinstance(current, CancelledError):
            return True
        current = current.cause if isinstance(current, FailureError) else None
    return False


def _describe(err: BaseException) -> str:
    """The innermost message of a failure chain: what actually went wrong."""
    while isinstance(err, FailureError) and err.cause is not None:
        err = err.cause
    return str(err) or type(err).__name__


def _no_retry_fixes(err: BaseException) -> bool:
    """True when a failure chain holds a non-retryable application error (the record is gone,
    a transition no retry can make)."""
    current: BaseException | None = err
    while current is not None:
        if isinstance(current, ApplicationError) and current.non_retryable:
            return True
        current = current.cause if isinstance(current, FailureError) else None
    return False


def _crashed(task: asyncio.Future[None]) -> bool:
    return task.done() and not task.cancelled() and task.exception() is not None
