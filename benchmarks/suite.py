"""``make bench``: every figure of issue 12 against a bare-Temporal baseline from the same run.

Starts its own dev server, AWS emulator, workers, callbacks API and an instant downstream
simulator (``benchmarks.stack``), measures, prints one table and writes ``.bench/results.json``.
``--quick`` runs everything small: a smoke run for ``make test``, whose figures mean nothing.
Ctrl+C and SIGTERM (``kill``, a CI job's timeout) stop the run and its whole stack; exit 130/143.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import time
import uuid
from collections.abc import Awaitable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from benchmarks import approvals, lock_path, memory, mutex_queue
from benchmarks import figures as figs
from benchmarks.cpu import CpuUse
from benchmarks.figures import Figure
from benchmarks.stack import Part, Stack
from benchmarks.timeline import Profile
from local_stack.dev_server import dynamic_config_args
from workflows.messages import ProcessOptions, mutex_workflow_id

DEFAULT_OUT = Path(".bench/results.json")
REQUIRED = (
    "handoff_vs_signal_rtt",
    "critical_section_p50_vs_one_activity",
    "critical_section_p90_vs_one_activity",
    "mutex_throughput_vs_sequential",
    "approval_post_vs_bare_client",
    "approval_definitive_fraction",
    "worker_kb_per_parked_process",
    "happy_path_history_events",
)


PARTS = ("lock_path", "memory", "approvals", "scale", "queue")


@dataclass(frozen=True)
class Sizes:
    lock_path: int  # processes approved at once, all through one mutex
    round_trips: int  # bare signal round trips
    one_activity: int  # bare one-activity workflows, one after another
    parked: int  # processes parked on the worker (memory figure; approvals among them)
    parked_strict: int  # processes parked on a worker with the strict sandbox
    approvals: int  # approvals per path (API, bare client); 2 x this <= parked
    scale: int  # processes parked on a worker with a small cache
    scale_cache: int  # that worker's max_cached_workflows
    scale_decided: int  # of which decided once parked (evicted ones, all waves)
    scale_approved: int  # of those approved (through the mutex); the rest rejected
    queue: int  # waiters in the mutex queue figure
    drain: int  # of which let through (each handoff is a round trip between workflows)


FULL = Sizes(30, 50, 50, 1000, 500, 500, 5000, 500, 500, 10, 2000, 400)
QUICK = Sizes(3, 5, 5, 10, 10, 5, 20, 10, 10, 2, 10, 10)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="everything, small (a smoke run)")
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help=f"JSON (default {DEFAULT_OUT})"
    )
    parser.add_argument(
        "--only", default="", help=f"comma-separated parts of {', '.join(PARTS)} (default all)"
    )
    parser.add_argument(
        "--dynamic-config",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a dynamic config value for the dev server (repeatable), over make run's own "
        "(local_stack/dev_server.py); e.g. history.transferProcessorMaxPollRPS=20 measures on "
        "the server's default pacing",
    )
    args = parser.parse_args(argv)
    parts = {p for p in args.only.split(",") if p} or set(PARTS)
    if parts - set(PARTS):
        parser.error(f"unknown parts: {', '.join(sorted(parts - set(PARTS)))}")
    try:
        server_args = dev_server_args(args.dynamic_config)
    except ValueError as err:
        parser.error(str(err))
    sizes = QUICK if args.quick else FULL
    if args.quick:
        memory.WARM_UP, memory.SETTLE_SECONDS = 2, 0.5
    return run_until_stopped(run(sizes, parts, args.out, args.quick, server_args))


EXIT_INTERRUPTED = 128 + signal.SIGINT
EXIT_TERMINATED = 128 + signal.SIGTERM


def run_until_stopped(main: Coroutine[None, None, int]) -> int:
    """``asyncio.run(main)``, where SIGTERM does what Ctrl+C does: cancel ``main``.

    Cancelled, ``run`` stops its stack in its ``finally``. Without this, SIGTERM killed the suite
    at once and left the dev server, the emulator and every worker running (three whole stacks
    were found that way, skewing every later measurement). The parts die with the suite even on
    kill -9 (benchmarks/stack.py), but only this way are they stopped in order and the exit code
    says why.
    """
    terminated = False

    async def stoppable() -> int:
        task = asyncio.current_task()
        assert task is not None

        def on_sigterm() -> None:
            nonlocal terminated
            terminated = True
            task.cancel()

        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, on_sigterm)
        return await main

    try:
        return asyncio.run(stoppable())
    except KeyboardInterrupt:  # asyncio.run cancelled main on Ctrl+C, as above
        print("stopped by Ctrl+C; every part of the stack is stopped", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    except asyncio.CancelledError:
        if not terminated:
            raise
        print("stopped by SIGTERM; every part of the stack is stopped", file=sys.stderr, flush=True)
        return EXIT_TERMINATED


def dev_server_args(values: list[str]) -> list[str]:
    """The dev server as ``make run`` configures it, with ``KEY=VALUE`` overrides by key.

    Project and baselines run on this one server, so whatever it is set to, each ratio compares
    both on the same pacing."""
    overrides: dict[str, str] = {}
    for value in values:
        key, sep, setting = value.partition("=")
        if not sep or not key or not setting:
            raise ValueError(f"--dynamic-config wants KEY=VALUE, not {value!r}")
        overrides[key] = setting
    return dynamic_config_args(overrides)


# Longest each part may take before it is reported as failed and the run goes on: a guard
# against a hang, several times what each takes on a quiet 2-core machine.
PART_LIMITS = {"lock_path": 300, "memory": 600, "approvals": 300, "queue": 300, "scale": 900}


class Run:
    """One run of the suite: the stack, and what each part measured or why it failed."""

    def __init__(self, sizes: Sizes, stack: Stack, quick: bool) -> None:
        self.sizes = sizes
        self.stack = stack
        self.quick = quick
        self.figures: list[Figure] = []
        self.profiles: list[Profile | CpuUse] = []
        self.lost = 0
        self.failures: dict[str, str] = {}
        self.began = time.perf_counter()

    def say(self, what: str) -> None:
        print(f"[{time.perf_counter() - self.began:6.1f} s] {what}", flush=True)

    async def part(self, name: str, measure: Awaitable[None]) -> None:
        """Run one part; a failure (or running past its limit) is reported, not fatal."""
        try:
            async with asyncio.timeout(PART_LIMITS[name]):
                await measure
        except Exception as err:  # reported in the table and the JSON; the next part runs
            reason = f"{type(err).__name__}: {err}".splitlines()[0][:300]
            self.failures[name] = reason
            self.say(f"{name} FAILED: {reason}")


async def run(sizes: Sizes, parts: set[str], out: Path, quick: bool, server_args: list[str]) -> int:
    load_before = os.getloadavg()
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    stack = Stack(out.parent / f"logs-{stamp}")
    print(f"benchmarks ({'quick' if quick else 'full'}): logs in {stack.logs}", flush=True)
    r = Run(sizes, stack, quick)
    try:
        await stack.start(*server_args)
        # Every process the figures need starts now, side by side; idle until its figure.
        baseline_task = asyncio.create_task(stack.start_baseline_worker("baseline-worker"))
        worker_task = asyncio.create_task(stack.start_worker("worker"))
        strict_task = (
            asyncio.create_task(
                stack.start_worker(
                    "worker-strict-sandbox", APPROVAL_WORKER_SHARE_WORKFLOW_MODULES="false"
                )
            )
            if "memory" in parts
            else None
        )
        small_cache_task = (
            asyncio.create_task(
                stack.start_worker(
                    "worker-small-cache",
                    APPROVAL_WORKER_MAX_CACHED_WORKFLOWS=str(sizes.scale_cache),
                )
            )
            if "scale" in parts
            else None
        )
        await stack.start_api_and_simulator()
        baseline, worker = await baseline_task, await worker_task
        strict_worker = await strict_task if strict_task else None
        small_cache_worker = await small_cache_task if small_cache_task else None
        r.say("servers and workers up")
        if "lock_path" in parts:
            await r.part("lock_path", _lock_path(r, worker, baseline))
        if parts & {"approvals", "memory"}:
            parked: list[memory.Parked] = []
            await r.part("memory", _memory(r, worker, baseline, strict_worker, parked))
            if "approvals" in parts and parked:
                await r.part("approvals", _approvals(r, parked[0]))
        if "queue" in parts:
            await r.part("queue", _queue(r, worker, baseline))
        if small_cache_worker is not None:
            await r.part("scale", _scale(r, worker, baseline, small_cache_worker))
    finally:
        await stack.close()
    r.say("done")
    return report(r, parts, out, load_before, server_args)


async def _lock_path(r: Run, worker: Part, baseline: Part) -> None:
    r.say(f"lock path: {r.sizes.lock_path} processes approved at once")
    result = await lock_path.run(
        r.stack.client,
        worker,
        baseline,
        r.sizes.lock_path,
        r.sizes.round_trips,
        r.sizes.one_activity,
        r.stack.parts,
    )
    r.figures += result.figures
    r.profiles += result.profiles
    r.lost += result.expected - result.completed


async def _memory(
    r: Run, worker: Part, baseline: Part, strict_worker: Part | None, out: list[memory.Parked]
) -> None:
    """The processes parked here are the approvals' too (``out``)."""
    client, sizes = r.stack.client, r.sizes
    r.say(f"memory: {sizes.parked} processes parked at approval")
    resource, _ = await mutex_queue.hold_lock(client, worker, baseline, "held")
    held = ProcessOptions(lock_resource=resource)
    parked = await memory.parked_processes(client, worker, sizes.parked, held, "parked")
    parked.lock_resource = resource
    out.append(parked)
    if strict_worker is None:
        return
    r.say(f"memory: {sizes.parked} bare workflows parked")
    bare = await memory.parked_bare(client, baseline, sizes.parked)
    r.say(f"memory: {sizes.parked_strict} processes parked with the strict sandbox")
    strict = await memory.parked_processes(
        client, strict_worker, sizes.parked_strict, held, "parked, strict sandbox"
    )
    r.stack.stop(strict_worker)
    r.figures += memory.memory_figures(parked, strict, bare)


