"""One process, one trace: from ``start`` through the approval to the last callback.

Everything runs for real in this test process, so one in-memory exporter sees every span: the
dev server, the AWS emulator, the worker with its real activities, the callbacks API and the
downstream simulator on loopback ports, talking over real HTTP and SQS. The approval is posted
as a browser would, with no ``traceparent`` header; the simulator passes on the one it got.

A second test runs the CLI as a real program with only ``OTEL_*`` variables set, and a small
OTLP/HTTP receiver stands in for the collector.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from activities.factory import build_activities
from callbacks_api.app import create_app
from common import tracing
from common.aws import AwsClients
from common.aws_resources import ensure_resources
from common.temporal import connect
from simulator import downstream as simulator
from simulator.inbox import InboxMessage
from simulator.settings import SimulatorSettings
from starter import StarterSettings, start_process
from tests.support.http import serving
from tests.support.moto_server import MotoServer, moto_settings, running_moto_server
from worker import activity_executor, build_worker
from workflows.messages import ApprovalPolicy, ProcessOptions

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
FLOW_TIMEOUT = 60.0
SECOND = timedelta(seconds=1)
ACTIVITIES = (
    "create_process",
    "publish_approval_request",
    "request_lock",
    "update_process_status",
    "send_command_one",
    "send_command_two",
)


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoServer]:
    with running_moto_server() as server:
        yield server


def _approval_queue(clients: AwsClients, topic_arn: str, name: str) -> str:
    """An SQS queue subscribed to the approval topic: the approver's mailbox."""
    queue_url = clients.sqs.create_queue(QueueName=name)["QueueUrl"]
    arn = clients.sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])
    clients.sns.subscribe(
        TopicArn=topic_arn, Protocol="sqs", Endpoint=arn["Attributes"]["QueueArn"]
    )
    return queue_url


async def _approval_links(
    clients: AwsClients, queue_url: str, count: int, within: float
) -> list[str]:
    """The approve links of the first ``count`` mails, in the order they arrive, waiting (long
    polls) up to ``within``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    links: list[str] = []
    while loop.time() < deadline:
        received = await asyncio.to_thread(
            clients.sqs.receive_message, QueueUrl=queue_url, WaitTimeSeconds=1
        )
        for message in received.get("Messages", []):
            link = InboxMessage.from_sns(json.loads(message["Body"])).approve_url
            if link:
                links.append(link)
            if len(links) == count:
                return links
    pytest.fail(f"{len(links)} of {count} approval mails within {within:g} s")


async def _approve_as_a_browser(http: aiohttp.ClientSession, link: str) -> None:
    """Open the page, then post its form: no trace headers, as from a person's browser."""
    async with http.get(link) as page:
        assert page.status == 200
        html = await page.text()
    check = re.search(r'name="check" value="([^"]*)"', html)
    assert check is not None
    form = {"decision": "approve", "name": "tracer", "check": check.group(1)}
    async with http.post(link, data=form) as answer:
        assert answer.status == 200, await answer.text()


def _named(spans: list[ReadableSpan], name: str) -> list[ReadableSpan]:
    return [s for s in spans if s.name == name]


def _one(spans: list[ReadableSpan], name: str) -> ReadableSpan:
    found = _named(spans, name)
    assert len(found) == 1, f"{name}: {len(found)} spans ({sorted({s.name for s in spans})})"
    return found[0]


def _span_id_in(traceparent: str | None) -> int:
    assert traceparent is not None
    return int(traceparent.split("-")[2], 16)


@dataclass
class TracedSystem:
    """Every part of the system in this test process, each traced into one in-memory exporter."""

    exporter: InMemorySpanExporter
    client: Client
    settings: StarterSettings
    clients: AwsClients
    mailbox: str
    http: aiohttp.ClientSession
    downstream: simulator.Downstream

    async def run_to_completion(self, process_id: str) -> None:
        handle = self.client.get_workflow_handle(process_id)
        result = await asyncio.wait_for(handle.result(), FLOW_TIMEOUT)
        assert result["commands"] and all(c["status"] == "succeeded" for c in result["commands"])
        # Both callbacks answered: their server spans have ended, so they are exported.
        await asyncio.wait_for(self.downstream.drain(), FLOW_TIMEOUT)


