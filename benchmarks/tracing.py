"""What tracing costs a happy path: ``python -m benchmarks.tracing [--processes N] [--rounds R]``.

Runs whole processes in one program, tracing off and on in turn: the dev server and the AWS
emulator as real processes; the worker with its real activities, the callbacks API and the
simulator (no delay) in this program, over loopback HTTP and SQS. Each process is started,
its approval mail read from SNS (through an SQS subscription), the page opened and the form
posted, then awaited to completion. "On" exports every span over OTLP/HTTP, batched, to a
stand-in collector on loopback, as a deployment would. The first process of each run warms up
and is not counted. Prints medians per phase; timings on a shared machine are noisy, so the
rounds alternate off and on.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import statistics
import time
import uuid
from collections.abc import Iterable
from contextlib import AsyncExitStack

import aiohttp
from aiohttp import web
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from temporalio.testing import WorkflowEnvironment

from activities.factory import build_activities
from callbacks_api.app import create_app
from common import tracing
from common.aws import AwsClients
from common.aws_resources import ensure_resources
from common.temporal import connect, exit_process
from simulator import downstream as simulator
from simulator.inbox import InboxMessage
from simulator.settings import SimulatorSettings
from starter import StarterSettings, start_process
from tests.support.http import serving
from tests.support.moto_server import MotoServer, moto_settings, running_moto_server
from tests.support.temporal import start_dev_server
from worker import activity_executor, build_worker
from workflows.messages import ProcessOptions

# (start -> approval mail, approval POST, approved -> completed), in seconds
Phases = tuple[float, float, float]


async def run(
    traced: tracing.Tracing, dev: WorkflowEnvironment, moto: MotoServer, processes: int
) -> list[Phases]:
    suffix = uuid.uuid4().hex[:10]
    base = moto_settings(
        moto,
        task_queue=f"bench-tracing-{suffix}",
        temporal_address=dev.client.service_client.config.target_host,
    )
    clients = AwsClients.from_settings(base)
    resources = ensure_resources(base, clients)
    mailbox = clients.sqs.create_queue(QueueName=f"mailbox-{suffix}")["QueueUrl"]
    arn = clients.sqs.get_queue_attributes(QueueUrl=mailbox, AttributeNames=["QueueArn"])
    clients.sns.subscribe(
        TopicArn=resources.topic_arn, Protocol="sqs", Endpoint=arn["Attributes"]["QueueArn"]
    )
    phases: list[Phases] = []
    async with AsyncExitStack() as stack:
        client = await connect(base, tracing=traced)
        http = await stack.enter_async_context(aiohttp.ClientSession())
        api = await stack.enter_async_context(serving(create_app(base, client, tracing=traced)))
        downstream = simulator.Downstream(
            SimulatorSettings.model_validate(
                {
                    "SIMULATOR_QUEUE_URL": base.command_queue_url,
                    "AWS_ENDPOINT_URL": moto.endpoint_url,
                    "min_delay": 0,
                    "max_delay": 0,
                }
            ),
            http,
        )
        commands = await stack.enter_async_context(
            serving(simulator.create_app(downstream, "/commands/two"))
        )
        consumer = asyncio.create_task(downstream.consume_queue(clients.sqs))
        stack.callback(consumer.cancel)
        settings = StarterSettings(
            **{
                **base.model_dump(),
                "signing_keys": base.signing_keys,
                "callback_base_url": api,
                "command_url": f"{commands}/commands/two",
                "process": ProcessOptions(lock_resource=f"bench-tracing-{suffix}"),
            }
        )
        executor = stack.enter_context(activity_executor())
        activities = build_activities(settings, clients, http, executor)
        await stack.enter_async_context(build_worker(client, settings, activities, executor))
        for number in range(processes + 1):
            began = time.monotonic()
            started = await start_process(client, settings, "bench", "tracing overhead")
            link = await _approval_link(clients, mailbox, started.process_id)
            mailed = time.monotonic()
            async with http.get(link) as page:
                check = re.search(r'name="check" value="([^"]*)"', await page.text())
            assert check is not None
            form = {"decision": "approve", "name": "bench", "check": check.group(1)}
            async with http.post(link, data=form) as answer:
                assert answer.status == 200, answer.status
            approved = time.monotonic()
            await client.get_workflow_handle(started.process_id).result()
            if number > 0:
                phases.append((mailed - began, approved - mailed, time.monotonic() - approved))
        await downstream.drain()
    return phases


async def _approval_link(clients: AwsClients, mailbox: str, process_id: str) -> str:
    while True:
        received = await asyncio.to_thread(
            clients.sqs.receive_message, QueueUrl=mailbox, WaitTimeSeconds=1
        )
        for message in received.get("Messages", []):
            clients.sqs.delete_message(QueueUrl=mailbox, ReceiptHandle=message["ReceiptHandle"])
            mail = InboxMessage.from_sns(json.loads(message["Body"]))
            if mail.process_id == process_id and mail.approve_url:
                return mail.approve_url


async def measure(processes: int, rounds: int) -> None:
    exported: list[int] = []

    async def traces(request: web.Request) -> web.Response:
        exported.append(len(await request.read()))
        return web.Response(content_type="application/x-protobuf")

    collector_app = web.Application()
    collector_app.router.add_post("/v1/traces", traces)
    dev = await start_dev_server()
    results: dict[str, list[Phases]] = {"off": [], "on": []}
    try:
        with running_moto_server() as moto:
            async with serving(collector_app) as collector:
                for _ in range(rounds):
                    results["off"] += await run(tracing.OFF, dev, moto, processes)
                    exporter = OTLPSpanExporter(endpoint=f"{collector}/v1/traces")
                    traced = tracing.from_environment(
                        "bench", processors=(BatchSpanProcessor(exporter),)
                    )
                    results["on"] += await run(traced, dev, moto, processes)
                    await asyncio.to_thread(traced.shutdown, 10)  # the collector is on this loop
    finally:
        await dev.shutdown()
    for mode, phases in results.items():
        total = [sum(p) for p in phases]
        print(
            f"tracing {mode}: {len(phases)} processes; median ms: start->mail "
            f"{_ms(p[0] for p in phases)}, approval POST {_ms(p[1] for p in phases)}, "
            f"approved->completed {_ms(p[2] for p in phases)}, whole happy path {_ms(total)}"
        )
    counted = len(results["on"]) + rounds  # the warm-up processes are exported too
    print(f"exported: {sum(exported) / counted / 1000:.1f} kB of OTLP per process")


def _ms(values: Iterable[float]) -> str:
    return f"{statistics.median(values) * 1000:.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.tracing")
    parser.add_argument("--processes", type=int, default=8, help="per run (8)")
    parser.add_argument("--rounds", type=int, default=3, help="off/on pairs (3)")
    args = parser.parse_args()
    asyncio.run(measure(args.processes, args.rounds))


if __name__ == "__main__":
    main()
    exit_process(0)  # the SDK's threads can abort interpreter finalisation (sdk-python 300)
