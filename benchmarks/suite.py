"""``make bench``: every figure of issue 12 against a bare-Temporal baseline from the same run.

Starts its own dev server, AWS emulator, workers, callbacks API and an instant downstream
simulator (``benchmarks.stack``), measures, prints one table and writes ``.bench/results.json``.
``--quick`` runs everything small: a smoke run for ``make test``, whose figures mean nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from benchmarks import approvals, lock_path, memory, mutex_queue
from benchmarks import figures as figs
from benchmarks.figures import Figure
from benchmarks.stack import Stack
from benchmarks.timeline import Profile
from workflows.messages import ProcessOptions

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
    parked_shared: int  # processes parked on a worker sharing the workflow modules
    approvals: int  # approvals per path (API, bare client); 2 x this <= parked
    scale: int  # processes parked on a worker with a small cache
    scale_cache: int  # that worker's max_cached_workflows
    scale_approved: int  # of which approved (through the mutex); the rest rejected
    queue: int  # waiters in the mutex queue figure
    drain: int  # of which let through (each handoff is a round trip between workflows)


FULL = Sizes(30, 50, 50, 1000, 500, 500, 5000, 500, 10, 2000, 400)
QUICK = Sizes(3, 5, 5, 10, 10, 5, 20, 5, 2, 10, 10)


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
        help="a dynamic config value for the dev server (repeatable), e.g. "
        "history.transferProcessorMaxPollRPS=1000",
    )
    args = parser.parse_args(argv)
    parts = {p for p in args.only.split(",") if p} or set(PARTS)
    if parts - set(PARTS):
        parser.error(f"unknown parts: {', '.join(sorted(parts - set(PARTS)))}")
    server_args = [
        arg for value in args.dynamic_config for arg in ("--dynamic-config-value", value)
    ]
    sizes = QUICK if args.quick else FULL
    return asyncio.run(run(sizes, parts, args.out, args.quick, server_args))


async def run(sizes: Sizes, parts: set[str], out: Path, quick: bool, server_args: list[str]) -> int:
    load_before = os.getloadavg()
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    stack = Stack(out.parent / f"logs-{stamp}")
    print(f"benchmarks ({'quick' if quick else 'full'}): logs in {stack.logs}", flush=True)
    figures: list[Figure] = []
    profiles: list[Profile] = []
    lost = 0
    began = time.perf_counter()
    try:
        await stack.start(*server_args)
        # Every process the figures need starts now, side by side; idle until its figure.
        baseline_task = asyncio.create_task(stack.start_baseline_worker("baseline-worker"))
        worker_task = asyncio.create_task(stack.start_worker("worker"))
        shared_task = (
            asyncio.create_task(
                stack.start_worker(
                    "worker-shared-modules", APPROVAL_WORKER_SHARE_WORKFLOW_MODULES="true"
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
        shared_worker = await shared_task if shared_task else None
        small_cache_worker = await small_cache_task if small_cache_task else None
        _say("servers and workers up", began)

        if "lock_path" in parts:
            _say(f"lock path: {sizes.lock_path} processes approved at once", began)
            result = await lock_path.run(
                stack.client,
                worker,
                baseline,
                sizes.lock_path,
                sizes.round_trips,
                sizes.one_activity,
            )
            figures += result.figures
            profiles += result.profiles
            lost += result.expected - result.completed

        if parts & {"approvals", "memory"}:
            _say(f"memory: {sizes.parked} processes parked at approval", began)
            resource, _ = await mutex_queue.hold_lock(stack.client, worker, baseline, "held")
            held = ProcessOptions(lock_resource=resource)
            parked = await memory.parked_processes(
                stack.client, worker, sizes.parked, held, "parked"
            )
            if shared_worker is not None:
                bare = await memory.parked_bare(stack.client, baseline, sizes.parked)
                shared = await memory.parked_processes(
                    stack.client, shared_worker, sizes.parked_shared, held, "parked, shared"
                )
                stack.stop(shared_worker)
                figures += memory.memory_figures(parked, shared, bare)
            if "approvals" in parts:
                n = sizes.approvals
                _say(f"approvals: {n} through the API, {n} with the client", began)
                ids = parked.ids
                approved = await approvals.run(
                    stack.client, stack.settings, stack.api_url, ids[:n], ids[n : 2 * n]
                )
                figures += approved.figures
                lost += approved.lost

        if "queue" in parts:
            _say(f"mutex queue: {sizes.queue} waiters, {sizes.drain} let through", began)
            queued = await mutex_queue.run(stack.client, worker, baseline, sizes.queue, sizes.drain)
            figures += queued.figures
            lost += queued.expected - queued.granted_in_order

        if small_cache_worker is not None:
            _say(f"scale: {sizes.scale} parked, {sizes.scale_cache} cached", began)
            resource, _ = await mutex_queue.hold_lock(stack.client, worker, baseline, "scale")
            scaled = await memory.scale(
                stack,
                small_cache_worker,
                sizes.scale,
                sizes.scale_cache,
                sizes.scale_approved,
                held=ProcessOptions(lock_resource=resource),
                free=ProcessOptions(lock_resource=f"bench-scale-{uuid.uuid4().hex[:8]}"),
            )
            figures += scaled.figures
            lost += scaled.expected - scaled.closed_as_expected
    finally:
        await stack.close()
    _say("done", began)
    print()
    print(figs.table(figures))
    for profile in profiles:
        print()
        print(profile.render())
    info = figs.machine(load_before)
    print()
    print(
        f"machine: {info['cpu_count']} x {info['cpu_model']}, {info['memory_gib']} GiB; load "
        f"average {load_before[0]:.2f} before, {info['load_average_after'][0]:.2f} after; "
        f"Python {info['python']}, temporalio {info['temporalio']}, {info['temporal_cli']}"
    )
    figs.write(
        out,
        info,
        figures,
        mode="quick" if quick else "full",
        dev_server_args=server_args,
        lost=lost,
        profiles={p.title: p.as_dict() for p in profiles},
    )
    print(f"results: {Path.cwd() / out}")
    missing = [name for name in REQUIRED if name not in {f.name for f in figures}]
    if missing and parts == set(PARTS):
        print(f"missing figures: {', '.join(missing)}", file=sys.stderr)
        return 1
    if lost:
        print(f"lost: {lost} (see the notes above)", file=sys.stderr)
        return 1
    return 0


def _say(what: str, began: float) -> None:
    print(f"[{time.perf_counter() - began:6.1f} s] {what}", flush=True)
