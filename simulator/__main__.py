"""``python -m simulator``: the downstream systems (command one over SQS, command two over HTTP)."""

from __future__ import annotations

import asyncio
import logging
import sys

import aiohttp

from common.logging import configure
from common.settings import load_settings
from simulator.aws import clients
from simulator.downstream import Downstream, create_app
from simulator.serve import CannotListen, serve
from simulator.settings import SimulatorSettings

log = logging.getLogger("simulator")


async def run(settings: SimulatorSettings) -> None:
    sqs, _ = clients(settings.aws_region, settings.aws_endpoint_url)
    async with aiohttp.ClientSession() as http:
        downstream = Downstream(settings, http)
        resumed = downstream.resume()
        if resumed:
            log.info("resumed %d unfinished command(s) from %s", resumed, settings.state_path)
        app = create_app(downstream, settings.command_path)
        own = "".join(
            f", {command} {low:g}-{high:g} s"
            for command, (low, high) in settings.command_delays.items()
        )
        log.info(
            "downstream simulator on http://%s:%d%s (delay %.1f-%.1f s%s, failure rate %.0f%%)",
            settings.host,
            settings.port,
            settings.command_path,
            settings.min_delay,
            settings.max_delay,
            own,
            settings.failure_rate * 100,
        )
        try:
            await serve(app, settings.host, settings.port, downstream.consume_queue(sqs))
        finally:
            await downstream.close()


def main() -> None:
    settings = load_settings(SimulatorSettings, "simulator")
    configure(settings)
    try:
        asyncio.run(run(settings))
    except CannotListen as err:
        print(f"simulator: {err}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
