"""Tracing: off unless OTEL_* asks, the trace context in tokens, headers and SQS attributes, the
API's server spans, and the simulator passing the context on (real HTTP on loopback)."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from callbacks_api.tracing import tracing_middleware, tracing_middlewares
from common import tracing
from common.tokens import Purpose, SigningKey, TokenSigner
from simulator.downstream import Downstream, create_app
from simulator.settings import SimulatorSettings
from tests.support.http import serving

ROOT = Path(__file__).resolve().parents[2]

OTEL_VARIABLES = (
    "OTEL_SDK_DISABLED",
    "OTEL_TRACES_EXPORTER",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    "OTEL_SERVICE_NAME",
    "OTEL_RESOURCE_ATTRIBUTES",
)
PARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
PARENT_SPAN = 0xB7AD6B7169203331
OTHER = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
OTHER_SPAN = 0x00F067AA0BA902B7


@pytest.fixture
def no_otel(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in OTEL_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.fixture
def spans() -> Iterator[tuple[tracing.Tracing, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    traced = tracing.from_environment("test", processors=(SimpleSpanProcessor(exporter),))
    yield traced, exporter
    traced.shutdown()


def _signer() -> TokenSigner:
    return TokenSigner((SigningKey("k1", secrets.token_urlsafe(32)),))


def _deadline(hours: float = 1) -> datetime:
    return datetime.now(UTC) + timedelta(hours=hours)


# -- off unless asked -------------------------------------------------------------------------


def test_tracing_is_off_without_otel_variables(no_otel: pytest.MonkeyPatch) -> None:
    off = tracing.from_environment("worker")
    assert not off.enabled and off.client_interceptors() == []
    assert tracing_middlewares(off, _signer()) == []


@pytest.mark.parametrize(
    "variables",
    [
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"},
        {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"},
        {"OTEL_TRACES_EXPORTER": "console"},
    ],
)
def test_a_collector_or_an_exporter_turns_it_on(
    no_otel: pytest.MonkeyPatch, variables: dict[str, str]
) -> None:
    for name, value in variables.items():
        no_otel.setenv(name, value)
    on = tracing.from_environment("worker")
    try:
        assert on.enabled
        [interceptor] = on.client_interceptors()
        assert type(interceptor).__name__ == "TracingInterceptor"
        assert on.provider is not None
        assert on.provider.resource.attributes["service.name"] == "approval-flow-worker"
    finally:
        on.shutdown()


def test_console_spans_go_to_stderr_so_stdout_stays_the_answer(
    no_otel: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`OTEL_TRACES_EXPORTER=console approval-flow start --json | jq` once got spans in its JSON."""
    no_otel.setenv("OTEL_TRACES_EXPORTER", "console")
    on = tracing.from_environment("cli")
    assert on.tracer is not None
    with on.tracer.start_as_current_span("StartWorkflow:ProcessWorkflow"):
        pass
    on.shutdown()
    printed = capsys.readouterr()
    assert printed.out == ""
    assert '"name": "StartWorkflow:ProcessWorkflow"' in printed.err


def test_the_service_name_variable_wins(no_otel: pytest.MonkeyPatch) -> None:
    no_otel.setenv("OTEL_TRACES_EXPORTER", "console")
    no_otel.setenv("OTEL_SERVICE_NAME", "approvals-eu")
    on = tracing.from_environment("worker")
    assert on.provider is not None
    assert on.provider.resource.attributes["service.name"] == "approvals-eu"
    on.shutdown()


@pytest.mark.parametrize(
    "variables",
    [
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318", "OTEL_SDK_DISABLED": "true"},
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318", "OTEL_TRACES_EXPORTER": "none"},
    ],
)
def test_it_can_be_switched_off_explicitly(
    no_otel: pytest.MonkeyPatch, variables: dict[str, str]
) -> None:
    for name, value in variables.items():
        no_otel.setenv(name, value)
    assert not tracing.from_environment("worker").enabled


@pytest.mark.parametrize(
    ("variables", "message"),
    [
        (
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
            "OTEL_EXPORTER_OTLP_PROTOCOL grpc is not supported (use http/protobuf",
        ),
        ({"OTEL_TRACES_EXPORTER": "zipkin"}, "OTEL_TRACES_EXPORTER zipkin is not supported"),
    ],
)
def test_what_cannot_be_done_is_one_line_and_exit_2(
    no_otel: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    variables: dict[str, str],
    message: str,
) -> None:
    for name, value in variables.items():
        no_otel.setenv(name, value)
    with pytest.raises(SystemExit) as exit:
        tracing.configure("worker")
    assert exit.value.code == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith(f"worker: invalid settings: {message}")
    assert not tracing.installed().enabled


