"""Typed messages: workflow inputs and results, signals, queries and activity arguments.

Pure pydantic, no I/O: imported by workflows (through the sandbox), activities, the callbacks API
and the CLI alike. Every default here is the original Lambda workflow's value.

These messages outlive deploys: a process runs for hours and the mutex never ends, so during a
rolling deploy an older worker decodes what a newer one sent, and the other way round. Hence every
model ignores fields it does not know (a strict model would make the SDK drop the whole signal),
and a new field is always optional with a default, so an older sender that leaves it out is
still understood. Be strict only at the HTTP edge (``callbacks_api/bodies.py``).
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, field_validator, model_validator

from common.ids import MUTEX_ID_PREFIX as MUTEX_ID_PREFIX
from common.ids import PROCESS_ID_PREFIX as PROCESS_ID_PREFIX

# ---------------------------------------------------------------------------------------------
# Names shared by every party (and the workflow id prefixes, kept in common.ids for logging)
# ---------------------------------------------------------------------------------------------

DEFAULT_LOCK_RESOURCE = "approval-commands"
# Lock priorities: 1 is the most urgent; within a priority, first come, first served.
HIGHEST_LOCK_PRIORITY = 1
DEFAULT_LOCK_PRIORITY = 3
LOWEST_LOCK_PRIORITY = 5
PROCESS_STATUS_ATTRIBUTE = "ProcessStatus"
APPROVAL_CALLBACK = "approval"

# Signal and query names. A name is part of every running history: never rename one.
APPROVAL_DECISION_SIGNAL = "approval_decision"  # ProcessWorkflow <- an approver (callbacks API)
COMMAND_CALLBACK_SIGNAL = "command_callback"  # ProcessWorkflow <- a downstream system
COMMAND_HEARTBEAT_SIGNAL = "command_heartbeat"  # ProcessWorkflow <- a downstream system at work
LOCK_GRANTED_SIGNAL = "lock_granted"  # ProcessWorkflow <- MutexWorkflow
LOCK_REVOKED_SIGNAL = "lock_revoked"  # ProcessWorkflow <- MutexWorkflow
LOCK_REQUEST_SIGNAL = "request"  # MutexWorkflow <- a process (signal-with-start)
LOCK_CANCEL_SIGNAL = "cancel"  # MutexWorkflow <- a process that stopped waiting
LOCK_RELEASE_SIGNAL = "release"  # MutexWorkflow <- the holder
STATE_QUERY = "state"  # both workflows: ProcessState or MutexState


class CommandName(StrEnum):
    ONE = "command-one"  # SQS
    TWO = "command-two"  # HTTP


class ProcessStatus(StrEnum):
    PENDING = "pending"
    IN_PROGRESS = "in-progress"
    COMPLETED = "completed"
    FAILED = "failed"

    @property
    def is_final(self) -> bool:
        return self in (ProcessStatus.COMPLETED, ProcessStatus.FAILED)


# The statuses a process records itself once its own code ended it, as its record and its
# ProcessStatus search attribute spell them.
FINAL_STATUS_VALUES = frozenset(status.value for status in ProcessStatus if status.is_final)


class FailureReason(StrEnum):
    """Why a process failed; also the ``ApplicationError`` type the Temporal UI shows."""

    REJECTED = "rejected"
    APPROVAL_TIMEOUT = "approval-timeout"
    LOCK_TIMEOUT = "lock-timeout"
    COMMAND_FAILED = "command-failed"
    COMMAND_TIMEOUT = "command-timeout"
    CANCELLED = "cancelled"
    ABANDONED = "abandoned"
    ERROR = "error"


class Stage(StrEnum):
    CREATING = "creating"
    AWAITING_APPROVAL = "awaiting-approval"
    WAITING_FOR_LOCK = "waiting-for-lock"
    RUNNING_COMMANDS = "running-commands"
    COMPLETING = "completing"
    COMPLETED = "completed"
    FAILED = "failed"


def mutex_workflow_id(resource: str) -> str:
    return f"{MUTEX_ID_PREFIX}{resource}"


class Message(BaseModel):
    """Base of every message: immutable, and tolerant of fields a newer sender added."""

    model_config = ConfigDict(frozen=True, extra="ignore")


# ---------------------------------------------------------------------------------------------
# ProcessWorkflow: input, options, result
# ---------------------------------------------------------------------------------------------


class CompletionPolicy(Message):
    """When the parallel command phase ends, and whether it succeeded (the original's config).

    The phase ends as soon as ``min_successful`` commands succeeded, or as soon as the failures
    exceed what is tolerated; otherwise when every command has finished. With nothing set,
    every command must succeed. A timed-out or unsendable command counts as failed.
    """

    min_successful: int | None = Field(None, ge=1, le=len(CommandName))
    tolerated_failure_count: int | None = Field(None, ge=0)
    tolerated_failure_percentage: float | None = Field(None, ge=0, le=100)

    def tolerance_exceeded(self, failed: int, total: int) -> bool:
        count, percentage, minimum = (
            self.tolerated_failure_count,
            self.tolerated_failure_percentage,
            self.min_successful,
        )
        if count is not None and failed > count:
            return True
        if percentage is not None and total and failed * 100 > percentage * total:
            return True
        if minimum is not None and failed > total - minimum:
            return True  # min_successful can no longer be reached
        nothing_set = count is None and percentage is None and minimum is None
        return nothing_set and failed > 0

    def is_decided(self, succeeded: int, failed: int, total: int) -> bool:
        """True once waiting for the remaining commands can no longer change the outcome."""
        if self.tolerance_exceeded(failed, total):
            return True
        if self.min_successful is not None and succeeded >= self.min_successful:
            return True
        return succeeded + failed >= total

    def is_satisfied(self, succeeded: int, failed: int, total: int) -> bool:
        if self.tolerance_exceeded(failed, total):
            return False
        return self.min_successful is None or succeeded >= self.min_successful


class RetrySettings(Message):
    """Attempts and a linear delay (``delay x attempt``), as the original's retry strategies."""

    max_attempts: int = Field(ge=1)
    delay: timedelta

    def delay_after(self, attempt: int) -> timedelta:
        return self.delay * attempt


class Approver(Message):
    """A named approver. ``id`` (an e-mail address, say) is what their own link is bound to."""

    id: str = Field(min_length=1, max_length=200, pattern=r"^[^\s,=*]+$")
    name: str | None = Field(None, max_length=200)

    @property
    def display(self) -> str:
        return self.name or self.id

    @classmethod
    def parse(cls, text: str) -> Approver:
        """``ID`` or ``ID=NAME``, as the CLI and the settings write one approver."""
        approver_id, _, name = text.strip().partition("=")
        return cls(id=approver_id.strip(), name=" ".join(name.split()) or None)


def _approvers(value: object) -> object:
    """Approvers as ``id[=name],...`` text (settings, CLI), or as a list of models or dicts."""
    if isinstance(value, str):
        return tuple(Approver.parse(part) for part in value.split(",") if part.strip())
    return value


class ApprovalPolicy(Message):
    """Who decides, how many approvals are enough, and what happens while nobody does.

    With no ``approvers`` the original behaviour stays: one link, mailed to the topic, and
    whoever holds it decides. With approvers, each gets a link of their own that decides only
    for them. Every field is optional, so a process started before the policy existed reads
    the default: the original.
    """

    approvers: tuple[Approver, ...] = ()
    # Approvals needed, counting escalation approvers too. One is the original.
    required: int = Field(1, ge=1)
    # True: any rejection rejects the process. False: rejections are counted, and the process
    # is rejected only once ``required`` approvals can no longer be reached.
    reject_vetoes: bool = True
    # Undecided approvers are mailed their link again this often, until the deadline.
    remind_every: timedelta | None = None
    # After this long without a decision, the request also goes to ``escalate_to``.
    escalate_after: timedelta | None = None
    escalate_to: tuple[Approver, ...] = ()
    # At the deadline without a decision: fail ``approval-timeout`` (the original) or reject.
    on_timeout: Literal["fail", "reject"] = "fail"

    @field_validator("approvers", "escalate_to", mode="before")
    @classmethod
    def _parse_approvers(cls, value: object) -> object:
        return _approvers(value)

    @model_validator(mode="after")
    def _consistent(self) -> ApprovalPolicy:
        ids = [a.id for a in (*self.approvers, *self.escalate_to)]
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        if duplicates:
            raise ValueError(f"an approver may be listed once: {', '.join(duplicates)}")
        if not self.approvers and self.required > 1:
            raise ValueError("a quorum (required > 1) needs named approvers")
        if self.approvers and self.required > len(ids):
            raise ValueError(f"required is {self.required} but only {len(ids)} approvers are named")
        if bool(self.escalate_to) != (self.escalate_after is not None):
            raise ValueError("escalate_after and escalate_to go together")
        for name in ("remind_every", "escalate_after"):
            value = getattr(self, name)
            if value is not None and value <= timedelta(0):
                raise ValueError(f"{name} must be positive")
        return self

    @property
    def named(self) -> bool:
        return bool(self.approvers)


# Reminders per approval deadline at most: bounds the history a reminder schedule can grow.
MAX_REMINDERS = 48

# Room left in a lease beyond what a process needs: clocks, a slow workflow task, a release.
LEASE_MARGIN = timedelta(minutes=10)

# The longest any duration option may be: a year. Longer than any approval, lock wait, lease or
# command this workflow is for should take, so no honest value is refused; and far from where
# things break: the workflow adds timeouts and send budgets to now (a date past the year 9999
# failed its task for good), Temporal's durations end at 10,000 years, and a lease as long as
# the mutex's whole life wedges the lock. The most attempts a retry may make: 100, where the
# defaults are 3 and 5 (each attempt of a linear delay waits longer than the one before). The
# workflow refuses whatever lies beyond its own frozen range (``RANGE_LONGEST``,
# ``RANGE_MOST_ATTEMPTS`` in workflows/process.py, patch ``process-options-in-range``): these
# never go above those.
LONGEST_OPTION = timedelta(days=365)
MOST_ATTEMPTS = 100
# A lock resource names the mutex's workflow id (``mutex-<resource>``) and a downstream fence, and
# operators read it in the CLI, the UI and logs: keep it plain (Temporal refuses ids over 1,000
# bytes; control characters would reach terminals). ``start --resource`` and ``check()`` use it.
RESOURCE_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}"  # a string: module values stay immutable
RESOURCE_RULE = "letters, digits, '.', '_' and '-', at most 100, starting with a letter or digit"
# The final writes' retries start at 1 s; a maximum interval below that is refused by the SDK.
SHORTEST_FINAL_WRITE_INTERVAL = timedelta(seconds=1)


