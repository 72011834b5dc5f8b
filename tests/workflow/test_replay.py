"""Replay recorded histories: a change to workflow code that breaks determinism fails here."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from temporalio.client import WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer

from activities.retry import LinearRetryInterceptor
from workflows.mutex import MutexWorkflow
from workflows.process import ProcessWorkflow

HISTORIES = sorted((Path(__file__).resolve().parent.parent / "histories").glob("*.json"))


def test_histories_are_committed() -> None:
    names = {path.stem for path in HISTORIES}
    assert {
        "process_completed",
        "process_command_failed",
        "process_rejected",
        "mutex_grants_and_releases",
    } <= names


@pytest.mark.parametrize("path", HISTORIES, ids=[p.stem for p in HISTORIES])
async def test_replay(path: Path) -> None:
    replayer = Replayer(
        workflows=[ProcessWorkflow, MutexWorkflow],
        data_converter=pydantic_data_converter,
        interceptors=[LinearRetryInterceptor()],
    )
    history = WorkflowHistory.from_json(path.stem, await asyncio.to_thread(path.read_text))
    result = await replayer.replay_workflow(history, raise_on_replay_failure=False)
    assert result.replay_failure is None, f"{path.name} no longer replays: {result.replay_failure}"