# -- the context on the wire ------------------------------------------------------------------


def test_no_span_means_nothing_on_the_wire() -> None:
    assert tracing.carrier() == {}
    assert tracing.current_traceparent() is None
    assert tracing.sqs_attributes() == {}


def test_the_current_span_goes_into_headers_and_sqs_attributes(spans: Any) -> None:
    traced, _ = spans
    with traced.tracer.start_as_current_span("send") as span:
        traceparent = tracing.current_traceparent()
        attributes = tracing.sqs_attributes()
    assert traceparent is not None
    assert int(traceparent.split("-")[2], 16) == span.get_span_context().span_id
    assert attributes == {"traceparent": {"DataType": "String", "StringValue": traceparent}}


def test_what_runs_outside_the_process_trace_is_not_recorded(spans: Any) -> None:
    traced, exporter = spans
    with traced.tracer.start_as_current_span("activity"):
        with (
            tracing.outside_process_trace(),
            traced.tracer.start_as_current_span("to the mutex") as hidden,
        ):
            assert not hidden.is_recording()
            sent = tracing.current_traceparent()
        assert sent is not None and sent.endswith("-00")  # unsampled downstream too
    assert [s.name for s in exporter.get_finished_spans()] == ["activity"]


def test_a_token_carries_the_traceparent_of_its_link() -> None:
    signer = _signer()
    token = signer.sign("process-1", "approval", Purpose.APPROVAL, _deadline(), trace_parent=PARENT)
    assert signer.verify(token, Purpose.APPROVAL).trace_parent == PARENT
    assert signer.trace_parent(token) == PARENT
    plain = signer.sign("process-1", "approval", Purpose.APPROVAL, _deadline())
    assert signer.verify(plain, Purpose.APPROVAL).trace_parent is None
    assert signer.trace_parent(plain) is None


def test_only_a_well_signed_token_places_a_span_even_when_expired() -> None:
    signer = _signer()
    expired = signer.sign(
        "process-1", "command-one", Purpose.COMMAND, _deadline(-2), trace_parent=PARENT
    )
    assert signer.trace_parent(expired) == PARENT  # a late reply still shows in its trace
    forged = _signer().sign(
        "process-1", "command-one", Purpose.COMMAND, _deadline(), trace_parent=OTHER
    )
    assert signer.trace_parent(forged) is None
    assert signer.trace_parent("not-a-token") is None


# -- the API's server spans -------------------------------------------------------------------


async def _answer(request: web.Request) -> web.Response:
    status = int(request.query.get("status", "202"))
    return web.json_response({"traceparent": tracing.current_traceparent()}, status=status)


def _api(traced: tracing.Tracing, signer: TokenSigner) -> web.Application:
    assert traced.tracer is not None
    app = web.Application(middlewares=[tracing_middleware(traced.tracer, signer)])
    app.router.add_post("/callbacks/{token}", _answer)
    app.router.add_get("/healthz", _answer)
    return app


def _server_spans(exporter: InMemorySpanExporter) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.kind is trace.SpanKind.SERVER]


async def test_the_header_wins_then_the_token_then_a_new_trace(spans: Any) -> None:
    traced, exporter = spans
    signer = _signer()
    token = signer.sign(
        "process-1", "command-two", Purpose.COMMAND, _deadline(), trace_parent=PARENT
    )
    untraced = signer.sign("process-1", "command-two", Purpose.COMMAND, _deadline())
    async with serving(_api(traced, signer)) as base, aiohttp.ClientSession() as http:
        async with http.post(f"{base}/callbacks/{token}", headers={"traceparent": OTHER}) as r:
            inside = (await r.json())["traceparent"]
        async with http.post(f"{base}/callbacks/{token}") as r:
            assert r.status == 202
        async with http.post(f"{base}/callbacks/{untraced}") as r:
            assert r.status == 202
    by_header, by_token, root = _server_spans(exporter)
    assert by_header.parent is not None and by_header.parent.span_id == OTHER_SPAN
    assert by_token.parent is not None and by_token.parent.span_id == PARENT_SPAN
    assert root.parent is None
    # The handler runs inside the span, so what it sends on (signals) continues it.
    assert int(inside.split("-")[2], 16) == by_header.context.span_id