class InvalidProcessOptions(ValueError):
    """Process options that cannot work; the message says why, in one line."""


class ProcessOptions(Message):
    """Every timeout and retry of the original, as data the starter may override."""

    approval_timeout: timedelta = timedelta(hours=1)
    # The original polled 10 times, 10 minutes apart; we wait for the lock for the same 100 min.
    lock_timeout: timedelta = timedelta(minutes=100)
    command_timeout: timedelta = timedelta(hours=1)
    aws_retry: RetrySettings = RetrySettings(max_attempts=3, delay=timedelta(minutes=2))
    http_retry: RetrySettings = RetrySettings(max_attempts=5, delay=timedelta(minutes=5))
    http_retry_statuses: tuple[int, ...] = (408, 429, 500, 502, 503, 504)
    # A downstream ``Retry-After`` wins over the linear delay, up to this bound.
    max_retry_after: timedelta = timedelta(minutes=20)
    # One attempt of an AWS call or an HTTP send may take this long before it is retried.
    activity_attempt_timeout: timedelta = timedelta(seconds=30)
    completion: CompletionPolicy = CompletionPolicy()
    lock_resource: str = DEFAULT_LOCK_RESOURCE
    # Place in the resource's queue: 1 (most urgent) to 5; equal priorities are first come,
    # first served. A holder is never preempted.
    lock_priority: int = Field(DEFAULT_LOCK_PRIORITY, ge=1, le=5)
    # A sent command whose downstream system neither heartbeats nor calls back for this long
    # ends ``timed-out`` (like Step Functions' HeartbeatSeconds). None: no heartbeat is needed,
    # and ``command_timeout`` alone bounds the wait, as it always does.
    command_heartbeat_timeout: timedelta | None = None
    # Longest the lock may be held before the mutex revokes it; covers the command phase with
    # all its HTTP retries (4 waits of at most 20 min) and the 1 h callback wait.
    lease_timeout: timedelta = timedelta(hours=3)
    approval: ApprovalPolicy = ApprovalPolicy()
    # A send heartbeats at a third of this: a cancel reaches it (the policy settled early, the
    # process was cancelled) and a worker lost mid-send is noticed within this time.
    send_heartbeat_timeout: timedelta = timedelta(seconds=30)
    # The final write of a record (completed or failed) retries until it succeeds, backing off
    # up to this interval: a DynamoDB outage never leaves a record pending or in-progress.
    final_write_max_interval: timedelta = timedelta(minutes=1)

    @model_validator(mode="after")
    def _escalation_before_the_deadline(self) -> ProcessOptions:
        escalate_after = self.approval.escalate_after
        if escalate_after is not None and escalate_after >= self.approval_timeout:
            raise ValueError("approval.escalate_after must come before approval_timeout")
        heartbeat = self.command_heartbeat_timeout
        if heartbeat is not None and heartbeat <= timedelta(0):
            raise ValueError("command_heartbeat_timeout must be positive")
        return self

    def status_write_budget(self) -> timedelta:
        """Longest the in-progress write may take with every retry (the original's 3 x 2 min),
        after the one try in the worker that comes first (patch ``process-local-writes``)."""
        retry = self.aws_retry
        delays = sum((retry.delay_after(a) for a in range(1, retry.max_attempts)), timedelta())
        return delays + self.activity_attempt_timeout * (retry.max_attempts + 1)

    def send_budget(self) -> timedelta:
        """Longest a send may take with every HTTP retry: the callback token must outlive it."""
        retry = self.http_retry
        delays = sum(
            (max(retry.delay_after(a), self.max_retry_after) for a in range(1, retry.max_attempts)),
            timedelta(),
        )
        return delays + self.activity_attempt_timeout * retry.max_attempts

    def lease_needed(self) -> dict[str, timedelta]:
        """What one process may spend holding the lock, part by part, in the order it happens."""
        return {
            "status write": self.status_write_budget(),
            "sends": self.send_budget(),
            "command timeout": self.command_timeout,
            "stopping sends": self.send_heartbeat_timeout,
            "margin": LEASE_MARGIN,
        }

    def check(self) -> None:
        """Refuse, in one line, options a process cannot run with: a duration or an attempt count
        out of range, reminders that would flood the history, a lease shorter than the process
        may hold the lock.

        A lease shorter than what the process may need gets it revoked mid-phase, its commands
        fenced off downstream: raising ``command_timeout`` alone must not do that silently. Not a
        validator: processes already running with such options must still decode. Durations and
        attempts out of range come first, so the sums below neither overflow nor loop long.
        """
        self._check_ranges()
        remind_every = self.approval.remind_every
        if remind_every is not None and self.approval_timeout / remind_every > MAX_REMINDERS:
            # Each reminder is a timer and an activity in the history: a short interval over a
            # long deadline would grow it past Temporal's limit and end the run uncleaned.
            raise InvalidProcessOptions(
                f"approval.remind_every {remind_every} would mail more than {MAX_REMINDERS} "
                f"reminders before approval_timeout {self.approval_timeout}; remind less often"
            )
        parts = self.lease_needed()
        needed = sum(parts.values(), timedelta())
        if self.lease_timeout < needed:
            spent = " + ".join(f"{name} {value}" for name, value in parts.items())
            raise InvalidProcessOptions(
                f"lease_timeout {self.lease_timeout} is shorter than a process may hold the "
                f"lock: {needed} ({spent}); raise lease_timeout or lower the others"
            )

    def _check_ranges(self) -> None:
        """Every duration between 0 and ``LONGEST_OPTION`` (an attempt timeout above 0), every
        retry at most ``MOST_ATTEMPTS`` attempts; the message names the option and the bound."""
        durations: dict[str, timedelta | None] = {
            "approval_timeout": self.approval_timeout,
            "lock_timeout": self.lock_timeout,
            "command_timeout": self.command_timeout,
            "aws_retry.delay": self.aws_retry.delay,
            "http_retry.delay": self.http_retry.delay,
            "max_retry_after": self.max_retry_after,
            "activity_attempt_timeout": self.activity_attempt_timeout,
            "command_heartbeat_timeout": self.command_heartbeat_timeout,
            "lease_timeout": self.lease_timeout,
            "send_heartbeat_timeout": self.send_heartbeat_timeout,
            "final_write_max_interval": self.final_write_max_interval,
            "approval.remind_every": self.approval.remind_every,
            "approval.escalate_after": self.approval.escalate_after,
        }
        for name, value in durations.items():
            if value is None:
                continue
            if value > LONGEST_OPTION:
                raise InvalidProcessOptions(
                    f"{name} {value} is longer than {LONGEST_OPTION}, the longest a process "
                    "option may be; shorten it"
                )
            if value < timedelta(0):
                raise InvalidProcessOptions(f"{name} {value} is negative")
        if self.activity_attempt_timeout == timedelta(0):
            raise InvalidProcessOptions("activity_attempt_timeout must be longer than 0")
        if self.final_write_max_interval < SHORTEST_FINAL_WRITE_INTERVAL:
            raise InvalidProcessOptions(
                f"final_write_max_interval {self.final_write_max_interval} is shorter than "
                f"{SHORTEST_FINAL_WRITE_INTERVAL}, the final writes' first retry interval"
            )
        if not re.fullmatch(RESOURCE_PATTERN, self.lock_resource):
            raise InvalidProcessOptions(
                f"lock_resource {self.lock_resource!r} is not a resource name: {RESOURCE_RULE}"
            )
        for name, retry in (("aws_retry", self.aws_retry), ("http_retry", self.http_retry)):
            if retry.max_attempts > MOST_ATTEMPTS:
                raise InvalidProcessOptions(
                    f"{name}.max_attempts {retry.max_attempts} is more than {MOST_ATTEMPTS}, "
                    "the most a retry may make; lower it"
                )


