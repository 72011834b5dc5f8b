"""When a worker last polled a task queue, as the Temporal server saw it, and of which build.

A worker long-polls its task queue, and the server remembers each poller with the time of its
last poll and, under Worker Versioning, the deployment and build it polls as: the one sign of a
running worker the server can give without the worker's help. ``make run`` waits on it before it
says it is ready (local_stack/readiness.py); an unanswered query reads it to tell "no worker"
from "a busy worker", and "no worker of the build this process is pinned to" from both
(common/unanswered.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from temporalio.api.enums.v1 import TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.client import Client


@dataclass(frozen=True)
class Poller:
    """One worker the server saw polling, and the build it polls as (None: unversioned)."""

    last_poll: datetime
    deployment_name: str | None = None
    build_id: str | None = None


async def workflow_pollers(
    client: Client, task_queue: str, rpc_timeout: timedelta | None = None
) -> list[Poller]:
    """The workers the server saw polling ``task_queue`` for workflow tasks, every build's.

    The server (1.32) lists each poller of the task queue whatever build it polls as, with its
    ``deployment_options`` (deployment name and build id) when it is a versioned worker.
    """
    response = await client.workflow_service.describe_task_queue(
        DescribeTaskQueueRequest(
            namespace=client.namespace,
            task_queue=TaskQueue(name=task_queue),
            task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW,
        ),
        timeout=rpc_timeout,  # the RPC's deadline
    )
    pollers = []
    for poller in response.pollers:
        versioned = poller.HasField("deployment_options")
        options = poller.deployment_options
        pollers.append(
            Poller(
                last_poll=poller.last_access_time.ToDatetime(tzinfo=UTC),
                deployment_name=options.deployment_name if versioned else None,
                build_id=options.build_id if versioned else None,
            )
        )
    return pollers


async def last_workflow_poll(
    client: Client, task_queue: str, rpc_timeout: timedelta | None = None
) -> datetime | None:
    """The latest poll of ``task_queue`` for workflow tasks; None if the server knows of none."""
    pollers = await workflow_pollers(client, task_queue, rpc_timeout)
    return max((poller.last_poll for poller in pollers), default=None)
