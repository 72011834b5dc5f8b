"""``make run``'s supervisor: start the stack, watch its parts, stop them all on the way out.

Ctrl+C or SIGTERM stops every child (SIGTERM, a deadline, then SIGKILL; a second Ctrl+C kills at
once). If a child dies, the supervisor says which, stops the rest and exits 1; a setting or port
that keeps it from starting exits 2.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import time
from collections.abc import Awaitable
from typing import Any, TextIO

from pydantic import ValidationError

from local_stack.banner import banner, start_demo
from local_stack.children import Child, ChildFailed
from local_stack.environment import StackError, check_ports
from local_stack.settings import LocalStackSettings
from local_stack.stack import Stack

EXIT_DIED = 1
EXIT_CANNOT_START = 2


class Deaths:
    """Watches children; ``first`` resolves with the first that exits without being asked to."""

    def __init__(self) -> None:
        self.first: asyncio.Future[Child] = asyncio.get_running_loop().create_future()
        self._watchers: list[asyncio.Task[None]] = []

    def watch(self, child: Child) -> None:
        self._watchers.append(asyncio.create_task(self._wait(child)))

    async def _wait(self, child: Child) -> None:
        await child.exited()
        if not child.stopping and not self.first.done():
            self.first.set_result(child)

    async def close(self) -> None:
        for watcher in self._watchers:
            watcher.cancel()
        await asyncio.gather(*self._watchers, return_exceptions=True)


async def run(settings: LocalStackSettings, terminal: TextIO = sys.stdout) -> int:
    """Run the stack until Ctrl+C, SIGTERM, or a child's death; the process exit code."""
    try:
        check_ports(settings)
    except StackError as err:  # nothing started yet: one line and out
        print(f"make run: {err}", file=sys.stderr)
        return EXIT_CANNOT_START
    started_at = time.monotonic()
    deaths = Deaths()
    stack = Stack(settings, terminal, on_start=deaths.watch)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals = 0

    def on_signal() -> None:
        nonlocal signals
        signals += 1
        if signals == 1:
            stack.say("stopping (Ctrl+C again to kill at once)")
            stop.set()
        else:
            stack.kill_all()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    code = 0
    try:
        up = asyncio.create_task(stack.up())
        stopper = asyncio.create_task(stop.wait())
        tasks: list[asyncio.Task[Any]] = [up, stopper]
        try:
            await _first(up, stopper, deaths.first)
            if up.done() and not stop.is_set() and not deaths.first.done():
                up.result()  # raises what went wrong while starting
                if not settings.worker:  # the operator's worker, once it runs
                    tasks.append(asyncio.create_task(stack.make_current_once_polled()))
                link = None
                if settings.starts_demo:
                    link = await _race(_demo(stack), stop, deaths.first)
                if not stop.is_set() and not deaths.first.done():
                    assert stack.app_settings is not None
                    ready_in = time.monotonic() - started_at
                    namespace = stack.app_settings.temporal_namespace
                    lines = banner(stack.settings, namespace, link, ready_in, stack.settings_file)
                    for line in lines:
                        _print(terminal, line)
                    await _first(stopper, deaths.first)
        finally:
            for task in tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        if deaths.first.done() and not stop.is_set():
            child = deaths.first.result()
            when = "" if up.done() and not up.cancelled() else " while starting"
            _report_death(child, f"{child.name} exited with code {child.returncode}{when}")
            code = EXIT_DIED
    except OSError as err:  # the data folder cannot be written, ...
        print(f"make run: {err}", file=sys.stderr)
        code = EXIT_CANNOT_START
    except ValidationError as err:  # e.g. APPROVAL_SIGNING_KEYS set to something unusable
        problem = err.errors()[0]
        print(f"make run: invalid setting {problem['loc']}: {problem['msg']}", file=sys.stderr)
        code = EXIT_CANNOT_START
    except ChildFailed as err:
        _report_death(err.child, str(err))
        code = EXIT_DIED
    finally:
        await stack.down()
        await deaths.close()
        stack.say("stopped")
    return code


async def _demo(stack: Stack) -> str | None:
    assert stack.client is not None and stack.app_settings is not None
    return await start_demo(stack.client, stack.app_settings, stack.settings, stack.say)


async def _race(
    work: Awaitable[str | None], stop: asyncio.Event, died: asyncio.Future[Child]
) -> str | None:
    task = asyncio.ensure_future(work)
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await _first(task, stopper, died)
        return task.result() if task.done() else None
    finally:
        for pending in (task, stopper):
            pending.cancel()


async def _first(*waitables: asyncio.Future[Any]) -> None:
    """Wait until one of them is done."""
    await asyncio.wait(waitables, return_when=asyncio.FIRST_COMPLETED)


def _print(terminal: TextIO, line: str) -> None:
    with contextlib.suppress(OSError, ValueError):
        print(line, file=terminal, flush=True)


def _report_death(child: Child, message: str) -> None:
    lines = [f"make run: {message}; stopping the rest."]
    tail = child.tail()
    if tail:
        lines.append(f"Last lines of {child.name} (all in {child.log_path}):")
        lines.extend(f"  {line}" for line in tail[-15:])
    for line in lines:
        print(line, file=sys.stderr, flush=True)
