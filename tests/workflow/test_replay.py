"""Replay every recorded history against the workflow code on disk.

A change to ``workflows/`` that would break a running process or the never-ending mutex fails
here: each file under ``tests/histories/<version>/`` is one run that version of the code wrote
(see ``tests/workflow/record_histories``). The replayer is set up as the worker is: the pydantic
data converter and the linear-retry interceptor, which adds a header to every activity call.
"""

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

ROOT = Path(__file__).resolve().parent.parent / "histories"
HISTORIES = sorted(ROOT.glob("**/*.json"))

# The histories that must exist; deleting one must be a visible change here.
REQUIRED = {
    "v1": [
        # Recorded earlier on the time-skipping server, by the same v1 workflow code.
        "ts_process_completed",
        "ts_process_command_failed",
        "ts_process_rejected",
        "ts_mutex_grants_and_releases",
    ],
}


def _name(path: Path) -> str:
    return path.relative_to(ROOT).with_suffix("").as_posix()


def test_every_required_history_is_committed() -> None:
    present = {_name(path) for path in HISTORIES}
    required = {f"{version}/{name}" for version, names in REQUIRED.items() for name in names}
    assert not required - present, f"missing histories: {sorted(required - present)}"


@pytest.fixture(scope="module")
def replayer() -> Replayer:
    return Replayer(
        workflows=[ProcessWorkflow, MutexWorkflow],
        data_converter=pydantic_data_converter,
        interceptors=[LinearRetryInterceptor()],
    )


@pytest.mark.parametrize("path", HISTORIES, ids=[_name(p) for p in HISTORIES])
async def test_history_replays(replayer: Replayer, path: Path) -> None:
    name = _name(path)
    history = WorkflowHistory.from_json(name, await asyncio.to_thread(path.read_text))
    result = await replayer.replay_workflow(history, raise_on_replay_failure=False)
    assert result.replay_failure is None, f"{name} no longer replays: {result.replay_failure}"
