"""Every approval link of a traced process continues the process's trace (patch
``approval-links-traced``), on the time-skipping server.

The process is started by a client with the tracing interceptor, as the CLI and ``make run``
start it when ``OTEL_*`` is set. Each mail the workflow asks for (the shared one, each named
approver's request, reminder and escalation) must carry the start's own trace context, the same
every time: the activity signs it into the link, so a decision made through any link is part of
the process's trace, and a reminder still mails the very link the request did.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta

import pytest
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from temporalio.client import Client, WorkflowHandle
from temporalio.contrib.opentelemetry import TracingInterceptor
from temporalio.testing import WorkflowEnvironment

from common import tracing
from tests.workflow.fakes import eventually
from tests.workflow.harness import Harness, harness
from workflows.messages import (
    PROCESS_ID_PREFIX,
    ApprovalPolicy,
    LinkTrace,
    ProcessInput,
    ProcessResult,
)
from workflows.process import ProcessWorkflow

MIN = timedelta(minutes=1)
TEAM = "alice@example.test=Alice,bob@example.test=Bob"
CAROL = "carol@example.test"


@pytest.fixture
def traced() -> Iterator[tuple[tracing.Tracing, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    setup = tracing.from_environment("test", processors=(SimpleSpanProcessor(exporter),))
    yield setup, exporter
    setup.shutdown()


async def _start_traced(
    h: Harness, setup: tracing.Tracing, **options: object
) -> WorkflowHandle[ProcessWorkflow, ProcessResult]:
    """Start a process as a traced starter does; the worker needs no tracing to read it."""
    config = h.client.config()
    config["interceptors"] = setup.client_interceptors()
    client = Client(**config)
    return await client.start_workflow(
        ProcessWorkflow.run,
        ProcessInput(requested_by="alice", description="traced", options=h.options(**options)),
        id=f"{PROCESS_ID_PREFIX}{uuid.uuid4()}",
        task_queue=h.task_queue,
    )


def _start_span(exporter: InMemorySpanExporter, process_id: str) -> tuple[int, int]:
    """The trace and span id of the span that started ``process_id``."""
    [start] = [
        s
        for s in exporter.get_finished_spans()
        if s.name == "StartWorkflow:ProcessWorkflow"
        and s.attributes is not None
        and s.attributes.get("temporalWorkflowID") == process_id
    ]
    return start.context.trace_id, start.context.span_id


def _span_of(link_trace: LinkTrace | None) -> tuple[int, int]:
    """The trace and span id a link's traceparent names (``00-<trace>-<span>-<flags>``)."""
    assert link_trace is not None and link_trace.traceparent is not None, link_trace
    _, trace_id, span_id, _ = link_trace.traceparent.split("-")
    return int(trace_id, 16), int(span_id, 16)


def test_the_workflow_reads_the_header_the_interceptor_writes() -> None:
    assert TracingInterceptor().header_key == tracing.TEMPORAL_TRACE_HEADER


async def test_every_notice_to_named_approvers_carries_the_start_s_trace(
    time_env: WorkflowEnvironment, traced: tuple[tracing.Tracing, InMemorySpanExporter]
) -> None:
    setup, exporter = traced
    async with harness(time_env.client) as h:
        policy = ApprovalPolicy(
            approvers=TEAM, remind_every=10 * MIN, escalate_after=25 * MIN, escalate_to=CAROL
        )
        handle = await _start_traced(h, setup, approval=policy)
        await h.advance(30 * MIN)  # the request, two reminders and the escalation
        await eventually(
            lambda: (
                [kind for kind, _ in h.fakes.mailed(handle.id)][:4]
                == ["request", "reminder", "reminder", "escalation"]
            ),
            what="request, reminders and escalation mailed",
        )
        notices = h.fakes.notices[handle.id]
        assert len({n.link_trace for n in notices}) == 1  # the same trace, so the same links
        assert _span_of(notices[0].link_trace) == _start_span(exporter, handle.id)
        await handle.cancel()


async def test_the_shared_link_carries_the_start_s_trace(
    time_env: WorkflowEnvironment, traced: tuple[tracing.Tracing, InMemorySpanExporter]
) -> None:
    setup, exporter = traced
    async with harness(time_env.client) as h:
        handle = await _start_traced(h, setup, approval=ApprovalPolicy(remind_every=10 * MIN))
        await h.advance(15 * MIN)
        await eventually(lambda: h.fakes.mailed(handle.id), what="a reminder to everyone")
        first = h.fakes.approvals[handle.id].link_trace
        assert _span_of(first) == _start_span(exporter, handle.id)
        # Every reminder carries the same trace (how many were mailed is not the point: under
        # load the time-skipping server can run past a second reminder before this reads).
        traces = [n.link_trace for n in h.fakes.notices[handle.id]]
        assert traces and all(trace == first for trace in traces)
        await handle.cancel()


async def test_an_untraced_process_decides_that_its_links_carry_no_trace(
    time_env: WorkflowEnvironment,
) -> None:
    async with harness(time_env.client) as h:
        handle = await h.start(approval=ApprovalPolicy(approvers=TEAM))
        await eventually(lambda: h.fakes.mailed(handle.id), what="the request mailed")
        # Decided (not left to the activity): no trace, rather than the activity's own.
        assert [n.link_trace for n in h.fakes.notices[handle.id]] == [LinkTrace()]
        await handle.cancel()
