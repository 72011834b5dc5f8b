"""In-memory stand-ins for the AWS and HTTP activities, registered under the real names.

They keep the real rules that matter to the workflow (a final status never moves, a repeated
create changes nothing) and record every call, so tests assert on what the workflow did.
The mutex activities stay real: they talk to the test server through ``activity.client()``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities import mutex
from activities.heartbeat import while_heartbeating
from workflows.messages import (
    STATE_QUERY,
    CheckHolder,
    CommandName,
    CreateProcessRecord,
    HolderLiveness,
    MutexState,
    NotifyApprovers,
    NotifyResult,
    ProcessState,
    ProcessStatus,
    PublishApprovalRequest,
    RecoverMutex,
    RequestLock,
    SendCommand,
    SendResult,
    StatusUpdateResult,
    UpdateProcessStatus,
)

_ALLOWED_FROM = {
    ProcessStatus.IN_PROGRESS: {ProcessStatus.PENDING},
    ProcessStatus.COMPLETED: {ProcessStatus.IN_PROGRESS},
    ProcessStatus.FAILED: {ProcessStatus.PENDING, ProcessStatus.IN_PROGRESS},
}


@dataclass
class Attempt:
    at: datetime
    attempt: int


@dataclass
class HttpReply:
    status: int
    retry_after: timedelta | None = None


@dataclass
class Fakes:
    records: dict[str, dict[str, Any]] = field(default_factory=dict)
    history: dict[str, list[ProcessStatus]] = field(default_factory=lambda: defaultdict(list))
    create_calls: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    approvals: dict[str, PublishApprovalRequest] = field(default_factory=dict)
    # Every notify_approvers call, per process, in order (requests, reminders, escalations).
    notices: dict[str, list[NotifyApprovers]] = field(default_factory=lambda: defaultdict(list))
    # Scripted: notices (by sequence) that always fail, and gates that hold a notice in flight
    # (time does not skip while an activity runs: a held reminder freezes workflow time).
    notify_failures: set[int] = field(default_factory=set)
    notify_gates: dict[int, asyncio.Event] = field(default_factory=dict)
    notify_reached: set[int] = field(default_factory=set)
    sends: dict[tuple[str, CommandName], list[Attempt]] = field(
        default_factory=lambda: defaultdict(list)
    )
    lock_requests: list[str] = field(default_factory=list)
    # The last SendCommand of each command (its deadline signs the callback token).
    commands: dict[tuple[str, CommandName], SendCommand] = field(default_factory=dict)
    publishing: set[str] = field(default_factory=set)
    # Scripted failures: how many create attempts fail first; HTTP replies per process.
    create_failures: int = 0
    http_replies: dict[str, list[HttpReply]] = field(default_factory=dict)
    sqs_down: bool = False
    describe_down: bool = False
    # Gates that hold an activity until the test opens them (to act while it is in flight).
    publish_gate: asyncio.Event | None = None
    fail_gate: asyncio.Event | None = None
    fail_waiting: set[str] = field(default_factory=set)  # processes whose failed write waits
    complete_gate: asyncio.Event | None = None
    complete_waiting: set[str] = field(default_factory=set)  # processes whose completed write waits
    # Holds command two's request in flight (heartbeating, as the real send) until opened; a
    # cancel that reaches the send is noted in ``cancels_seen`` and waits for the request.
    send_gate: asyncio.Event | None = None
    cancels_seen: set[tuple[str, CommandName]] = field(default_factory=set)
    sends_resolved: list[tuple[str, CommandName]] = field(default_factory=list)
    # Holds a take-over's read of the closed run (``recover_mutex``) until opened; the closed
    # runs it was asked for are noted in ``recovering``.
    recover_gate: asyncio.Event | None = None
    recovering: set[str] = field(default_factory=set)

    # -- activities ---------------------------------------------------------------------------

    @activity.defn(name="create_process")
    async def create_process(self, record: CreateProcessRecord) -> None:
        self.create_calls[record.process_id] += 1
        if self.create_failures > 0:
            self.create_failures -= 1
            raise RuntimeError("DynamoDB unavailable (scripted)")
        if record.process_id not in self.records:
            self.records[record.process_id] = {"status": ProcessStatus.PENDING}
            if record.redriven_from is not None:
                self.records[record.process_id].update(
                    redriven_from=record.redriven_from, redrive_count=record.redrive_count
                )
            self.history[record.process_id].append(ProcessStatus.PENDING)

    @activity.defn(name="update_process_status")
    async def update_process_status(self, update: UpdateProcessStatus) -> StatusUpdateResult:
        if self.fail_gate is not None and update.status is ProcessStatus.FAILED:
            self.fail_waiting.add(update.process_id)
            await self.fail_gate.wait()
        if self.complete_gate is not None and update.status is ProcessStatus.COMPLETED:
            self.complete_waiting.add(update.process_id)
            await self.complete_gate.wait()
        record = self.records.get(update.process_id)
        if record is None:
            raise ApplicationError(
                f"process record {update.process_id} does not exist",
                type="ProcessNotFound",
                non_retryable=True,
            )
        current: ProcessStatus = record["status"]
        if current == update.status:
            return StatusUpdateResult(applied=True, status=current)
        if current not in _ALLOWED_FROM[update.status]:
            return StatusUpdateResult(applied=False, status=current)
        record.update(status=update.status, reason=update.reason, message=update.message)
        self.history[update.process_id].append(update.status)
        return StatusUpdateResult(applied=True, status=update.status)

    @activity.defn(name="publish_approval_request")
    async def publish_approval_request(self, request: PublishApprovalRequest) -> str:
        if self.publish_gate is not None:
            self.publishing.add(request.process_id)
            await self.publish_gate.wait()
        self.approvals[request.process_id] = request
        return f"msg-{request.process_id}"

    @activity.defn(name="notify_approvers")
    async def notify_approvers(self, notice: NotifyApprovers) -> NotifyResult:
        if notice.sequence in self.notify_failures:
            raise RuntimeError("SNS unavailable (scripted)")
        calls = self.notices[notice.process_id]
        if not any(c.sequence == notice.sequence for c in calls):  # a retry sends nothing new
            calls.append(notice)
        gate = self.notify_gates.get(notice.sequence)
        if gate is not None:  # mailed, but the activity has not returned yet
            self.notify_reached.add(notice.sequence)
            await gate.wait()
        ids = [a.id for a in notice.to] + (["*"] if notice.anyone else [])
        return NotifyResult(message_ids={i: f"msg-{notice.sequence}-{i}" for i in ids})

    @activity.defn(name="send_command_one")
    async def send_command_one(self, command: SendCommand) -> SendResult:
        self._record_send(command)
        if self.sqs_down:
            raise RuntimeError("SQS unavailable (scripted)")
        return self._sent(command)

    @activity.defn(name="send_command_two")
    async def send_command_two(self, command: SendCommand) -> SendResult:
        self._record_send(command)
        if self.send_gate is not None:
            key = (command.process_id, command.command)
            try:
                await while_heartbeating(self._request_in_flight(key, self.send_gate))
            finally:
                self.sends_resolved.append(key)
        replies = self.http_replies.get(command.process_id)
        reply = replies.pop(0) if replies else HttpReply(200)
        if reply.status < 300:
            return self._sent(command)
        if reply.status not in command.http_retry_statuses:
            # A final failure settles the policy: report it only once the process has seen
            # command one's send resolve, or it cancels that send in the very workflow task
            # its result arrives in, which wedges the time-skipping server (sdk-java #2391).
            await self._seen_resolved(command.process_id, CommandName.ONE)
            raise ApplicationError(
                f"HTTP {reply.status} from command two", type="HttpStatusError", non_retryable=True
            )
        raise ApplicationError(
            f"HTTP {reply.status} from command two",
            type="HttpStatusError",
            next_retry_delay=reply.retry_after,
        )

    @activity.defn(name="request_lock")
    async def request_lock(self, request: RequestLock) -> None:
        self.lock_requests.append(request.request.requester_workflow_id)
        await mutex.request_lock(request)

    @activity.defn(name="describe_workflow")
    async def describe_workflow(self, workflow_id: str) -> HolderLiveness:
        if self.describe_down:
            raise RuntimeError("Temporal visibility unavailable (scripted)")
        return await mutex.describe_workflow(workflow_id)

    @activity.defn(name="check_holder")
    async def check_holder(self, holder: CheckHolder) -> HolderLiveness:
        if self.describe_down:
            raise RuntimeError("Temporal visibility unavailable (scripted)")
        return await mutex.check_holder(holder)

    @activity.defn(name="recover_mutex")
    async def recover_mutex(self, recover: RecoverMutex) -> MutexState | None:
        if self.recover_gate is not None:
            self.recovering.add(recover.run_id)
            await self.recover_gate.wait()
        return await mutex.recover_mutex(recover)

    def activities(self) -> list[Any]:
        return [
            self.create_process,
            self.update_process_status,
            self.publish_approval_request,
            self.notify_approvers,
            self.send_command_one,
            self.send_command_two,
            self.request_lock,
            self.describe_workflow,
            self.check_holder,
            self.recover_mutex,
        ]

    def activities_with_table(self, table: Any) -> list[Any]:
        """These activities, but the process table's two writes are ``table``'s (a real
        ``ProcessTableActivities``): for tests that fault the real DynamoDB under the writes."""
        real = [table.create_process, table.update_process_status]
        names = {a.__name__ for a in real}
        return [*real, *(a for a in self.activities() if a.__name__ not in names)]

    async def _seen_resolved(self, process_id: str, command: CommandName) -> None:
        """Until the process has seen ``command``'s send resolve (at most a few seconds: a send
        being retried does not resolve while this activity holds the test server's clock)."""
        handle = activity.client().get_workflow_handle(process_id)

        async def resolved() -> bool:
            state = await handle.query(STATE_QUERY, result_type=ProcessState)
            return state.commands[command].status not in ("not-started", "sending")

        with contextlib.suppress(AssertionError):
            await eventually(resolved, within=5.0, what=f"{command} resolved")

    async def _request_in_flight(self, key: tuple[str, CommandName], gate: asyncio.Event) -> None:
        """A request that takes until ``gate`` opens; it notes when a cancel reached the send."""
        opened = asyncio.ensure_future(gate.wait())
        while not opened.done():
            if activity.is_cancelled():
                self.cancels_seen.add(key)
            await asyncio.wait({opened}, timeout=0.02)

    # -- helpers for tests ----------------------------------------------------------------------

    def mailed(self, process_id: str, kind: str | None = None) -> list[tuple[str, list[str]]]:
        """``(kind, approver ids)`` of each notice sent for ``process_id``, in order."""
        return [
            (n.kind, [a.id for a in n.to] + (["*"] if n.anyone else []))
            for n in self.notices[process_id]
            if kind is None or n.kind == kind
        ]

    def sent(self, process_id: str, command: CommandName) -> bool:
        return bool(self.sends[(process_id, command)])

    def _record_send(self, command: SendCommand) -> None:
        self.commands[(command.process_id, command.command)] = command
        info = activity.info()
        self.sends[(command.process_id, command.command)].append(
            Attempt(at=info.started_time, attempt=info.attempt)
        )

    def _sent(self, command: SendCommand) -> SendResult:
        return SendResult(
            command=command.command,
            idempotency_key=f"{command.process_id}:{command.command.value}",
            attempt=activity.info().attempt,
        )


async def eventually(predicate: Any, within: float = 10.0, what: str = "condition") -> None:
    """Wait for ``predicate()`` to hold, checking often, failing after ``within`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)
