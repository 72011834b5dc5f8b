"""The aiohttp app: one sub-app per audience, and what every answer shares.

People open approval links (``approvals``: HTML pages, refusals as pages); downstream systems
post command results (``callbacks``: JSON, refusals as RFC 9457 problem documents). Both routes
carry a signed token in the path (``common.tokens``) that names one process and one callback;
nothing else identifying is in the URL. The root app adds what every answer gets: metrics, the
security headers, an access log that never prints a path, and health, readiness and metrics
routes for operators.
"""

from __future__ import annotations

from datetime import timedelta

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from temporalio.client import Client

from callbacks_api import pages, problems
from callbacks_api.approvals import approvals_app
from callbacks_api.callbacks import callbacks_app
from callbacks_api.deliveries import DEFAULT_CAPACITY, RecentDeliveries
from callbacks_api.health import Health
from callbacks_api.metrics import Metrics, route_name
from callbacks_api.processes import Processes
from callbacks_api.tracing import tracing_middlewares
from common.settings import Settings
from common.tracing import Tracing
from common.tracing import installed as installed_tracing


async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    for name, value in pages.SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)


class RedactingAccessLogger(AbstractAccessLogger):
    """Access log lines with the route pattern instead of the path, which holds the token."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        self.logger.info(
            "%s %s %s %s %.3fs",
            request.remote,
            request.method,
            route_name(request),
            response.status,
            time,
        )


def create_app(
    settings: Settings,
    client: Client,
    *,
    decision_wait: timedelta = timedelta(seconds=10),
    temporal_timeout: timedelta = timedelta(seconds=5),
    tracing: Tracing | None = None,
    remembered_links: int = DEFAULT_CAPACITY,
) -> web.Application:
    """The application; ``client`` must use the pydantic data converter, as the worker does.

    ``tracing`` defaults to what the program configured; when on, ``client`` should carry it too
    (``common.temporal.connect`` does), so the signals continue each request's span.
    ``decision_wait`` bounds how long the page shown after a decision waits for a busy worker
    to answer the state query before it says "being recorded" (with no worker at all it says so
    at once); ``remembered_links`` bounds the
    memory that answers repeated posts on one link without signalling again.
    """
    metrics = Metrics()
    processes = Processes(client, temporal_timeout, signals=metrics.signals)
    deliveries = RecentDeliveries(remembered_links, answered=metrics.repeats)
    health = Health(processes)
    # The root's error middleware answers programs: health, metrics and unknown paths. Each
    # sub-app renders its own refusals (aiohttp's 404 and 405 under its prefix included).
    app = web.Application(
        middlewares=[
            *tracing_middlewares(tracing or installed_tracing(), settings.signer),
            metrics.middleware,
            problems.error_middleware(problems.problem_response),
        ],
        client_max_size=settings.max_callback_bytes,
    )
    app.on_response_prepare.append(_security_headers)
    app.add_subapp("/approvals", approvals_app(settings, processes, deliveries, decision_wait))
    app.add_subapp("/callbacks", callbacks_app(settings, processes, deliveries))
    app.router.add_get("/healthz", health.healthz)
    app.router.add_get("/readyz", health.readyz)
    app.router.add_get("/metrics", metrics.handle)
    return app
