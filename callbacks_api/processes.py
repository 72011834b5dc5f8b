"""The API's only contact with Temporal: signal a process, describe it, read its state.

Signals come first and need no worker: the server makes a signal durable as soon as it accepts
it, and the workflow handles it whenever a worker runs. Only a signal the server refuses as
NOT_FOUND is looked into, with ``describe`` (answered by the server too), to tell a closed process
from one that never existed. The ``state`` query needs a running worker, so it serves only what a
person reads (the approval pages), never the path that records anything.

Every Temporal failure becomes a ``Problem`` here, so handlers never see an RPC error and the
client never sees a stack trace. Signals are counted by outcome.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

from cachetools import TTLCache
from prometheus_client import Counter
from temporalio.api.enums.v1 import PendingWorkflowTaskState
from temporalio.client import (
    Client,
    WorkflowExecutionDescription,
    WorkflowExecutionStatus,
    WorkflowHandle,
    WorkflowQueryFailedError,
    WorkflowQueryRejectedError,
)
from temporalio.common import QueryRejectCondition, SearchAttributeKey
from temporalio.service import RPCError, RPCStatusCode

from callbacks_api import problems
from callbacks_api.problems import Problem
from common.closed import closed_by_temporal, temporal_status_name
from common.unanswered import diagnose, server_saw_no_poller, task_queue_polled
from workflows.messages import (
    APPROVAL_DECISION_SIGNAL,
    COMMAND_CALLBACK_SIGNAL,
    COMMAND_HEARTBEAT_SIGNAL,
    FINAL_STATUS_VALUES,
    PROCESS_STATUS_ATTRIBUTE,
    STATE_QUERY,
    ApprovalDecision,
    CommandCallback,
    CommandHeartbeat,
    ProcessState,
)

logger = logging.getLogger(__name__)

_STATUS_KEY = SearchAttributeKey.for_keyword(PROCESS_STATUS_ATTRIBUTE)
PRESENCE_TTL = timedelta(seconds=2)

# Worth another try: the server was away, slow, overloaded or interrupted (503, Retry-After).
# INTERNAL and UNKNOWN are here too: the server answers INTERNAL when its own store fails, which
# passes, and a signal refused so may or may not have been written. Any other status
# (INVALID_ARGUMENT, PERMISSION_DENIED, FAILED_PRECONDITION, ...) is met again by the same
# signal, so it is answered as a refusal (4xx/500), never "try again".
TRANSIENT = frozenset(
    {
        RPCStatusCode.UNAVAILABLE,
        RPCStatusCode.DEADLINE_EXCEEDED,
        RPCStatusCode.RESOURCE_EXHAUSTED,
        RPCStatusCode.ABORTED,
        RPCStatusCode.CANCELLED,
        RPCStatusCode.INTERNAL,
        RPCStatusCode.UNKNOWN,
    }
)
# A read (query, describe) is refused FAILED_PRECONDITION ("WorkflowNotReady") while the process
# cannot answer yet: its workflow task failed three times or more in a row (a worker that crashes
# or is stopped, a bad deploy: "Unable to query workflow due to Workflow Task in failed state"),
# or its first task is not scheduled yet. That passes once a worker runs it: temporary (503).
READ_NOT_READY = RPCStatusCode.FAILED_PRECONDITION
# INVALID_ARGUMENT, worded so by the server: the run took its most signals
# (``history.maximumSignalsPerExecution``), or the message is over its payload limit
# (``limit.blobSize.error``).
SIGNAL_LIMIT_MESSAGE = "exceeded workflow execution limit for signal events"
BLOB_LIMIT_MESSAGE = "Blob data size exceeds limit"

# How the SDK (temporalio 1.35) says its lazy client could not connect: a RuntimeError raised
# before any request is sent, e.g. "Failed client connect: Server connection error: ...
# ConnectionRefused". Once connected, a refused connection is an RPCError UNAVAILABLE ("tcp
# connect error") that sdk-core retries inside the call, so the error alone cannot tell whether
# an earlier try reached the server: that stays "may or may not".
CONNECT_FAILED = "Failed client connect"

Signal = ApprovalDecision | CommandCallback | CommandHeartbeat
_SIGNAL_NAMES: dict[type[Signal], str] = {
    ApprovalDecision: APPROVAL_DECISION_SIGNAL,
    CommandCallback: COMMAND_CALLBACK_SIGNAL,
    CommandHeartbeat: COMMAND_HEARTBEAT_SIGNAL,
}


class Processes:
    """Signals, describes and queries ProcessWorkflows, bounding every call by ``call_timeout``.

    The SDK retries an unreachable server for a while, and a query waits for a worker; a person
    at a browser or a downstream system should hear "try again" after a few seconds instead.
    """

    def __init__(
        self,
        client: Client,
        call_timeout: timedelta = timedelta(seconds=5),
        signals: Counter | None = None,
    ) -> None:
        self._client = client
        self._timeout = call_timeout
        # Worker presence per task queue, briefly: see ``has_worker``.
        self._presence: TTLCache[str, bool] = TTLCache(
            maxsize=256, ttl=PRESENCE_TTL.total_seconds()
        )
        # Labelled (signal, outcome): "sent", or the kind of the refusal.
        self._signals = signals

    async def signal(self, process_id: str, message: Signal) -> None:
        """Deliver ``message``; once this returns, the server holds it durably.

        Refusals: 404 ``unknown-process``, 410 ``closed`` (told apart by ``describe``), 503 when
        the server did not confirm (the signal may or may not have arrived), and what the server
        refuses for good (``refusal``): 409 ``signal-limit``, 413 ``too-large``, 500
        ``temporal-refused``; nothing was recorded then.
        """
        name = _SIGNAL_NAMES[type(message)]
        handle = self._client.get_workflow_handle(process_id)
        try:
            try:
                async with self._call("signal", process_id, problems.delivery_unknown, signal=True):
                    await handle.signal(name, message, rpc_timeout=self._timeout)
            except Problem as problem:
                # NOT_FOUND says "no such workflow" and "already completed" alike.
                if problem.kind == "unknown-process":
                    raise await self._why_not_found(process_id) from None
                raise
        except Problem as problem:
            self._count(name, problem.kind)
            raise
        self._count(name, "sent")

    async def describe(self, process_id: str) -> WorkflowExecutionDescription:
        """The server's description (no worker needed); 404 ``unknown-process`` if none."""
        handle = self._client.get_workflow_handle(process_id)
        async with self._call("describe", process_id):
            return await handle.describe(rpc_timeout=self._timeout)

    async def state(
        self, process_id: str, within: timedelta | None = None, *, explain: bool = True
    ) -> ProcessState:
        """The ``state`` query, answered by a worker within ``within`` (the call timeout).

        No worker answering in time (or the server saying no worker that could answer polls) is
        503 ``no-worker-answer``; its detail says what the server shows then
        (``common.unanswered``: no worker polls, none of the build the process is pinned to, or
        the worker is busy with this process), unless ``explain`` is off (a caller that words it
        itself). A process whose workflow task keeps failing (or is not scheduled yet) is 503
        ``not-ready``.
        """
        wait = within or self._timeout
        handle = self._client.get_workflow_handle(process_id)
        try:
            async with self._call("query", process_id, problems.no_worker_answer, wait):
                try:
                    # Rejected by the server, with its status, if the process is closed: an
                    # open one (the usual case) is read in one call, as before.
                    state: ProcessState = await handle.query(
                        STATE_QUERY,
                        result_type=ProcessState,
                        rpc_timeout=wait,
                        reject_condition=QueryRejectCondition.NOT_OPEN,
                    )
                except WorkflowQueryRejectedError as rejected:
                    state = await self._closed_state(handle, rejected.status, wait)
        except Problem as problem:
            if problem.kind != "no-worker-answer" or not explain:
                raise
            cause = problem.__cause__
            refused = isinstance(cause, RPCError) and server_saw_no_poller(cause)
            unanswered = await diagnose(
                self._client, process_id, wait, self.poll_seen, refused=refused
            )
            logger.info("State query unanswered: %s", unanswered.reason(), extra=_about(process_id))
            raise problems.no_worker_answer(
                unanswered.for_people(), lasting=unanswered.lasting
            ) from problem.__cause__
        return state

    async def _closed_state(
        self,
        handle: WorkflowHandle[Any, Any],
        status: WorkflowExecutionStatus | None,
        wait: timedelta,
    ) -> ProcessState:
        """The state of a closed process, unless Temporal closed it by itself (410 ``closed``).

        A terminated or timed-out process still answers the query, from the last state it wrote
        (a worker replays it, and may even apply a signal that arrived after its last step),
        which shows it waiting for a decision it can no longer take: ``common.closed``. Its
        status is Temporal's, told without asking a worker. Any other closed process is read as
        it ended; a cancelled one that recorded no final status of its own is Temporal's too.
        """
        ended = closed_by_temporal(status, own_final=False)
        if ended is not None and status != WorkflowExecutionStatus.CANCELED:
            raise problems.closed_by_temporal(ended)
        state: ProcessState = await handle.query(
            STATE_QUERY, result_type=ProcessState, rpc_timeout=wait
        )
        ended = closed_by_temporal(status, state.status.is_final)
        if ended is not None:
            raise problems.closed_by_temporal(ended)
        return state

    async def has_worker(self, description: WorkflowExecutionDescription) -> bool:
        """Whether a worker is at work on this process or polls its task queue (server-side)."""
        raw = description.raw_description
        if (
            raw.HasField("pending_workflow_task")
            and raw.pending_workflow_task.state
            == PendingWorkflowTaskState.PENDING_WORKFLOW_TASK_STATE_STARTED
        ):
            return True
        return await self.polled(description.task_queue)

    async def polled(self, task_queue: str) -> bool:
        """Whether a worker polls ``task_queue`` for workflow tasks, as the server saw lately.

        Tells "no worker runs" (say "being recorded" at once) from "a worker is busy" (a burst of
        decisions: wait for it). A worker long-polls for up to a minute, so a poll seen within
        ``POLLER_FRESHNESS`` means it is alive; a killed one still counts for that long. Not
        known (the server did not answer) counts as not there: the caller says "being recorded".
        """
        return bool(await self.poll_seen(task_queue))

    async def poll_seen(self, task_queue: str) -> bool | None:
        """``polled``, or None when the server did not say. The answer per task queue is kept
        for ``PRESENCE_TTL``, so a burst asks the server once."""
        known = self._presence.get(task_queue)
        if known is not None:
            return known
        try:
            async with self._call("describe task queue", task_queue):
                present = await task_queue_polled(self._client, task_queue, self._timeout)
        except Problem:
            return None
        self._presence[task_queue] = present
        return present

    async def ready(self) -> bool:
        """Whether the Temporal frontend answers a health check right now."""
        try:
            async with asyncio.timeout(self._timeout.total_seconds()):
                return await self._client.service_client.check_health(timeout=self._timeout)
        except (RPCError, RuntimeError, TimeoutError) as err:
            logger.warning("Temporal is not ready: %s", err)
            return False

    async def _why_not_found(self, process_id: str) -> Problem:
        """After a NOT_FOUND signal: 410 if the process ran and closed, else 404."""
        try:
            description = await self.describe(process_id)
        except Problem as problem:
            # unknown-process, or the server went away meanwhile (503). Either way the server
            # refused the signal itself: nothing was recorded.
            problem.nothing_recorded = True
            return problem
        if description.status == WorkflowExecutionStatus.RUNNING:
            # Closed and started again under the same id between the two calls: ask for a retry.
            return problems.delivery_unknown()
        return problems.process_closed(status_of(description))

    def _count(self, signal: str, outcome: str) -> None:
        if self._signals is not None:
            self._signals.labels(signal, outcome).inc()

    @asynccontextmanager
    async def _call(
        self,
        what: str,
        process_id: str,
        unanswered: Callable[[], Problem] = problems.temporal_unavailable,
        within: timedelta | None = None,
        *,
        signal: bool = False,
    ) -> AsyncIterator[None]:
        """Map Temporal failures to answers; ``unanswered`` is the one for "no reply in time"
        (for a signal that means "may have arrived"; for a query, "no worker answered").
        ``signal`` says whether this call could record anything (a refusal then says it did not)."""
        try:
            async with asyncio.timeout((within or self._timeout).total_seconds()):
                yield
        except RPCError as err:
            if err.status == RPCStatusCode.NOT_FOUND:
                raise problems.unknown_process() from err
            if server_saw_no_poller(err) and not signal:
                # No worker that could answer polls (none, or none of the process's pinned
                # build): a query nobody answered, as a timeout is, not a process not ready.
                logger.info("Temporal %s: %s", what, err.message, extra=_about(process_id))
                raise unanswered() from err
            if err.status == READ_NOT_READY and not signal:
                logger.warning(
                    "Temporal %s: process not ready: %s",
                    what,
                    err.message,
                    extra=_about(process_id),
                )
                raise problems.process_not_ready() from err
            if err.status not in TRANSIENT:
                # Sending the same request again gets the same refusal: say so, not "try again".
                logger.error(
                    "Temporal refused the %s: %s %s",
                    what,
                    err.status.name,
                    err.message,
                    extra=_about(process_id),
                )
                raise refusal(err, signal=signal) from err
            if err.status == RPCStatusCode.DEADLINE_EXCEEDED:
                # The server's own deadline: for a query, no worker took it in time.
                logger.info("Temporal %s not answered in time: %s", what, err.message)
            else:
                logger.warning("Temporal %s failed: %s", what, err, extra=_about(process_id))
            raise unanswered() from err
        except TimeoutError as err:
            logger.info("Temporal %s timed out", what, extra=_about(process_id))
            raise unanswered() from err
        except WorkflowQueryFailedError as err:
            logger.error("State query failed: %s", err, extra=_about(process_id))
            raise problems.internal_error() from err
        except RuntimeError as err:
            if str(err).startswith(CONNECT_FAILED):
                # The lazy client could not connect: no request left this API.
                logger.warning(
                    "Temporal %s could not connect: %s", what, err, extra=_about(process_id)
                )
                raise problems.temporal_not_connected() from err
            logger.error("Temporal %s failed: %s", what, err, extra=_about(process_id))
            raise unanswered() from err