@asynccontextmanager
async def traced_system(
    dev_env: WorkflowEnvironment, moto: MotoServer, options: ProcessOptions | None = None
) -> AsyncIterator[TracedSystem]:
    exporter = InMemorySpanExporter()
    traced = tracing.from_environment("test", processors=(SimpleSpanProcessor(exporter),))
    suffix = uuid.uuid4().hex[:10]
    base = moto_settings(
        moto,
        task_queue=f"tracing-{suffix}",
        temporal_address=dev_env.client.service_client.config.target_host,
    )
    clients = AwsClients.from_settings(base)
    resources = ensure_resources(base, clients)
    mailbox = _approval_queue(clients, resources.topic_arn, f"mailbox-{suffix}")

    async with AsyncExitStack() as stack:
        client = await connect(base, tracing=traced)
        http = await stack.enter_async_context(aiohttp.ClientSession())
        api_url = await stack.enter_async_context(serving(create_app(base, client, tracing=traced)))
        downstream = simulator.Downstream(
            SimulatorSettings.model_validate(
                {
                    "SIMULATOR_QUEUE_URL": base.command_queue_url,
                    "AWS_ENDPOINT_URL": moto.endpoint_url,
                    # Each command worked on briefly, with a heartbeat at its start.
                    "min_delay": 0.05,
                    "max_delay": 0.1,
                    "heartbeat_interval": 1,
                }
            ),
            http,
        )
        simulator_url = await stack.enter_async_context(
            serving(simulator.create_app(downstream, "/commands/two"))
        )
        consumer = asyncio.create_task(downstream.consume_queue(clients.sqs))
        stack.callback(consumer.cancel)
        options = (options or ProcessOptions()).model_copy(
            update={"lock_resource": f"tracing-{suffix}"}
        )
        settings = StarterSettings(
            **{
                **base.model_dump(),
                "signing_keys": base.signing_keys,
                "callback_base_url": api_url,
                "command_url": f"{simulator_url}/commands/two",
                "process": options,
            }
        )
        executor = stack.enter_context(activity_executor())
        activities = build_activities(settings, clients, http, executor)
        worker = build_worker(client, settings, activities, executor)
        await stack.enter_async_context(worker)
        yield TracedSystem(exporter, client, settings, clients, mailbox, http, downstream)


async def test_one_process_is_one_trace(dev_env: WorkflowEnvironment, moto: MotoServer) -> None:
    async with traced_system(dev_env, moto) as system:
        started = await start_process(
            system.client, system.settings, "tracer", "one process, one trace"
        )
        [link] = await _approval_links(system.clients, system.mailbox, 1, within=FLOW_TIMEOUT)
        await _approve_as_a_browser(system.http, link)
        await system.run_to_completion(started.process_id)
        downstream, exporter = system.downstream, system.exporter

    spans = list(exporter.get_finished_spans())
    names = sorted(s.name for s in spans)

    # One trace, begun by the start: every span of the process is in it.
    root = _one(spans, "StartWorkflow:ProcessWorkflow")
    assert root.parent is None and root.kind is SpanKind.CLIENT
    assert root.attributes and root.attributes["temporalWorkflowID"] == started.process_id
    assert {s.context.trace_id for s in spans} == {root.context.trace_id}, names

    # The workflow, each activity and each signal it took.
    for name in (
        "RunWorkflow:ProcessWorkflow",
        "CompleteWorkflow:ProcessWorkflow",
        "HandleSignal:approval_decision",
        "HandleSignal:lock_granted",
        *(f"RunActivity:{activity}" for activity in ACTIVITIES),
    ):
        assert _named(spans, name), f"no {name} span in {names}"
    assert len(_named(spans, "HandleSignal:command_callback")) == 2

    # The approval, posted with no trace header, continues the trace from its signed link, at
    # the process's start (the workflow names that span for every link it has mailed).
    assert _named(spans, "RunActivity:publish_approval_request")
    # Post/redirect/get: the page, the POST, and the page the POST redirects to.
    pages = _named(spans, "GET /approvals/{token}")
    assert len(pages) == 2
    for page in [*pages, _one(spans, "POST /approvals/{token}")]:
        assert page.kind is SpanKind.SERVER and page.parent is not None
        assert page.parent.span_id == root.context.span_id
    decision = _one(spans, "SignalWorkflow:approval_decision")
    assert decision.parent is not None
    assert decision.parent.span_id == _one(spans, "POST /approvals/{token}").context.span_id

    # Each command carried the trace to the simulator (SQS attribute, HTTP header), which passed
    # it on with its callback: each callback's server span is a child of the send.
    sends = {
        job.via: job.command.trace_context.get("traceparent")
        for job in downstream.book.jobs.values()
        if job.command.process_id == started.process_id
    }
    one = _one(spans, "RunActivity:send_command_one")
    two = _one(spans, "RunActivity:send_command_two")
    assert _span_id_in(sends["sqs"]) == one.context.span_id
    assert _span_id_in(sends["http"]) == two.context.span_id
    callbacks = _named(spans, "POST /callbacks/{token}")
    assert sorted(c.parent.span_id for c in callbacks if c.parent) == sorted(
        [one.context.span_id, two.context.span_id]
    )
    assert all(c.attributes and c.attributes["http.response.status_code"] == 202 for c in callbacks)
    # So did each heartbeat the simulator sent while it worked.
    heartbeats = _named(spans, "POST /callbacks/{token}/heartbeat")
    assert sorted(h.parent.span_id for h in heartbeats if h.parent) == sorted(
        [one.context.span_id, two.context.span_id]
    )
    assert len(_named(spans, "SignalWorkflow:command_callback")) == 2

    # The shared mutex stays out of the process's trace, and no span holds a link's token.
    assert not [name for name in names if "Mutex" in name]
    token = link.rsplit("/", 1)[1]
    assert not [s.name for s in spans if token in json.dumps(dict(s.attributes or {})) + s.name]


