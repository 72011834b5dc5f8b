"""Request bodies: the one content type each route takes, the size limit before reading, and
the refusal of a body the route's model does not accept."""

from __future__ import annotations

from aiohttp import web
from pydantic import ValidationError

from callbacks_api import problems
from callbacks_api.problems import Problem

JSON_CONTENT_TYPE = "application/json"


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


def invalid_body(err: ValidationError, title: str, shape: str) -> Problem:
    """A body the model refused: 400, saying where, never echoing the input."""
    invalid_json = any(error["type"] == "json_invalid" for error in err.errors())
    return Problem(
        400,
        "invalid-body",
        title,
        "The body is not valid JSON." if invalid_json else shape,
        # Locations and messages only: the input itself is never echoed back.
        extra={
            "errors": [
                {"loc": ".".join(str(part) for part in error["loc"]), "msg": error["msg"]}
                for error in err.errors(include_input=False, include_url=False)
            ]
        },
    )
