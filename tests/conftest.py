"""Shared fixtures: a time-skipping server per test, one dev server per session (per xdist worker).

``make test`` runs the tests on one pytest-xdist worker more than there are cores (``-n 3 --dist
loadgroup`` on a 2-core machine): most of them wait on servers and subprocesses much of the time. A
session is one worker's share of the tests, so each worker starts its own dev server; every test
already uses its own task queue, workflow ids, lock resource, free ports and temporary folders.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from temporalio.testing import WorkflowEnvironment

from tests.support import timeouts
from tests.support.scheduling import longest_first
from tests.support.temporal import start_dev_server, start_time_skipping

SHARED_SCOPES = frozenset({"module", "package", "class"})


def pytest_configure(config: pytest.Config) -> None:
    # A coroutine test past the time limit (pyproject.toml) fails at the await that hung and
    # cleans up at once (tests/support/timeouts.py).
    config.pluginmanager.register(timeouts, "approval-flow-timeouts")


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the groups
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Keep the tests that share a module-scoped fixture on one xdist worker; longest first.

    Spread over two workers, a module's server, stack or emulator would start once on each. A
    test in a group of its own choosing (``xdist_group``) keeps it; the rest are spread freely.
    Then the tests marked with a ``duration`` go out first (tests/support/scheduling.py).
    """
    for item in items:
        if not isinstance(item, pytest.Function) or item.get_closest_marker("xdist_group"):
            continue
        fixtures = item._fixtureinfo.name2fixturedefs.values()  # pytest keeps no public mapping
        if any(defs[-1].scope in SHARED_SCOPES for defs in fixtures):
            item.add_marker(pytest.mark.xdist_group(item.nodeid.split("::")[0]))
    longest_first(items)


@pytest.fixture
async def time_env() -> AsyncIterator[WorkflowEnvironment]:
    # One server per test, because its clock is shared: a workflow or activity another test left
    # behind can stop time skipping for everyone after it (CI once waited minutes on an
    # env.sleep). The server starts in 0.1-0.3 s here, so isolation costs a few seconds in all.
    async with await start_time_skipping() as env:
        yield env


@pytest.fixture(scope="session")
async def dev_env() -> AsyncIterator[WorkflowEnvironment]:
    async with await start_dev_server() as env:
        yield env
