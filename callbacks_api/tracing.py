"""Server spans for the API: each request continues the trace of the process it answers.

The parent is the request's W3C ``traceparent`` header (a downstream system that propagates, as
the simulator does), else the one signed into the link's token (a person's browser sends none).
Spans are named and labelled by route pattern (``POST /callbacks/{token}``), never by path: the
path holds a bearer token. That is also why the aiohttp instrumentation package is not used
here: it records the path (``url.path``) on every span.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.typedefs import Middleware
from opentelemetry import context, trace

from callbacks_api.metrics import route_name
from common import tracing
from common.tokens import TokenSigner

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# OpenTelemetry's stable HTTP server attribute names.
METHOD, ROUTE, STATUS, SCHEME = (
    "http.request.method",
    "http.route",
    "http.response.status_code",
    "url.scheme",
)
# Probes and scrapes would bury the processes' spans; they are not part of any process.
UNTRACED_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})


def parent_of(request: web.Request, signer: TokenSigner) -> context.Context | None:
    """The trace this request belongs to: its header's, else its token's, else none (a root)."""
    parent = tracing.context_from(request.headers)
    if parent is not None:
        return parent
    token = request.match_info.get("token")
    traceparent = signer.trace_parent(token) if token else None
    return tracing.context_from({tracing.TRACEPARENT: traceparent}) if traceparent else None


def tracing_middlewares(setup: tracing.Tracing, signer: TokenSigner) -> list[Middleware]:
    """Server spans when tracing is on; nothing at all when it is off."""
    return [] if setup.tracer is None else [tracing_middleware(setup.tracer, signer)]


def tracing_middleware(tracer: trace.Tracer, signer: TokenSigner) -> Middleware:
    """The outermost middleware, so the span covers every other one and sees the final status."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in UNTRACED_PATHS:
            return await handler(request)
        route = route_name(request)
        with tracer.start_as_current_span(
            f"{request.method} {route}",
            context=parent_of(request, signer),
            kind=trace.SpanKind.SERVER,
            attributes={
                METHOD: request.method,
                ROUTE: route,
                SCHEME: request.scheme,
            },
        ) as span:
            try:
                response = await handler(request)
            except web.HTTPException as exc:  # raised answers (redirects) are answers too
                _record_status(span, exc.status)
                raise
            _record_status(span, response.status)
            return response

    return middleware


def _record_status(span: trace.Span, status: int) -> None:
    span.set_attribute(STATUS, status)
    if status >= 500:  # a 4xx is the client's mistake, not a failure of this server
        span.set_status(trace.StatusCode.ERROR)