async def test_a_named_approver_s_link_and_its_reminder_are_in_the_process_trace(
    dev_env: WorkflowEnvironment, moto: MotoServer
) -> None:
    # Short enough to see a reminder come; 30 reminders per deadline are within the bound.
    options = ProcessOptions(
        approval_timeout=timedelta(minutes=1),
        approval=ApprovalPolicy(
            approvers="ada@example.test=Ada", remind_every=timedelta(seconds=2)
        ),
    )
    async with traced_system(dev_env, moto, options) as system:
        started = await start_process(system.client, system.settings, "tracer", "named")
        request, reminder = await _approval_links(
            system.clients, system.mailbox, 2, within=FLOW_TIMEOUT
        )
        assert reminder == request  # the reminder mails Ada's very link
        await _approve_as_a_browser(system.http, request)
        await system.run_to_completion(started.process_id)

    spans = list(system.exporter.get_finished_spans())
    root = _one(spans, "StartWorkflow:ProcessWorkflow")
    assert {s.context.trace_id for s in spans} == {root.context.trace_id}
    assert len(_named(spans, "RunActivity:notify_approvers")) >= 2  # the request, a reminder
    posted = _one(spans, "POST /approvals/{token}")
    assert posted.parent is not None and posted.parent.span_id == root.context.span_id
    decision = _one(spans, "SignalWorkflow:approval_decision")
    assert decision.parent is not None and decision.parent.span_id == posted.context.span_id
    assert _named(spans, "HandleSignal:approval_decision")


# ---------------------------------------------------------------------------------------------
# The CLI as a real program, configured by OTEL_* alone
# ---------------------------------------------------------------------------------------------


async def _collector() -> tuple[web.Application, list[ExportTraceServiceRequest]]:
    """A stand-in OTLP/HTTP collector: keeps every export request it is sent."""
    received: list[ExportTraceServiceRequest] = []

    async def traces(request: web.Request) -> web.Response:
        assert request.content_type == "application/x-protobuf"
        received.append(ExportTraceServiceRequest.FromString(await request.read()))
        return web.Response(content_type="application/x-protobuf")

    app = web.Application()
    app.router.add_post("/v1/traces", traces)
    return app, received


async def test_cli_exports_its_start_span_to_the_configured_collector(
    dev_env: WorkflowEnvironment,
) -> None:
    app, received = await _collector()
    async with serving(app) as collector:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("APPROVAL_", "OTEL_"))}
        env.update(
            {
                "TEMPORAL_ADDRESS": dev_env.client.service_client.config.target_host,
                "APPROVAL_TASK_QUEUE": f"tracing-cli-{uuid.uuid4().hex[:10]}",
                "APPROVAL_INBOX_URL": "",
                "OTEL_EXPORTER_OTLP_ENDPOINT": collector,
            }
        )
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "cli",
            "start",
            "--requested-by",
            "tracer",
            "--json",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
            cwd=ROOT,
        )
        out, err = await asyncio.wait_for(process.communicate(), FLOW_TIMEOUT)
    assert process.returncode == 0, err.decode()
    process_id = json.loads(out)["process_id"]
    # Exported before the CLI exited (it skips interpreter finalisation, and atexit with it).
    spans: list[dict[str, Any]] = []
    for request in received:
        for resource_spans in request.resource_spans:
            service = {a.key: a.value.string_value for a in resource_spans.resource.attributes}.get(
                "service.name"
            )
            for scope in resource_spans.scope_spans:
                for span in scope.spans:
                    attributes = {a.key: a.value.string_value for a in span.attributes}
                    spans.append({"service": service, "name": span.name, **attributes})
    assert {
        "service": "approval-flow-cli",
        "name": "StartWorkflow:ProcessWorkflow",
        "temporalWorkflowID": process_id,
    } in spans
