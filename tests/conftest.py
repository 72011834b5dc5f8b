"""Shared fixtures: a time-skipping server per test, one dev server for the whole session."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from temporalio.testing import WorkflowEnvironment

from tests.support.temporal import start_dev_server, start_time_skipping


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
