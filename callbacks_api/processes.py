"""The API's only contact with Temporal: read a process's state and signal it.

Every Temporal failure becomes a ``Problem`` here, so handlers never see an RPC error and the
client never sees a stack trace. Signals sent are counted by outcome.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import timedelta

from prometheus_client import Counter
from temporalio.client import Client, WorkflowQueryFailedError
from temporalio.service import RPCError, RPCStatusCode

from callbacks_api import problems
from callbacks_api.problems import Problem
from workflows.messages import ApprovalDecision, CommandCallback, ProcessState

logger = logging.getLogger(__name__)

STATE_QUERY = "state"
APPROVAL_SIGNAL = "approval_decision"
COMMAND_SIGNAL = "command_callback"


class Processes:
    """Queries and signals ProcessWorkflows, bounding every call by ``call_timeout``.

    The SDK retries an unreachable server for a while, and a query waits for a worker; a person
    at a browser should hear "try again" after a few seconds instead.
    """

    def __init__(
        self,
        client: Client,
        call_timeout: timedelta = timedelta(seconds=5),
        signals: Counter | None = None,
    ) -> None:
        self._client = client
        self._timeout = call_timeout
        # Labelled (signal, outcome): "sent", or the kind of the refusal.
        self._signals = signals

    async def state(self, process_id: str) -> ProcessState:
        handle = self._client.get_workflow_handle(process_id)
        async with self._call("query", process_id):
            state: ProcessState = await handle.query(
                STATE_QUERY, result_type=ProcessState, rpc_timeout=self._timeout
            )
        return state

    async def signal(
        self,
        process_id: str,
        message: ApprovalDecision | CommandCallback,
        refusal_for: Callable[[ProcessState], Problem | None],
    ) -> None:
        """Signal, telling "closed meanwhile" apart from "unknown" when the server refuses.

        ``refusal_for`` says what the state, read again after a NOT_FOUND, means to the caller.
        """
        name = APPROVAL_SIGNAL if isinstance(message, ApprovalDecision) else COMMAND_SIGNAL
        handle = self._client.get_workflow_handle(process_id)
        try:
            async with self._call("signal", process_id, problems.delivery_unknown):
                await handle.signal(name, message, rpc_timeout=self._timeout)
        except Problem as problem:
            self._count(name, problem.kind)
            if problem.kind != "unknown-process":
                raise
            # The process closed between the state query and the signal (NOT_FOUND either way).
            state = await self.state(process_id)
            raise refusal_for(state) or problem from None
        self._count(name, "sent")

    async def wait_for(
        self,
        process_id: str,
        settled: Callable[[ProcessState], bool],
        within: timedelta,
        interval: timedelta = timedelta(milliseconds=25),
    ) -> tuple[ProcessState | None, bool]:
        """Query until ``settled(state)``, for at most ``within``: (last state seen, settled?).

        A signal is durable once sent, but only a query shows what the workflow made of it. Any
        failure here only means "not confirmed yet": the signal has already been delivered.
        """
        last: ProcessState | None = None
        pause = interval.total_seconds()
        try:
            async with asyncio.timeout(within.total_seconds()):
                while True:
                    last = await self.state(process_id)
                    if settled(last):
                        return last, True
                    await asyncio.sleep(pause)
                    pause = min(pause * 2, 0.2)
        except TimeoutError:
            pass
        except Problem as problem:
            logger.warning("Could not confirm the outcome: %s", problem, extra=_about(process_id))
        return last, False

    async def ready(self) -> bool:
        """Whether the Temporal frontend answers a health check right now."""
        try:
            async with asyncio.timeout(self._timeout.total_seconds()):
                return await self._client.service_client.check_health(timeout=self._timeout)
        except (RPCError, RuntimeError, TimeoutError) as err:
            logger.warning("Temporal is not ready: %s", err)
            return False

    def _count(self, signal: str, outcome: str) -> None:
        if self._signals is not None:
            self._signals.labels(signal, outcome).inc()

    @asynccontextmanager
    async def _call(
        self,
        what: str,
        process_id: str,
        unanswered: Callable[[], Problem] = problems.temporal_unavailable,
    ) -> AsyncIterator[None]:
        """Map Temporal failures to answers; ``unanswered`` is the one for "no reply in time"
        (for a signal that means "may have arrived", not "nothing happened")."""
        try:
            async with asyncio.timeout(self._timeout.total_seconds()):
                yield
        except RPCError as err:
            if err.status == RPCStatusCode.NOT_FOUND:
                # A signal to a closed workflow says NOT_FOUND too: callers that signal look at
                # the state again after this refusal to tell "closed" from "unknown".
                raise problems.unknown_process() from err
            logger.warning("Temporal %s failed: %s", what, err, extra=_about(process_id))
            raise unanswered() from err
        except TimeoutError as err:
            logger.warning("Temporal %s timed out", what, extra=_about(process_id))
            raise unanswered() from err
        except WorkflowQueryFailedError as err:
            logger.error("State query failed: %s", err, extra=_about(process_id))
            raise problems.internal_error() from err
        except RuntimeError as err:
            # A lazy client that cannot connect raises RuntimeError("Failed client connect: ...");
            # nothing reached the server.
            logger.warning("Temporal %s could not connect: %s", what, err, extra=_about(process_id))
            raise problems.temporal_unavailable() from err


def _about(process_id: str) -> dict[str, str]:
    """``extra`` for a log record about one process (``common.logging`` shows it as a tag)."""
    return {"process_id": process_id}
