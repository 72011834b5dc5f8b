"""A small aiohttp app served on a free loopback port, for tests that need a real peer; and a
POST written byte for byte, for tests of what a client library would not send."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from aiohttp import web


@asynccontextmanager
async def serving(app: web.Application, port: int = 0) -> AsyncIterator[str]:
    """Serve ``app`` on 127.0.0.1 (``port``, else a free one) and yield its base URL."""
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


@dataclass(frozen=True)
class RawResponse:
    status: int
    headers: dict[str, str]  # names in lower case
    body: bytes


async def post_until_closed(
    host: str, port: int, path: str, headers: dict[str, str], body: bytes, within: float = 10.0
) -> RawResponse:
    """POST ``body`` as is on a connection of its own and read until the server closes it.

    No client library in between: the bytes (a Content-Encoding they do not match) reach the
    server as sent. A server that keeps the connection open fails this within ``within``
    seconds; one that closes it has finished with the request, its log lines included.
    """
    reader, writer = await asyncio.open_connection(host, port)
    try:
        head = [f"POST {path} HTTP/1.1", f"Host: {host}:{port}", f"Content-Length: {len(body)}"]
        head += [f"{name}: {value}" for name, value in headers.items()]
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), within)  # to EOF: the server closed
    finally:
        writer.close()
    status_line, _, rest = raw.partition(b"\r\n")
    header_block, _, payload = rest.partition(b"\r\n\r\n")
    fields = (line.split(b":", 1) for line in header_block.split(b"\r\n") if b":" in line)
    return RawResponse(
        status=int(status_line.split()[1]),
        headers={name.decode().lower(): value.decode().strip() for name, value in fields},
        body=payload,
    )
