"""Wait on a named condition with a deadline: the tests' only way to wait."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable

POLL_SECONDS = 0.05


async def eventually(
    check: Callable[[], bool | Awaitable[bool]], what: str, within: float = 30.0
) -> None:
    """Poll ``check`` (plain or async) until it holds; fail naming ``what`` after ``within`` s."""
    deadline = time.monotonic() + within
    while True:
        outcome = check()
        if inspect.isawaitable(outcome):
            outcome = await outcome
        if outcome:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {within:g} s")
        await asyncio.sleep(POLL_SECONDS)
