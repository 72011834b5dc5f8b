"""Reading workflows for the commands: describe one, ask its ``state`` query, read its status."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from temporalio.client import (
    Client,
    WorkflowExecution,
    WorkflowExecutionDescription,
    WorkflowHandle,
)
from temporalio.common import SearchAttributeKey
from temporalio.service import RPCError, RPCStatusCode

from cli.output import CliError
from common.closed import closed_by_temporal
from common.unanswered import diagnose, nobody_to_answer, server_saw_no_poller
from workflows.messages import (
    FINAL_STATUS_VALUES,
    PROCESS_STATUS_ATTRIBUTE,
    STATE_QUERY,
    ProcessState,
)

STATUS_KEY = SearchAttributeKey.for_keyword(PROCESS_STATUS_ATTRIBUTE)
# A query needs a worker to answer; without one the server would hold the call for a long time.
QUERY_TIMEOUT = timedelta(seconds=10)


async def describe(client: Client, workflow_id: str, what: str) -> WorkflowExecutionDescription:
    try:
        return await client.get_workflow_handle(workflow_id).describe()
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            raise CliError(f"no {what} with id {workflow_id}") from err
        raise


async def query_state(
    handle: WorkflowHandle[Any, Any], result_type: type[Any], client: Client | None = None
) -> tuple[Any | None, str | None]:
    """The ``state`` query's answer, or None and why there is none.

    Given the ``client``, an unanswered query is explained from what the server shows (no
    worker polls, none of the build the workflow is pinned to, or the worker is busy with this
    workflow: ``common.unanswered``); without it (a caller that only retries) it is only said
    to be unanswered. Meanwhile the server is asked whether any worker that could answer polls
    at all: when none did for ``POLLER_FRESHNESS`` that is said at once, instead of after the
    query's 10 s (the server itself would refuse it only a second before its deadline).
    """
    if client is None:
        return await _query(handle, result_type, None)
    query = asyncio.ensure_future(_query(handle, result_type, client))
    look = asyncio.ensure_future(nobody_to_answer(client, handle.id))
    try:
        await asyncio.wait({query, look}, return_when=asyncio.FIRST_COMPLETED)
        if not query.done():
            absent = await look
            if absent is not None:
                return None, absent.reason()
        return await query
    finally:
        for task in (query, look):
            task.cancel()
            # Whatever it raised, nobody needs it any more.
            task.add_done_callback(lambda done: done.cancelled() or done.exception())


async def _query(
    handle: WorkflowHandle[Any, Any], result_type: type[Any], client: Client | None
) -> tuple[Any | None, str | None]:
    try:
        return await handle.query(
            STATE_QUERY, result_type=result_type, rpc_timeout=QUERY_TIMEOUT
        ), None
    except RPCError as err:
        # The server refuses the query about a second before its deadline when no worker that
        # could answer polls (none, or none of the process's pinned build): unanswered too.
        refused = server_saw_no_poller(err)
        if refused or err.status in (RPCStatusCode.DEADLINE_EXCEEDED, RPCStatusCode.CANCELLED):
            if client is None:
                return None, f"no worker answered the state query within {_seconds(QUERY_TIMEOUT)}"
            unanswered = await diagnose(client, handle.id, QUERY_TIMEOUT, refused=refused)
            return None, unanswered.reason()
        return None, f"state query failed: {err.message}"
    except Exception as err:  # WorkflowQueryFailedError, WorkflowQueryRejectedError, ...
        return None, f"state query failed: {err}"


def _seconds(value: timedelta) -> str:
    return f"{value.total_seconds():g} s"


def process_status_of(description: WorkflowExecution) -> str | None:
    value = description.typed_search_attributes.get(STATUS_KEY)
    return str(value) if value is not None else None


def closed_by(description: WorkflowExecution, state: ProcessState | None = None) -> str | None:
    """Temporal's status (``terminated``...) when Temporal closed the process by itself, with
    none of its code running (``common.closed``); None when the process speaks for itself.
    Judged on its state when read, else on its ``ProcessStatus`` search attribute."""
    own = state.status.value if state is not None else process_status_of(description)
    return closed_by_temporal(description.status, own in FINAL_STATUS_VALUES)


def status_to_tell(description: WorkflowExecution, state: ProcessState | None = None) -> str | None:
    """The process's status as told to an operator: Temporal's when Temporal closed it by
    itself (its own still says ``pending``, say), else its own."""
    told = closed_by(description, state)
    if told is not None:
        return told
    return state.status.value if state is not None else process_status_of(description)