class Redrive(Message):
    """A process started again from the step where an earlier one failed (``approval-flow
    redrive``). It is a new process under its own id, ``<original>-redrive-<count>``, that
    records where it came from and carries what the failed one had already achieved."""

    redriven_from: str  # the failed process's id
    original_process_id: str  # the first of the chain: its idempotency keys are reused
    count: int = Field(ge=1)  # 1 for the first redrive of the original, 2 for the next...
    # The approval the failed process had, kept; None: ask again (it was the failure, or it
    # never came).
    approval: ApprovalState | None = None
    # Commands that succeeded before, as they ended there: not sent again, their results kept.
    succeeded: dict[CommandName, CommandState] = {}


def redrive_process_id(original_process_id: str, count: int) -> str:
    """The id of a process's ``count``-th redrive: one per failure, so a second redrive of the
    same failure is refused by Temporal itself (the id is taken)."""
    return f"{original_process_id}-redrive-{count}"


class ProcessInput(Message):
    requested_by: str = Field(min_length=1, max_length=200)
    description: str = Field("", max_length=2000)
    options: ProcessOptions = ProcessOptions()
    redrive: Redrive | None = None  # None: a process of its own, from the first step


class CommandOutcome(Message):
    command: CommandName
    # "not-awaited": sent, but the policy was settled before its callback came.
    status: Literal["succeeded", "failed", "timed-out", "send-failed", "not-started", "not-awaited"]
    result: dict[str, Any] | None = None
    error: str | None = None


