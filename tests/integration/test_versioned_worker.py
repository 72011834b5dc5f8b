"""The worker as deployed: a real ``python -m worker`` under Worker Versioning, seen from outside.

One versioned worker process (``APPROVAL_DEPLOYMENT_NAME`` / ``APPROVAL_BUILD_ID``) on the dev
server, its build made current by compose's one-shot script with the real ``temporal`` CLI, the
AWS emulator behind it. What
the tests look at is what an operator sees: the server's describe, the worker's Prometheus
endpoint and log, and the ``temporal`` CLI sending a signal by hand.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from temporalio.api.enums.v1 import VersioningBehavior
from temporalio.client import Client, WorkflowHandle
from temporalio.testing import WorkflowEnvironment

from common.aws_resources import ensure_resources
from local_stack.children import Child
from tests.support.binaries import temporal_cli
from tests.support.moto_server import (
    MotoServer,
    free_loopback_port,
    moto_env,
    moto_settings,
    running_moto_server,
)
from workflows.messages import (
    PROCESS_ID_PREFIX,
    ApprovalDecision,
    ProcessInput,
    ProcessOptions,
    ProcessState,
    mutex_workflow_id,
)

pytestmark = pytest.mark.integration

PATIENCE = 60.0
SET_CURRENT_VERSION = Path(__file__).resolve().parents[2] / "deploy/temporal/set-current-version.sh"


@dataclass
class VersionedWorker:
    client: Client
    address: str
    task_queue: str
    deployment: str
    build_id: str
    metrics_url: str
    log_path: Path

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def metrics(self) -> str:
        with urllib.request.urlopen(self.metrics_url, timeout=5) as response:
            return str(response.read().decode())

    async def start_process(self, resource: str) -> WorkflowHandle[Any, Any]:
        return await self.client.start_workflow(
            "ProcessWorkflow",
            ProcessInput(
                requested_by="alice",
                description="rotate the payment keys",
                options=ProcessOptions(lock_resource=resource),
            ),
            id=f"{PROCESS_ID_PREFIX}{uuid.uuid4()}",
            task_queue=self.task_queue,
        )


async def eventually(check: Any, what: str, within: float = PATIENCE) -> Any:
    """Poll ``check`` (sync or async) until it returns something truthy; that value."""
    deadline = time.monotonic() + within
    while True:
        value = check()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not happen within {within:g} s")
        await asyncio.sleep(0.1)


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoServer]:
    with running_moto_server() as server:
        yield server


@pytest.fixture(scope="module")
async def worker(
    dev_env: WorkflowEnvironment, moto: MotoServer, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[VersionedWorker]:
    settings = moto_settings(moto)
    await asyncio.to_thread(ensure_resources, settings, _aws_clients(settings))
    address = dev_env.client.service_client.config.target_host
    suffix = uuid.uuid4().hex[:8]
    metrics_port = free_loopback_port()
    log_path = tmp_path_factory.mktemp("worker") / "worker.log"
    running = VersionedWorker(
        client=dev_env.client,
        address=address,
        task_queue=f"tq-versioned-{suffix}",
        deployment=f"approval-flow-{suffix}",
        build_id="build-1",
        metrics_url=f"http://127.0.0.1:{metrics_port}/metrics",
        log_path=log_path,
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("APPROVAL_", "TEMPORAL_"))}
    env.update(moto_env(moto))
    env.update(
        {
            "PYTHONUNBUFFERED": "1",
            "TEMPORAL_ADDRESS": address,
            "APPROVAL_SIGNING_KEYS": f"{settings.signing_keys[0].kid}:{'s' * 40}",
            "APPROVAL_TASK_QUEUE": running.task_queue,
            "APPROVAL_PROCESS_TABLE": settings.process_table,
            "APPROVAL_IDEMPOTENCY_TABLE": settings.idempotency_table,
            "APPROVAL_TOPIC_ARN": settings.approval_topic_arn,
            "APPROVAL_COMMAND_QUEUE_URL": settings.command_queue_url,
            # Nothing listens there: command two is refused and retried, reaching nobody's system.
            "APPROVAL_COMMAND_URL": f"http://127.0.0.1:{free_loopback_port()}/commands/two",
            "APPROVAL_METRICS_PORT": str(metrics_port),
            "APPROVAL_DEPLOYMENT_NAME": running.deployment,
            "APPROVAL_BUILD_ID": running.build_id,
        }
    )
    child = Child("worker", [sys.executable, "-m", "worker"], env, log_path, sys.stderr, echo=False)
    await child.start()
    try:
        await eventually(
            lambda: child.returncode is not None or "worker polling task queue" in running.log,
            "the worker's first poll",
        )
        assert child.returncode is None, running.log
        # As compose's one-shot does it (the script runs in the admin-tools image there).
        made_current = await asyncio.to_thread(
            subprocess.run,
            ["sh", str(SET_CURRENT_VERSION)],
            env={
                "PATH": f"{Path(temporal_cli()).parent}:{os.environ.get('PATH', '/usr/bin:/bin')}",
                "TEMPORAL_ADDRESS": address,
                "APPROVAL_DEPLOYMENT_NAME": running.deployment,
                "APPROVAL_BUILD_ID": running.build_id,
            },
            capture_output=True,
            text=True,
            timeout=PATIENCE * 2,
            check=False,
        )
        assert made_current.returncode == 0, made_current.stdout + made_current.stderr
        yield running
    finally:
        await child.stop(grace=30)


def _aws_clients(settings: Any) -> Any:
    from common.aws import AwsClients

    return AwsClients.from_settings(settings)


def _versioning(description: Any) -> Any:
    return description.raw_description.workflow_execution_info.versioning_info


async def _state(handle: WorkflowHandle[Any, Any]) -> ProcessState:
    state: ProcessState = await handle.query("state", result_type=ProcessState)
    return state


async def test_a_process_is_pinned_to_its_build_and_the_mutex_auto_upgrades(
    worker: VersionedWorker,
) -> None:
    resource = f"res-{uuid.uuid4().hex[:8]}"
    process = await worker.start_process(resource)
    await process.signal("approval_decision", ApprovalDecision(approved=True, decided_by="bob"))
    mutex = worker.client.get_workflow_handle(mutex_workflow_id(resource))

    async def mutex_versioned() -> Any:
        try:
            info = _versioning(await mutex.describe())
        except Exception:  # not started yet
            return None
        return info if info.behavior else None

    mutex_info = await eventually(mutex_versioned, "the mutex's first workflow task")
    process_info = _versioning(await process.describe())
    assert process_info.behavior == VersioningBehavior.VERSIONING_BEHAVIOR_PINNED
    assert mutex_info.behavior == VersioningBehavior.VERSIONING_BEHAVIOR_AUTO_UPGRADE
    for info in (process_info, mutex_info):
        assert info.deployment_version.deployment_name == worker.deployment
        assert info.deployment_version.build_id == worker.build_id
    await process.terminate("test over")


async def test_an_undecodable_signal_is_counted_logged_and_loses_nothing_else(
    worker: VersionedWorker,
) -> None:
    process = await worker.start_process(f"res-{uuid.uuid4().hex[:8]}")
    # A sender whose message this code cannot read: "approved" must be a boolean.
    await process.signal("approval_decision", {"approved": "perhaps", "decided_by": "mallory"})

    series = re.compile(
        r'^approval_signals_dropped_total\{[^}]*signal="approval_decision"[^}]*'
        r'workflow_type="ProcessWorkflow"[^}]*\} (\d+)$',
        re.MULTILINE,
    )

    def dropped() -> int:
        match = series.search(worker.metrics())
        return int(match.group(1)) if match else 0

    await eventually(dropped, "approval_signals_dropped_total on the worker's /metrics")
    line = await eventually(
        lambda: next(
            (
                line
                for line in worker.log.splitlines()
                if "worker.signals" in line and process.id in line
            ),
            None,
        ),
        "the worker's ERROR line naming the process",
    )
    assert " ERROR " in line and "approval_decision" in line and "dropped" in line

    # The workflow did not fail on it: a decision that decodes is still taken.
    await process.signal("approval_decision", ApprovalDecision(approved=True, decided_by="bob"))

    async def decided() -> ProcessState | None:
        state = await _state(process)
        return state if state.approval.decision else None

    state = await eventually(decided, "the valid decision to be recorded")
    assert (state.approval.decision, state.approval.decided_by) == ("approved", "bob")
    await process.terminate("test over")


async def test_temporal_cli_signal_with_a_field_from_a_newer_client_approves(
    worker: VersionedWorker,
) -> None:
    process = await worker.start_process(f"res-{uuid.uuid4().hex[:8]}")
    decision = {"approved": True, "decided_by": "ops", "channel": "slack"}
    result = await asyncio.to_thread(
        subprocess.run,
        [
            temporal_cli(),
            "workflow",
            "signal",
            "--workflow-id",
            process.id,
            "--name",
            "approval_decision",
            "--input",
            json.dumps(decision),
            "--address",
            worker.address,
        ],
        capture_output=True,
        text=True,
        timeout=PATIENCE,
        check=False,
    )
    assert result.returncode == 0, result.stderr

    async def decided_or_dropped() -> ProcessState | str | None:
        state = await _state(process)
        if state.approval.decision:
            return state
        # Refused by this code: the worker drops it and says so (no need to wait any longer).
        dropped = [
            line
            for line in worker.log.splitlines()
            if "worker.signals" in line and process.id in line
        ]
        return dropped[0] if dropped else None

    try:
        outcome = await eventually(decided_or_dropped, "the CLI's decision to be taken or dropped")
        assert isinstance(outcome, ProcessState), f"the worker dropped it: {outcome}"
        assert (outcome.approval.decision, outcome.approval.decided_by) == ("approved", "ops")
    finally:
        await process.terminate("test over")