def refusal(err: RPCError, *, signal: bool = True) -> Problem:
    """The answer to a Temporal refusal that another try would meet again (not ``TRANSIENT``).

    Two refusals are the process's, not ours, and a client can act on them; their wording is
    the server's (temporal 1.32; tests/integration/test_temporal_refusals.py reads it from a real
    dev server, so a server that words them differently fails there, not silently here). Any
    other is this deployment's fault (credentials, namespace, a request the API built wrong):
    500, and the log names the cause. Only a refused signal says "nothing was recorded": a read
    records nothing anyway, and what was signalled before it stays delivered.
    """
    if not signal:
        return problems.temporal_refused_read()
    if err.status == RPCStatusCode.INVALID_ARGUMENT:
        if SIGNAL_LIMIT_MESSAGE in err.message:
            return problems.signal_limit()
        if BLOB_LIMIT_MESSAGE in err.message:
            return problems.too_large_for_temporal()
    return problems.temporal_refused()


def status_of(description: WorkflowExecutionDescription) -> str:
    """The closed process's status to tell (``common.closed``): Temporal's when Temporal closed
    it by itself (``terminated``), else the process's own (``failed``...), else Temporal's."""
    own = description.typed_search_attributes.get(_STATUS_KEY)
    outside = closed_by_temporal(description.status, own in FINAL_STATUS_VALUES)
    if outside is not None:
        return outside
    if own:
        return str(own)
    return temporal_status_name(description.status) if description.status else "closed"


def _about(process_id: str) -> dict[str, str]:
    """``extra`` for a log record about one process (``common.logging`` shows it as a tag)."""
    return {"process_id": process_id}