class ProcessResult(Message):
    process_id: str
    status: Literal["success"] = "success"
    commands: list[CommandOutcome]


# ---------------------------------------------------------------------------------------------
# ProcessWorkflow: signals and query
# ---------------------------------------------------------------------------------------------


class ApprovalDecision(Message):
    """Signal ``approval_decision``: the first one wins, later ones are logged and ignored."""

    approved: bool
    decided_by: str = Field(min_length=1, max_length=200)
    comment: str | None = Field(None, max_length=2000)
    # The named approver whose link this came from (the token's subject, never typed by
    # anyone). None: the shared link of a policy without named approvers.
    approver_id: str | None = Field(None, max_length=200)


class CommandCallback(Message):
    """Signal ``command_callback``: a downstream system's result for one command."""

    command: str  # validated by the workflow: an unknown name is logged and ignored
    status: Literal["succeeded", "failed"]
    result: dict[str, Any] | None = None
    error: str | None = Field(None, max_length=4000)


class CommandHeartbeat(Message):
    """Signal ``command_heartbeat``: a downstream system is still at work on one command.

    It resets the command's heartbeat deadline (``command_heartbeat_timeout``); the callback
    wait stays the hard cap. ``progress`` is whatever the system reports (bounded at the API).
    """

    command: str  # validated by the workflow: an unknown name is logged and ignored
    progress: JsonValue = None


