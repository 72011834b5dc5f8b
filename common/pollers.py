"""When a worker last polled a task queue, as the Temporal server saw it.

A worker long-polls its task queue, and the server remembers each poller with the time of its
last poll: the one sign of a running worker the server can give without the worker's help.
``make run`` waits on it before it says it is ready (local_stack/readiness.py); an unanswered
query reads it to tell "no worker" from "a busy worker" (common/unanswered.py).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from temporalio.api.enums.v1 import TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.client import Client


async def last_workflow_poll(
    client: Client, task_queue: str, rpc_timeout: timedelta | None = None
) -> datetime | None:
    """The latest poll of ``task_queue`` for workflow tasks; None if the server knows of none."""
    response = await client.workflow_service.describe_task_queue(
        DescribeTaskQueueRequest(
            namespace=client.namespace,
            task_queue=TaskQueue(name=task_queue),
            task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW,
        ),
        timeout=rpc_timeout,  # the RPC's deadline
    )
    return max(
        (poller.last_access_time.ToDatetime(tzinfo=UTC) for poller in response.pollers),
        default=None,
    )
