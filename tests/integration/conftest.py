"""Fixtures shared by the integration tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.integration.test_end_to_end import RunningStack, local_stack


@pytest.fixture(scope="package")  # stopped after the last integration test
async def run_stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[RunningStack]:
    """``make run``'s stack without its demo process, for tests that only add processes to it.

    Each user starts its own processes and looks only at them (the inbox, the table and the
    simulator are filtered by process id), so one stack serves them all: a stack start is the
    costliest thing a test does (seven processes, 10 s of CPU). Tests that stop, kill or
    configure the stack start their own with ``local_stack``. A module that uses it carries
    ``pytest.mark.xdist_group("run_stack")``, so that all its users run on one xdist worker.
    """
    async with local_stack(tmp_path_factory.mktemp("run-stack"), LOCAL_STACK_DEMO="false") as s:
        yield s
