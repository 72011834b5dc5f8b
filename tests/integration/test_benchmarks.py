"""``python -m benchmarks --quick`` runs every figure end to end and loses nothing.

A smoke test of the benchmark suite, not a benchmark: it asserts that the run completes, that
every figure of issue 12 is in the JSON with a value, and that nothing was lost; never a timing.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.suite import REQUIRED

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.duration(20)
# The run's own hang guard (below) is the limit, not the suite's 240 s: at load 10-20 the stack
# alone may take minutes to come up (benchmarks/stack.py READY_TIMEOUT).
@pytest.mark.timeout(600)
def test_the_quick_benchmark_measures_every_figure_and_loses_nothing(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,  # a hang guard: the run takes well under a minute on a quiet machine
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"results: {out}" in result.stdout
    document = json.loads(out.read_text())
    assert document["mode"] == "quick"
    assert document["lost"] == 0
    figures = {f["name"]: f for f in document["figures"]}
    assert set(REQUIRED) <= set(figures)
    for name in REQUIRED:
        assert figures[name]["value"] is not None, name
        assert figures[name]["n"] > 0, name
    # What every process of the scale figure and every queued waiter ended as.
    assert figures["scale_closed_as_expected_fraction"]["value"] == 1.0
    assert figures["mutex_queue_grant_order_kept"]["value"] == 1.0
    machine = document["machine"]
    assert machine["cpu_count"] and machine["temporalio"]
    assert len(machine["load_average_before"]) == 3
    # Where the lock path's CPU went, per part of the stack: the worker and the server worked.
    cpu = document["profiles"]["CPU from the approvals to the last completion"]
    assert cpu["worker"]["cpu_ms"] > 0 and cpu["temporal"]["cpu_ms"] > 0, cpu
    assert cpu["wall"]["ms"] > 0, cpu
