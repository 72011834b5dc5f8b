"""The worker daemon: runs ProcessWorkflow, MutexWorkflow and every activity on one task queue.

``python -m worker``. Settings come from the environment (see docs/settings.md). SIGTERM or
SIGINT stop polling and let running activities finish before the process exits.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import aiohttp
from temporalio.client import Client
from temporalio.common import VersioningBehavior, WorkerDeploymentVersion
from temporalio.runtime import Runtime
from temporalio.worker import Worker, WorkerDeploymentConfig, WorkflowRunner
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

from activities.factory import build_activities
from activities.retry import LinearRetryInterceptor
from common.aws import AwsClients
from common.dropped_signals import counting_dropped_signals
from common.logging import configure as configure_logging
from common.settings import Settings, load_settings
from common.temporal import (
    TemporalAddressInvalid,
    TemporalUnavailable,
    connect,
    exit_process,
    metrics_runtime,
)
from common.tracing import configure as configure_tracing
from workflows.mutex import MutexWorkflow
from workflows.process import ProcessWorkflow
from workflows.versioning import AutoUpgradeMutexWorkflow

log = logging.getLogger("worker")

# boto3 calls are blocking; they run on the worker's one thread pool: the sync activities, local
# or not (the process table's writes are first tried as local activities), and the boto3 calls
# of the async ones (sends). Each activity uses at most one thread at a time, and the SDK runs at
# most ACTIVITY_THREADS activities and LOCAL_ACTIVITY_THREADS local activities at once (it would
# allow 100 local ones by default). The local slots alone do not bound the local threads: a try
# that times out frees its slot while its thread runs on, and sdk-core starts a try that waited
# past its deadline for a slot (the SDK one that waited for a thread), without a word to it.
# So a try calls DynamoDB only if its call can end by its deadline, and a late one ends at once
# without a call (activities/process_table.py: ``_client``; common/aws.py: LOCAL_TRY_CALL): a
# slot's thread is then free by the time the slot is. The pool has a second thread per local
# slot for what no timeout bounds (a DNS lookup or a credential refresh in a try's call), so a
# full local kind (a burst of writes, DynamoDB hanging) does not take the activities' threads,
# whose timeouts would run out in the pool's queue, nor those of the sends' boto3 calls inside
# the lock. An activity's thread outlives its timeout only as long as its boto3 call, which
# botocore ends within it (common/aws.py: 2 x (3 s connect + 10 s read) in the 30 s attempt).
ACTIVITY_THREADS = 32
LOCAL_ACTIVITY_THREADS = 16
WORKER_THREADS = ACTIVITY_THREADS + 2 * LOCAL_ACTIVITY_THREADS
GRACEFUL_SHUTDOWN = timedelta(seconds=20)

# The workflow code as an unversioned worker runs it; ``approval-flow replay`` and the replay
# tests check histories against exactly these.
WORKFLOWS: list[type] = [ProcessWorkflow, MutexWorkflow]


def deployment_config(settings: Settings) -> WorkerDeploymentConfig | None:
    """Worker Versioning from the settings, or None to run unversioned.

    A versioned worker pins every workflow to the build it started on unless the workflow says
    otherwise: a process never meets code it did not start with (see workflows/versioning.py).
    """
    if settings.deployment_name is None or settings.build_id is None:
        return None
    return WorkerDeploymentConfig(
        version=WorkerDeploymentVersion(
            deployment_name=settings.deployment_name, build_id=settings.build_id
        ),
        use_worker_versioning=True,
        default_versioning_behavior=VersioningBehavior.PINNED,
    )


def workflows_for(settings: Settings) -> list[type]:
    """What the worker registers: the never-ending mutex auto-upgrades under versioning."""
    if deployment_config(settings) is None:
        return list(WORKFLOWS)
    return [ProcessWorkflow, AutoUpgradeMutexWorkflow]


def workflow_runner(settings: Settings) -> WorkflowRunner:
    """The SDK's sandbox, with ``workflows`` imported once for every run (unless told not to).

    Left to itself the sandbox imports a workflow's module afresh for every run it keeps in
    its cache, so that no run sees what another left in module state: measured with ``make
    bench``, half of what a parked process costs (docs/testing.md, "Worker memory"). Ours hold
    none: every module-level and class-level value in ``workflows/`` is immutable and no
    function rebinds a global (tests/unit/test_workflow_modules.py), so one copy behaves as a
    fresh one would. What sharing gives up is the sandbox's check of the calls made from that
    code (``datetime.now()``, ``random``...); the workflow tests, the replay tests and
    ``approval-flow replay`` keep the strict sandbox, where such a call still fails.
    """
    restrictions = SandboxRestrictions.default
    if settings.worker_share_workflow_modules:
        restrictions = restrictions.with_passthrough_modules("workflows")
    return SandboxedWorkflowRunner(restrictions=restrictions)


def activity_executor() -> ThreadPoolExecutor:
    """The pool for both kinds of activity: as many threads as both may run at once, and one
    more per local slot (see WORKER_THREADS)."""
    return ThreadPoolExecutor(WORKER_THREADS, thread_name_prefix="activity")


def build_worker(
    client: Client,
    settings: Settings,
    activities: Sequence[Callable[..., Any]],
    executor: ThreadPoolExecutor,
) -> Worker:
    return Worker(
        client,
        task_queue=settings.task_queue,
        workflows=workflows_for(settings),
        activities=activities,
        activity_executor=executor,
        max_concurrent_activities=ACTIVITY_THREADS,
        max_concurrent_local_activities=LOCAL_ACTIVITY_THREADS,
        interceptors=[LinearRetryInterceptor()],
        graceful_shutdown_timeout=GRACEFUL_SHUTDOWN,
        deployment_config=deployment_config(settings),
        max_cached_workflows=settings.worker_max_cached_workflows,
        workflow_runner=workflow_runner(settings),
    )


async def run(settings: Settings) -> None:
    runtime = None
    if settings.metrics_port:
        runtime = metrics_runtime(settings.metrics_host, settings.metrics_port)
    client = await connect(settings, runtime=runtime)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    aws = AwsClients.from_settings(settings, max_pool_connections=WORKER_THREADS)
    meter = (runtime or Runtime.default()).metric_meter
    with (
        counting_dropped_signals(meter),
        activity_executor() as executor,
    ):
        async with aiohttp.ClientSession() as http:
            activities = build_activities(settings, aws, http, executor)
            worker = build_worker(client, settings, activities, executor)
            async with worker:
                log.info(
                    "worker polling task queue %s on %s as %s (metrics: %s)",
                    settings.task_queue,
                    settings.temporal_address,
                    f"build {settings.build_id} of deployment {settings.deployment_name}"
                    if settings.deployment_name
                    else "an unversioned worker",
                    f"http://{settings.metrics_host}:{settings.metrics_port}/metrics"
                    if settings.metrics_port
                    else "off",
                )
                await stop.wait()
                log.info("stopping: finishing running activities")
    log.info("worker stopped")


def main() -> None:
    settings = load_settings(Settings, "worker")
    configure_logging(settings)
    configure_tracing("worker")  # before the client, which carries it to the worker
    try:
        asyncio.run(run(settings))
    except TemporalAddressInvalid as err:
        print(f"worker: {err}", file=sys.stderr)
        exit_process(2)
    except TemporalUnavailable as err:
        print(f"worker: {err}", file=sys.stderr)
        exit_process(1)
    exit_process(0)


if __name__ == "__main__":
    main()
