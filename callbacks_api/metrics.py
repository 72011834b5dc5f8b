"""Prometheus metrics for the API, in a registry of its own.

Each app gets its own registry so tests and benchmarks can build many apps in one process, and
``GET /metrics`` shows this service's series only. Labels carry the route pattern
(``/approvals/{token}``), never a path, so a token never becomes a label value.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import generate_latest

KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def route_name(request: web.BaseRequest) -> str:
    """The matched route's pattern; unmatched paths share one label so cardinality stays flat.

    A request aiohttp could not parse never reached the router: its ``match_info`` asserts.
    """
    try:
        match_info = request.match_info  # type: ignore[attr-defined]  # web.Request only
    except (AttributeError, AssertionError):
        return "unmatched"
    route = getattr(match_info, "route", None)
    canonical = route.resource.canonical if route is not None and route.resource else None
    return canonical or "unmatched"


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "callbacks_api_requests",
            "HTTP requests answered, by route pattern, method and status.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "callbacks_api_request_duration_seconds",
            "Time to answer an HTTP request, by route pattern and method.",
            ["route", "method"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.registry,
        )
        self.signals = Counter(
            "callbacks_api_signals",
            "Signals sent to process workflows, by signal name and outcome.",
            ["signal", "outcome"],
            registry=self.registry,
        )
        self.repeats = Counter(
            "callbacks_api_repeats",
            "Posts answered from the memory of recent deliveries without signalling, by link "
            "kind and outcome: the same message again (repeat) or a different one (conflict).",
            ["link", "outcome"],
            registry=self.registry,
        )

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        finally:
            method = request.method if request.method in KNOWN_METHODS else "OTHER"
            route = route_name(request)
            self.requests.labels(route, method, str(status)).inc()
            self.latency.labels(route, method).observe(time.perf_counter() - started)

    async def handle(self, request: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(self.registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )
