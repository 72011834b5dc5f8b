"""Request bodies: the one content type each route takes, the size limit before reading, the
refusal of a body that cannot be read or that the route's model does not accept, and the checks
every model at the edge shares (finite numbers, text without control characters)."""

from __future__ import annotations

import logging
import math
import unicodedata
from collections.abc import Iterator
from typing import Annotated

from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError
from pydantic import AfterValidator, JsonValue, ValidationError

from callbacks_api import problems
from callbacks_api.metrics import route_name
from callbacks_api.problems import Problem

logger = logging.getLogger(__name__)

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
    # chunked bodies (client_max_size) and raises 413 itself, decompressed size included (a
    # gzip bomb is 413 too).
    if request.content_length is not None and request.content_length > limit:
        raise problems.from_http_exception(
            web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=request.content_length)
        )
    try:
        return await request.read()
    except RequestPayloadError as err:
        # aiohttp could not decode the body: a Content-Encoding the bytes do not match, or a
        # chunked body cut short. The stream no longer frames requests, so the answer closes
        # the connection; marking the body as ended stops aiohttp from reading on after the
        # answer, which would meet the same error and log it again with a traceback.
        request.content.feed_eof()
        logger.warning(
            "Refused an unreadable body on %s %s (%s)",
            request.method,
            route_name(request),
            " ".join(str(err).split())[:200],
        )
        raise unreadable_body() from err


def unreadable_body() -> Problem:
    return Problem(
        400,
        "unreadable-body",
        "Unreadable request body",
        "The request body could not be read: it does not match its Content-Encoding, or its "
        "bytes are otherwise not what its headers say. Nothing was recorded.",
        close_connection=True,
    )


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


def _numbers(value: JsonValue) -> Iterator[float | int]:
    """Every number in a parsed JSON value, depth first, without recursion."""
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, dict):
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
        elif isinstance(item, float | int) and not isinstance(item, bool):
            yield item


def _finite(value: JsonValue) -> JsonValue:
    # The JSON parser takes NaN, Infinity and -Infinity (not JSON) and reads a number beyond a
    # double's range (1e400) as infinity; none survives a JSON round trip (the payload converter
    # writes null), so the workflow would record something other than what was sent.
    if any(isinstance(n, float) and not math.isfinite(n) for n in _numbers(value)):
        raise ValueError(
            "only finite numbers: NaN, Infinity and numbers too large for a double (above "
            "1.79e308) are not taken"
        )
    return value


# Any JSON value, as long as it holds only numbers JSON can carry.
FiniteJson = Annotated[JsonValue, AfterValidator(_finite)]

# Bidirectional embeddings, overrides and isolates: they reorder how the text around them is
# shown ("Trojan Source"), so a name could read as something else. Marks (U+200E, U+200F,
# U+061C) and joiners (emoji, Indic scripts) are left alone: they reorder nothing.
BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def control_character(text: str, allowed: str = "") -> str | None:
    """The first control character in ``text`` (as ``U+001B``) that is not in ``allowed``.

    Control characters (Unicode category Cc: ESC, BEL, NUL, DEL, C1...) in text that a person
    later reads in a terminal (``approval-flow status``) or a log can move the cursor, clear the
    screen or rewrite what is shown; bidi controls reorder it. Text that people or programs
    send for people to read has no use for either.
    """
    for char in text:
        if char in allowed:
            continue
        if unicodedata.category(char) == "Cc" or char in BIDI_CONTROLS:
            return f"U+{ord(char):04X}"
    return None


# Line breaks and tabs have their uses in multi-line text (a comment, an error message).
LINE_BREAKS_AND_TABS = "\t\n\r"


def _printable_text(value: str) -> str:
    found = control_character(value, LINE_BREAKS_AND_TABS)
    if found is not None:
        raise ValueError(f"control characters are not taken (found {found})")
    return value


# Text for people: line breaks and tabs allowed, no other control character.
PlainText = Annotated[str, AfterValidator(_printable_text)]