async def test_spans_name_the_route_never_the_token(spans: Any) -> None:
    traced, exporter = spans
    signer = _signer()
    token = signer.sign(
        "process-1", "command-two", Purpose.COMMAND, _deadline(), trace_parent=PARENT
    )
    async with serving(_api(traced, signer)) as base, aiohttp.ClientSession() as http:
        async with http.post(f"{base}/callbacks/{token}", params={"status": "503"}) as r:
            assert r.status == 503
        async with http.get(f"{base}/healthz") as r:  # probes are not traced
            assert r.status == 202
    [span] = _server_spans(exporter)
    assert span.name == "POST /callbacks/{token}"
    assert dict(span.attributes or {}) == {
        "http.request.method": "POST",
        "http.route": "/callbacks/{token}",
        "url.scheme": "http",
        "http.response.status_code": 503,
    }
    assert span.status.status_code is trace.StatusCode.ERROR
    assert token not in json.dumps(dict(span.attributes or {}))


# -- the simulator passes the context on ------------------------------------------------------


async def test_the_simulator_calls_back_with_the_trace_context_it_received() -> None:
    received: list[str | None] = []

    async def callback(request: web.Request) -> web.Response:
        received.append(request.headers.get("traceparent"))
        return web.json_response({}, status=202)

    receiver = web.Application()
    receiver.router.add_post("/callbacks/{token}", callback)
    settings = SimulatorSettings(min_delay=0, max_delay=0, seed=1)

    async def no_sleep(seconds: float) -> None:
        pass

    async with (
        aiohttp.ClientSession() as http,
        serving(receiver) as callbacks,
    ):
        downstream = Downstream(settings, http, sleep=no_sleep)
        async with serving(create_app(downstream, "/commands/two")) as base:

            def body(command: str) -> dict[str, Any]:
                return {
                    "process_id": "process-1",
                    "command": command,
                    "callback_url": f"{callbacks}/callbacks/t-{command}",
                    "idempotency_key": f"process-1:{command}",
                }

            async with http.post(
                f"{base}/commands/two",
                json=body("command-two"),
                headers={"Idempotency-Key": "process-1:command-two", "traceparent": PARENT},
            ) as response:
                assert response.status == 202
            downstream._take_message(
                {
                    "MessageId": "m1",
                    "ReceiptHandle": "r1",
                    "Body": json.dumps(body("command-one")),
                    "MessageAttributes": {
                        "traceparent": {"DataType": "String", "StringValue": OTHER}
                    },
                }
            )
            await downstream.drain()
            async with http.get(f"{base}/commands") as response:
                records = {c["command"]: c for c in (await response.json())["commands"]}
            await downstream.close()
    assert sorted(received, key=str) == sorted([PARENT, OTHER])
    assert records["command-two"]["traceparent"] == PARENT
    assert records["command-one"]["traceparent"] == OTHER


def test_a_collector_that_does_not_answer_cannot_hold_up_the_exit() -> None:
    """The SDK's own flush ignores its timeout; shutdown gives up after ``within`` instead."""
    released = threading.Event()

    class Stuck(SpanExporter):
        def export(self, spans: Any) -> SpanExportResult:
            released.wait()
            return SpanExportResult.SUCCESS

    traced = tracing.from_environment("test", processors=(BatchSpanProcessor(Stuck()),))
    assert traced.tracer is not None
    traced.tracer.start_span("buffered").end()
    traced.shutdown(within=0.2)
    assert not released.is_set()  # returned while the export was still stuck
    released.set()


PROGRAMS = {"worker": "worker", "callbacks_api": "callbacks_api", "local_stack": "make run"}


async def test_every_program_reads_the_otel_variables_at_start() -> None:
    """Each entry point configures tracing before it connects: a bad variable stops it there.

    (The CLI's configuration is seen working in tests/integration/test_tracing.py.)"""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "APPROVAL_"))}
    env.update(
        APPROVAL_SIGNING_KEYS="k1:" + "s" * 40,
        OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:4317",
        OTEL_EXPORTER_OTLP_PROTOCOL="grpc",
        # Nothing may be reached before the settings are checked; these would fail if it were.
        TEMPORAL_ADDRESS="127.0.0.1:9",
        LOCAL_STACK_DATA_DIR="/nonexistent/never-created",
    )

    async def start(module: str) -> tuple[int | None, str]:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", module, cwd=ROOT, env=env, stderr=asyncio.subprocess.PIPE
        )
        _, err = await asyncio.wait_for(process.communicate(), 60)
        return process.returncode, err.decode()

    # At once: each spends its few seconds importing.
    answers = await asyncio.gather(*(start(module) for module in PROGRAMS))
    for (code, err), program in zip(answers, PROGRAMS.values(), strict=True):
        assert (code, err.splitlines()) == (
            2,
            [
                f"{program}: invalid settings: OTEL_EXPORTER_OTLP_PROTOCOL grpc is not "
                "supported (use http/protobuf, usually on the collector's port 4318)"
            ],
        )