class LockGranted(Message):
    """Signal ``lock_granted`` from the mutex: the holder's fencing token is ``lease_id``."""

    resource: str
    request_id: str
    lease_id: int


class LockRevoked(Message):
    """Signal ``lock_revoked`` from the mutex: the lease expired before it was released."""

    resource: str
    request_id: str
    lease_id: int
    reason: str


ANYONE = "*"  # the approver id of the shared link (a policy without named approvers)


class ApproverState(Message):
    """One approver of a process: invited when, reminded how often, and what they decided."""

    id: str
    name: str | None = None
    # "anyone": the shared link; "escalation": invited after ``escalate_after``.
    role: Literal["approver", "escalation", "anyone"] = "approver"
    invited_at: datetime | None = None
    reminders: int = 0
    last_reminded_at: datetime | None = None
    decision: Literal["approved", "rejected"] | None = None
    decided_at: datetime | None = None
    # For the shared link, the name the person typed; for a named approver, their name.
    decided_by: str | None = None
    comment: str | None = None

    @property
    def display(self) -> str:
        return self.name or self.id


class ApprovalNotice(Message):
    """One round of approval mail: the request, a reminder or an escalation, and to whom."""

    kind: Literal["request", "reminder", "escalation"]
    at: datetime
    to: list[str]  # approver ids; ANYONE for the shared link
    sent: bool = True
    error: str | None = None


