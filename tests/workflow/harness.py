"""Run a worker with the fakes on a unique task queue and drive processes the way users do."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta

from temporalio import workflow
from temporalio.client import Client, WorkflowHandle
from temporalio.worker import Worker

from activities.retry import LinearRetryInterceptor
from tests.workflow.fakes import Fakes, eventually
from workflows.messages import (
    PROCESS_ID_PREFIX,
    ApprovalDecision,
    CommandCallback,
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


@workflow.defn(sandboxed=False)
class Clock:
    """Waits for a while; awaiting its result is how a test lets workflow time pass."""

    @workflow.run
    async def run(self, seconds: float) -> None:
        await workflow.sleep(seconds)


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
            workflows=[ProcessWorkflow, MutexWorkflow, Clock],
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
