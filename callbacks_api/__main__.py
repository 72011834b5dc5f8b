"""Serve the callbacks API: ``python -m callbacks_api`` (settings from the environment).

The Temporal client connects lazily, so the API starts even while Temporal is down: ``/healthz``
answers at once, ``/readyz`` says 503 until Temporal answers, and requests meanwhile get a 503.
SIGTERM and SIGINT stop it gracefully: no new connections, requests in flight finish (10 s).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

from aiohttp import web

from callbacks_api.app import RedactingAccessLogger, create_app
from callbacks_api.serving import ApiRunner
from common.logging import configure as configure_logging
from common.settings import Settings, load_settings
from common.temporal import connect, exit_process
from common.tracing import configure as configure_tracing

logger = logging.getLogger("callbacks_api")


async def build_app(settings: Settings) -> web.Application:
    # Lazy: a down Temporal must not keep the API from starting (readyz says 503 until it is up).
    client = await connect(settings, lazy=True)
    return create_app(settings, client)


async def serve(settings: Settings) -> None:
    # The access log names route patterns, never paths: a path holds a bearer token.
    runner = ApiRunner(
        await build_app(settings), access_log_class=RedactingAccessLogger, shutdown_timeout=10
    )
    await runner.setup()
    try:
        await web.TCPSite(runner, settings.api_host, settings.api_port).start()
        logger.info(
            "Callbacks API on http://%s:%s, Temporal at %s namespace %s",
            settings.api_host,
            settings.api_port,
            settings.temporal_address,
            settings.temporal_namespace,
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        logger.info("Callbacks API stopping")
    finally:
        await runner.cleanup()


def main() -> None:
    settings = load_settings(Settings, "callbacks_api")
    configure_logging(settings)
    configure_tracing("api", program="callbacks_api")  # before the client, which carries it
    try:
        asyncio.run(serve(settings))
    except OSError as err:  # the port is taken, or the host is not ours
        print(
            f"callbacks_api: cannot listen on {settings.api_host}:{settings.api_port}: "
            f"{err.strerror or err}",
            file=sys.stderr,
        )
        logging.shutdown()
        exit_process(1)
    logging.shutdown()
    exit_process(0)


if __name__ == "__main__":
    main()