class ApprovalState(Message):
    deadline: datetime | None = None
    # The outcome, once there is one. ``decided_by`` names who made it ("Alice and Bob" when
    # several approvals made the quorum); ``comment`` is kept when one decision settled it.
    decision: Literal["approved", "rejected"] | None = None
    decided_by: str | None = None
    decided_at: datetime | None = None
    comment: str | None = None
    # The policy at work (absent from processes started before it existed).
    required: int = 1
    reject_vetoes: bool = True
    approvers: list[ApproverState] = []
    approvals: int = 0
    rejections: int = 0
    needed: int = 0  # approvals still needed for the quorum (0 once settled)
    waiting_for: list[str] = []  # ids of invited approvers who have not decided
    escalates_at: datetime | None = None
    escalated_at: datetime | None = None
    next_reminder_at: datetime | None = None
    notices: list[ApprovalNotice] = []
    summary: str | None = None  # "1 of 2 approvals; waiting for Bob, Carol"

    def approver(self, approver_id: str) -> ApproverState | None:
        return next((a for a in self.approvers if a.id == approver_id), None)


class LockState(Message):
    resource: str
    status: Literal["not-requested", "requested", "held", "released", "cancelled", "revoked"] = (
        "not-requested"
    )
    request_id: str | None = None
    lease_id: int | None = None
    requested_at: datetime | None = None
    granted_at: datetime | None = None
    released_at: datetime | None = None
    deadline: datetime | None = None


class CommandState(Message):
    command: CommandName
    # "not-awaited": the completion policy was settled before this command finished.
    status: Literal[
        "not-started",
        "sending",
        "sent",
        "succeeded",
        "failed",
        "timed-out",
        "send-failed",
        "not-awaited",
    ] = "not-started"
    attempts: int = 0
    sent_at: datetime | None = None
    deadline: datetime | None = None
    finished_at: datetime | None = None
    result: dict[str, Any] | None = None
    error: str | None = None
    # Heartbeats of the downstream system (``command_heartbeat`` signals) and the last progress
    # it reported; the deadline by which the next is due, when the process asks for them.
    heartbeats: int = 0
    last_heartbeat_at: datetime | None = None
    progress: JsonValue = None
    heartbeat_deadline: datetime | None = None
    # A redriven process's command that had succeeded before: the process it succeeded in.
    kept_from: str | None = None


class ProcessState(Message):
    """Query ``state``: everything an operator or the approval page needs to know."""

    process_id: str
    requested_by: str
    description: str
    stage: Stage
    status: ProcessStatus
    created_at: datetime
    updated_at: datetime
    approval: ApprovalState
    lock: LockState
    commands: dict[CommandName, CommandState]
    failure_reason: FailureReason | None = None
    failure_message: str | None = None
    finished_at: datetime | None = None
    # Set on a redriven process: the failed process it continues, and how many redrives deep.
    redriven_from: str | None = None
    redrive_count: int = 0


