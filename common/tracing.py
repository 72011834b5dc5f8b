"""OpenTelemetry tracing: one trace per process, from ``start`` to the last callback.

Off unless the standard variables ask for it (``OTEL_EXPORTER_OTLP_ENDPOINT``,
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` or ``OTEL_TRACES_EXPORTER``): an untraced deployment then
installs no provider, interceptor or middleware, and pays nothing. When on, spans go over OTLP
(HTTP/protobuf) to a collector, configured by the SDK's own ``OTEL_*`` variables.

How one process stays one trace:

- every Temporal client carries temporalio's ``TracingInterceptor``, so the span that starts a
  process (or signals, or queries it) travels in Temporal's headers to the workflow and on to
  each activity the workflow schedules;
- the activities hand the context to what they call: command two in the W3C ``traceparent``
  header, command one as an SQS message attribute of the same name, and every link or callback
  URL in the signed token itself, so even a reply from something that does not propagate
  context (a person's browser) continues the trace;
- the callbacks API starts its server span from the request's ``traceparent`` header, else from
  its token (``callbacks_api/tracing.py``), and signals the workflow under it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import sys
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from opentelemetry import context, propagate, trace

if TYPE_CHECKING:
    from mypy_boto3_sqs.type_defs import MessageAttributeValueTypeDef
    from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
    from temporalio.client import Interceptor

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
# The W3C trace context: what a downstream system passes on to continue a trace.
TRACE_HEADERS = (TRACEPARENT, TRACESTATE)
INSTRUMENTATION_NAME = "approval-flow"
# The Temporal header temporalio's TracingInterceptor carries the context in (its fixed
# ``header_key``), named here because the process workflow reads its own start's
# (workflows/asking.py); tests/unit/test_tracing.py checks that the two agree.
TEMPORAL_TRACE_HEADER = "_tracer-data"
# The only OTLP transport installed: HTTP/protobuf needs no gRPC stack in every image.
SUPPORTED_PROTOCOL = "http/protobuf"
EXPORTERS = ("otlp", "console")
EXIT_FLUSH_SECONDS = 2.0


class TracingSettingsError(ValueError):
    """The OTEL_* variables ask for something this build cannot do; the message says which."""


@dataclass(frozen=True)
class Tracing:
    """What one program traces with. ``Tracing()`` is off: it creates nothing at all."""

    tracer: trace.Tracer | None = None
    # The SDK provider to flush before the program exits; None when someone else owns it.
    provider: TracerProvider | None = field(default=None, compare=False)

    @property
    def enabled(self) -> bool:
        return self.tracer is not None

    def client_interceptors(self) -> list[Interceptor]:
        """What ``Client.connect`` takes; a worker gets the interceptor from its client."""
        if self.tracer is None:
            return []
        # Imported here: an untraced program does not load the contrib module at all.
        from temporalio.contrib.opentelemetry import TracingInterceptor

        return [TracingInterceptor(self.tracer)]

    def shutdown(self, within: float = EXIT_FLUSH_SECONDS) -> None:
        """Export what is still buffered, for at most ``within`` seconds, then stop.

        ``exit_process`` skips the SDK's own atexit hook, so programs call this on the way out.
        A collector that is down costs at most ``within`` (the exporter alone retries for 10 s);
        the spans it did not take are dropped, the program's exit status is not changed.
        """
        if self.provider is None:
            return
        # In a thread of its own: the SDK's flush ignores its timeout and exports in the caller.
        stopping = threading.Thread(
            target=self.provider.shutdown, name="tracing-shutdown", daemon=True
        )
        stopping.start()
        stopping.join(within)


OFF = Tracing()
_installed = OFF


def from_environment(component: str, processors: tuple[SpanProcessor, ...] = ()) -> Tracing:
    """Tracing as the process's ``OTEL_*`` variables describe it, for ``approval-flow-<component>``.

    ``processors`` are added to whatever the variables configure (tests pass an in-memory one);
    given any, tracing is on even without variables.
    """
    exporters = _exporters(os.environ)
    if not exporters and not processors:
        return OFF
    # Imported here: an untraced program does not load the SDK.
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    resource = Resource.create()  # OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES win
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: f"approval-flow-{component}"}))
    # The sampler comes from OTEL_TRACES_SAMPLER (default: parent-based, always on).
    provider = TracerProvider(resource=resource)
    for name in exporters:
        if name == "otlp":
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            # Endpoint, headers, timeout and compression from OTEL_EXPORTER_OTLP_[TRACES_]*;
            # the batch size and delay from OTEL_BSP_*.
            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        else:
            # On stderr: a program's stdout is its answer (the CLI's --json must stay parseable).
            provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter(out=sys.stderr)))
    for processor in processors:
        provider.add_span_processor(processor)
    return Tracing(provider.get_tracer(INSTRUMENTATION_NAME), provider)


def _exporters(env: Mapping[str, str]) -> list[str]:
    """The exporters the variables ask for; none means tracing is off."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return []
    names = [n.strip().lower() for n in env.get("OTEL_TRACES_EXPORTER", "").split(",")]
    names = [n for n in names if n]
    if not names:
        endpoint = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get(
            "OTEL_EXPORTER_OTLP_ENDPOINT"
        )
        # The spec's default exporter is OTLP to localhost; here tracing is opt-in, and naming
        # a collector is how one opts in.
        names = ["otlp"] if endpoint and endpoint.strip() else []
    if names == ["none"]:
        return []
    unknown = [n for n in names if n not in EXPORTERS]
    if unknown:
        raise TracingSettingsError(
            f"OTEL_TRACES_EXPORTER {','.join(unknown)} is not supported "
            f"(use {', '.join(EXPORTERS)} or none)"
        )
    if "otlp" in names:
        for name in ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"):
            protocol = env.get(name, "").strip()
            if protocol:
                if protocol != SUPPORTED_PROTOCOL:
                    raise TracingSettingsError(
                        f"{name} {protocol} is not supported (use {SUPPORTED_PROTOCOL}, "
                        "usually on the collector's port 4318)"
                    )
                break
    return names


