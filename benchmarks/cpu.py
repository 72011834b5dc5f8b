"""Which process of the stack spent the machine's CPU during a measured stretch.

The lock path is a chain: each process holds the lock while the dev server, the worker, the
emulator, the simulator and the API each do their part of its critical section, all on the same
cores. When that chain is slower than a bare workflow, the question is whether it waits (on a
poll, a timer, the server's pacing) or works: the CPU each part used per process through the lock,
against the wall time each took, answers it. Read from ``/proc`` (every part's process and its
descendants, this process, and the machine's total), so it costs nothing while measuring.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")


def process_cpu_seconds(pid: int, descendants: bool = True) -> float:
    """User + system CPU of a process (and its live descendants), in seconds."""
    children: dict[int, list[int]] = {}
    seconds: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            # The command name (field 2) may hold spaces and parentheses: split after its end.
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone since the listing
            continue
        child = int(entry.name)
        children.setdefault(int(fields[1]), []).append(child)
        seconds[child] = (int(fields[11]) + int(fields[12])) / TICKS
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        total += seconds.get(current, 0.0)
        if descendants:
            todo += children.get(current, [])
    return total


def machine_busy_seconds() -> float:
    """CPU time the whole machine spent busy, every core: user, nice, system, irq, softirq."""
    with open("/proc/stat") as stat:
        ticks = [int(v) for v in stat.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq = ticks[:7]
    return (user + nice + system + irq + softirq) / TICKS


@dataclass
class CpuUse:
    """CPU per unit of work (a process through the lock) of each named process, and the rest."""

    title: str
    unit: str
    pids: dict[str, int]
    _start: dict[str, float] = field(default_factory=dict)
    _began: float = 0.0
    per_unit_ms: dict[str, float] = field(default_factory=dict)
    wall_ms: float = 0.0

    def start(self) -> None:
        self._start = self._read()
        self._began = time.perf_counter()

    def stop(self, units: int) -> None:
        """The CPU spent since ``start()``, divided among ``units`` (at least one)."""
        wall = time.perf_counter() - self._began
        end = self._read()
        units = max(units, 1)
        spent = {name: end[name] - self._start[name] for name in end}
        machine = spent.pop("machine")
        spent["rest of the machine"] = max(machine - sum(spent.values()), 0.0)
        self.per_unit_ms = {name: s * 1000 / units for name, s in spent.items()}
        self.wall_ms = wall * 1000 / units

    def _read(self) -> dict[str, float]:
        cpu = {name: process_cpu_seconds(pid) for name, pid in self.pids.items()}
        # The client alone: every part is its child.
        cpu["benchmark client"] = process_cpu_seconds(os.getpid(), descendants=False)
        cpu["machine"] = machine_busy_seconds()
        return cpu

    @property
    def busy_fraction(self) -> float:
        cores = os.cpu_count() or 1
        return sum(self.per_unit_ms.values()) / (self.wall_ms * cores) if self.wall_ms else 0.0

    def render(self) -> str:
        total = sum(self.per_unit_ms.values()) or 1.0
        lines = [f"{self.title} (CPU per {self.unit}, from /proc)"]
        for name, spent in sorted(self.per_unit_ms.items(), key=lambda kv: -kv[1]):
            lines.append(f"  {name:58} {spent:8.1f} ms  {spent / total * 100:3.0f} %")
        lines.append(f"  {'all of the machine':58} {total:8.1f} ms")
        lines.append(
            f"  {'wall time per ' + self.unit:58} {self.wall_ms:8.1f} ms"
            f"  ({os.cpu_count()} cores {self.busy_fraction * 100:.0f} % busy)"
        )
        return "\n".join(lines)

    def as_dict(self) -> dict[str, dict[str, float]]:
        return {
            **{name: {"cpu_ms": round(ms, 2)} for name, ms in self.per_unit_ms.items()},
            "wall": {"ms": round(self.wall_ms, 2), "busy_fraction": round(self.busy_fraction, 3)},
        }
