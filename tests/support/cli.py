"""The ``approval-flow`` CLI as an operator runs it: a real process, its exit code and output."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from temporalio.testing import WorkflowEnvironment

ROOT = Path(__file__).resolve().parents[2]
CLI_TIMEOUT = 90.0  # a hang guard: a command answers in seconds


def cli_environment(
    env: WorkflowEnvironment, drop: tuple[str, ...] = ("TEMPORAL_",), **settings: str
) -> dict[str, str]:
    """This process's environment without the variables starting with ``drop``, pointed at
    ``env``'s server, with ``settings`` (``APPROVAL_TASK_QUEUE=...``) on top."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    environment["TEMPORAL_ADDRESS"] = env.client.service_client.config.target_host
    return {**environment, **settings}


async def run_cli(
    environment: dict[str, str], *args: str, within: float = CLI_TIMEOUT
) -> tuple[int, str, str]:
    """``python -m cli ARGS`` from the checkout: its exit code, stdout and stderr."""
    process = await asyncio.create_subprocess_exec(
        *[sys.executable, "-m", "cli", *args],
        cwd=ROOT,
        env=environment,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), within)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()
