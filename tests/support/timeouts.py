"""A coroutine test past pytest-timeout's limit fails where it hangs, and its cleanup runs then.

pytest-timeout's ``signal`` method raises its failure from SIGALRM in whatever the main thread is
doing. For a coroutine test that is the event loop waiting in ``epoll``, not the test: the
report names no line of the test, and the test's task stays suspended in the loop, so its
``finally`` and ``async with`` blocks (a whole ``make run`` stack in test_end_to_end.py) run only
when the session's loop closes, after every other test of that xdist worker. Here the alarm
cancels the test's task instead: the ``CancelledError`` comes out of the await that hung, the
test's own cleanup runs at once, then its fixtures' teardown, and the report says it timed out.

A test that catches that cancel and returns (it expected one) fails all the same.

Registered by tests/conftest.py. A sync test, or an alarm during a fixture's setup or teardown,
gets pytest-timeout's own handler, as does a test still running ``GRACE_SECONDS`` after the
cancel (it swallowed it, or its cleanup hangs too).
"""

from __future__ import annotations

import asyncio
import inspect
import signal
from collections.abc import Generator
from types import CodeType, FrameType
from typing import Any

import pytest

GRACE_SECONDS = 60.0
TIMED_OUT = pytest.StashKey[str]()


@pytest.hookimpl(wrapper=True)
def pytest_timeout_set_timer(item: pytest.Item, settings: Any) -> Generator[None, Any, Any]:
    """After pytest-timeout armed SIGALRM for ``item``, put our handler in front of its own."""
    armed = yield
    function = getattr(item, "obj", None)
    if settings.method != "signal" or not inspect.iscoroutinefunction(function):
        return armed
    fallback = signal.getsignal(signal.SIGALRM)
    code = function.__code__
    message = f"Timeout (>{settings.timeout}s) from pytest-timeout."

    def cancel_the_test(signum: int, frame: FrameType | None) -> None:
        task = _running_task_of(code)
        if task is None or not callable(fallback):
            if callable(fallback):
                fallback(signum, frame)
            return
        item.stash[TIMED_OUT] = message
        # Not task.cancel() here: the handler may have interrupted the loop's own bookkeeping.
        task.get_loop().call_soon_threadsafe(task.cancel, message)
        signal.signal(signal.SIGALRM, fallback)
        signal.setitimer(signal.ITIMER_REAL, GRACE_SECONDS)

    signal.signal(signal.SIGALRM, cancel_the_test)
    return armed


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, None, None]:
    """Report a test cancelled by the alarm as pytest-timeout's failure, not a bare cancel."""
    __tracebackhide__ = True
    try:
        result = yield
    except asyncio.CancelledError:
        message = item.stash.get(TIMED_OUT, None)
        if message is None:
            raise
        # Raised while handling the cancel: the report shows the await the test hung in.
        pytest.fail(message)
    # A test that hung where it expects a cancel (``pytest.raises(CancelledError)`` around an
    # await that should end by itself) takes the alarm's cancel for the one it waited for and
    # returns: it timed out all the same.
    message = item.stash.get(TIMED_OUT, None)
    if message is not None:
        pytest.fail(message)
    return result


def _running_task_of(code: CodeType) -> asyncio.Task[Any] | None:
    """The task running the test function's coroutine in this thread's loop, if it runs now."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:  # a sync test, or between two steps of pytest-asyncio
        return None
    for task in asyncio.all_tasks(loop):
        if getattr(task.get_coro(), "cr_code", None) is code and not task.done():
            return task
    return None