async def _approvals(r: Run, parked: memory.Parked) -> None:
    n = r.sizes.approvals
    r.say(f"approvals: {n} with the client, then {n} through the API")
    ids = parked.ids
    approved = await approvals.run(
        r.stack.client,
        r.stack.settings,
        r.stack.api_url,
        ids[:n],
        ids[n : 2 * n],
        mutex_workflow_id(parked.lock_resource),
    )
    r.figures += approved.figures
    r.lost += approved.lost


async def _queue(r: Run, worker: Part, baseline: Part) -> None:
    r.say(f"mutex queue: {r.sizes.queue} waiters, {r.sizes.drain} let through")
    queued = await mutex_queue.run(r.stack.client, worker, baseline, r.sizes.queue, r.sizes.drain)
    r.figures += queued.figures
    r.lost += queued.expected - queued.granted_in_order


async def _scale(r: Run, worker: Part, baseline: Part, small_cache_worker: Part) -> None:
    sizes = r.sizes
    r.say(f"scale: {sizes.scale} parked, {sizes.scale_cache} cached")
    resource, _ = await mutex_queue.hold_lock(r.stack.client, worker, baseline, "scale")
    scaled = await memory.scale(
        r.stack,
        small_cache_worker,
        sizes.scale,
        sizes.scale_cache,
        sizes.scale_decided,
        sizes.scale_approved,
        held=ProcessOptions(lock_resource=resource),
        free=ProcessOptions(lock_resource=f"bench-scale-{uuid.uuid4().hex[:8]}"),
    )
    r.figures += scaled.figures
    r.lost += scaled.expected - scaled.closed_as_expected


