"""Messages from a newer sender: every signal with a field this code does not know is honoured.

During a rolling deploy a newer worker, API or CLI may send a field an older worker has never
heard of. Each payload here is a plain dict with one such field, as a newer client would send
it; the workflow must act on it exactly as on the fields it knows. (With strict models the SDK
dropped these signals with only a log line.)
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from pydantic import BaseModel
from temporalio.client import WorkflowFailureError
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment

import workflows.messages as messages
from tests.workflow.fakes import eventually
from tests.workflow.harness import Harness, harness
from workflows.messages import (
    APPROVAL_DECISION_SIGNAL,
    COMMAND_CALLBACK_SIGNAL,
    LOCK_CANCEL_SIGNAL,
    LOCK_GRANTED_SIGNAL,
    LOCK_RELEASE_SIGNAL,
    LOCK_REQUEST_SIGNAL,
    LOCK_REVOKED_SIGNAL,
    PROCESS_ID_PREFIX,
    CommandName,
    Message,
    ProcessStatus,
    mutex_workflow_id,
)

NEWER = {"added_in_a_later_release": {"anything": [1, 2, 3]}}


def _message_models() -> list[type[BaseModel]]:
    return [
        model
        for model in vars(messages).values()
        if isinstance(model, type) and issubclass(model, Message) and model is not Message
    ]


@pytest.mark.parametrize("model", _message_models(), ids=lambda m: m.__name__)
def test_every_message_ignores_unknown_fields(model: type[BaseModel]) -> None:
    assert model.model_config.get("extra") == "ignore"


def test_every_new_field_of_the_upgraded_messages_is_optional() -> None:
    """Fields added for the fence and for run ids have defaults: older senders omit them."""
    added: dict[type[BaseModel], tuple[str, ...]] = {
        messages.SendCommand: ("lock_resource", "lease_id"),
        messages.LockRequest: ("requester_run_id",),
        messages.Lease: ("holder_run_id",),
    }
    for model, fields in added.items():
        for name in fields:
            assert not model.model_fields[name].is_required(), f"{model.__name__}.{name}"


async def _hold_lock(h: Harness) -> Any:
    holder = await h.start(
        requested_by="holder", command_timeout=timedelta(hours=10), lease_timeout=timedelta(days=1)
    )
    await h.approve(holder)
    await h.wait_sent(holder)
    return holder


async def test_process_signals_from_a_newer_client_are_honoured(
    time_env: WorkflowEnvironment,
) -> None:
    async with harness(time_env.client) as h:
        handle = await h.start()
        await eventually(lambda: handle.id in h.fakes.approvals, what="approval request")
        await handle.signal(
            APPROVAL_DECISION_SIGNAL,
            {"approved": True, "decided_by": "bob", "channel": "slack", **NEWER},
        )
        await h.wait_sent(handle)
        for command in CommandName:
            await handle.signal(
                COMMAND_CALLBACK_SIGNAL,
                {"command": command.value, "status": "succeeded", "trace_id": "t-1", **NEWER},
            )
        result = await handle.result()
        assert [o.status for o in result.commands] == ["succeeded", "succeeded"]
        assert (await h.state(handle)).approval.decided_by == "bob"


async def test_lock_signals_to_a_process_from_a_newer_mutex_are_honoured(
    time_env: WorkflowEnvironment,
) -> None:
    async with harness(time_env.client) as h:
        holder = await _hold_lock(h)
        waiter = await h.start(requested_by="waiter")
        await h.approve(waiter)
        await eventually(lambda: len(h.fakes.lock_requests) == 2, what="waiter queued")
        request_id = (await h.state(waiter)).lock.request_id
        # A grant with an extra field reaches the waiter: it takes the lock.
        await waiter.signal(
            LOCK_GRANTED_SIGNAL,
            {"resource": h.resource, "request_id": request_id, "lease_id": 77, **NEWER},
        )
        await h.wait_sent(waiter)
        assert (await h.state(waiter)).lock.lease_id == 77
        # A revocation with an extra field reaches the holder: it stops, as revoked.
        lease = (await h.state(holder)).lock
        await holder.signal(
            LOCK_REVOKED_SIGNAL,
            {
                "resource": h.resource,
                "request_id": lease.request_id,
                "lease_id": lease.lease_id,
                "reason": "operator",
                **NEWER,
            },
        )
        with pytest.raises(WorkflowFailureError) as failure:
            await holder.result()
        assert isinstance(failure.value.cause, ApplicationError)
        assert "revoked" in failure.value.cause.message


async def test_mutex_signals_from_a_newer_process_are_honoured(
    time_env: WorkflowEnvironment,
) -> None:
    async with harness(time_env.client) as h:
        holder = await _hold_lock(h)
        mutex = h.client.get_workflow_handle(mutex_workflow_id(h.resource))
        request = {
            "requester_workflow_id": f"{PROCESS_ID_PREFIX}newer",
            "request_id": "r-newer",
            "lease_timeout": 3600.0,
            "requested_at": "2030-01-01T00:00:00Z",
            "priority": 5,
            **NEWER,
        }
        await mutex.signal(LOCK_REQUEST_SIGNAL, request)
        await eventually(lambda: _queued(h, ["r-newer"]), what="the request queued")
        await mutex.signal(LOCK_CANCEL_SIGNAL, {"request_id": "r-newer", **NEWER})
        await eventually(lambda: _queued(h, []), what="the request cancelled")
        lease = (await h.mutex_state()).holder
        assert lease is not None and lease.holder_workflow_id == holder.id
        await mutex.signal(
            LOCK_RELEASE_SIGNAL,
            {"request_id": lease.request_id, "lease_id": lease.lease_id, **NEWER},
        )
        await eventually(lambda: _released(h), what="the lease released")


async def _queued(h: Harness, request_ids: list[str]) -> bool:
    return [r.request_id for r in (await h.mutex_state()).queue] == request_ids


async def _released(h: Harness) -> bool:
    state = await h.mutex_state()
    return state.holder is None and state.counters.releases == 1


async def test_a_workflow_input_from_a_newer_starter_is_honoured(
    time_env: WorkflowEnvironment,
) -> None:
    async with harness(time_env.client) as h:
        handle = await h.client.start_workflow(
            "ProcessWorkflow",
            {
                "requested_by": "alice",
                "options": {"lock_resource": h.resource, "escalate_after": 60, **NEWER},
                **NEWER,
            },
            id=f"{PROCESS_ID_PREFIX}newer-input",
            task_queue=h.task_queue,
        )
        await h.approve(handle)
        await h.wait_sent(handle)
        assert h.fakes.records[handle.id]["status"] is ProcessStatus.IN_PROGRESS
