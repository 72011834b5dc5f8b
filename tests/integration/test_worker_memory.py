"""The worker's memory settings reach the SDK's worker (figures: ``make bench``)."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
from temporalio.testing import WorkflowEnvironment
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

from common.settings import Settings
from worker import build_worker

pytestmark = pytest.mark.integration

KEY = "k1:" + "s" * 40


def _settings(monkeypatch: pytest.MonkeyPatch, **env: str) -> Settings:
    monkeypatch.setenv("APPROVAL_SIGNING_KEYS", KEY)
    monkeypatch.setenv("APPROVAL_TASK_QUEUE", f"tq-memory-{uuid.uuid4()}")
    for name in ("APPROVAL_WORKER_MAX_CACHED_WORKFLOWS", "APPROVAL_WORKER_SHARE_WORKFLOW_MODULES"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return Settings()


def _runner_and_cache(
    dev_env: WorkflowEnvironment, settings: Settings
) -> tuple[SandboxedWorkflowRunner, int | None]:
    with ThreadPoolExecutor(1) as executor:
        config = build_worker(dev_env.client, settings, [], executor).config()
    runner = config.get("workflow_runner")
    assert isinstance(runner, SandboxedWorkflowRunner)
    return runner, config.get("max_cached_workflows")


async def test_by_default_the_sdk_cache_and_workflow_modules_imported_once(
    dev_env: WorkflowEnvironment, monkeypatch: pytest.MonkeyPatch
) -> None:
    runner, cache = _runner_and_cache(dev_env, _settings(monkeypatch))
    assert cache == 1000
    assert "workflows" in runner.restrictions.passthrough_modules
    # Everything else the SDK passes through still is (the standard library, temporalio).
    assert {"temporalio", "datetime"} <= runner.restrictions.passthrough_modules


async def test_cache_size_and_the_strict_sandbox_from_the_environment(
    dev_env: WorkflowEnvironment, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = _settings(
        monkeypatch,
        APPROVAL_WORKER_MAX_CACHED_WORKFLOWS="50",
        APPROVAL_WORKER_SHARE_WORKFLOW_MODULES="false",
    )
    runner, cache = _runner_and_cache(dev_env, settings)
    assert cache == 50
    assert "workflows" not in runner.restrictions.passthrough_modules
    assert (
        runner.restrictions.passthrough_modules == SandboxRestrictions.default.passthrough_modules
    )
