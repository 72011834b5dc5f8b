"""benchmarks/cpu.py charges each part the CPU its process tree used, and nothing else.

Real processes: one part whose child burns a known amount of CPU (its own ``time.process_time``
says when it has), one that sleeps. CPU accounting, not a timing: the burn is measured in CPU
seconds by the burner itself, and /proc counts in ticks of 10 ms.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

from benchmarks.cpu import CpuUse, process_cpu_seconds

# A part that starts a child which, once told to on stdin, burns 0.3 s more CPU, says so, and then
# waits (so it is still in the tree when the CPU is read).
BURNER = """
import subprocess, sys
child = subprocess.Popen([sys.executable, "-c", '''
import sys, time
sys.stdin.readline()
began = time.process_time()
while time.process_time() - began < 0.3:
    pass
print("burnt", flush=True)
sys.stdin.readline()
'''], stdin=sys.stdin, stdout=sys.stdout)
child.wait()
"""
# Says when it is up: its start-up (tens of ms of CPU, more under load) is not the stretch measured.
SLEEPER = "import sys; print('ready', flush=True); sys.stdin.readline()"
BURN_SECONDS = 0.3
TICK = 0.01


@pytest.fixture
def parts() -> Iterator[tuple[subprocess.Popen[str], subprocess.Popen[str]]]:
    def start(code: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )

    burner, sleeper = start(BURNER), start(SLEEPER)
    assert sleeper.stdout is not None
    assert sleeper.stdout.readline() == "ready\n"
    yield burner, sleeper
    for part in (burner, sleeper):
        part.kill()
        part.wait(timeout=30)


def test_each_part_is_charged_its_process_tree_and_the_work_is_shared_out(
    parts: tuple[subprocess.Popen[str], subprocess.Popen[str]],
) -> None:
    burner, sleeper = parts
    use = CpuUse("test", "unit", {"burner": burner.pid, "sleeper": sleeper.pid})
    use.start()
    assert burner.stdin is not None and burner.stdout is not None
    burner.stdin.write("go\n")
    burner.stdin.flush()
    assert burner.stdout.readline() == "burnt\n"  # the child's own CPU clock passed 0.3 s
    use.stop(units=3)

    # The grandchild's 0.3 s, shared among three units: 100 ms each, less at most a tick or two
    # of /proc's rounding.
    assert use.per_unit_ms["burner"] >= (BURN_SECONDS - 2 * TICK) * 1000 / 3
    assert use.per_unit_ms["sleeper"] <= TICK * 1000
    assert use.wall_ms > 0
    assert "burner" in use.render() and use.as_dict()["burner"]["cpu_ms"] > 0


def test_the_client_alone_is_not_charged_its_children(
    parts: tuple[subprocess.Popen[str], subprocess.Popen[str]],
) -> None:
    burner, _ = parts
    assert burner.stdin is not None and burner.stdout is not None
    burner.stdin.write("go\n")
    burner.stdin.flush()
    assert burner.stdout.readline() == "burnt\n"
    with_children = process_cpu_seconds(os.getpid())
    alone = process_cpu_seconds(os.getpid(), descendants=False)
    assert with_children - alone >= BURN_SECONDS - 2 * TICK
