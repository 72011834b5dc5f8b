"""Run an aiohttp app next to a background loop until SIGTERM or SIGINT, the same for both tools."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Coroutine
from typing import Any

from aiohttp import web

log = logging.getLogger("simulator")


class CannotListen(Exception):
    """The port is taken or the host is wrong; the message says which, in one line."""


async def serve(
    app: web.Application, host: str, port: int, background: Coroutine[Any, Any, None]
) -> None:
    """Serve ``app`` and run ``background`` until a stop signal, or until ``background`` fails."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        try:
            await web.TCPSite(runner, host, port).start()
        except OSError as err:
            background.close()
            raise CannotListen(f"cannot listen on {host}:{port}: {err.strerror or err}") from err
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        task = asyncio.create_task(background)
        stopper = asyncio.create_task(stop.wait())
        await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
        if task.done():
            task.result()  # a failed background loop ends the process with its error
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    finally:
        await runner.cleanup()