def report(
    r: Run,
    parts: set[str],
    out: Path,
    load_before: tuple[float, float, float],
    server_args: list[str],
) -> int:
    print()
    print(figs.table(r.figures))
    for name, reason in r.failures.items():
        print(f"FAILED {name}: {reason}")
    for profile in r.profiles:
        print()
        print(profile.render())
    info = figs.machine(load_before)
    print()
    print(
        f"machine: {info['cpu_count']} x {info['cpu_model']}, {info['memory_gib']} GiB; load "
        f"average {load_before[0]:.2f} before, {info['load_average_after'][0]:.2f} after; "
        f"Python {info['python']}, temporalio {info['temporalio']}, {info['temporal_cli']}"
    )
    print(f"dev server: {' '.join(server_args[1::2]) or 'its defaults'}")
    figs.write(
        out,
        info,
        r.figures,
        mode="quick" if r.quick else "full",
        dev_server_args=server_args,
        seconds=round(time.perf_counter() - r.began, 1),
        lost=r.lost,
        failures=r.failures,
        profiles={p.title: p.as_dict() for p in r.profiles},
    )
    print(f"results: {Path.cwd() / out}")
    missing = [name for name in REQUIRED if name not in {f.name for f in r.figures}]
    if missing and parts == set(PARTS):
        print(f"missing figures: {', '.join(missing)}", file=sys.stderr)
    if r.lost:
        print(f"lost: {r.lost} (see the notes above)", file=sys.stderr)
    failed = bool(r.failures or r.lost or (missing and parts == set(PARTS)))
    return 1 if failed else 0
