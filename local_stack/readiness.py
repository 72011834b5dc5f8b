"""How the supervisor knows a part is ready: one check each, polled against a deadline."""

from __future__ import annotations

import aiohttp
from temporalio.api.enums.v1 import TaskQueueType
from temporalio.api.operatorservice.v1 import ListSearchAttributesRequest
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.client import Client

from workflows.messages import PROCESS_STATUS_ATTRIBUTE


async def http_ok(http: aiohttp.ClientSession, url: str, any_status: bool = False) -> bool:
    try:
        async with http.get(url) as response:
            return any_status or response.status == 200
    except (aiohttp.ClientError, TimeoutError):
        return False


async def temporal_ready(client: Client) -> bool:
    """The namespace answers and the search attribute is registered."""
    response = await client.operator_service.list_search_attributes(
        ListSearchAttributesRequest(namespace=client.namespace)
    )
    return PROCESS_STATUS_ATTRIBUTE in response.custom_attributes


async def worker_polling(client: Client, task_queue: str, since: float) -> bool:
    """A worker polls the task queue (a poller seen after ``since``, not one from a past run)."""
    response = await client.workflow_service.describe_task_queue(
        DescribeTaskQueueRequest(
            namespace=client.namespace,
            task_queue=TaskQueue(name=task_queue),
            task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW,
        )
    )
    return any(p.last_access_time.ToSeconds() >= int(since) for p in response.pollers)
