"""Every test runs under pytest-timeout's limit, and a hung coroutine test cleans up at once.

The limit is in pyproject.toml (``timeout``); what a timeout does to a coroutine test is
tests/support/timeouts.py's; docs/testing.md says why the value.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# Under load 8-10 the slowest tests took 2-2.5 times their idle duration (docs/testing.md); a
# limit this many times the longest ``duration`` mark leaves room for load well past that.
HEADROOM = 8

HUNG = """
import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

CHILD = Path(__file__).with_name("child.pid")


async def test_hangs_on_a_result_that_never_comes():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    CHILD.write_text(str(child.pid))
    try:
        await asyncio.get_running_loop().create_future()  # the hung await
    finally:
        child.terminate()
        child.wait()


def test_the_next_test_finds_the_child_gone():
    assert not Path(f"/proc/{CHILD.read_text()}").exists()


async def test_hangs_where_it_expects_a_cancel():
    # The send it waits for should end cancelled by itself; it never does, and the alarm's
    # cancel must not count as the one expected.
    with pytest.raises(asyncio.CancelledError):
        await asyncio.get_running_loop().create_future()
"""


def test_every_test_runs_under_a_limit_well_above_the_slowest(request: pytest.FixtureRequest):
    config = request.config
    assert config.pluginmanager.has_plugin("approval-flow-timeouts")  # tests/conftest.py
    assert config.getini("timeout_method") == "signal"
    limit = float(config.getini("timeout"))
    # Every test module's marks, whichever tests this run collected.
    durations = [
        float(seconds)
        for module in (ROOT / "tests").rglob("test_*.py")
        for seconds in re.findall(r"@pytest\.mark\.duration\((\d+(?:\.\d+)?)\)", module.read_text())
    ]
    assert durations, "no test says how long it takes (@pytest.mark.duration)"
    assert limit >= HEADROOM * max(durations), (limit, max(durations))


def test_a_hung_coroutine_test_fails_at_its_await_and_cleans_up_at_once(tmp_path: Path):
    (tmp_path / "test_hung.py").write_text(textwrap.dedent(HUNG))
    run = subprocess.run(
        [
            *(sys.executable, "-m", "pytest", "test_hung.py", "--rootdir", str(tmp_path)),
            *("-p", "tests.support.timeouts", "-p", "no:cacheprovider", "-p", "no:xdist"),
            # No short summary: how much of each failure's message it repeats depends on the
            # terminal's width (COLUMNS), and CI's is wider than a shell's 80 columns.
            "-rN",
            *("--timeout", "1", "-o", "asyncio_mode=auto"),
            *("-o", "asyncio_default_fixture_loop_scope=session"),
            *("-o", "asyncio_default_test_loop_scope=session"),  # as pyproject.toml runs them
        ],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,  # a deadline for a run that would otherwise hang for good
    )
    out = run.stdout
    assert "2 failed, 1 passed" in out, out + run.stderr
    assert out.count("Failed: Timeout (>1.0s) from pytest-timeout.") == 2, out
    # The report points at the line that hung, not at the event loop's epoll wait.
    assert "await asyncio.get_running_loop().create_future()  # the hung await" in out, out
