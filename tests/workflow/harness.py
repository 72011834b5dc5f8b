"""Run a worker with the fakes on a unique task queue and drive processes the way users do."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.client import Client, WorkflowHandle
from temporalio.worker import Worker

from activities.retry import LinearRetryInterceptor
from tests.workflow.fakes import Fakes, eventually
from workflows.messages import (
    COMMAND_CALLBACK_SIGNAL,
    COMMAND_HEARTBEAT_SIGNAL,
    PROCESS_ID_PREFIX,
    ApprovalDecision,
    CommandCallback,
    CommandHeartbeat,
    CommandName,
    MutexOptions,
    MutexState,
    ProcessInput,
    ProcessOptions,
    ProcessResult,
    ProcessState,
    mutex_workflow_id,
)
from workflows.mutex import MutexWorkflow
from workflows.process import ProcessWorkflow

# Options under which no process times out while a test arranges a queue of them: a process
# waits for the lock, and holds it, for as long as the test takes, while the clock runs on after
# every advance and awaited result (to the next timer, further when the client's lock is late:
# docs/testing.md). With the default 100-minute lock wait, a lock 0.1-0.3 s late after each
# result timed queues out (test_mutex, test_lock_priority).
PATIENT: dict[str, object] = {
    "lock_timeout": timedelta(days=1),
    "command_timeout": timedelta(hours=10),
    "lease_timeout": timedelta(days=1),
}


@workflow.defn(sandboxed=False)
class Clock:
    """Waits for a while; awaiting its result is how a test lets workflow time pass."""

    @workflow.run
    async def run(self, seconds: float) -> None:
        await workflow.sleep(seconds)


@dataclass
class Signal:
    """One signal of a scripted downstream system, sent ``after_seconds`` after the one before."""

    name: str
    arg: dict[str, Any]
    after_seconds: float = 0.0


def heartbeat(
    command: CommandName | str, progress: Any = None, after: timedelta = timedelta(0)
) -> Signal:
    name = command.value if isinstance(command, CommandName) else command
    beat = CommandHeartbeat(command=name, progress=progress)
    return Signal(COMMAND_HEARTBEAT_SIGNAL, beat.model_dump(mode="json"), after.total_seconds())


def callback(command: CommandName, after: timedelta = timedelta(0)) -> Signal:
    done = CommandCallback(command=command.value, status="succeeded", result={"ok": True})
    return Signal(COMMAND_CALLBACK_SIGNAL, done.model_dump(mode="json"), after.total_seconds())


@dataclass
class Script:
    process_id: str
    signals: list[Signal]


@workflow.defn(sandboxed=False)
class Downstream:
    """A downstream system's signals to a process, each at its workflow time.

    Sent by a workflow, a signal lands at its workflow time exactly: the time-skipping server
    keeps its clock still from a workflow's signal command until the signal is delivered. A
    signal the test sends after ``Harness.advance`` lands as late as the server ran ahead while
    the client was locking time again: on to the next timer of any workflow (the mutex's
    liveness check, each minute). Under load, 3-minute advances were seen to end 4 minutes on,
    and once the clock ran on more than 5 minutes past a script's last heartbeat before the
    test's next signal: a script that must not leave a gap ends with the callbacks.
    """

    @workflow.run
    async def run(self, script: Script) -> None:
        process = workflow.get_external_workflow_handle(script.process_id)
        for signal in script.signals:
            if signal.after_seconds > 0:
                await workflow.sleep(signal.after_seconds)
            await process.signal(signal.name, signal.arg)  # delivered before the next is sent


@dataclass
class Harness:
    client: Client
    task_queue: str
    fakes: Fakes
    resource: str
    # Whether wait_sent also waits for the process to see its sends resolve (see there). A
    # harness built by hand around other workers (test_rolling_upgrade) only watches the fakes.
    watch_the_process: bool = False

    def options(self, **overrides: object) -> ProcessOptions:
        """Default options, on a resource of this test's own so tests never share a lock."""
        return ProcessOptions.model_validate({"lock_resource": self.resource, **overrides})

    async def start(
        self, requested_by: str = "alice", **option_overrides: object
    ) -> WorkflowHandle[ProcessWorkflow, ProcessResult]:
        return await self.client.start_workflow(
            ProcessWorkflow.run,
            ProcessInput(
                requested_by=requested_by,
                description="rotate the payment keys",
                options=self.options(**option_overrides),
            ),
            id=f"{PROCESS_ID_PREFIX}{uuid.uuid4()}",
            task_queue=self.task_queue,
        )

    async def approve(self, handle: WorkflowHandle, approved: bool = True, by: str = "bob") -> None:
        await eventually(lambda: handle.id in self.fakes.approvals, what="approval request")
        await handle.signal(
            ProcessWorkflow.approval_decision, ApprovalDecision(approved=approved, decided_by=by)
        )

    async def decide_as(
        self,
        handle: WorkflowHandle,
        approver_id: str,
        approved: bool = True,
        comment: str | None = None,
    ) -> None:
        """Decide as a named approver, once their link was mailed (the id is the token's)."""
        await eventually(
            lambda: any(approver_id in to for _, to in self.fakes.mailed(handle.id)),
            what=f"mail to {approver_id}",
        )
        await handle.signal(
            ProcessWorkflow.approval_decision,
            ApprovalDecision(
                approved=approved, decided_by=approver_id, approver_id=approver_id, comment=comment
            ),
        )

    async def call_back(
        self, handle: WorkflowHandle, command: CommandName | str, status: str = "succeeded"
    ) -> None:
        name = command.value if isinstance(command, CommandName) else command
        await handle.signal(
            ProcessWorkflow.command_callback,
            CommandCallback(
                command=name,
                status=status,
                result={"ok": status == "succeeded"},
                error=None if status == "succeeded" else f"{name} broke",
            ),
        )

    async def wait_sent(self, handle: WorkflowHandle, *commands: CommandName) -> None:
        """Wait until the process has seen each command's send resolve (sent, or failed).

        Waiting for the workflow, not only for the fake to be called, matters: a callback that
        settles the completion policy while the other send's result is on its way makes the
        process cancel that send in the very task its result arrives in, which wedges the
        time-skipping server (sdk-java issue 2391; the real server handles it).
        """
        await self.wait_send_started(handle, *commands)
        if not self.watch_the_process:
            return
        for command in commands or tuple(CommandName):

            async def resolved(c: CommandName = command) -> bool:
                status = (await self.state(handle)).commands[c].status
                return status not in ("not-started", "sending")

            await eventually(resolved, what=f"the process to see {command} sent")

    async def wait_send_started(self, handle: WorkflowHandle, *commands: CommandName) -> None:
        """Wait until each command's send activity has been called (it may still be running)."""
        for command in commands or tuple(CommandName):
            await eventually(
                lambda c=command: self.fakes.sent(handle.id, c), what=f"{command} send started"
            )

    async def advance(self, duration: timedelta) -> None:
        """Let ``duration`` of workflow time pass on the time-skipping server.

        Awaiting a workflow's result skips time; ``env.sleep`` was seen to time out now and
        then when an activity called the server while it ran.
        """
        await self.client.execute_workflow(
            Clock.run,
            duration.total_seconds(),
            id=f"clock-{uuid.uuid4()}",
            task_queue=self.task_queue,
        )

    async def downstream(self, handle: WorkflowHandle, *script: Signal) -> None:
        """Send ``script`` to the process at its workflow times (see ``Downstream``); returns
        after the last signal, when the clock may have run on (to the next timer or so): what
        the process recorded tells the times.
        """
        await self.client.execute_workflow(
            Downstream.run,
            Script(process_id=handle.id, signals=list(script)),
            id=f"downstream-{uuid.uuid4()}",
            task_queue=self.task_queue,
        )

    async def state(self, handle: WorkflowHandle) -> ProcessState:
        return await handle.query(ProcessWorkflow.state)

    async def mutex_state(self) -> MutexState:
        handle = self.client.get_workflow_handle(mutex_workflow_id(self.resource))
        return await handle.query(MutexWorkflow.state)


@asynccontextmanager
async def harness(
    client: Client, fakes: Fakes | None = None, mutex_options: MutexOptions | None = None
) -> AsyncIterator[Harness]:
    task_queue = f"tq-{uuid.uuid4()}"
    fakes = fakes or Fakes()
    with ThreadPoolExecutor(8) as executor:
        async with Worker(
            client,
            task_queue=task_queue,
            workflows=[ProcessWorkflow, MutexWorkflow, Clock, Downstream],
            activities=fakes.activities(),
            activity_executor=executor,
            interceptors=[LinearRetryInterceptor()],
        ):
            yield Harness(
                client,
                task_queue,
                fakes,
                resource=f"res-{uuid.uuid4().hex[:8]}",
                watch_the_process=True,
            )
