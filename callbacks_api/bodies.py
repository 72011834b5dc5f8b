"""Request bodies: the one content type each route takes, and the size limit before reading."""

from __future__ import annotations

from aiohttp import web

from callbacks_api import problems
from callbacks_api.problems import Problem


def require_content_type(request: web.Request, expected: str) -> None:
    if request.content_type != expected:
        raise Problem(
            415,
            "unsupported-media-type",
            "Unsupported content type",
            f"Send the body as {expected}.",
            headers={"Accept-Post": expected},
        )


async def read_body(request: web.Request, limit: int) -> bytes:
    # Refuse a declared oversize body before reading it; read() enforces the same limit for
    # chunked bodies (client_max_size) and raises 413 itself.
    if request.content_length is not None and request.content_length > limit:
        raise problems.from_http_exception(
            web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=request.content_length)
        )
    return await request.read()
