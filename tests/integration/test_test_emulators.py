"""The tests' own emulators do not outlive a test run killed with SIGKILL.

``tests/support/moto_server.py`` starts a real ``moto_server`` per fixture and stops it at the
fixture's end; a run killed with SIGKILL (a CI job's limit, a stuck run ended by hand) never gets
there. Judged from ``/proc`` by pid, as an outsider: the run is a real process, killed for real.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import pytest

from tests.support.processes import alive, command_line
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]

# A stand-in for a test run: it starts an emulator as a fixture does, says its pid, and waits.
RUN = """
import sys
from tests.support.moto_server import start_moto_server

server = start_moto_server()
print(server.process.pid, flush=True)
sys.stdin.readline()
"""


@pytest.mark.duration(3)
async def test_a_run_killed_with_sigkill_takes_its_emulator_with_it() -> None:
    run = await asyncio.create_subprocess_exec(
        *(sys.executable, "-c", RUN),
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert run.stdout is not None
    emulator = 0
    try:
        line = await asyncio.wait_for(run.stdout.readline(), timeout=60)
        emulator = int(line)
        assert any("moto_server" in part for part in command_line(emulator))

        run.send_signal(signal.SIGKILL)
        await run.wait()

        await eventually(lambda: not alive(emulator), "the emulator to stop", within=30)
    finally:
        if run.returncode is None:
            run.kill()
            await run.wait()
        if emulator and alive(emulator):
            os.kill(emulator, signal.SIGKILL)