def configure(component: str, program: str | None = None, quiet: bool = False) -> Tracing:
    """Set up tracing from the environment, once; on a bad variable say so and exit 2.

    The service is ``approval-flow-<component>`` unless ``OTEL_SERVICE_NAME`` says otherwise;
    ``program`` names the program in the error line, as ``load_settings`` does. ``quiet`` keeps
    the exporter's warnings (a collector that is down) off stderr, for a CLI whose stderr is its
    one-line answers. Also installs the provider globally, for any library that traces through
    the global API.
    """
    if quiet:
        logging.getLogger("opentelemetry").setLevel(logging.ERROR)
    global _installed
    if _installed.enabled:
        return _installed
    try:
        tracing = from_environment(component)
    except TracingSettingsError as err:
        print(f"{program or component}: invalid settings: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    if tracing.provider is not None:
        trace.set_tracer_provider(tracing.provider)
    _installed = tracing
    return tracing


def installed() -> Tracing:
    """What ``configure`` set up; off when it was never called."""
    return _installed


def shutdown() -> None:
    """Flush and stop what ``configure`` set up (safe to call when tracing is off)."""
    _installed.shutdown()


# -- carrying the context over the wire ------------------------------------------------------


def carrier() -> dict[str, str]:
    """The current span's context as W3C headers (``traceparent``, ``tracestate``); empty when
    no span is current, which is always the case with tracing off."""
    headers: dict[str, str] = {}
    propagate.inject(headers)
    return {k: v for k, v in headers.items() if k in TRACE_HEADERS}


def current_traceparent() -> str | None:
    """The current span as one ``traceparent`` value, for a signed token to carry."""
    return carrier().get(TRACEPARENT)


def sqs_attributes() -> dict[str, MessageAttributeValueTypeDef]:
    """The current context as SQS message attributes (SQS allows 10; this adds at most 2)."""
    return {name: {"DataType": "String", "StringValue": value} for name, value in carrier().items()}


def context_from(headers: Mapping[str, str]) -> context.Context | None:
    """The remote parent named by W3C headers, or None when they name no valid span."""
    extracted = propagate.extract(headers)
    if not trace.get_current_span(extracted).get_span_context().is_valid:
        return None
    return extracted


@contextlib.contextmanager
def outside_process_trace() -> Iterator[None]:
    """Run the block under an unsampled parent, so nothing it starts is recorded.

    For calls that reach long-lived workflows (the mutex): a trace they joined would grow for as
    long as they run, with every other process's requests in it. Unsampled (not merely empty),
    because Temporal's interceptor would otherwise open a fresh trace for them.
    """
    rng = random.Random()
    unsampled = trace.NonRecordingSpan(
        trace.SpanContext(
            trace_id=rng.getrandbits(128) or 1,
            span_id=rng.getrandbits(64) or 1,
            is_remote=True,
            trace_flags=trace.TraceFlags(trace.TraceFlags.DEFAULT),
        )
    )
    token = context.attach(trace.set_span_in_context(unsampled, context.Context()))
    try:
        yield
    finally:
        context.detach(token)