# ---------------------------------------------------------------------------------------------
# MutexWorkflow
# ---------------------------------------------------------------------------------------------


class LockRequest(Message):
    """Signal ``request``: join the FIFO queue (sent with signal-with-start)."""

    requester_workflow_id: str
    request_id: str
    lease_timeout: timedelta
    requested_at: datetime
    # The run that asked: a reset makes a new run under the same workflow id, and the grant and
    # the liveness checks must follow the run, not only the id. None from older senders.
    requester_run_id: str | None = None
    # 1 (most urgent) to 5; older senders leave it out and wait at the default.
    priority: int = DEFAULT_LOCK_PRIORITY


class LockCancel(Message):
    """Signal ``cancel``: the requester stopped waiting; a grant that raced it is released."""

    request_id: str


class LockRelease(Message):
    """Signal ``release``: frees the lock only when ``lease_id`` is the current lease."""

    request_id: str
    lease_id: int


class Lease(Message):
    request_id: str
    holder_workflow_id: str
    lease_id: int
    granted_at: datetime
    expires_at: datetime
    holder_run_id: str | None = None  # None for a lease granted to an older requester


class MutexCounters(Message):
    grants: int = 0
    releases: int = 0
    stale_releases: int = 0
    cancelled_requests: int = 0
    expired_leases: int = 0
    abandoned_holders: int = 0
    failed_grants: int = 0
    # Cancel requests the mutex ignored: cancelling it would drop its holder and queue.
    ignored_cancels: int = 0
    # Leases moved to a new run of their holder (the holder was reset).
    moved_leases: int = 0


class MutexOptions(Message):
    # How often the holder's liveness is checked and a lease's expiry noticed.
    liveness_interval: timedelta = timedelta(minutes=1)
    # Continue-as-new after this many events even if the server does not suggest it sooner.
    max_history_events: int = Field(5000, ge=100)
    # Attempt limit for the liveness and record-keeping activities the mutex runs.
    activity_attempt_timeout: timedelta = timedelta(seconds=30)


class AbandonedMark(Message):
    """A holder that closed without releasing: its process record still to be marked abandoned.

    The mutex retries the mark until DynamoDB answers; one still pending at continue-as-new is
    carried to the next run (``MutexState.abandoned``) instead of holding up the queue."""

    process_id: str
    lease_id: int
    # How the holder's run ended (``CANCELED``, ``TERMINATED``, ``NOT_FOUND``...).
    status: str
    # When the mutex noticed, which the record keeps whichever run writes it.
    at: datetime


class MutexState(Message):
    """Carried across continue-as-new and returned by the ``state`` query."""

    resource: str
    holder: Lease | None = None
    queue: list[LockRequest] = []
    next_lease_id: int = 1
    counters: MutexCounters = MutexCounters()
    # The closed run this chain took over from (its holder, queue and lease ids), if any.
    recovered_from: str | None = None
    # Abandoned holders' records not marked yet (DynamoDB did not answer): the next run marks them.
    abandoned: list[AbandonedMark] = []
    # The closed run this run is still taking over from. Set only while it has not read that run:
    # a run closed meanwhile (terminated) adopted nothing, and whoever takes over from it must look
    # one run further back.
    taking_over_from: str | None = None
    # Releases and cancels that reached this run while it was still taking over, not applied yet
    # (the ``state`` query only; empty once the take-over is done). Whoever takes over from the
    # run applies them to the holder and queue it finds further back (``recover_mutex``).
    deferred_releases: list[LockRelease] = []
    deferred_cancels: list[LockCancel] = []


class MutexInput(Message):
    resource: str
    options: MutexOptions = MutexOptions()
    state: MutexState | None = None
    # A fresh run (not a continue-as-new) names the closed run before it, when there is one: an
    # operator terminated the mutex. The new run takes over that run's last state before it
    # grants anything, so its holder keeps the lock and its waiters their places.
    previous_run_id: str | None = None

    @model_validator(mode="after")
    def _same_resource(self) -> MutexInput:
        if self.state is not None and self.state.resource != self.resource:
            raise ValueError("state belongs to another resource")
        return self


