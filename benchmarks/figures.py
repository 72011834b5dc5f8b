"""Figures: a value against its baseline, the table printed and the JSON written.

A figure's ``ratio`` is value / baseline (the value itself without a baseline, or when the target
is on the value: kB, events); its
``target`` says which way is good (``"<= 2"`` or ``">= 0.5"``). ``p50``/``p90``/``p99`` describe
the project's samples behind the value, in the figure's unit.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sysconfig
from dataclasses import InitVar, asdict, dataclass, field
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any


def percentile(samples: list[float], p: int) -> float | None:
    if not samples:
        return None
    if len(samples) == 1 or p >= 100:
        return max(samples)
    return statistics.quantiles(samples, n=100, method="inclusive")[p - 1]


@dataclass
class Figure:
    name: str
    value: float | None
    baseline: float | None
    unit: str
    target: str | None = None
    n: int = 0
    p50: float | None = None
    p90: float | None = None
    p99: float | None = None
    note: str = ""
    # The target is on the value itself (kB, events), not on value / baseline.
    absolute: InitVar[bool] = False
    ratio: float | None = field(init=False)

    def __post_init__(self, absolute: bool) -> None:
        if self.value is None:
            self.ratio = None
        elif self.baseline is None or absolute:
            self.ratio = self.value
        else:
            self.ratio = self.value / self.baseline if self.baseline else None

    @classmethod
    def of_samples(
        cls,
        name: str,
        samples: list[float],
        baseline: float | None,
        unit: str,
        target: str | None,
        *,
        at: int = 50,
        note: str = "",
        absolute: bool = False,
    ) -> Figure:
        """The ``at``-th percentile of ``samples`` as the value, the spread alongside."""
        return cls(
            name,
            percentile(samples, at),
            baseline,
            unit,
            target,
            n=len(samples),
            p50=percentile(samples, 50),
            p90=percentile(samples, 90),
            p99=percentile(samples, 99),
            note=note,
            absolute=absolute,
        )

    @property
    def met(self) -> bool | None:
        if self.target is None or self.ratio is None:
            return None
        op, bound = self.target.split()
        return self.ratio <= float(bound) if op == "<=" else self.ratio >= float(bound)


def _num(value: float | None, digits: int = 1) -> str:
    if value is None:
        return "-"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"


def table(figures: list[Figure]) -> str:
    header = (
        f"{'figure':40} {'project':>10} {'baseline':>10} {'ratio':>7} {'target':>7} {'met':>4} "
        f"{'n':>5} {'p50':>8} {'p90':>8} {'p99':>8}  unit"
    )
    lines = [header, "-" * len(header)]
    for f in figures:
        met = {True: "yes", False: "NO", None: ""}[f.met]
        lines.append(
            f"{f.name:40} {_num(f.value):>10} {_num(f.baseline):>10} {_num(f.ratio, 2):>7} "
            f"{f.target or '':>7} {met:>4} {f.n:>5} {_num(f.p50):>8} {_num(f.p90):>8} "
            f"{_num(f.p99):>8}  {f.unit}"
        )
        if f.note:
            lines.append(f"{'':42}{f.note}")
    return "\n".join(lines)


def machine(load_before: tuple[float, float, float]) -> dict[str, Any]:
    """What the figures ran on; load averages before and after say how quiet it was."""
    model = ""
    with open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    memory_kib = 0
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemTotal:"):
                memory_kib = int(line.split()[1])
    temporal = subprocess.run(
        [str(Path(sysconfig.get_path("scripts")) / "temporal"), "--version"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": model,
        "memory_gib": round(memory_kib / 1024 / 1024, 1),
        "load_average_before": list(load_before),
        "load_average_after": list(os.getloadavg()),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "temporalio": version("temporalio"),
        "temporal_cli": temporal,
        "moto": version("moto"),
        "aiohttp": version("aiohttp"),
        "git_commit": _git_commit(),
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def _git_commit() -> str | None:
    result = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    )
    return result.stdout.strip() or None


def write(path: Path, info: dict[str, Any], figures: list[Figure], **extra: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {"machine": info, **extra, "figures": [asdict(f) for f in figures]}
    path.write_text(json.dumps(document, indent=2) + "\n")
