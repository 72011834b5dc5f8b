"""The benchmark suite leaves no process behind: stopped with SIGTERM, or killed with SIGKILL.

A stack that outlives its suite keeps a dev server, an emulator and workers busy on the machine
and skews every later measurement (three were found running once). Both tests run the suite as a
real process (``python -m benchmarks --quick``) and judge from ``/proc``, by pid, as an outsider.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from benchmarks.suite import EXIT_TERMINATED
from local_stack.children import Child
from tests.support.processes import alive, children, command_line
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
UP_TIMEOUT = 120.0  # the whole stack starting on a loaded 2-core machine
STOP_TIMEOUT = 60.0  # the suite's own grace for its parts is 20 s
# What --quick --only lock_path starts: the dev server, the emulator, the project's worker, the
# baseline worker, the callbacks API and the simulator.
PARTS = 6


@dataclass
class Suite:
    process: Child
    parts: set[int] = field(default_factory=set)  # killed at the end if still there

    @property
    def pid(self) -> int:
        assert self.process.pid is not None
        return self.process.pid

    @property
    def output(self) -> str:
        return self.process.log_path.read_text(errors="replace")

    def running(self) -> bool:
        if self.process.returncode is not None:
            pytest.fail(f"the suite exited with {self.process.returncode}:\n{self.output}")
        return True

    def children(self) -> set[int]:
        found = children(self.pid)
        self.parts |= found
        return found


@contextlib.asynccontextmanager
async def suite(tmp_path: Path) -> AsyncIterator[Suite]:
    """The suite as a process; whatever of it is left is killed at the end, the test failed or not.

    It runs in a session of its own, and its parts stay in its process group: one killpg ends
    them all while the suite lives; after, each part seen is killed by pid.
    """
    argv = [sys.executable, "-m", "benchmarks", "--quick", "--only", "lock_path"]
    argv += ["--out", str(tmp_path / "results.json")]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    running = Suite(Child("benchmarks", argv, env, tmp_path / "suite.out", sys.stderr, echo=False))
    await running.process.start()
    try:
        yield running
    except BaseException:
        print(running.output, file=sys.stderr)  # shown by pytest for the failing test
        raise
    finally:
        if running.process.returncode is None:
            running.children()
        running.process.kill()
        await running.process.exited()
        for pid in running.parts:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.duration(8)
async def test_sigterm_stops_the_suite_and_every_part_of_its_stack(tmp_path: Path) -> None:
    async with suite(tmp_path) as run:

        def up() -> bool:
            return run.running() and "servers and workers up" in run.output

        await eventually(up, "the suite's stack up", UP_TIMEOUT)
        parts = run.children()
        assert len(parts) == PARTS, [command_line(pid) for pid in parts]

        os.kill(run.pid, signal.SIGTERM)  # the suite alone, as `kill PID` does
        code = await asyncio.wait_for(run.process.exited(), STOP_TIMEOUT)

        assert code == EXIT_TERMINATED, run.output
        assert "stopped by SIGTERM" in run.output
        # Stopped and reaped by the suite before it exited, not left to die after it.
        assert [pid for pid in parts if alive(pid)] == []
        assert not (tmp_path / "results.json").exists()  # a cut-short run writes no figures


async def test_the_stack_dies_with_a_suite_killed_with_sigkill(tmp_path: Path) -> None:
    async with suite(tmp_path) as run:
        started: dict[str, int] = {}

        def servers_started() -> bool:
            """The dev server and the emulator running their own programs (so past exec)."""
            for child in run.children():
                line = " ".join(command_line(child))
                for name in ("start-dev", "moto_server"):
                    if name in line:
                        started[name] = child
            return run.running() and len(started) == 2

        await eventually(servers_started, "the dev server and the emulator started", UP_TIMEOUT)

        os.kill(run.pid, signal.SIGKILL)  # the suite alone: its finally never runs
        await asyncio.wait_for(run.process.exited(), STOP_TIMEOUT)

        await eventually(
            lambda: not any(map(alive, started.values())),
            f"the dev server and the emulator ({started}) gone with the suite",
            STOP_TIMEOUT,
        )
