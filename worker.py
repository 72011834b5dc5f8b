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
from temporalio.worker import Worker

from activities.aws import AwsClients
from activities.factory import build_activities
from activities.retry import LinearRetryInterceptor
from common.logging import configure as configure_logging
from common.settings import Settings, load_settings
from common.temporal import TemporalUnavailable, connect, exit_process, metrics_runtime
from workflows.mutex import MutexWorkflow
from workflows.process import ProcessWorkflow

log = logging.getLogger("worker")

# boto3 calls are blocking; they run on this many threads.
ACTIVITY_THREADS = 32
GRACEFUL_SHUTDOWN = timedelta(seconds=20)


def build_worker(
    client: Client,
    settings: Settings,
    activities: Sequence[Callable[..., Any]],
    executor: ThreadPoolExecutor,
) -> Worker:
    return Worker(
        client,
        task_queue=settings.task_queue,
        workflows=[ProcessWorkflow, MutexWorkflow],
        activities=activities,
        activity_executor=executor,
        max_concurrent_activities=ACTIVITY_THREADS,
        interceptors=[LinearRetryInterceptor()],
        graceful_shutdown_timeout=GRACEFUL_SHUTDOWN,
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
    aws = AwsClients.from_settings(settings)
    with ThreadPoolExecutor(ACTIVITY_THREADS, thread_name_prefix="activity") as executor:
        async with aiohttp.ClientSession() as http:
            worker = build_worker(client, settings, build_activities(settings, aws, http), executor)
            async with worker:
                log.info(
                    "worker polling task queue %s on %s (metrics: %s)",
                    settings.task_queue,
                    settings.temporal_address,
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
    try:
        asyncio.run(run(settings))
    except TemporalUnavailable as err:
        print(f"worker: {err}", file=sys.stderr)
        exit_process(1)
    exit_process(0)


if __name__ == "__main__":
    main()
