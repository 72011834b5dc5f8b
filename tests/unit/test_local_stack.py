"""``make run``'s pieces that need no process: the children's environment, readiness."""

from __future__ import annotations

import io
import os
import stat
import subprocess
from pathlib import Path

import pytest

from local_stack.banner import banner
from local_stack.children import Child, ChildFailed
from local_stack.environment import child_environment, shared_settings, write_settings_file
from local_stack.readiness import wait_until_ready
from local_stack.settings import LocalStackSettings


def test_every_part_listens_on_the_configured_host(tmp_path: Path) -> None:
    settings = LocalStackSettings(host="127.0.0.5", data_dir=tmp_path)
    env = child_environment(settings, "k1:secret", base={"APPROVAL_METRICS_PORT": "1"})
    listening = {name: env[name] for name in env if name.endswith("_HOST")}
    assert listening == {
        "APPROVAL_API_HOST": "127.0.0.5",
        "APPROVAL_METRICS_HOST": "127.0.0.5",
        "SIMULATOR_HOST": "127.0.0.5",
        "INBOX_HOST": "127.0.0.5",
    }
    assert "APPROVAL_METRICS_PORT" not in env  # only the worker gets it, from the stack


def test_a_build_named_alone_gets_make_runs_deployment(tmp_path: Path) -> None:
    # `APPROVAL_BUILD_ID=local-2 make run`: every child read half a version and refused it
    # ("set APPROVAL_DEPLOYMENT_NAME and APPROVAL_BUILD_ID together"), so make run exited 2.
    settings = LocalStackSettings(data_dir=tmp_path)
    env = child_environment(settings, "k1:secret", base={"APPROVAL_BUILD_ID": "local-2"})
    assert (env["APPROVAL_DEPLOYMENT_NAME"], env["APPROVAL_BUILD_ID"]) == (
        "approval-flow",
        "local-2",
    )
    mine = child_environment(
        settings, "k1:secret", base={"APPROVAL_DEPLOYMENT_NAME": "d", "APPROVAL_BUILD_ID": "b"}
    )
    assert (mine["APPROVAL_DEPLOYMENT_NAME"], mine["APPROVAL_BUILD_ID"]) == ("d", "b")


def _child(tmp_path: Path) -> Child:
    return Child("worker", ["worker"], {}, tmp_path / "worker.log", io.StringIO())


async def test_a_check_that_raises_means_not_ready_yet(tmp_path: Path) -> None:
    answers: list[bool | Exception] = [RuntimeError("connection refused"), False, True]

    async def check() -> bool:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    await wait_until_ready(_child(tmp_path), check, "worker", within=30)
    assert answers == []


async def test_a_part_never_ready_is_one_line_naming_the_last_error(tmp_path: Path) -> None:
    async def check() -> bool:
        raise RuntimeError("connection refused\nmore detail")

    with pytest.raises(ChildFailed) as failed:
        await wait_until_ready(_child(tmp_path), check, "worker", within=0.2)
    assert str(failed.value) == (
        "worker was not ready within 0.2 s (last check: RuntimeError: connection refused)"
    )


def test_stack_env_is_private_and_sourced_by_a_shell(tmp_path: Path) -> None:
    old = tmp_path / "stack.env"
    old.write_text("stale\n")
    old.chmod(0o644)  # a file left by hand: replaced, not reused
    settings = {"APPROVAL_DESCRIPTION": 'it\'s a "test" $HOME', "TEMPORAL_ADDRESS": "h:1"}

    path = write_settings_file(tmp_path, settings)

    assert path == old and stat.S_IMODE(path.stat().st_mode) == 0o600
    shown = subprocess.run(
        ["sh", "-c", '. "$1" && env', "sh", str(path)],
        env={"PATH": os.environ["PATH"]},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    assert 'APPROVAL_DESCRIPTION=it\'s a "test" $HOME' in shown
    assert "TEMPORAL_ADDRESS=h:1" in shown


def test_stack_env_holds_what_a_worker_beside_the_stack_needs(tmp_path: Path) -> None:
    settings = LocalStackSettings(data_dir=tmp_path)
    env = child_environment(
        settings, "k1:secret", base={"APPROVAL_TASK_QUEUE": "mine", "PATH": "/bin"}
    )
    shared = shared_settings({**env, "APPROVAL_METRICS_PORT": "9464", "APPROVAL_BAD-NAME": "1"})

    assert shared["APPROVAL_SIGNING_KEYS"] == "k1:secret"
    assert shared["APPROVAL_TASK_QUEUE"] == "mine"  # the user's own settings too
    assert shared["TEMPORAL_ADDRESS"] == "127.0.0.1:7233"
    assert shared["AWS_ENDPOINT_URL"] == "http://127.0.0.1:5000"
    assert "APPROVAL_METRICS_PORT" not in shared  # a second worker would find it taken
    assert not [name for name in shared if not name.startswith(("APPROVAL_", "TEMPORAL_", "AWS_"))]
    assert "APPROVAL_BAD-NAME" not in shared  # no shell could set it


def test_without_a_worker_the_stack_leaves_its_metrics_port_and_its_demo(tmp_path: Path) -> None:
    settings = LocalStackSettings(data_dir=tmp_path, worker=False)
    assert "LOCAL_STACK_METRICS_PORT" not in [setting for _, _, setting in settings.ports()]
    assert not settings.starts_demo

    lines = banner(settings, "default", None, 1.0, tmp_path / "stack.env")
    assert not [line for line in lines if line.startswith("Approval link:")]
    assert f"Settings for other terminals: . {tmp_path / 'stack.env'}" in lines
    assert (
        f"No worker runs (LOCAL_STACK_WORKER=false): . {tmp_path / 'stack.env'} "
        "&& .venv/bin/python -m worker"
    ) in lines
