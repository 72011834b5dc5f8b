"""Liveness and readiness, for orchestrators and ``make run``: JSON, no token, no state read."""

from __future__ import annotations

from aiohttp import web

from callbacks_api import problems
from callbacks_api.processes import Processes


class Health:
    def __init__(self, processes: Processes) -> None:
        self._processes = processes

    async def healthz(self, request: web.Request) -> web.Response:
        """The process answers; says nothing about Temporal, so a restart never helps here."""
        return web.json_response({"status": "ok"})

    async def readyz(self, request: web.Request) -> web.Response:
        """Temporal answers too; until it does, route traffic elsewhere (503)."""
        if await self._processes.ready():
            return web.json_response({"status": "ready"})
        raise problems.temporal_unavailable()
