"""Opt-in pytest plugin: the client locks the time-skipping server's clock late, on purpose.

After every awaited result (``Harness.advance`` awaits one) the client locks time again with an
RPC of its own; until it arrives the server runs its clock on to the next timer, and on past
timer after timer while the lock is late (a starved client under load). This plugin delays that
lock by ``LATE_LOCK_SECONDS`` (default 0.3), so a test whose outcome hangs on how far the clock
ran fails every time instead of once in a while::

    LATE_LOCK_SECONDS=0.3 .venv/bin/python -m pytest -p tests.support.late_lock tests/workflow

It patches a private class of the SDK (temporalio 1.x's V1 time-skipping environment): an audit
tool, never loaded by ``make test``. docs/testing.md tells what it found.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from temporalio.testing import _workflow

LATE = float(os.environ.get("LATE_LOCK_SECONDS", "0.3"))
_environment = _workflow._V1WorkflowEnvironment
_unlocked = _environment.time_skipping_unlocked


@asynccontextmanager
async def _late_unlocked(self: _workflow._V1WorkflowEnvironment) -> AsyncIterator[None]:
    async with _unlocked(self):
        yield None
        await asyncio.sleep(LATE)  # still unlocked: the server's clock runs on meanwhile


_environment.time_skipping_unlocked = _late_unlocked  # type: ignore[method-assign]
