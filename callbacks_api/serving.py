"""Serving the app: aiohttp's runner, with our own answer to requests aiohttp cannot parse.

aiohttp answers a request it cannot parse (a request line or header over 8 KB, bytes that are
not HTTP) by itself, before any middleware or signal of ours runs: plain text without the
security headers, and a traceback in the log that quotes the start of the line, which holds the
link's token. aiohttp has no hook for this (aio-libs/aiohttp issue 3287), so the connection
handler is subclassed at its one error method, and the runner builds servers that use it. The
integration test ``test_an_overlong_request_line_gets_our_400`` pins this against upgrades.
"""

from __future__ import annotations

import logging

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from callbacks_api import pages, problems

logger = logging.getLogger(__name__)


class _RequestHandler(RequestHandler):
    __slots__ = ()

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if status != 400:
            # A failure our error middleware did not see (it catches everything it can).
            response = super().handle_error(request, status, exc, message)
            response.headers.update(pages.SECURITY_HEADERS)
            return response
        # One line, naming the kind only: the parser's message quotes the request line.
        logger.warning(
            "Refused an unreadable request from %s (%s)",
            request.remote,
            type(exc).__name__ if exc else "bad request",
        )
        response = problems.problem_response(problems.bad_request())
        response.headers.update(pages.SECURITY_HEADERS)
        response.force_close()  # the rest of the stream cannot be trusted to frame a request
        return response


class _Server(web.Server):
    def __call__(self) -> RequestHandler:
        return _RequestHandler(self, loop=self._loop, **self._kwargs)


class ApiRunner(web.AppRunner):
    """``web.AppRunner`` whose connections answer unparseable requests as the API does."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        return _Server(
            server.request_handler,
            request_factory=server.request_factory,
            handler_cancellation=server.handler_cancellation,
            loop=server._loop,
            **server._kwargs,
        )