# ---------------------------------------------------------------------------------------------
# Activity arguments and results
# ---------------------------------------------------------------------------------------------


class CreateProcessRecord(Message):
    process_id: str
    requested_by: str
    description: str
    created_at: datetime
    # A redriven process's record says where it came from.
    redriven_from: str | None = None
    redrive_count: int = 0


class UpdateProcessStatus(Message):
    process_id: str
    status: ProcessStatus
    reason: FailureReason | None = None
    message: str | None = None
    approved_by: str | None = None
    at: datetime


class StatusUpdateResult(Message):
    """``applied`` is False when the record was already final (a final state never moves)."""

    applied: bool
    status: ProcessStatus


class LinkTrace(Message):
    """The trace every approval link of a process continues (patch ``approval-links-traced``).

    Decided by the workflow, once per process: its own trace context, read from its start. So
    every link (the shared one, each named approver's, in the request, reminders and escalations)
    carries the same one, and a reminder still mails the very link the request did.
    """

    traceparent: str | None = None  # None: the process is not traced; the links carry none


class PublishApprovalRequest(Message):
    process_id: str
    requested_by: str
    description: str
    requested_at: datetime
    deadline: datetime
    # None (a process from before the patch): the link carries the publishing activity's trace.
    link_trace: LinkTrace | None = None


class NotifyApprovers(Message):
    """Mail approvers their links: each named approver one mail, the shared link one to all."""

    process_id: str
    requested_by: str
    description: str
    requested_at: datetime
    deadline: datetime
    kind: Literal["request", "reminder", "escalation"]
    # Which notice of this process this is (0, 1, ...): with the approver, the idempotency key.
    sequence: int = Field(ge=0)
    to: tuple[Approver, ...] = ()
    # Also (or only) the shared link, to the whole topic.
    anyone: bool = False
    summary: str | None = None  # where the decision stands, for reminders
    # None (a process from before the patch): the links carry no trace.
    link_trace: LinkTrace | None = None


class NotifyResult(Message):
    """The SNS message id of each mail, by approver id (ANYONE for the shared link)."""

    message_ids: dict[str, str] = {}


class SendCommand(Message):
    process_id: str
    command: CommandName
    deadline: datetime  # the callback wait's deadline; the callback token expires with it
    http_retry_statuses: tuple[int, ...] = (408, 429, 500, 502, 503, 504)
    max_retry_after: timedelta = timedelta(minutes=20)
    # The fence: the lock this command runs under and its lease id (a fencing token). The
    # downstream system refuses a lease lower than the highest it has seen for the resource.
    # None from processes started before the fence existed: they send no fence at all.
    lock_resource: str | None = None
    lease_id: int | None = None
    # A redrive sends under the original process's idempotency key, so a downstream system that
    # finished the work is not asked to do it twice; ``redrive`` tells it this is a redrive.
    original_process_id: str | None = None
    redrive: int = 0
    # How often the downstream system must heartbeat, when the process asks it to.
    heartbeat_timeout: timedelta | None = None


class SendResult(Message):
    """``duplicate`` is True when an earlier attempt had already sent (nothing sent again)."""

    command: CommandName
    idempotency_key: str
    attempt: int
    duplicate: bool = False
    detail: dict[str, Any] = {}


class RequestLock(Message):
    resource: str
    request: LockRequest
    mutex_options: MutexOptions = MutexOptions()


class CheckHolder(Message):
    """Activity ``check_holder``: is the run that holds a lease still running?"""

    workflow_id: str
    run_id: str | None = None  # None for a lease granted to an older requester: any run
    # Also ask a newer run (after a reset) what it believes about the lock (its state query).
    with_lock: bool = False


class HolderLiveness(Message):
    workflow_id: str
    running: bool
    status: str
    # When the holder's own run closed but a newer run of the same workflow id runs (a reset):
    # that run. The lease follows it.
    current_run_id: str | None = None
    # What that newer run believes about the lock (its ``state`` query): if it holds the very
    # lease (reset to after its grant, or the grant reapplied), it keeps it.
    current_lock: LockState | None = None


class RecoverMutex(Message):
    """Activity ``recover_mutex``: the last state of a closed run of the resource's mutex."""

    resource: str
    run_id: str
