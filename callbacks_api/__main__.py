"""Serve the callbacks API: ``python -m callbacks_api`` (settings from the environment).

The Temporal client connects lazily, so the API starts even while Temporal is down: ``/healthz``
answers at once, ``/readyz`` says 503 until Temporal answers, and requests meanwhile get a 503.
"""

from __future__ import annotations

import logging

from aiohttp import web

from callbacks_api.app import RedactingAccessLogger, create_app
from common.logging import configure as configure_logging
from common.settings import Settings, load_settings
from common.temporal import connect, exit_process
from common.tracing import configure as configure_tracing

logger = logging.getLogger("callbacks_api")


async def build_app(settings: Settings) -> web.Application:
    # Lazy: a down Temporal must not keep the API from starting (readyz says 503 until it is up).
    client = await connect(settings, lazy=True)
    logger.info(
        "Callbacks API on http://%s:%s, Temporal at %s namespace %s",
        settings.api_host,
        settings.api_port,
        settings.temporal_address,
        settings.temporal_namespace,
    )
    return create_app(settings, client)


def main() -> None:
    settings = load_settings(Settings, "callbacks_api")
    configure_logging(settings)
    configure_tracing("api", program="callbacks_api")  # before the client, which carries it
    # run_app stops gracefully on SIGINT and SIGTERM. The access log names route patterns, never
    # paths: a path holds a bearer token.
    web.run_app(
        build_app(settings),
        host=settings.api_host,
        port=settings.api_port,
        access_log_class=RedactingAccessLogger,
        print=None,
        shutdown_timeout=10,
    )
    logging.shutdown()
    exit_process(0)


if __name__ == "__main__":
    main()
