"""``make run`` without its own worker, and a worker run by hand beside it, as the docs say.

``LOCAL_STACK_WORKER=false make run`` starts everything but the worker; the worker is then
started with the settings ``make run`` wrote (``. .data/stack.env``), killed with -9 and started
again while the stack carries on, and a second build joins it as docs/upgrades.md step 2 has
it. The commands run are the lines of the docs, verbatim but for the data folder's path.
"""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import stat
import sys
from datetime import timedelta
from pathlib import Path

import aiohttp
import pytest

from local_stack.children import Child
from tests.integration.test_end_to_end import (
    FLOW_TIMEOUT,
    OWN_PREFIXES,
    ROOT,
    RunningStack,
    approve,
    local_stack,
)
from tests.support.waiting import eventually
from workflows.messages import STATE_QUERY

pytestmark = pytest.mark.integration

OPERATIONS = ROOT / "docs" / "operations.md"
UPGRADES = ROOT / "docs" / "upgrades.md"
# The lines the docs give, to be typed in the repository root.
WORKER = ". .data/stack.env && .venv/bin/python -m worker"
NEW_BUILD = ". .data/stack.env && APPROVAL_BUILD_ID=NEW .venv/bin/python -m worker"
DESCRIBE = ". .data/stack.env && .venv/bin/temporal worker deployment describe --name approval-flow"
KEYS = ". .data/stack.env && .venv/bin/approval-flow keys"

# LOCAL_STACK_PYTHON for this test: before the simulator starts, ask whether the callbacks API
# answers (it calls back through it as soon as it resumes work), then run the real Python.
PROBING_PYTHON = """#!{python}
import os, sys, urllib.error, urllib.request
if sys.argv[1:3] == ["-m", "simulator"]:
    api = "http://%s:%s/readyz" % (os.environ["APPROVAL_API_HOST"], os.environ["APPROVAL_API_PORT"])
    try:
        with urllib.request.urlopen(api, timeout=5) as answer:
            seen = str(answer.status)
    except (OSError, urllib.error.URLError) as err:
        seen = type(err).__name__
    with open({probe!r}, "w") as out:
        out.write(seen)
os.execv({python!r}, [{python!r}, *sys.argv[1:]])
"""


def in_data_folder(stack: RunningStack, command: str) -> str:
    return command.replace(".data/", shlex.quote(str(stack.data_dir)) + "/")


def clean_env() -> dict[str, str]:
    """A new terminal's: none of the project's settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(OWN_PREFIXES)}
    return {**env, "PYTHONUNBUFFERED": "1"}


def by_hand(stack: RunningStack, name: str, command: str) -> Child:
    return Child(
        name,
        ["sh", "-c", f"cd {shlex.quote(str(ROOT))} && {in_data_folder(stack, command)}"],
        clean_env(),
        stack.data_dir.parent / f"{name}.log",
        sys.stderr,
        echo=False,
    )


async def shell(stack: RunningStack, command: str) -> str:
    process = await asyncio.create_subprocess_exec(
        "sh",
        "-c",
        in_data_folder(stack, command),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=clean_env(),
        cwd=ROOT,
    )
    out, err = await asyncio.wait_for(process.communicate(), FLOW_TIMEOUT)
    assert process.returncode == 0, err.decode()
    return out.decode()


def test_the_docs_give_these_commands() -> None:
    operations, upgrades = OPERATIONS.read_text(), UPGRADES.read_text()
    assert "LOCAL_STACK_WORKER=false make run" in operations
    assert WORKER in operations and KEYS in operations
    assert NEW_BUILD in upgrades and DESCRIBE in upgrades


@pytest.mark.duration(20)
async def test_a_worker_run_by_hand_beside_make_run(tmp_path: Path) -> None:
    probe = tmp_path / "api-when-simulator-started"
    python = tmp_path / "python"
    python.write_text(PROBING_PYTHON.format(python=sys.executable, probe=str(probe)))
    python.chmod(0o755)
    settings = {"LOCAL_STACK_WORKER": "false", "LOCAL_STACK_PYTHON": str(python)}
    async with local_stack(tmp_path, **settings) as stack, aiohttp.ClientSession() as http:
        # The simulator was started once the API answered.
        assert probe.read_text() == "200"
        # make run wrote its settings for other terminals, private (they hold the signing key).
        env_file = stack.data_dir / "stack.env"
        assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
        assert f"Settings for other terminals: . {env_file}" in stack.output
        assert "worker ready" not in stack.output and "Approval link:" not in stack.output

        # The CLI finds make run's key through them.
        kid = (stack.data_dir / "signing-keys").read_text().split(":")[0]
        keys = json.loads(await shell(stack, KEYS + " --json"))["keys"]
        assert keys == [{"kid": kid, "signs": True}]

        worker = by_hand(stack, "worker", WORKER)
        await worker.start()
        try:
            await eventually(
                lambda: "worker build local of deployment approval-flow is current" in stack.output,
                "make run made the hand-run worker's build current",
                FLOW_TIMEOUT,
            )
            # The worker runs processes: the approval mail is its activity's.
            started = json.loads(
                await shell(
                    stack,
                    ". .data/stack.env && .venv/bin/approval-flow start --requested-by hand "
                    "--description 'worker by hand' --json",
                )
            )
            process_id = started["process_id"]
            assert started["approval_link"], "no approval mail: the worker does not run"

            # kill -9 of the worker leaves the stack up; the same command starts it again.
            worker.kill()
            await worker.exited()
            worker = by_hand(stack, "worker-again", WORKER)
            await worker.start()
            client = await stack.client()
            handle = client.get_workflow_handle(process_id)

            async def answers() -> bool:  # the new worker has the process (the query needs one)
                try:
                    await handle.query(STATE_QUERY, rpc_timeout=timedelta(seconds=3))
                except Exception:
                    return False
                return True

            await eventually(answers, "the restarted worker answers the query", FLOW_TIMEOUT)
            await approve(http, stack, process_id)
            result = await asyncio.wait_for(handle.result(), FLOW_TIMEOUT)
            assert result["status"] == "success"
            assert stack.child.returncode is None
            assert "stopping the rest" not in stack.output

            # A second build beside it, as docs/upgrades.md step 2 starts it.
            new_build = by_hand(stack, "worker-new", NEW_BUILD)
            await new_build.start()
            try:
                described = [""]

                async def both_listed() -> bool:
                    described[0] = await shell(stack, DESCRIBE)
                    return all(build in described[0].split() for build in ("NEW", "local"))

                try:
                    await eventually(both_listed, "both builds listed", FLOW_TIMEOUT)
                except AssertionError as err:
                    raise AssertionError(f"{err}; last:\n{described[0]}") from None
            finally:
                await new_build.stop(10)
        finally:
            await worker.stop(10)
