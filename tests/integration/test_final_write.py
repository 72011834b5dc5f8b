"""The final write of a record outlives a DynamoDB outage: a real emulator, frozen with SIGSTOP.

A record left ``in-progress`` is a process nobody will ever finish, so the write that closes it
retries without an attempt limit. Here the emulator stops answering (SIGSTOP: connections hang,
as with a network partition) just before the process completes, and stays frozen for longer than
the process's whole AWS retry budget; once it answers again (SIGCONT) the record ends
``completed`` and the process completes.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import pytest
from temporalio.client import WorkflowHandle
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.process_table import ProcessTableActivities
from activities.retry import LinearRetryInterceptor
from common.aws import AwsClients
from common.aws_resources import ensure_resources
from tests.support.moto_server import (
    MotoServer,
    moto_settings,
    record_field,
    running_moto_server,
)
from tests.workflow.fakes import Fakes, eventually
from tests.workflow.harness import Harness
from workflows.messages import CommandName, ProcessStatus, RetrySettings
from workflows.mutex import MutexWorkflow
from workflows.process import ProcessWorkflow

pytestmark = pytest.mark.integration

SECOND = timedelta(seconds=1)
# The original's retry budget, cut to seconds: three attempts, 1 s x attempt apart.
AWS_RETRY = RetrySettings(max_attempts=3, delay=SECOND)
UPDATE = "update_process_status"


@pytest.fixture
def moto() -> Iterator[MotoServer]:
    """An emulator of this test's own: freezing it must not stall anyone else."""
    with running_moto_server() as server:
        yield server


async def _attempt(handle: WorkflowHandle[Any, Any], activity: str) -> int:
    """The attempt a pending activity of the workflow is on (0 when none is pending)."""
    description = await handle.describe()
    return max(
        (
            a.attempt
            for a in description.raw_description.pending_activities
            if a.activity_type.name == activity
        ),
        default=0,
    )


@pytest.mark.duration(12)
async def test_completed_write_outlives_a_frozen_emulator(
    dev_env: WorkflowEnvironment, moto: MotoServer
) -> None:
    settings = moto_settings(moto)
    clients = AwsClients.from_settings(settings)
    ensure_resources(settings, clients)
    table = ProcessTableActivities(clients.dynamodb, settings.process_table)
    fakes = Fakes()  # approval mail and sends; the process table is the real one
    activities = fakes.activities_with_table(table)
    task_queue = f"final-write-{uuid.uuid4()}"
    with ThreadPoolExecutor(16) as executor:
        async with Worker(
            dev_env.client,
            task_queue=task_queue,
            workflows=[ProcessWorkflow, MutexWorkflow],
            activities=activities,
            activity_executor=executor,
            interceptors=[LinearRetryInterceptor()],
        ):
            h = Harness(dev_env.client, task_queue, fakes, resource=f"final-{uuid.uuid4().hex[:8]}")
            handle = await h.start(
                aws_retry=AWS_RETRY,
                activity_attempt_timeout=2 * SECOND,
                final_write_max_interval=SECOND,
            )
            await h.approve(handle)
            await h.wait_sent(handle)
            assert record_field(clients, settings.process_table, handle.id) == "in-progress"
            with moto.frozen():
                await h.call_back(handle, CommandName.ONE)
                await h.call_back(handle, CommandName.TWO)
                # Frozen past the whole retry budget of an ordinary write (3 attempts).
                await eventually(
                    lambda: _beyond(handle, AWS_RETRY.max_attempts + 1),
                    within=60,
                    what="the completed write retried past the AWS retry budget",
                )
            result = await handle.result()
    assert result.status == "success"
    assert record_field(clients, settings.process_table, handle.id) == ProcessStatus.COMPLETED.value


async def _beyond(handle: WorkflowHandle[Any, Any], attempt: int) -> bool:
    return await _attempt(handle, UPDATE) >= attempt
