"""``make run``'s pieces that need no process: the children's environment, readiness."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from local_stack.children import Child, ChildFailed
from local_stack.environment import child_environment
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
